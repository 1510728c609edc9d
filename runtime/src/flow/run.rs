//! One workflow call, scheduled on this worker as its data arrives: every block instance starts
//! the moment all its inputs are present (no central master, no polling), as a call of the
//! block's function on the platform's pool, and its posts are delivered as it ends.
//!
//! - A block fed by a FOREACH output has one instance per element, started with that element;
//!   its other (NORMAL) inputs are shared by all instances. Any other block has one instance.
//! - A MERGE output of instance `i` becomes element `i` of the destination's LIST input, which
//!   is complete once every instance of the producer has posted (a FOREACH of 0 elements makes
//!   an empty list at once). The runtime posts `VIRTUAL.CNT`, the element count, itself.
//! - A SWITCH block routes by its first condition that holds, else `default`.
//! - A block that traps, or does not post an output that has destinations, fails the workflow
//!   with the block's name and error; nothing starts after that. The workflow ends when nothing
//!   runs and nothing more can start; its result is what reached `$USER`.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::spec::{BlockKind, Dest, InputKind, OutputKind, VIRTUAL_CNT, Workflow};
use super::value::Value;
use crate::exec::FlowData;
use crate::platform::{CallInput, Platform};

/// Block calls one workflow call has in the platform's queue or running at once: a FOREACH of
/// thousands is fed to the pool as its calls end, within the per-user queue limit.
const MAX_IN_FLIGHT: usize = 32;

/// One block instance's timings and sizes, for the status result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BlockTiming {
    pub block: String,
    pub function: String,
    /// Its element of the FOREACH that started it (0 otherwise).
    pub index: usize,
    /// Microseconds since the workflow call began: when its inputs were all present and its call
    /// was queued, and when its guest began and returned (0 if it never ran).
    pub ready_us: u64,
    pub start_us: u64,
    pub end_us: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Microseconds the guest spent in the data calls (fetching inputs, posting outputs).
    pub data_us: u64,
    /// Of `bytes_in`, how many the block's fetches mapped as pages instead of copying.
    pub bytes_mapped_in: u64,
    /// Of `bytes_out`, how many were posted as the block's own pages (an output buffer), uncopied.
    pub bytes_handed_out: u64,
}

/// How a workflow call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The values that reached `$USER`, by output name.
    Done(BTreeMap<String, Vec<u8>>),
    Failed(String),
    Timeout,
}

#[derive(Default)]
struct List {
    expect: Option<usize>,
    items: BTreeMap<usize, Value>,
}

impl List {
    fn complete(&self) -> bool {
        self.expect.is_some_and(|n| self.items.len() >= n)
    }
}

struct Instance {
    block: usize,
    index: usize,
    /// Its own element of a FOREACH (input name, value).
    own: Option<(String, Value)>,
    started: bool,
    /// Its outcome was taken (at the guest's return, or from the call's end).
    ended: bool,
    timing: Option<BlockTiming>,
}

#[derive(Default)]
struct BlockState {
    /// NORMAL values every instance sees.
    shared: BTreeMap<String, Value>,
    lists: BTreeMap<String, List>,
    /// Instance ids, in element order.
    instances: Vec<usize>,
    /// The block is fed by a FOREACH (its instances come from it).
    fanned: bool,
    /// Instances of this block that have ended.
    ended: usize,
}

struct State {
    blocks: Vec<BlockState>,
    instances: Vec<Instance>,
    running: usize,
    result: BTreeMap<String, Vec<u8>>,
    outcome: Option<Outcome>,
}

/// A workflow call in progress (shared by the waiter and the block calls' completions).
pub struct Run {
    workflow: Arc<Workflow>,
    user: String,
    /// Weak: the platform keeps async runs, and a run must not keep the platform.
    platform: std::sync::Weak<Platform>,
    /// Bytes a block may post in all (the platform's input limit).
    limit: usize,
    began: Instant,
    deadline: Instant,
    state: Mutex<State>,
    ended: Condvar,
    /// Told when the outcome is known (an HTTP request waits on these without a thread).
    watchers: Mutex<Vec<tokio::sync::oneshot::Sender<()>>>,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run").field("workflow", &self.workflow.name).field("user", &self.user).finish_non_exhaustive()
    }
}

/// Why a workflow call did not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    #[error("global input {0:?} is missing from the request")]
    MissingInput(String),
    #[error("global input {key:?} has {size} bytes; the most allowed is {limit}")]
    TooLarge { key: String, size: usize, limit: usize },
}

impl Run {
    /// Starts `workflow` for `user` with the global inputs `inputs` (by key), to end within
    /// `timeout`.
    pub fn start(
        platform: Arc<Platform>,
        workflow: Arc<Workflow>,
        user: &str,
        inputs: &BTreeMap<String, Vec<u8>>,
        timeout: Duration,
    ) -> Result<Arc<Run>, StartError> {
        let limit = platform.config().max_input;
        for g in &workflow.global_inputs {
            let v = inputs.get(&g.key).ok_or_else(|| StartError::MissingInput(g.key.clone()))?;
            if v.len() > limit {
                return Err(StartError::TooLarge { key: g.key.clone(), size: v.len(), limit });
            }
        }
        let mut blocks: Vec<BlockState> = (0..workflow.blocks.len()).map(|_| BlockState::default()).collect();
        for b in &workflow.blocks {
            for o in b.outputs.iter().filter(|o| o.kind == OutputKind::Foreach) {
                for d in &o.dest {
                    if let Dest::Input { block, .. } = d {
                        blocks[*block].fanned = true;
                    }
                }
            }
        }
        let began = Instant::now();
        let run = Arc::new(Run {
            workflow: workflow.clone(),
            user: user.to_string(),
            platform: Arc::downgrade(&platform),
            limit,
            began,
            deadline: began + timeout,
            state: Mutex::new(State { blocks, instances: Vec::new(), running: 0, result: BTreeMap::new(), outcome: None }),
            ended: Condvar::new(),
            watchers: Mutex::new(Vec::new()),
        });
        let starts = {
            let mut s = run.lock();
            // A block that takes no input starts with the workflow.
            for (i, b) in workflow.blocks.iter().enumerate() {
                if b.inputs.is_empty() && !s.blocks[i].fanned {
                    run.spawn(&mut s, i, 0, None);
                }
            }
            for g in &workflow.global_inputs {
                let value = Value::from(inputs[&g.key].clone());
                for d in &g.dest {
                    run.deliver(&mut s, d, &g.key, value.clone());
                }
            }
            run.ready(&mut s)
        };
        run.launch(starts);
        Ok(run)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for the outcome until the workflow's deadline (then it is a timeout).
    pub fn wait(&self) -> Outcome {
        let mut s = self.lock();
        loop {
            if let Some(o) = &s.outcome {
                return o.clone();
            }
            let now = Instant::now();
            if now >= self.deadline {
                s.outcome = Some(Outcome::Timeout);
                continue;
            }
            s = self.ended.wait_timeout(s, self.deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Waits for the outcome without holding a thread, until the workflow's deadline.
    pub async fn ended(&self) -> Outcome {
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            // Under the state lock: an outcome set after this look tells the watcher.
            let s = self.lock();
            if let Some(o) = &s.outcome {
                return o.clone();
            }
            self.watchers.lock().unwrap_or_else(|e| e.into_inner()).push(tx);
        }
        let left = self.deadline.saturating_duration_since(Instant::now());
        let _ = tokio::time::timeout(left, rx).await;
        self.outcome().unwrap_or(Outcome::Timeout)
    }

    /// The outcome if it ended (a run past its deadline has timed out).
    pub fn outcome(&self) -> Option<Outcome> {
        let mut s = self.lock();
        if s.outcome.is_none() && Instant::now() >= self.deadline {
            s.outcome = Some(Outcome::Timeout);
        }
        s.outcome.clone()
    }

    /// Every block instance that started, in start order.
    pub fn timings(&self) -> Vec<BlockTiming> {
        let s = self.lock();
        let mut t: Vec<BlockTiming> = s.instances.iter().filter_map(|i| i.timing.clone()).collect();
        t.sort_by_key(|t| t.ready_us);
        t
    }

    pub fn workflow(&self) -> &Workflow {
        &self.workflow
    }

    /// Microseconds from the workflow call's beginning to `t`.
    fn since(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.began).as_micros()).unwrap_or(u64::MAX)
    }

    /// Hands `value` (output `from`) to a destination.
    fn deliver(&self, s: &mut State, dest: &Dest, from: &str, value: Value) {
        match dest {
            Dest::User => {
                s.result.insert(from.to_string(), value.to_vec());
            }
            Dest::Input { block, input } => {
                let b = &mut s.blocks[*block];
                b.shared.insert(input.clone(), value);
                if !b.fanned && b.instances.is_empty() {
                    self.spawn(s, *block, 0, None);
                }
            }
        }
    }

    fn spawn(&self, s: &mut State, block: usize, index: usize, own: Option<(String, Value)>) {
        let id = s.instances.len();
        s.instances.push(Instance { block, index, own, started: false, ended: false, timing: None });
        s.blocks[block].instances.push(id);
    }

    /// Instances whose inputs are all present, marked started, with their data.
    fn ready(&self, s: &mut State) -> Vec<(usize, FlowData)> {
        if s.outcome.is_some() {
            return Vec::new();
        }
        let limit = self.limit;
        let mut out = Vec::new();
        for id in 0..s.instances.len() {
            if s.running >= MAX_IN_FLIGHT {
                break;
            }
            let inst = &s.instances[id];
            if inst.started {
                continue;
            }
            let block = &self.workflow.blocks[inst.block];
            let bs = &s.blocks[inst.block];
            let mut inputs = Vec::with_capacity(block.inputs.len());
            let all = block.inputs.iter().all(|i| {
                let elements: Option<Vec<Value>> = match i.kind {
                    InputKind::Normal => inst.own.as_ref().filter(|(n, _)| *n == i.name).map(|(_, v)| v.clone()).or_else(|| bs.shared.get(&i.name).cloned()).map(|v| vec![v]),
                    InputKind::List => bs.lists.get(&i.name).filter(|l| l.complete()).map(|l| l.items.values().cloned().collect()),
                };
                elements.map(|e| inputs.push((i.name.clone(), e))).is_some()
            });
            if !all {
                continue;
            }
            let mut outputs: Vec<(String, bool)> = block.outputs.iter().filter(|o| o.name != VIRTUAL_CNT).map(|o| (o.name.clone(), o.kind == OutputKind::Foreach)).collect();
            for c in &block.conditions {
                for (o, _) in &c.routes {
                    if !o.starts_with("virtual.") && !outputs.iter().any(|(n, _)| n == o) {
                        outputs.push((o.clone(), false));
                    }
                }
            }
            let bytes_in = inputs.iter().flat_map(|(_, v)| v).map(|v| v.len() as u64).sum();
            let (index, ready_us) = (inst.index, self.since(Instant::now()));
            let inst = &mut s.instances[id];
            inst.started = true;
            inst.timing = Some(BlockTiming { block: block.label(), function: block.function.clone(), index, ready_us, start_us: 0, end_us: 0, bytes_in, bytes_out: 0, data_us: 0, bytes_mapped_in: 0, bytes_handed_out: 0 });
            s.running += 1;
            out.push((id, FlowData::new(inputs, outputs, limit)));
        }
        out
    }

    fn launch(self: &Arc<Self>, starts: Vec<(usize, FlowData)>) {
        for (id, flow) in starts {
            let function = {
                let s = self.lock();
                self.workflow.blocks[s.instances[id].block].function.clone()
            };
            let me = self.clone();
            let early = self.clone();
            let on_return = crate::exec::FlowReturn(Arc::new(move |f: FlowData| early.ended_block(id, Ok(f))));
            let mut flow = flow;
            flow.on_return = Some(on_return);
            let input = CallInput { data: Vec::new(), cmdline: None, forbid_ndp: false, flow: Some(Box::new(flow)) };
            let Some(platform) = self.platform.upgrade() else {
                self.ended_block(id, Err("the runtime is shutting down".into()));
                continue;
            };
            let queued = platform.call_then(&self.user, &function, input, move |r| {
                let result = match r {
                    Ok(o) if o.rc == 0 => Ok(o.flow.unwrap_or_default()),
                    Ok(o) => Err(format!("returned {}: {}", o.rc, String::from_utf8_lossy(&o.output).trim())),
                    Err(f) => Err(crate::pager::error_chain(&f)),
                };
                me.ended_block(id, result);
            });
            if let Err(e) = queued {
                self.ended_block(id, Err(format!("could not be queued: {}", crate::pager::error_chain(&e))));
            }
        }
    }

    /// A block instance ended: deliver its posts (or fail the workflow), start what is ready.
    fn ended_block(self: &Arc<Self>, id: usize, result: Result<FlowData, String>) {
        let starts = {
            let mut s = self.lock();
            // Handed over at the guest's return already: the call's end adds nothing.
            if std::mem::replace(&mut s.instances[id].ended, true) {
                return;
            }
            s.running -= 1;
            let ran = result.as_ref().ok().and_then(|f| f.ran);
            let block_id = s.instances[id].block;
            let index = s.instances[id].index;
            let block = &self.workflow.blocks[block_id];
            let name = block.label();
            if let Some(t) = s.instances[id].timing.as_mut() {
                // A call that failed: its end is now.
                let (start, end) = ran.map_or((t.ready_us, self.since(Instant::now())), |(a, b)| (self.since(a), self.since(b)));
                (t.start_us, t.end_us) = (start, end);
                t.bytes_out = result.as_ref().map_or(0, |f| f.posted.iter().flatten().map(|v| v.len() as u64).sum());
                if let Ok(f) = &result {
                    (t.data_us, t.bytes_mapped_in, t.bytes_handed_out) = (f.data_us, f.mapped_in, f.handed_out);
                }
            }
            s.blocks[block_id].ended += 1;
            match result {
                _ if s.outcome.is_some() => {}
                Err(e) => s.outcome = Some(Outcome::Failed(format!("block {name} (function {}) failed: {e}", block.function))),
                Ok(flow) => {
                    if let Err(e) = self.post(&mut s, block_id, index, &flow) {
                        s.outcome = Some(Outcome::Failed(format!("block {name} (function {}): {e}", block.function)));
                    }
                }
            }
            let starts = self.ready(&mut s);
            if s.outcome.is_none() && starts.is_empty() && s.running == 0 {
                s.outcome = Some(self.finish(&s));
            }
            if s.outcome.is_some() {
                self.ended.notify_all();
                for w in self.watchers.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
                    let _ = w.send(());
                }
            }
            starts
        };
        self.launch(starts);
    }

    /// Delivers what instance `index` of `block_id` posted.
    fn post(&self, s: &mut State, block_id: usize, index: usize, flow: &FlowData) -> Result<(), String> {
        let block = &self.workflow.blocks[block_id];
        let posted = |name: &str| flow.outputs.iter().position(|(n, _)| n == name).map(|i| &flow.posted[i]);
        let single = |name: &str| -> Result<Value, String> {
            match posted(name) {
                Some(v) if !v.is_empty() => Ok(v[v.len() - 1].clone()),
                _ => Err(format!("it did not post output {name}, which has destinations")),
            }
        };
        for o in &block.outputs {
            if o.dest.is_empty() || o.name == VIRTUAL_CNT {
                continue;
            }
            match o.kind {
                OutputKind::Normal => {
                    let v = single(&o.name)?;
                    for d in &o.dest {
                        self.deliver(s, d, &o.name, v.clone());
                    }
                }
                OutputKind::Merge => {
                    let v = single(&o.name)?;
                    for d in &o.dest {
                        match d {
                            Dest::User => self.deliver(s, d, &o.name, v.clone()),
                            Dest::Input { block, input } => {
                                s.blocks[*block].lists.entry(input.clone()).or_default().items.insert(index, v.clone());
                            }
                        }
                    }
                }
                OutputKind::Foreach => {
                    // Not posted at all: a FOREACH of no elements.
                    let elements: Vec<Value> = posted(&o.name).cloned().unwrap_or_default();
                    for d in &o.dest {
                        match d {
                            Dest::User => {
                                let list: Vec<serde_json::Value> = elements.iter().map(|e| json_value(e)).collect();
                                self.deliver(s, d, &o.name, Value::from(serde_json::to_vec(&list).unwrap_or_default()));
                            }
                            Dest::Input { block, input } => {
                                for (i, e) in elements.iter().enumerate() {
                                    self.spawn(s, *block, i, Some((input.clone(), e.clone())));
                                }
                                // The consumers' MERGE outputs fill lists of this many elements.
                                self.expect(s, *block, elements.len());
                            }
                        }
                    }
                    if let Some(cnt) = block.output(VIRTUAL_CNT) {
                        let n = Value::from(elements.len().to_string().into_bytes());
                        for d in &cnt.dest {
                            self.deliver(s, d, VIRTUAL_CNT, n.clone());
                        }
                    }
                }
            }
        }
        if block.kind == BlockKind::Switch {
            let chosen = block
                .conditions
                .iter()
                .find(|c| c.predicate.as_ref().is_some_and(|p| posted(&p.output).and_then(|v| v.last()).is_some_and(|v| p.holds(v))))
                .or_else(|| block.conditions.iter().find(|c| c.predicate.is_none()));
            if let Some(c) = chosen {
                for (o, dests) in &c.routes {
                    let v = if o.starts_with("virtual.") { Value::from(Vec::new()) } else { single(o)? };
                    let as_name = o.strip_prefix("virtual.").unwrap_or(o);
                    for d in dests {
                        self.deliver(s, d, as_name, v.clone());
                    }
                }
            }
        }
        // An unfanned producer with MERGE outputs makes one-element lists.
        if !s.blocks[block_id].fanned {
            self.expect(s, block_id, 1);
        }
        Ok(())
    }

    /// Sets how many elements the LIST inputs fed by `producer`'s MERGE outputs expect.
    fn expect(&self, s: &mut State, producer: usize, n: usize) {
        for o in self.workflow.blocks[producer].outputs.iter().filter(|o| o.kind == OutputKind::Merge) {
            for d in &o.dest {
                if let Dest::Input { block, input } = d {
                    s.blocks[*block].lists.entry(input.clone()).or_default().expect.get_or_insert(n);
                    // A list of 0 elements is complete now: its consumer may be unfanned and not
                    // yet exist.
                    if !s.blocks[*block].fanned && s.blocks[*block].instances.is_empty() {
                        self.spawn(s, *block, 0, None);
                    }
                }
            }
        }
    }

    /// The outcome once nothing runs and nothing can start.
    fn finish(&self, s: &State) -> Outcome {
        if !s.result.is_empty() {
            return Outcome::Done(s.result.clone());
        }
        let waiting: Vec<String> = s
            .instances
            .iter()
            .filter(|i| !i.started)
            .map(|i| self.workflow.blocks[i.block].label())
            .collect();
        Outcome::Failed(if waiting.is_empty() {
            "the workflow ended without sending anything to $USER".into()
        } else {
            format!("the workflow ended without a result: blocks still missing inputs: {}", waiting.join(", "))
        })
    }
}

/// A posted value as JSON: itself if it is JSON, else a string.
pub fn json_value(v: &[u8]) -> serde_json::Value {
    serde_json::from_slice(v).unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(v).into_owned()))
}

#[cfg(test)]
mod tests;
