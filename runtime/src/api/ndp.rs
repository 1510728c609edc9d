//! `POST /ndp/call`: an offloaded call from another runtime of the cluster (see `ndp::offload`).
//! Only the cluster may send one (the cluster secret naming the user); it runs on the call pool
//! as that user's call, and the reply is JSON.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{ApiState, Who, forbidden, text};
use crate::ndp::offload::Request;
use crate::platform::NotRun;

pub async fn call(State(s): State<ApiState>, who: Who, body: Bytes) -> Response {
    if s.tokens.is_some() && !who.0.cluster {
        return text(StatusCode::FORBIDDEN, "only another runtime of the cluster (with the cluster secret) may send offloaded calls\n");
    }
    let request: Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("the body is not an offloaded call: {e}\n")),
    };
    if let Some(me) = &who.0.user
        && me != &request.user
    {
        return forbidden(me, &request.user);
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    if let Err(full) = s.platform.serve_offload_then(request, move |r| {
        let _ = tx.send(r);
    }) {
        return text(StatusCode::SERVICE_UNAVAILABLE, format!("busy: {full}\n"));
    }
    match rx.await {
        Ok(Ok(reply)) => match serde_json::to_vec(&reply) {
            Ok(body) => (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the reply: {e}\n")),
        },
        Ok(Err(NotRun(status, why))) => text(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), format!("{why}\n")),
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "the offloaded call was dropped\n"),
    }
}
