//! The Faasm-compatible HTTP API. Every route parses its request into one [`Command`], checks
//! who is asking, and [`execute`] runs it on the [`Platform`] (on a blocking thread: calls run
//! guest code).
//!
//! ```text
//!   PUT  /f/{user}/{function}          upload (wasm body)           → 200 | 400 compile error
//!   POST /f/                           Faasm JSON message           → output | call id | status
//!   POST /f/{user}/{function}          raw body is the input, sync  → output (200 rc 0, else 500)
//!   POST /f/{user}/{function}/offload  evict idle instances         → bytes moved
//!   PUT|GET /s/{user}/{key}            state
//!   GET  /metrics  /ping
//! ```

pub mod client;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use serde::Deserialize;

use crate::platform::{CallError, CallStatus, Platform};
use crate::registry::{Tokens, UploadError};

/// A Faasm call message (`POST /f/`). Unknown Faasm fields are accepted and ignored.
#[derive(Debug, Deserialize, Default)]
pub struct Message {
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub function: Option<String>,
    #[serde(default)]
    pub input_data: Option<String>,
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
    Invoke { user: String, function: String, input: Vec<u8>, is_async: bool },
    Status { id: u32 },
    Offload { user: String, function: String },
    GetState { user: String, key: String },
    SetState { user: String, key: String, value: Bytes },
    Metrics,
    Ping,
}

impl Command {
    /// The user whose resources the command touches, if any.
    fn owner(&self) -> Option<&str> {
        match self {
            Command::Upload { user, .. }
            | Command::Invoke { user, .. }
            | Command::Offload { user, .. }
            | Command::GetState { user, .. }
            | Command::SetState { user, .. } => Some(user),
            Command::Status { .. } | Command::Metrics | Command::Ping => None,
        }
    }
}

/// What the API server shares between requests.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub platform: Arc<Platform>,
    pub tokens: Option<Arc<Tokens>>,
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body.into()).into_response()
}

/// Who is asking: `Ok(None)` when the server runs without tokens; `Err` is why not (a 401).
fn caller(state: &ApiState, headers: &HeaderMap) -> Result<Option<String>, &'static str> {
    let Some(tokens) = &state.tokens else { return Ok(None) };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or("missing token: send `Authorization: Bearer TOKEN`\n")?;
    match tokens.name(token.trim()) {
        Some(user) => Ok(Some(user.to_string())),
        None => Err("unknown token\n"),
    }
}

async fn run(state: ApiState, headers: HeaderMap, command: Command) -> Response {
    let who = match caller(&state, &headers) {
        Ok(who) => who,
        Err(why) => return text(StatusCode::UNAUTHORIZED, why),
    };
    if let (Some(who), Some(owner)) = (&who, command.owner())
        && who != owner
    {
        return text(StatusCode::FORBIDDEN, format!("user {who} may not act on user {owner}'s resources\n"));
    }
    let platform = state.platform.clone();
    match tokio::task::spawn_blocking(move || execute(&platform, who.as_deref(), command)).await {
        Ok(r) => r,
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("the request failed: {e}\n")),
    }
}

fn call_error(e: CallError) -> Response {
    let status = match e {
        CallError::UnknownFunction(_) => StatusCode::NOT_FOUND,
        CallError::BadName(_) => StatusCode::BAD_REQUEST,
        CallError::InputTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        CallError::Failed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    text(status, format!("{e}\n"))
}

/// Runs one command. Blocking: calls run guest code on this thread.
pub fn execute(platform: &Platform, who: Option<&str>, command: Command) -> Response {
    match command {
        Command::Ping => text(StatusCode::OK, "PONG"),
        Command::Metrics => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            platform.metrics_text(),
        )
            .into_response(),
        Command::Upload { user, function, wasm } => match platform.upload(&user, &function, &wasm) {
            Ok(()) => text(StatusCode::OK, format!("uploaded {user}/{function}\n")),
            Err(e @ (UploadError::Compile(_) | UploadError::BadName(_))) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")),
        },
        Command::Invoke { user, function, input, is_async } => {
            if input.len() > platform.config().max_input {
                return call_error(CallError::InputTooLarge { size: input.len(), limit: platform.config().max_input });
            }
            if is_async {
                return text(StatusCode::OK, platform.submit(&user, &function, input).to_string());
            }
            match platform.invoke(&user, &function, &input) {
                Ok(o) if o.rc == 0 => (StatusCode::OK, o.output).into_response(),
                Ok(o) => (StatusCode::INTERNAL_SERVER_ERROR, o.output).into_response(),
                Err(e) => call_error(e),
            }
        }
        Command::Status { id } => match platform.status(who, id) {
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
            Some((_, CallStatus::Failed(why))) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("FAILED: {why}")),
        },
        Command::Offload { user, function } => match platform.offload(&user, &function) {
            Ok(bytes) => text(StatusCode::OK, format!("{bytes}\n")),
            Err(e) => call_error(e),
        },
        Command::GetState { user, key } => match platform.state().get(&user, &key) {
            Some(v) => (StatusCode::OK, v).into_response(),
            None => text(StatusCode::NOT_FOUND, format!("state key {key} of user {user} does not exist\n")),
        },
        Command::SetState { user, key, value } => {
            platform.state().set(&user, &key, &value);
            text(StatusCode::OK, "ok\n")
        }
    }
}

async fn upload(State(s): State<ApiState>, headers: HeaderMap, Path((user, function)): Path<(String, String)>, body: Bytes) -> Response {
    run(s, headers, Command::Upload { user, function, wasm: body }).await
}

async fn invoke_raw(State(s): State<ApiState>, headers: HeaderMap, Path((user, function)): Path<(String, String)>, body: Bytes) -> Response {
    run(s, headers, Command::Invoke { user, function, input: body.to_vec(), is_async: false }).await
}

async fn offload(State(s): State<ApiState>, headers: HeaderMap, Path((user, function)): Path<(String, String)>) -> Response {
    run(s, headers, Command::Offload { user, function }).await
}

async fn message(State(s): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    let msg: Message = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("the body is not a Faasm JSON message: {e}\n")),
    };
    if msg.status {
        let Some(id) = msg.id else {
            return text(StatusCode::BAD_REQUEST, "a status request needs \"id\"\n");
        };
        return run(s, headers, Command::Status { id }).await;
    }
    let (Some(user), Some(function)) = (msg.user, msg.function) else {
        return text(StatusCode::BAD_REQUEST, "a call message needs \"user\" and \"function\"\n");
    };
    let input = msg.input_data.unwrap_or_default().into_bytes();
    run(s, headers, Command::Invoke { user, function, input, is_async: msg.is_async }).await
}

async fn get_state(State(s): State<ApiState>, headers: HeaderMap, Path((user, key)): Path<(String, String)>) -> Response {
    run(s, headers, Command::GetState { user, key }).await
}

async fn set_state(State(s): State<ApiState>, headers: HeaderMap, Path((user, key)): Path<(String, String)>, body: Bytes) -> Response {
    run(s, headers, Command::SetState { user, key, value: body }).await
}

async fn metrics(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    run(s, headers, Command::Metrics).await
}

async fn ping() -> Response {
    text(StatusCode::OK, "PONG")
}

/// The API's routes.
pub fn router(state: ApiState) -> Router {
    // Inputs over the platform's limit get a 413 from the platform with a clear message; the
    // transport limit only bounds what a request may make the server buffer.
    let limit = state.platform.config().max_input.max(256 << 20) + (1 << 20);
    Router::new()
        .route("/f/", post(message))
        .route("/f/{user}/{function}", put(upload).post(invoke_raw))
        .route("/f/{user}/{function}/offload", post(offload))
        .route("/s/{user}/{key}", get(get_state).put(set_state))
        .route("/metrics", get(metrics))
        .route("/ping", get(ping))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}
