//! `PUT|GET|DELETE /o/{user}/{key}`: a storage node's objects (see [`crate::ndp::objects`]),
//! streamed both ways — a put is written to disk as it arrives, a get read from disk as it is
//! sent — so an object is never held whole in memory. (The caller and its user were checked
//! before the body was read.)

use std::io::Read;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use super::{ApiState, text};
use crate::ndp::ObjectError;
use crate::ndp::ObjectStore;

/// Bytes read from disk per chunk sent.
const CHUNK: usize = 256 << 10;

fn error(e: &ObjectError) -> Response {
    let status = match e {
        ObjectError::BadKey(_) => StatusCode::BAD_REQUEST,
        ObjectError::NotFound { .. } => StatusCode::NOT_FOUND,
        ObjectError::TooLarge { .. } | ObjectError::UserFull { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        ObjectError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if let ObjectError::Io(io) = e {
        tracing::error!("object store: {io}");
    }
    text(status, format!("{}\n", crate::pager::error_chain(e)))
}

fn store(s: &ApiState) -> Result<&ObjectStore, Box<Response>> {
    s.platform.objects().ok_or_else(|| {
        Box::new(text(
            StatusCode::NOT_FOUND,
            "this runtime keeps no objects: objects live on storage nodes (`runtime serve --storage`); \
             send object requests there\n",
        ))
    })
}

pub(super) async fn put(State(s): State<ApiState>, Path((user, key)): Path<(String, String)>, headers: HeaderMap, body: Body) -> Response {
    let store = match store(&s) {
        Ok(store) => store,
        Err(r) => return *r,
    };
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    // Disk writes block: this task's worker hands its other tasks on meanwhile.
    let mut put = match tokio::task::block_in_place(|| store.begin_put(&user, &key, declared)) {
        Ok(put) => put,
        Err(e) => return error(&e),
    };
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk: Bytes = match chunk {
            Ok(c) => c,
            // The client went away or sent more than the route allows: nothing is stored.
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("the object's body did not arrive whole: {e}\n")),
        };
        if let Err(e) = tokio::task::block_in_place(|| put.write(&chunk)) {
            return error(&e);
        }
    }
    match tokio::task::block_in_place(|| put.commit()) {
        Ok(size) => text(StatusCode::OK, format!("{size}\n")),
        Err(e) => error(&e),
    }
}

pub(super) async fn get(State(s): State<ApiState>, Path((user, key)): Path<(String, String)>) -> Response {
    let store = match store(&s) {
        Ok(store) => store,
        Err(r) => return *r,
    };
    let (mut file, len) = match tokio::task::block_in_place(|| store.open_object(&user, &key)) {
        Ok(f) => f,
        Err(e) => return error(&e),
    };
    // A reader thread sends chunks as the client takes them (two in flight at most).
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(2);
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let item = match file.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => Ok(Bytes::copy_from_slice(&buf[..n])),
                Err(e) => Err(e),
            };
            let failed = item.is_err();
            if tx.blocking_send(item).is_err() || failed {
                return;
            }
        }
    });
    let chunks = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    ([(header::CONTENT_LENGTH, len.to_string()), (header::CONTENT_TYPE, "application/octet-stream".into())], Body::from_stream(chunks))
        .into_response()
}

pub(super) async fn delete(State(s): State<ApiState>, Path((user, key)): Path<(String, String)>) -> Response {
    let store = match store(&s) {
        Ok(store) => store,
        Err(r) => return *r,
    };
    match tokio::task::block_in_place(|| store.delete(&user, &key)) {
        Ok(()) => text(StatusCode::OK, "ok\n"),
        Err(e) => error(&e),
    }
}
