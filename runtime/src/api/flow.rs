//! Workflow routes:
//!
//! ```text
//!   PUT  /w/{user}/{workflow}        DataFlower's workflow_info.yaml  → 200 | 400 line and reason
//!   GET  /w/{user}/{workflow}        the parsed DAG (JSON)
//!   POST /w/{user}/{workflow}        JSON object of the global inputs ("async": true for an id)
//!                                    → 200 {"result": {...}, "blocks": [...]} | 500 FAILED | 504
//!   GET  /w/{user}/{workflow}/{id}   an async call: RUNNING, or its result as above
//! ```
//! A global input given as a JSON string is passed as its text; any other JSON value as its JSON.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{ApiState, Who, blocking, text};
use crate::flow::run::{StartError, json_value};
use crate::flow::{Outcome, Run};

fn names(user: &str, workflow: &str) -> Result<(), Box<Response>> {
    crate::registry::check_name("user", user)
        .and_then(|()| crate::registry::check_name("workflow", workflow))
        .map_err(|e| Box::new(text(StatusCode::BAD_REQUEST, format!("{e}\n"))))
}

pub(super) async fn put(State(s): State<ApiState>, _who: Who, Path((user, workflow)): Path<(String, String)>, body: Bytes) -> Response {
    if let Err(r) = names(&user, &workflow) {
        return *r;
    }
    let Ok(yaml) = String::from_utf8(body.to_vec()) else {
        return text(StatusCode::BAD_REQUEST, "a workflow file is UTF-8 text\n");
    };
    let platform = s.platform.clone();
    blocking(move || match platform.workflows().put(&user, &workflow, &yaml, |f| platform.has_function(&user, f)) {
        Ok(w) => text(StatusCode::OK, format!("uploaded workflow {user}/{workflow} ({} blocks)\n", w.blocks.len())),
        Err(crate::flow::store::PutError::Spec(e)) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    })
    .await
}

pub(super) async fn get(State(s): State<ApiState>, _who: Who, Path((user, workflow)): Path<(String, String)>) -> Response {
    if let Err(r) = names(&user, &workflow) {
        return *r;
    }
    let platform = s.platform.clone();
    blocking(move || match platform.workflows().get(&user, &workflow) {
        Some(w) => json(StatusCode::OK, &serde_json::to_value(&*w).unwrap_or_default()),
        None => not_found(&user, &workflow),
    })
    .await
}

fn not_found(user: &str, workflow: &str) -> Response {
    text(StatusCode::NOT_FOUND, format!("there is no workflow {user}/{workflow}: upload it with PUT /w/{user}/{workflow}\n"))
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

pub(super) async fn invoke(State(s): State<ApiState>, _who: Who, Path((user, workflow)): Path<(String, String)>, body: Bytes) -> Response {
    if let Err(r) = names(&user, &workflow) {
        return *r;
    }
    let object: serde_json::Map<String, serde_json::Value> = match serde_json::from_slice(&body) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => return text(StatusCode::BAD_REQUEST, "the body must be a JSON object of the workflow's global inputs\n"),
    };
    let is_async = object.get("async").and_then(serde_json::Value::as_bool).unwrap_or(false);
    let inputs: BTreeMap<String, Vec<u8>> = object
        .into_iter()
        .filter(|(k, _)| k != "async")
        .map(|(k, v)| {
            let bytes = match v {
                serde_json::Value::String(s) => s.into_bytes(),
                other => other.to_string().into_bytes(),
            };
            (k, bytes)
        })
        .collect();
    let platform = s.platform.clone();
    let started = tokio::task::spawn_blocking(move || {
        let Some(w) = platform.workflows().get(&user, &workflow) else { return Err(Box::new(not_found(&user, &workflow))) };
        let timeout = platform.config().workflow_timeout;
        let run = match Run::start(platform.clone(), w, &user, &inputs, timeout) {
            Ok(r) => r,
            Err(e @ StartError::MissingInput(_)) => return Err(Box::new(text(StatusCode::BAD_REQUEST, format!("{e}\n")))),
            Err(e @ StartError::TooLarge { .. }) => return Err(Box::new(text(StatusCode::PAYLOAD_TOO_LARGE, format!("{e}\n")))),
        };
        if is_async {
            return Err(Box::new(text(StatusCode::OK, platform.workflows().keep(&user, run).to_string())));
        }
        Ok(run)
    })
    .await;
    // A synchronous call waits for its outcome without holding a thread.
    match started {
        Ok(Ok(run)) => {
            let outcome = run.ended().await;
            respond(&run, &outcome)
        }
        Ok(Err(answer)) => *answer,
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("the request failed: {e}\n")),
    }
}

pub(super) async fn status(State(s): State<ApiState>, who: Who, Path((user, workflow, id)): Path<(String, String, u32)>) -> Response {
    let viewer = if who.0.operator { None } else { Some(user.clone()) };
    let platform = s.platform.clone();
    blocking(move || match platform.workflows().run(viewer.as_deref(), id).filter(|r| r.workflow().name == workflow) {
        None => text(StatusCode::NOT_FOUND, format!("there is no call {id} of workflow {user}/{workflow} of yours\n")),
        Some(run) => match run.outcome() {
            None => text(StatusCode::OK, "RUNNING"),
            Some(o) => respond(&run, &o),
        },
    })
    .await
}

fn respond(run: &Run, outcome: &Outcome) -> Response {
    let blocks = serde_json::to_value(run.timings()).unwrap_or_default();
    match outcome {
        Outcome::Done(result) => {
            let result: serde_json::Map<String, serde_json::Value> = result.iter().map(|(k, v)| (k.clone(), json_value(v))).collect();
            json(StatusCode::OK, &serde_json::json!({ "workflow": run.workflow().name, "result": result, "blocks": blocks }))
        }
        Outcome::Failed(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("FAILED: {e}\n")),
        Outcome::Timeout => text(StatusCode::GATEWAY_TIMEOUT, "FAILED: the workflow ran past its time limit\n"),
    }
}
