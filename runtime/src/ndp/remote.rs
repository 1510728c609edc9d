//! A guest's object calls for objects another storage node holds: HTTP to that node's
//! `/o/USER/KEY` (a ranged GET, a PUT), as the user the call runs for — presenting the cluster
//! secret (`--cluster-token-file`) and naming the user in `x-ebb-user` — and marked as forwarded.

use std::time::Duration;

use ebb_memnode::tokens::Secret;

use super::ObjectError;

/// Header naming the user a cluster request acts for.
pub const USER_HEADER: &str = "x-ebb-user";
/// Header marking a request one runtime sends another (never forwarded again).
pub const FORWARDED_HEADER: &str = "x-ebb-forwarded";

/// The request path of an object (its key percent-encoded).
pub fn object_path(user: &str, key: &str) -> String {
    let mut path = format!("/o/{user}/");
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            path.push(char::from(b));
        } else {
            path.push_str(&format!("%{b:02X}"));
        }
    }
    path
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(5)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// `r` marked as one runtime's request to another, acting for `user` with the cluster secret.
pub(super) fn marked<B>(r: ureq::RequestBuilder<B>, cluster: Option<&Secret>, user: &str) -> ureq::RequestBuilder<B> {
    let r = r.header(FORWARDED_HEADER, "1").header(USER_HEADER, user);
    match cluster {
        Some(t) => r.header("authorization", &format!("Bearer {}", t.expose())),
        None => r,
    }
}

fn unreachable(node: &str, e: impl std::fmt::Display) -> ObjectError {
    ObjectError::Io(std::io::Error::other(format!("storage node {node}, which holds this object, did not answer: {e}")))
}

fn refused(node: &str, status: u16, body: &str) -> ObjectError {
    ObjectError::NotHere(format!("storage node {node} answered {status}: {}", body.trim()))
}

/// Bytes `offset..offset + max_len` of the object (fewer at its end).
pub fn get(node: &str, cluster: Option<&Secret>, user: &str, key: &str, offset: u64, max_len: u64) -> Result<Vec<u8>, ObjectError> {
    let url = format!("{}{}?offset={offset}&length={max_len}", node.trim_end_matches('/'), object_path(user, key));
    let mut reply = marked(agent().get(&url), cluster, user).call().map_err(|e| unreachable(node, e))?;
    let status = reply.status().as_u16();
    let body = reply.body_mut().with_config().limit(max_len.saturating_add(1)).read_to_vec().map_err(|e| unreachable(node, e))?;
    match status {
        200 => Ok(body),
        404 => Err(ObjectError::NotFound { user: user.into(), key: key.into() }),
        _ => Err(refused(node, status, &String::from_utf8_lossy(&body))),
    }
}

/// Stores the object on `node`; returns its size.
pub fn put(node: &str, cluster: Option<&Secret>, user: &str, key: &str, data: &[u8]) -> Result<u64, ObjectError> {
    let url = format!("{}{}", node.trim_end_matches('/'), object_path(user, key));
    let mut reply = marked(agent().put(&url), cluster, user).send(data).map_err(|e| unreachable(node, e))?;
    let status = reply.status().as_u16();
    let body = reply.body_mut().read_to_string().unwrap_or_default();
    match status {
        200 => Ok(data.len() as u64),
        _ => Err(refused(node, status, &body)),
    }
}
