//! The platform's two sides of an offloaded call (see `ndp::offload`): sending one (a compute
//! node) and running one on borrowed memory (a storage node).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Holder, Platform};
use crate::exec::{CallContext, Services, Timeout};
use crate::ndp::offload::{self, OffloadError, Reply, Request};
use crate::pager::PagerError;
use crate::registry::FunctionKey;

/// Why a storage node did not run an offloaded call: an HTTP status and the reason.
#[derive(Debug)]
pub struct NotRun(pub u16, pub String);

impl Platform {
    /// The storage node to send `caller`'s storage call over `key` to, or None to run it here.
    pub(super) fn offload_node(&self, caller: &CallContext, key: &str) -> Option<String> {
        if caller.forbid_ndp {
            self.ndp.forbidden.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let Ok(Holder::There(node)) = self.holder(&caller.user, key) else { return None };
        // Memory lent by pages must live where the storage node can reach it.
        if self.pager().transport().kind() == "local" {
            tracing::debug!("not offloading {}: its memory is on the embedded memnode (start with --memnode)", caller.function.name);
            return None;
        }
        Some(node)
    }

    /// Sends an offloaded call, pushing the function's wasm once if the node lacks it.
    pub(super) fn send_offload(&self, caller: &CallContext, node: &str, request: &Request, deadline: Option<Instant>) -> Result<Reply, OffloadError> {
        let cluster = self.config.cluster_token.as_ref();
        let left = || deadline.map_or(self.config.call_timeout, |d| d.saturating_duration_since(Instant::now())).max(Duration::from_millis(1));
        let count = |(to, from): offload::LinkBytes| {
            self.ndp.bytes_to_storage.fetch_add(to, Ordering::Relaxed);
            self.ndp.bytes_from_storage.fetch_add(from, Ordering::Relaxed);
        };
        let (mut result, bytes) = offload::send(node, cluster, request, left());
        count(bytes);
        if let Err(OffloadError::NeedsFunction(why)) = &result {
            tracing::info!("{why}: sending {} to {node}", caller.function.name);
            let key = FunctionKey::new(&request.user, &request.function).map_err(OffloadError::Refused)?;
            let wasm = self.registry.wasm(&key).map_err(|e| OffloadError::Refused(format!("cannot read {key}'s wasm to send it: {e}")))?;
            self.ndp.bytes_to_storage.fetch_add(wasm.len() as u64, Ordering::Relaxed);
            offload::push_function(node, cluster, &request.user, &request.function, &wasm, left()).map_err(OffloadError::Refused)?;
            let (again, bytes) = offload::send(node, cluster, request, left());
            count(bytes);
            result = again;
        }
        let counter = match &result {
            Ok(reply) => {
                self.ndp.pages_returned.fetch_add(reply.changed.iter().map(|r| r[1] as u64).sum(), Ordering::Relaxed);
                &self.ndp.offloaded
            }
            Err(OffloadError::Failed(_)) => &self.ndp.failed,
            Err(_) => &self.ndp.refused,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        // Still lacking the function after sending it: it must run here.
        result.map_err(|e| match e {
            OffloadError::NeedsFunction(why) => OffloadError::Refused(why),
            e => e,
        })
    }

    /// Queues an offloaded call on the call pool as its user's call; its outcome goes to `done`.
    pub fn serve_offload_then(&self, request: Request, done: impl FnOnce(Result<Reply, NotRun>) + Send + 'static) -> Result<(), super::pool::PoolFull> {
        let me = self.me.clone();
        let user = request.user.clone();
        let job = Box::new(move |_deadline| {
            let result = match me.upgrade() {
                Some(platform) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| platform.serve_offload(request)))
                    .unwrap_or_else(|_| Err(NotRun(500, "the offloaded call panicked in the runtime".into()))),
                None => Err(NotRun(503, "the runtime is shutting down".into())),
            };
            done(result);
        });
        self.pool.submit(&user, 0, job)
    }

    /// Runs an offloaded call here, on the caller's memory borrowed through the memnode.
    pub fn serve_offload(&self, request: Request) -> Result<Reply, NotRun> {
        let bad = |why: String| NotRun(400, why);
        if self.objects.is_none() {
            return Err(NotRun(404, "this runtime is not a storage node (--storage): it takes no offloaded calls".into()));
        }
        let _admitted = self.admission.admit().map_err(|why| {
            self.ndp.busy.fetch_add(1, Ordering::Relaxed);
            NotRun(503, format!("busy: {why}"))
        })?;
        self.ndp.accepted.fetch_add(1, Ordering::Relaxed);
        let key = FunctionKey::new(&request.user, &request.function).map_err(bad)?;
        let function = self
            .registry
            .get(&key)
            .filter(|f| f.digest() == request.digest)
            .ok_or_else(|| NotRun(409, format!("this node lacks version {} of {key}", request.digest)))?;
        let lent = request.memory.lent().map_err(bad)?;
        let globals = offload::globals_in(&request.globals).map_err(bad)?;
        if request.args.len() > 2 {
            return Err(bad("at most two arguments".into()));
        }
        let limit = Duration::from_millis(request.timeout_ms).min(self.config.call_timeout);
        let services: Arc<dyn Services> = self.me.upgrade().ok_or_else(|| NotRun(503, "the runtime is shutting down".into()))?;
        let holder = self.next_holder.fetch_add(1, Ordering::Relaxed);
        // Offloaded calls do not offload again.
        let ctx = CallContext { services, user: request.user.clone(), function: function.clone(), call: 0, holder, forbid_ndp: true };
        let result = self.exec.borrowed_instance(&function, ctx, &lent, &globals, limit).map_err(|e| match e.downcast_ref::<PagerError>() {
            Some(PagerError::Transport(t)) if t.is_refusal() => NotRun(403, format!("the lent memory cannot be read from here: {t}")),
            _ => NotRun(500, format!("cannot make an instance on the lent memory: {e:#}")),
        });
        let outcome = result.and_then(|mut instance| {
            instance.call_lent(request.index, &request.args).map_err(|e| {
                let status = if e.downcast_ref::<Timeout>().is_some() { 504 } else { 500 };
                NotRun(status, format!("{e:#}"))
            })
        });
        self.state.release_all(holder);
        let outcome = outcome?;
        Ok(Reply {
            rc: outcome.rc,
            output: outcome.output,
            globals: offload::globals_out(&outcome.globals).map_err(|e| NotRun(500, e))?,
            size: outcome.size,
            changed: offload::page_runs(&outcome.changed),
        })
    }
}
