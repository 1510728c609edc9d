//! The client side of the HTTP API: one request, as the `runtime` client commands, the trace
//! replay and the tests send it.

use std::time::Duration;

/// Sends `method` (GET, DELETE, PUT, or POST for anything else) to `url` with `body` (not sent
/// with GET and DELETE), as `token`'s user if given (bearer header), giving up after `timeout`
/// if given. Any HTTP status is a reply: returns it and the body (up to 1 GiB).
pub fn request(method: &str, url: &str, token: Option<&str>, body: &[u8], timeout: Option<Duration>) -> Result<(u16, Vec<u8>), ureq::Error> {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(timeout).build().into();
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut resp = if method == "GET" || method == "DELETE" {
        let mut req = if method == "GET" { agent.get(url) } else { agent.delete(url) };
        if let Some(a) = &auth {
            req = req.header("Authorization", a);
        }
        req.call()
    } else {
        let mut req = if method == "PUT" { agent.put(url) } else { agent.post(url) };
        if let Some(a) = &auth {
            req = req.header("Authorization", a);
        }
        req.send(body)
    }?;
    let status = resp.status().as_u16();
    let body = resp.body_mut().with_config().limit(1 << 30).read_to_vec()?;
    Ok((status, body))
}
