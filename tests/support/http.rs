//! A small blocking HTTP client for a runtime's API (tests, benches and the trace replay).

use crate::Runtime;

/// An HTTP response: status and body.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: String,
}

/// One request; `token` goes in a bearer header. Panics if the server cannot be reached.
pub fn send(method: &str, url: &str, token: Option<&str>, body: &[u8]) -> Resp {
    try_send(method, url, token, body).unwrap_or_else(|e| panic!("HTTP {method} {url}: {e}"))
}

/// One request; an error if the server cannot be reached.
pub fn try_send(method: &str, url: &str, token: Option<&str>, body: &[u8]) -> Result<Resp, ureq::Error> {
    let (status, body) = ebb_runtime::api::client::request(method, url, token, body, None)?;
    Ok(Resp { status, body: String::from_utf8_lossy(&body).into_owned() })
}

/// Uploads `wasm` as USER/NAME.
pub fn upload_wasm(url: &str, user: &str, name: &str, wasm: &[u8], token: Option<&str>) -> Resp {
    send("PUT", &format!("{url}/f/{user}/{name}"), token, wasm)
}

/// Uploads the demo function NAME (built by `scripts/build-functions.sh`) as USER/NAME.
pub fn upload(rt: &Runtime, user: &str, name: &str, token: Option<&str>) -> Resp {
    let wasm = std::fs::read(crate::function_wasm("demo", name)).expect("demo function built");
    upload_wasm(&rt.url, user, name, &wasm, token)
}

/// A synchronous call through `POST /f/`.
pub fn invoke_url(url: &str, user: &str, name: &str, input: &str) -> Resp {
    let msg = serde_json::json!({"user": user, "function": name, "input_data": input});
    send("POST", &format!("{url}/f/"), None, msg.to_string().as_bytes())
}

pub fn invoke(rt: &Runtime, user: &str, name: &str, input: &str) -> Resp {
    invoke_url(&rt.url, user, name, input)
}

/// The value of the metric line starting with `name` (labels included), or None.
pub fn find_metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

/// The value of a metric of a running runtime; panics if it is missing.
pub fn metric(rt: &Runtime, name: &str) -> f64 {
    let text = send("GET", &format!("{}/metrics", rt.url), None, b"").body;
    find_metric(&text, name).unwrap_or_else(|| panic!("metric {name} missing from:\n{text}"))
}
