//! `PUT|GET|DELETE /o/{user}/{key}`: a storage node's objects (see [`crate::ndp::objects`]),
//! streamed both ways — a put is written to disk as it arrives, a get read from disk as it is
//! sent — so an object is never held whole in memory. (The caller and its user were checked
//! before the body was read.)
//!
//! With `--storage-nodes`, a request for an object another node holds ([`crate::ndp::placement`])
//! is forwarded there, streamed, with the caller's token; the reply comes back as it is. A
//! forwarded request is marked and never forwarded again (so a node listed under another URL than
//! its `--advertise` cannot loop).

use std::io::Read;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use super::{ApiState, text};
use crate::ndp::ObjectError;
use crate::ndp::ObjectStore;

/// Bytes read from disk per chunk sent.
const CHUNK: usize = 256 << 10;

use crate::ndp::remote::{FORWARDED_HEADER as FORWARDED, object_path};

/// Where a request for an object is served.
enum Route<'a> {
    Here(&'a ObjectStore),
    /// Forwarded to this storage node.
    There(String),
}

fn route<'a>(s: &'a ApiState, headers: &HeaderMap, user: &str, key: &str) -> Result<Route<'a>, Box<Response>> {
    let config = s.platform.config();
    let nodes = &config.storage_nodes;
    if nodes.is_empty() || headers.contains_key(FORWARDED) {
        return store(s).map(Route::Here);
    }
    let node = &nodes[crate::ndp::node_for(nodes, user, key).expect("nodes listed")];
    if config.advertise.as_ref() == Some(node) {
        return store(s).map(Route::Here);
    }
    Ok(Route::There(node.clone()))
}

/// A body sent as `reader` gives it, read on a blocking thread (two chunks in flight at most).
fn body_from_reader(mut reader: impl Read + Send + 'static) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(2);
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let item = match reader.read(&mut buf) {
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
    Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }))
}

/// An async body as a blocking reader (for the forwarding client): a task pumps its chunks.
struct BodyReader {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, String>>,
    chunk: Bytes,
}

impl BodyReader {
    fn new(body: Body) -> BodyReader {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            let mut stream = body.into_data_stream();
            while let Some(chunk) = stream.next().await {
                let end = chunk.is_err();
                if tx.send(chunk.map_err(|e| e.to_string())).await.is_err() || end {
                    return;
                }
            }
        });
        BodyReader { rx, chunk: Bytes::new() }
    }
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(c)) => self.chunk = c,
                Some(Err(e)) => return Err(std::io::Error::other(format!("the object's body did not arrive whole: {e}"))),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

/// Sends the request to storage node `node` and streams its reply back.
async fn forward(node: String, method: &'static str, path: String, headers: &HeaderMap, body: Option<Body>) -> Response {
    let auth = headers.get(header::AUTHORIZATION).cloned();
    let length = headers.get(header::CONTENT_LENGTH).cloned();
    let reader = body.map(BodyReader::new);
    let url = format!("{}{path}", node.trim_end_matches('/'));
    let sent = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .build()
            .into();
        fn marked<B>(r: ureq::RequestBuilder<B>, auth: Option<&header::HeaderValue>) -> ureq::RequestBuilder<B> {
            let r = r.header(FORWARDED, "1");
            match auth {
                Some(a) => r.header(header::AUTHORIZATION, a),
                None => r,
            }
        }
        let with = |r| marked(r, auth.as_ref());
        match (method, reader) {
            ("PUT", Some(reader)) => {
                let mut r = with(agent.put(&url));
                if let Some(l) = &length {
                    r = r.header(header::CONTENT_LENGTH, l);
                }
                r.send(ureq::SendBody::from_owned_reader(reader))
            }
            ("DELETE", _) => marked(agent.delete(&url), auth.as_ref()).call(),
            _ => marked(agent.get(&url), auth.as_ref()).call(),
        }
    })
    .await;
    let reply = match sent {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => {
            return text(StatusCode::SERVICE_UNAVAILABLE, format!("storage node {node}, which holds this object, did not answer: {e}\n"));
        }
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("forwarding to storage node {node} failed: {e}\n")),
    };
    let status = reply.status();
    let mut out = Response::builder().status(status.as_u16());
    for name in [header::CONTENT_LENGTH, header::CONTENT_TYPE] {
        if let Some(v) = reply.headers().get(&name) {
            out = out.header(name, v.as_bytes());
        }
    }
    out.body(body_from_reader(reply.into_body().into_reader()))
        .unwrap_or_else(|e| text(StatusCode::INTERNAL_SERVER_ERROR, format!("bad reply from storage node {node}: {e}\n")))
}

fn error(e: &ObjectError) -> Response {
    let status = match e {
        ObjectError::BadKey(_) => StatusCode::BAD_REQUEST,
        ObjectError::NotFound { .. } | ObjectError::NotHere(_) => StatusCode::NOT_FOUND,
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
    let store = match route(&s, &headers, &user, &key) {
        Ok(Route::Here(store)) => store,
        Ok(Route::There(node)) => return forward(node, "PUT", object_path(&user, &key), &headers, Some(body)).await,
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

/// A part of an object: `?offset=N&length=M` (both optional: from the start, to the end).
#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct Part {
    offset: Option<u64>,
    length: Option<u64>,
}

pub(super) async fn get(
    State(s): State<ApiState>,
    Path((user, key)): Path<(String, String)>,
    Query(part): Query<Part>,
    headers: HeaderMap,
) -> Response {
    let store = match route(&s, &headers, &user, &key) {
        Ok(Route::Here(store)) => store,
        Ok(Route::There(node)) => {
            let mut path = object_path(&user, &key);
            if part.offset.is_some() || part.length.is_some() {
                path += &format!("?offset={}&length={}", part.offset.unwrap_or(0), part.length.unwrap_or(u64::MAX));
            }
            return forward(node, "GET", path, &headers, None).await;
        }
        Err(r) => return *r,
    };
    let opened = tokio::task::block_in_place(|| -> Result<_, ObjectError> {
        let (mut file, size) = store.open_object(&user, &key)?;
        let offset = part.offset.unwrap_or(0).min(size);
        let len = part.length.unwrap_or(u64::MAX).min(size - offset);
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(offset))?;
        Ok((file.take(len), len))
    });
    let (part, len) = match opened {
        Ok(p) => p,
        Err(e) => return error(&e),
    };
    ([(header::CONTENT_LENGTH, len.to_string()), (header::CONTENT_TYPE, "application/octet-stream".into())], body_from_reader(part))
        .into_response()
}

pub(super) async fn delete(State(s): State<ApiState>, Path((user, key)): Path<(String, String)>, headers: HeaderMap) -> Response {
    let store = match route(&s, &headers, &user, &key) {
        Ok(Route::Here(store)) => store,
        Ok(Route::There(node)) => return forward(node, "DELETE", object_path(&user, &key), &headers, None).await,
        Err(r) => return *r,
    };
    match tokio::task::block_in_place(|| store.delete(&user, &key)) {
        Ok(()) => text(StatusCode::OK, "ok\n"),
        Err(e) => error(&e),
    }
}
