//! The Faasm-compatible HTTP API. Every route parses its request into one [`Command`] and
//! [`execute`] runs it on the [`Platform`].
//!
//! ```text
//!   PUT  /f/{user}/{function}          upload (wasm body)           → 200 | 400/413/422 refused
//!   POST /f/                           Faasm JSON message           → output | call id | status
//!   POST /f/{user}/{function}          raw body is the input, sync  → output (200 rc 0, else 500)
//!   POST /f/{user}/{function}/offload  evict idle instances         → bytes moved
//!   PUT|GET /s/{user}/{key}            state
//!   PUT|GET|DELETE /o/{user}/{key}     objects, on a storage node (streamed both ways)
//!   PUT|GET|POST /w/{user}/{workflow}  workflows (see `flow`)
//!   POST /ndp/call                     an offloaded call from another runtime (cluster only)
//!   GET  /metrics  /ping
//! ```
//! Who asks is checked (bearer token, and the path's user) by a layer that runs before any body
//! is read; every route has a body limit that fits it. Calls run on the platform's call pool —
//! a synchronous HTTP call waits for its outcome without holding a thread — so the other routes,
//! which run on tokio's blocking pool, never wait for a call thread. Status codes tell the causes
//! apart: the guest's own failure (500, with its error; a non-zero return code, with its output),
//! a call timeout (504), an unavailable memnode or a full call queue (503), a refused or
//! oversize request (4xx).

pub mod client;
mod flow;
mod ndp;
mod objects;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::handler::Handler;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::platform::{CallError, CallFailure, CallInput, CallStatus, Platform, Viewer, chain};
use crate::registry::{CompileError, Tokens, UploadError};

/// A Faasm call message (`POST /f/`). Unknown Faasm fields are accepted and ignored.
#[derive(Debug, Deserialize, Default)]
pub struct Message {
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub function: Option<String>,
    #[serde(default)]
    pub input_data: Option<String>,
    /// Faasm's command line: the words the function sees after `argv[0]`.
    #[serde(default)]
    pub cmdline: Option<String>,
    #[serde(default, rename = "async")]
    pub is_async: bool,
    #[serde(default)]
    pub forbid_ndp: bool,
    #[serde(default)]
    pub status: bool,
    #[serde(default)]
    pub id: Option<u32>,
}

/// Everything the API can be asked to do.
#[derive(Debug)]
pub enum Command {
    Upload { user: String, function: String, wasm: Bytes },
    Invoke { user: String, function: String, input: CallInput, is_async: bool },
    Status { id: u32 },
    Offload { user: String, function: String },
    GetState { user: String, key: String },
    SetState { user: String, key: String, value: Bytes },
    Metrics,
}

/// What the API server shares between requests.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub platform: Arc<Platform>,
    pub tokens: Option<Arc<Tokens>>,
    /// Uploads compiled at once (each may take a CPU for a while); more wait their turn.
    pub compiles: Arc<tokio::sync::Semaphore>,
}

impl ApiState {
    pub fn new(platform: Arc<Platform>, tokens: Option<Arc<Tokens>>) -> ApiState {
        ApiState { platform, tokens, compiles: Arc::new(tokio::sync::Semaphore::new(2)) }
    }
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's user; None on a server without tokens (loopback only).
    pub user: Option<String>,
    /// May see every user's metrics and call statuses: an `operator` token, or anyone without
    /// tokens. (An operator token acts on its own user's functions and state only.)
    pub operator: bool,
    /// Another runtime of the cluster (the cluster secret), acting for `user`.
    pub cluster: bool,
}

impl Caller {
    fn viewer(&self) -> Viewer<'_> {
        match (&self.user, self.operator) {
            (Some(u), false) => Viewer::User(u),
            _ => Viewer::Operator,
        }
    }
}

pub(crate) fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body.into()).into_response()
}

/// Whether two secrets are equal, in time independent of where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// Who is asking: `Err` is why not (a 401).
fn caller(state: &ApiState, headers: &HeaderMap) -> Result<Caller, &'static str> {
    let Some(tokens) = &state.tokens else { return Ok(Caller { user: None, operator: true, cluster: false }) };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or("missing token: send `Authorization: Bearer TOKEN`\n")?;
    let token = token.trim().as_bytes();
    // Another runtime of the cluster, acting for the user it names (a guest's object call).
    if let Some(cluster) = &state.platform.config().cluster_token
        && same_secret(token, cluster.expose().as_bytes())
    {
        let user = headers
            .get(crate::ndp::remote::USER_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|u| crate::registry::check_name("user", u).is_ok())
            .ok_or("a cluster request must name the user it acts for in x-ebb-user\n")?;
        return Ok(Caller { user: Some(user.to_string()), operator: false, cluster: true });
    }
    match tokens.entry(token) {
        Some(entry) => Ok(Caller { user: Some(entry.name.clone()), operator: entry.operator, cluster: false }),
        None => Err("unknown token\n"),
    }
}

/// The user a path acts on (`/f/USER/...`, `/s/USER/...`).
fn path_owner(path: &str) -> Option<&str> {
    let mut parts = path.trim_start_matches('/').split('/');
    match (parts.next(), parts.next()) {
        (Some("f" | "s" | "o" | "w"), Some(user)) if !user.is_empty() => Some(user),
        _ => None,
    }
}

fn forbidden(who: &str, owner: &str) -> Response {
    text(StatusCode::FORBIDDEN, format!("user {who} may not act on user {owner}'s resources\n"))
}

/// Checks the token and the path's user before the body is read (a request refused here has sent
/// its headers only).
async fn authenticate(State(s): State<ApiState>, mut req: Request, next: Next) -> Response {
    let who = match caller(&s, req.headers()) {
        Ok(who) => who,
        Err(why) => return text(StatusCode::UNAUTHORIZED, why),
    };
    // An operator sees every user's metrics and calls, but acts only on its own functions and state.
    if let (Some(user), Some(owner)) = (&who.user, path_owner(req.uri().path()))
        && user != owner
    {
        return forbidden(user, owner);
    }
    req.extensions_mut().insert(who);
    next.run(req).await
}

fn call_failure_status(f: &CallFailure) -> StatusCode {
    match f {
        CallFailure::Trap(_) | CallFailure::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        CallFailure::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        CallFailure::MemnodeUnavailable(_) | CallFailure::Refused(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

fn call_error(e: CallError) -> Response {
    let status = match &e {
        CallError::UnknownFunction(_) => StatusCode::NOT_FOUND,
        CallError::BadName(_) => StatusCode::BAD_REQUEST,
        CallError::InputTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        CallError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
        CallError::Failed { failure, .. } => call_failure_status(failure),
    };
    let mut r = text(status, format!("{}\n", chain(&e)));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    r
}

fn upload_error(e: UploadError) -> Response {
    let status = match &e {
        UploadError::BadName(_) | UploadError::Compile(CompileError::Invalid(_) | CompileError::Unsupported(_)) => StatusCode::BAD_REQUEST,
        UploadError::Compile(CompileError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
        UploadError::Compile(CompileError::TooMany { .. } | CompileError::Limit { .. }) => StatusCode::UNPROCESSABLE_ENTITY,
        UploadError::Compile(CompileError::Process { .. }) | UploadError::Store { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    text(status, format!("{}\n", chain(&e)))
}

/// Runs `f` on tokio's blocking pool (routes that touch the platform; never a call).
async fn blocking(f: impl FnOnce() -> Response + Send + 'static) -> Response {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| text(StatusCode::INTERNAL_SERVER_ERROR, format!("the request failed: {e}\n")))
}

/// Runs one command for `who`.
pub async fn execute(state: &ApiState, who: Caller, command: Command) -> Response {
    let platform = state.platform.clone();
    match command {
        Command::Metrics => {
            blocking(move || {
                let body = platform.metrics_text(who.viewer());
                (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
            })
            .await
        }
        Command::Upload { user, function, wasm } => {
            let Ok(_turn) = state.compiles.clone().acquire_owned().await else {
                return text(StatusCode::SERVICE_UNAVAILABLE, "the runtime is shutting down\n");
            };
            blocking(move || match platform.upload(&user, &function, &wasm) {
                Ok(()) => text(StatusCode::OK, format!("uploaded {user}/{function}\n")),
                Err(e) => upload_error(e),
            })
            .await
        }
        Command::Invoke { user, function, input, is_async: true } => match platform.submit(&user, &function, input) {
            Ok(id) => text(StatusCode::OK, id.to_string()),
            Err(e) => call_error(e),
        },
        Command::Invoke { user, function, input, is_async: false } => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if let Err(e) = platform.call_then(&user, &function, input, move |r| {
                let _ = tx.send(r);
            }) {
                return call_error(e);
            }
            match rx.await {
                Ok(Ok(o)) if o.rc == 0 => (StatusCode::OK, o.output).into_response(),
                Ok(Ok(o)) => (StatusCode::INTERNAL_SERVER_ERROR, o.output).into_response(),
                Ok(Err(failure)) => call_error(CallError::Failed { function: format!("{user}/{function}"), failure }),
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "the call was dropped\n"),
            }
        }
        Command::Status { id } => {
            let user = if who.operator { None } else { who.user.clone() };
            match platform.status(user.as_deref(), id) {
                None => text(StatusCode::NOT_FOUND, format!("there is no call {id} of yours\n")),
                Some((_, CallStatus::Running)) => text(StatusCode::OK, "RUNNING"),
                Some((function, CallStatus::Done(o))) if o.rc == 0 => {
                    let body = serde_json::json!({
                        "id": id,
                        "function": function,
                        "returnValue": o.rc,
                        "output_data": String::from_utf8_lossy(&o.output),
                    });
                    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
                }
                Some((_, CallStatus::Done(o))) => {
                    text(StatusCode::INTERNAL_SERVER_ERROR, format!("FAILED: {}", String::from_utf8_lossy(&o.output)))
                }
                Some((_, CallStatus::Failed(f))) => text(call_failure_status(&f), format!("FAILED: {}", chain(&f))),
            }
        }
        Command::Offload { user, function } => {
            blocking(move || match platform.offload(&user, &function) {
                Ok(bytes) => text(StatusCode::OK, format!("{bytes}\n")),
                Err(e) => call_error(e),
            })
            .await
        }
        Command::GetState { user, key } => {
            blocking(move || match platform.state().get(&user, &key) {
                Some(v) => (StatusCode::OK, v).into_response(),
                None => text(StatusCode::NOT_FOUND, format!("state key {key} of user {user} does not exist\n")),
            })
            .await
        }
        Command::SetState { user, key, value } => {
            blocking(move || match platform.state().set(&user, &key, &value) {
                Ok(()) => text(StatusCode::OK, "ok\n"),
                Err(e) => text(StatusCode::PAYLOAD_TOO_LARGE, format!("{e}\n")),
            })
            .await
        }
    }
}

type Who = axum::Extension<Caller>;

async fn upload(State(s): State<ApiState>, who: Who, Path((user, function)): Path<(String, String)>, body: Bytes) -> Response {
    execute(&s, who.0, Command::Upload { user, function, wasm: body }).await
}

async fn invoke_raw(State(s): State<ApiState>, who: Who, Path((user, function)): Path<(String, String)>, body: Bytes) -> Response {
    execute(&s, who.0, Command::Invoke { user, function, input: body.to_vec().into(), is_async: false }).await
}

async fn offload(State(s): State<ApiState>, who: Who, Path((user, function)): Path<(String, String)>) -> Response {
    execute(&s, who.0, Command::Offload { user, function }).await
}

async fn message(State(s): State<ApiState>, who: Who, body: Bytes) -> Response {
    let msg: Message = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("the body is not a Faasm JSON message: {e}\n")),
    };
    if msg.status {
        let Some(id) = msg.id else {
            return text(StatusCode::BAD_REQUEST, "a status request needs \"id\"\n");
        };
        return execute(&s, who.0, Command::Status { id }).await;
    }
    let (Some(user), Some(function)) = (msg.user, msg.function) else {
        return text(StatusCode::BAD_REQUEST, "a call message needs \"user\" and \"function\"\n");
    };
    if let Some(me) = &who.0.user
        && me != &user
    {
        return forbidden(me, &user);
    }
    let input = CallInput { data: msg.input_data.unwrap_or_default().into_bytes(), cmdline: msg.cmdline, forbid_ndp: msg.forbid_ndp, flow: None };
    execute(&s, who.0, Command::Invoke { user, function, input, is_async: msg.is_async }).await
}

async fn get_state(State(s): State<ApiState>, who: Who, Path((user, key)): Path<(String, String)>) -> Response {
    execute(&s, who.0, Command::GetState { user, key }).await
}

async fn set_state(State(s): State<ApiState>, who: Who, Path((user, key)): Path<(String, String)>, body: Bytes) -> Response {
    execute(&s, who.0, Command::SetState { user, key, value: body }).await
}

async fn metrics(State(s): State<ApiState>, who: Who) -> Response {
    execute(&s, who.0, Command::Metrics).await
}

async fn ping() -> Response {
    text(StatusCode::OK, "PONG")
}

/// A workflow file.
const WORKFLOW_FILE: usize = 1 << 20;

/// Bodies of requests that carry none worth the name (offload, metrics, status is JSON).
const SMALL_BODY: usize = 64 << 10;

/// An offloaded call's descriptor: globals and page runs of a memory (a fragmented 4 GiB memory
/// has at most 2^19 runs of ~20 bytes each).
const OFFLOAD_BODY: usize = 16 << 20;

/// The API's routes.
pub fn router(state: ApiState) -> Router {
    let config = state.platform.config();
    // Inputs over the platform's limit get a 413 from the platform with a clear message; the
    // transport limits only bound what a request may make the server buffer. A JSON message
    // carries the input as a string: escapes may take six bytes per input byte.
    let max_input = config.max_input.saturating_add(1);
    let max_message = config.max_input.saturating_mul(6).saturating_add(SMALL_BODY);
    let max_module = config.compile.max_module.saturating_add(1);
    let max_state = config.state.max_value.saturating_add(1);
    // An object's own limit is the store's, counted as it streams in; this only bounds the body.
    let max_object = config.objects.map_or(SMALL_BODY, |l| usize::try_from(l.max_object).unwrap_or(usize::MAX).saturating_add(1));
    let limit = DefaultBodyLimit::max;
    let api = Router::new()
        .route("/f/", post(message.layer(limit(max_message))))
        .route("/f/{user}/{function}", axum::routing::put(upload.layer(limit(max_module))).post(invoke_raw.layer(limit(max_input))))
        .route("/f/{user}/{function}/offload", post(offload.layer(limit(SMALL_BODY))))
        .route("/s/{user}/{key}", get(get_state).put(set_state.layer(limit(max_state))))
        .route("/o/{user}/{key}", get(objects::get).put(objects::put.layer(limit(max_object))).delete(objects::delete))
        .route(crate::ndp::offload::CALL_PATH, post(ndp::call.layer(limit(OFFLOAD_BODY))))
        .route("/w/{user}/{workflow}", get(flow::get).put(flow::put.layer(limit(WORKFLOW_FILE))).post(flow::invoke.layer(limit(max_message))))
        .route("/w/{user}/{workflow}/{id}", get(flow::status))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(SMALL_BODY))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state);
    api.route("/ping", get(ping))
}
