//! Trace replay: the same invocation trace against one runtime per keep-alive policy, side by
//! side, measuring local memory over time and call latency.
//!
//! ```text
//!   trace (Azure 2019 per-minute counts, or 2021 per-invocation timestamps)
//!     └─ each trace function ─► a workload function (round robin over --workloads), uploaded
//!        to every target as replay/<fN>-<workload>
//!   at each invocation's time: one HTTP call per target (its own thread)
//!   every --sample-ms: each target's /metrics (ebb_resident_bytes) and its process RSS
//!   at the end: per policy CSV rows, a table, and SVG plots (memory over time, latency CDFs)
//! ```
//! Targets are started here (`runtime serve --policy P` with an embedded memnode, one per
//! policy) or given as running servers (`--target NAME=URL`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// One invocation of a trace: when (from the trace's start) and which trace function.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceCall {
    pub at: Duration,
    pub function: String,
}

/// Reads a trace CSV, recognised by its header: Azure Functions 2021 (`app,func,end_timestamp,
/// duration`: one row per invocation, seconds) or 2019 (`HashOwner,HashApp,HashFunction,Trigger,
/// 1,...,1440`: invocations per minute, spread evenly over each minute). Sorted by time.
pub fn load_trace(path: &Path) -> anyhow::Result<Vec<TraceCall>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read trace {}", path.display()))?;
    parse_trace(&text).with_context(|| format!("trace {}", path.display()))
}

pub fn parse_trace(text: &str) -> anyhow::Result<Vec<TraceCall>> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().context("the trace is empty")?;
    let cols: Vec<&str> = header.split(',').map(str::trim).collect();
    let mut calls = Vec::new();
    if cols.len() >= 4 && cols[..4] == ["app", "func", "end_timestamp", "duration"] {
        for (n, line) in lines {
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            let bad = || format!("line {}: expected app,func,end_timestamp,duration with numbers", n + 1);
            if f.len() < 4 {
                bail!(bad());
            }
            let end: f64 = f[2].parse().map_err(|_| anyhow::anyhow!(bad()))?;
            let duration: f64 = f[3].parse().map_err(|_| anyhow::anyhow!(bad()))?;
            let start = (end - duration).max(0.0);
            if !start.is_finite() {
                bail!(bad());
            }
            calls.push(TraceCall { at: Duration::from_secs_f64(start), function: format!("{}/{}", f[0], f[1]) });
        }
    } else if cols.len() > 4 && cols[..4] == ["HashOwner", "HashApp", "HashFunction", "Trigger"] {
        for (n, line) in lines {
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            if f.len() != cols.len() {
                bail!("line {}: {} columns, the header has {}", n + 1, f.len(), cols.len());
            }
            let function = format!("{}/{}", f[1], f[2]);
            for (minute, count) in f[4..].iter().enumerate() {
                let count: u32 = count.parse().map_err(|_| anyhow::anyhow!("line {}: `{count}` is not a count", n + 1))?;
                for i in 0..count {
                    let at = (minute as f64 + (f64::from(i) + 0.5) / f64::from(count)) * 60.0;
                    calls.push(TraceCall { at: Duration::from_secs_f64(at), function: function.clone() });
                }
            }
        }
    } else {
        bail!(
            "unrecognised header `{header}`: expected Azure 2021 `app,func,end_timestamp,duration` or Azure 2019 \
             `HashOwner,HashApp,HashFunction,Trigger,1,2,...`"
        );
    }
    calls.sort_by_key(|c| c.at);
    Ok(calls)
}

/// A workload a trace function is mapped to: a function file and the input of every call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub name: String,
    pub input: String,
}

/// Parses `name:input,name:input,...`.
pub fn parse_workloads(spec: &str) -> anyhow::Result<Vec<Workload>> {
    let w: Vec<Workload> = spec
        .split(',')
        .map(|s| {
            let (name, input) = s.split_once(':').unwrap_or((s, ""));
            Workload { name: name.trim().to_string(), input: input.trim().to_string() }
        })
        .collect();
    if w.iter().any(|w| w.name.is_empty()) {
        bail!("--workloads `{spec}`: expected NAME:INPUT,NAME:INPUT,...");
    }
    Ok(w)
}

/// The default mix: resident sets from a few MiB to 128 MiB, calls of tens of milliseconds.
pub const DEFAULT_WORKLOADS: &str = "model:8,bfs:3,image:512,json:10000,matmul:128,compress:2,linpack:200";

/// Where replayed calls go.
#[derive(Debug)]
pub struct Target {
    pub name: String,
    pub url: String,
    child: Option<Child>,
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Target {
    /// Starts `runtime serve --policy POLICY` (this executable) on a free loopback port, paging
    /// to `memnode`.
    pub fn spawn(policy: &str, data_dir: &Path, memnode: &str, extra: &[String]) -> anyhow::Result<Target> {
        let exe = std::env::current_exe().context("cannot find the runtime executable")?;
        let mut cmd = Command::new(exe);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--policy", policy, "--memnode", memnode, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .stderr(Stdio::null());
        let (child, addr) = spawn_listening(cmd, "runtime listening on ")?;
        Ok(Target { name: policy.to_string(), url: format!("http://{addr}"), child: Some(child) })
    }

    /// A server started elsewhere.
    pub fn remote(name: &str, url: &str) -> Target {
        Target { name: name.to_string(), url: url.trim_end_matches('/').to_string(), child: None }
    }

    fn rss(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kb: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    }
}

/// Starts a server (`runtime serve`, `memnode`) and waits for its first stdout line,
/// `PREFIX ADDR ...`; returns the child and ADDR.
pub fn spawn_listening(mut cmd: Command, prefix: &str) -> anyhow::Result<(Child, String)> {
    let mut child = cmd.stdout(Stdio::piped()).spawn().with_context(|| format!("cannot start {cmd:?}"))?;
    let stdout = child.stdout.take().context("piped stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    match line.strip_prefix(prefix).and_then(|r| r.split_whitespace().next()) {
        Some(addr) => Ok((child, addr.to_string())),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} did not start (said `{}`)", line.trim())
        }
    }
}

/// The memory node all started servers page to: a `memnode` process (found next to this
/// executable), as on a real deployment, so that each server's memory is its own.
#[derive(Debug)]
pub struct MemnodeProcess {
    pub addr: String,
    child: Child,
}

impl MemnodeProcess {
    pub fn spawn() -> anyhow::Result<MemnodeProcess> {
        let exe = std::env::current_exe().context("cannot find the runtime executable")?;
        let memnode = exe.with_file_name("memnode");
        if !memnode.exists() {
            bail!("{} is missing: build it (`cargo build -p ebb-memnode`) beside the runtime", memnode.display());
        }
        let mut cmd = Command::new(memnode);
        cmd.args(["--listen", "127.0.0.1:0", "--capacity", "64G"]).stderr(Stdio::null());
        let (child, addr) = spawn_listening(cmd, "memnode listening on ")?;
        Ok(MemnodeProcess { addr, child })
    }
}

impl Drop for MemnodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http(method: &str, url: &str, body: &[u8]) -> anyhow::Result<(u16, String)> {
    let (status, body) = crate::api::client::request(method, url, None, body, Some(Duration::from_secs(300)))
        .with_context(|| format!("{method} {url}"))?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Sum of a metric over all its label sets.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with(' ') || r.starts_with('{')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What one replayed call did.
#[derive(Clone, Debug)]
struct CallRecord {
    target: usize,
    function: String,
    at: f64,
    latency: f64,
    ok: bool,
}

/// Replay settings.
#[derive(Debug, Clone)]
pub struct ReplayConfig {
    /// Directory holding `<workload>.wasm`.
    pub functions: PathBuf,
    pub workloads: Vec<Workload>,
    /// Trace time divided by this.
    pub speed: f64,
    pub sample: Duration,
    pub out: PathBuf,
    pub progress: bool,
}

/// One policy's results.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub policy: String,
    pub calls: usize,
    pub errors: usize,
    pub avg_resident: f64,
    pub peak_resident: f64,
    pub avg_rss: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub fault_pages_per_call: f64,
    pub bytes_in: f64,
    pub bytes_out: f64,
    pub written_back: f64,
    pub dropped_clean: f64,
    pub prefetched: f64,
    pub prefetch_hits: f64,
    pub prefetch_misses: f64,
    pub cold_starts: f64,
    pub semi_warm_starts: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // Nearest rank: the smallest value with at least p % of the values at or below it.
    let mut rank = 1;
    while rank < sorted.len() && (rank as f64) < sorted.len() as f64 * p / 100.0 {
        rank += 1;
    }
    sorted[rank - 1]
}

/// Replays `trace` against `targets`; writes `summary.csv`, `calls.csv`, `memory.csv`,
/// `memory.svg` and `latency.svg` to the output directory and returns the summaries.
pub fn replay(trace: &[TraceCall], targets: &[Target], config: &ReplayConfig) -> anyhow::Result<Vec<Summary>> {
    if trace.is_empty() {
        bail!("the trace has no invocations");
    }
    if config.workloads.is_empty() {
        bail!("no workloads to map the trace onto");
    }
    std::fs::create_dir_all(&config.out).with_context(|| format!("cannot create {}", config.out.display()))?;
    // Map trace functions to workload functions, in order of first appearance.
    let mut mapping: HashMap<String, (String, String)> = HashMap::new();
    let mut order = Vec::new();
    for c in trace {
        if !mapping.contains_key(&c.function) {
            let w = &config.workloads[order.len() % config.workloads.len()];
            let name = format!("f{}-{}", order.len(), w.name);
            mapping.insert(c.function.clone(), (name, w.input.clone()));
            order.push(c.function.clone());
        }
    }
    let mut wasm_cache: HashMap<String, Vec<u8>> = HashMap::new();
    for w in &config.workloads {
        let path = config.functions.join(format!("{}.wasm", w.name));
        let bytes = std::fs::read(&path)
            .with_context(|| format!("cannot read {}: build the workloads with scripts/build-functions.sh", path.display()))?;
        wasm_cache.insert(w.name.clone(), bytes);
    }
    for t in targets {
        for f in &order {
            let (name, _) = &mapping[f];
            let workload = name.split_once('-').map_or(name.as_str(), |(_, w)| w);
            let (status, body) = http("PUT", &format!("{}/f/replay/{name}", t.url), &wasm_cache[workload])?;
            if status != 200 {
                bail!("uploading {name} to {} failed: {status} {body}", t.name);
            }
        }
    }

    // Warm-up, not measured: one call of every function on every target, so the trace starts
    // with one idle instance per function (as a trace cut from a running platform would), not
    // with every init phase at once.
    std::thread::scope(|scope| {
        let handles: Vec<_> = targets
            .iter()
            .map(|t| {
                let (order, mapping) = (&order, &mapping);
                scope.spawn(move || -> anyhow::Result<()> {
                    for f in order {
                        let (name, input) = &mapping[f];
                        let msg = serde_json::json!({"user": "replay", "function": name, "input_data": input}).to_string();
                        let (status, body) = http("POST", &format!("{}/f/", t.url), msg.as_bytes())?;
                        if status != 200 {
                            bail!("warm-up call of {name} on {} failed: {status} {body}", t.name);
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("warm-up panicked"))))
    })?;
    // Counters from here on count the trace only.
    let before: Vec<String> =
        targets.iter().map(|t| http("GET", &format!("{}/metrics", t.url), b"").map(|r| r.1)).collect::<anyhow::Result<_>>()?;

    let records = Arc::new(Mutex::new(Vec::<CallRecord>::new()));
    let samples = Arc::new(Mutex::new(Vec::<(f64, usize, f64, f64)>::new()));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bar = if config.progress {
        indicatif::ProgressBar::new((trace.len() * targets.len()) as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} calls {msg}")
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .progress_chars("=> "),
    );
    let start = Instant::now();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        // Memory sampler.
        scope.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let t = start.elapsed().as_secs_f64();
                for (i, target) in targets.iter().enumerate() {
                    let resident = http("GET", &format!("{}/metrics", target.url), b"")
                        .map(|(_, text)| metric_sum(&text, "ebb_resident_bytes"))
                        .unwrap_or(f64::NAN);
                    let rss = target.rss().map_or(f64::NAN, |r| r as f64);
                    samples.lock().unwrap_or_else(|e| e.into_inner()).push((t, i, resident, rss));
                }
                std::thread::sleep(config.sample);
            }
        });
        let mut calls = Vec::new();
        for call in trace {
            let due = start + call.at.div_f64(config.speed);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let (name, input) = mapping[&call.function].clone();
            for (i, target) in targets.iter().enumerate() {
                let (records, bar, name, input) = (records.clone(), bar.clone(), name.clone(), input.clone());
                let url = format!("{}/f/", target.url);
                let at = start.elapsed().as_secs_f64();
                calls.push(scope.spawn(move || {
                    let msg = serde_json::json!({"user": "replay", "function": name, "input_data": input}).to_string();
                    let t0 = Instant::now();
                    let ok = matches!(http("POST", &url, msg.as_bytes()), Ok((200, _)));
                    let latency = t0.elapsed().as_secs_f64() * 1000.0;
                    records.lock().unwrap_or_else(|e| e.into_inner()).push(CallRecord { target: i, function: name, at, latency, ok });
                    bar.inc(1);
                }));
            }
        }
        for c in calls {
            let _ = c.join();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    })?;
    bar.finish_and_clear();

    let records = std::mem::take(&mut *records.lock().unwrap_or_else(|e| e.into_inner()));
    let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|e| e.into_inner()));
    let mut summaries = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let (_, text) = http("GET", &format!("{}/metrics", t.url), b"")?;
        let mut lat: Vec<f64> = records.iter().filter(|r| r.target == i).map(|r| r.latency).collect();
        lat.sort_by(f64::total_cmp);
        let mem: Vec<f64> = samples.iter().filter(|s| s.1 == i && s.2.is_finite()).map(|s| s.2).collect();
        let rss: Vec<f64> = samples.iter().filter(|s| s.1 == i && s.3.is_finite()).map(|s| s.3).collect();
        let calls = lat.len();
        let m = |name| metric_sum(&text, name) - metric_sum(&before[i], name);
        summaries.push(Summary {
            policy: t.name.clone(),
            calls,
            errors: records.iter().filter(|r| r.target == i && !r.ok).count(),
            avg_resident: mem.iter().sum::<f64>() / mem.len().max(1) as f64,
            peak_resident: mem.iter().copied().fold(0.0, f64::max),
            avg_rss: rss.iter().sum::<f64>() / rss.len().max(1) as f64,
            p50_ms: percentile(&lat, 50.0),
            p95_ms: percentile(&lat, 95.0),
            p99_ms: percentile(&lat, 99.0),
            fault_pages_per_call: m("ebb_call_fault_pages_total") / calls.max(1) as f64,
            bytes_in: m("ebb_memnode_bytes_in_total"),
            bytes_out: m("ebb_memnode_bytes_out_total"),
            written_back: m("ebb_pages_written_back_total"),
            dropped_clean: m("ebb_pages_dropped_clean_total"),
            prefetched: m("ebb_prefetch_pages_total"),
            prefetch_hits: m("ebb_prefetch_hits_total"),
            prefetch_misses: m("ebb_prefetch_misses_total"),
            cold_starts: m("ebb_cold_starts_total"),
            semi_warm_starts: m("ebb_semi_warm_starts_total"),
        });
    }
    write_outputs(config, targets, &records, &samples, &summaries)?;
    Ok(summaries)
}

const SUMMARY_HEADER: &str = "policy,calls,errors,avg_resident_bytes,peak_resident_bytes,avg_rss_bytes,p50_ms,p95_ms,p99_ms,\
fault_pages_per_call,bytes_in,bytes_out,pages_written_back,pages_dropped_clean,prefetch_pages,prefetch_hits,prefetch_misses,\
cold_starts,semi_warm_starts,memory_vs_keep_alive,p95_vs_keep_alive";

fn write_outputs(
    config: &ReplayConfig,
    targets: &[Target],
    records: &[CallRecord],
    samples: &[(f64, usize, f64, f64)],
    summaries: &[Summary],
) -> anyhow::Result<()> {
    let base = summaries.iter().find(|s| s.policy == "keep-alive");
    let mut csv = format!("{SUMMARY_HEADER}\n");
    for s in summaries {
        let (mem, p95) = base.map_or((f64::NAN, f64::NAN), |b| (s.avg_resident / b.avg_resident, s.p95_ms / b.p95_ms));
        let _ = writeln!(
            csv,
            "{},{},{},{:.0},{:.0},{:.0},{:.3},{:.3},{:.3},{:.2},{:.0},{:.0},{:.0},{:.0},{:.0},{:.0},{:.0},{:.0},{:.0},{:.4},{:.4}",
            s.policy,
            s.calls,
            s.errors,
            s.avg_resident,
            s.peak_resident,
            s.avg_rss,
            s.p50_ms,
            s.p95_ms,
            s.p99_ms,
            s.fault_pages_per_call,
            s.bytes_in,
            s.bytes_out,
            s.written_back,
            s.dropped_clean,
            s.prefetched,
            s.prefetch_hits,
            s.prefetch_misses,
            s.cold_starts,
            s.semi_warm_starts,
            mem,
            p95
        );
    }
    std::fs::write(config.out.join("summary.csv"), csv)?;
    let mut calls = String::from("policy,function,start_s,latency_ms,ok\n");
    for r in records {
        let _ = writeln!(calls, "{},{},{:.3},{:.3},{}", targets[r.target].name, r.function, r.at, r.latency, r.ok);
    }
    std::fs::write(config.out.join("calls.csv"), calls)?;
    let mut mem = String::from("t_s,policy,resident_bytes,rss_bytes\n");
    for (t, i, resident, rss) in samples {
        let _ = writeln!(mem, "{t:.3},{},{resident:.0},{rss:.0}", targets[*i].name);
    }
    std::fs::write(config.out.join("memory.csv"), mem)?;
    plot_memory(&config.out.join("memory.svg"), targets, samples)?;
    plot_latency(&config.out.join("latency.svg"), targets, records)?;
    Ok(())
}

const COLORS: [plotters::style::RGBColor; 6] = [
    plotters::style::RGBColor(31, 119, 180),
    plotters::style::RGBColor(255, 127, 14),
    plotters::style::RGBColor(44, 160, 44),
    plotters::style::RGBColor(214, 39, 40),
    plotters::style::RGBColor(148, 103, 189),
    plotters::style::RGBColor(140, 86, 75),
];

fn plot_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("plotting failed: {e}")
}

fn plot_memory(path: &Path, targets: &[Target], samples: &[(f64, usize, f64, f64)]) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let t_max = samples.iter().map(|s| s.0).fold(1.0, f64::max);
    let m_max = samples.iter().map(|s| s.2 / 1048576.0).filter(|m| m.is_finite()).fold(1.0, f64::max) * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption("Local function memory over the trace", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, 0.0..m_max)
        .map_err(plot_err)?;
    chart.configure_mesh().x_desc("time (s)").y_desc("resident (MiB)").draw().map_err(plot_err)?;
    for (i, t) in targets.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<(f64, f64)> =
            samples.iter().filter(|s| s.1 == i && s.2.is_finite()).map(|s| (s.0, s.2 / 1048576.0)).collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(plot_err)?
            .label(t.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

fn plot_latency(path: &Path, targets: &[Target], records: &[CallRecord]) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let lo = records.iter().map(|r| r.latency).fold(f64::INFINITY, f64::min).max(0.01) * 0.9;
    let hi = records.iter().map(|r| r.latency).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption("Call latency CDF", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((lo..hi).log_scale(), 0.0..1.0)
        .map_err(plot_err)?;
    chart.configure_mesh().x_desc("latency (ms, log)").y_desc("fraction of calls").draw().map_err(plot_err)?;
    for (i, t) in targets.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut lat: Vec<f64> = records.iter().filter(|r| r.target == i).map(|r| r.latency).collect();
        lat.sort_by(f64::total_cmp);
        let n = lat.len().max(1) as f64;
        let points: Vec<(f64, f64)> = lat.iter().enumerate().map(|(k, &l)| (l, (k + 1) as f64 / n)).collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(plot_err)?
            .label(t.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

/// The summaries as a terminal table, with memory and P95 relative to `keep-alive`.
pub fn table(summaries: &[Summary]) -> String {
    let mib = |b: f64| b / 1048576.0;
    let base = summaries.iter().find(|s| s.policy == "keep-alive");
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<11} {:>6} {:>4} {:>9} {:>9} {:>7} {:>8} {:>8} {:>8} {:>7} {:>8} {:>8} {:>6} {:>6}",
        "policy", "calls", "err", "avg MiB", "peak MiB", "mem %", "p50 ms", "p95 ms", "p99 ms", "p95 x", "pf/call", "in MiB", "out MiB", "cold"
    );
    for s in summaries {
        let (mem, p95) = base.map_or((f64::NAN, f64::NAN), |b| (100.0 * s.avg_resident / b.avg_resident, s.p95_ms / b.p95_ms));
        let _ = writeln!(
            out,
            "{:<11} {:>6} {:>4} {:>9.1} {:>9.1} {:>6.1}% {:>8.1} {:>8.1} {:>8.1} {:>7.3} {:>8.1} {:>8.1} {:>6.1} {:>6.0}",
            s.policy,
            s.calls,
            s.errors,
            mib(s.avg_resident),
            mib(s.peak_resident),
            mem,
            s.p50_ms,
            s.p95_ms,
            s.p99_ms,
            p95,
            s.fault_pages_per_call,
            mib(s.bytes_in),
            mib(s.bytes_out),
            s.cold_starts
        );
    }
    out
}

/// Writes the table to stdout.
pub fn print_table(summaries: &[Summary]) {
    let _ = std::io::stdout().write_all(table(summaries).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_azure_formats_parse() {
        let t = parse_trace("app,func,end_timestamp,duration\na,f,2.5,0.5\nb,g,1.0,0.25\n").unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].function.as_str(), t[0].at), ("b/g", Duration::from_millis(750)));
        assert_eq!((t[1].function.as_str(), t[1].at), ("a/f", Duration::from_secs(2)));
        let t = parse_trace("HashOwner,HashApp,HashFunction,Trigger,1,2\no,a,f,http,2,0\no,a,g,timer,0,1\n").unwrap();
        let at: Vec<(String, f64)> = t.iter().map(|c| (c.function.clone(), c.at.as_secs_f64())).collect();
        assert_eq!(at, vec![("a/f".into(), 15.0), ("a/f".into(), 45.0), ("a/g".into(), 90.0)]);
        assert!(parse_trace("time,name\n1,x\n").unwrap_err().to_string().contains("unrecognised header"));
        assert!(parse_trace("app,func,end_timestamp,duration\na,f,x,1\n").is_err());
        assert!(parse_workloads("model:8,bfs").unwrap()[1] == Workload { name: "bfs".into(), input: String::new() });
    }

    #[test]
    fn percentiles_and_metric_sums() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!((percentile(&v, 50.0), percentile(&v, 95.0), percentile(&v, 99.0)), (50.0, 95.0, 99.0));
        let text = "# TYPE x counter\nx{function=\"a\"} 2\nx{function=\"b\"} 3\nx_other 7\nx 1\n";
        assert_eq!(metric_sum(text, "x"), 6.0);
    }
}
