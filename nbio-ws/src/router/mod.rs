//! The method table and dispatch: extractors, handlers, and the
//! compile-time registry that `#[rpc_method]` feeds.
//!
//! A handler is any function whose arguments are *extractors* — types that
//! implement [`FromRequest`] — and whose return value is either
//! `Result<T, E>` (with `T: Serialize` and `E: Into<RpcError>`) or, for
//! functions annotated with [`rpc_method`](crate::rpc_method), any
//! `T: Serialize`. The built-in extractors are [`Params<T>`], [`Client`],
//! [`Hub`] and [`State<T>`]; implement [`FromRequest`] for your own.
//!
//! Methods reach the router in two ways, and [`ServerBuilder::build`]
//! refuses a name registered twice:
//!
//! * `#[rpc_method("name")]` on a free function submits it to a registry
//!   (through the `inventory` crate) at link time; every annotated function
//!   linked into the binary is picked up, whatever crate it is in.
//! * [`ServerBuilder::method`] registers a function or closure explicitly.
//!
//! [`ServerBuilder::build`]: crate::ServerBuilder::build
//! [`ServerBuilder::method`]: crate::ServerBuilder::method

mod handler;
mod inflight;

#[doc(hidden)]
pub use handler::__private;
pub use handler::{
    registered_methods, FromRequest, Handler, MethodDef, Params, RequestContext, State,
};
pub(crate) use handler::{BoxFuture, ErasedHandler, HandlerResult, StateMap};
pub(crate) use inflight::InFlight;

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use tokio::sync::OwnedSemaphorePermit;

use crate::hub::{Client, Hub};
use crate::jsonrpc::{self, Id, Message, Parsed, RpcError};
use crate::metrics::{MethodMetrics, Metrics};

struct Route {
    handler: ErasedHandler,
    metrics: Arc<MethodMetrics>,
}

/// What the router bounds in every message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestLimits {
    /// Most elements in a batch; a larger one is refused whole.
    pub max_batch: usize,
    /// Most bytes of results in the reply to one message (all the
    /// elements of a batch together).
    pub max_response_size: usize,
    /// A handler running longer is cancelled and answered with -32008.
    pub request_timeout: Option<Duration>,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_batch: 100,
            max_response_size: 4 << 20,
            request_timeout: None,
        }
    }
}

/// The method table of a server.
pub(crate) struct Router {
    routes: HashMap<Box<str>, Route>,
    state: Arc<StateMap>,
    metrics: Arc<Metrics>,
    limits: RequestLimits,
}

/// One unit of work produced from a message.
enum Job {
    Call {
        id: Option<Id>,
        handler: ErasedHandler,
        ctx: RequestContext,
        metrics: Arc<MethodMetrics>,
    },
    Error(Option<Id>, RpcError),
}

/// What a message asks for, once parsed and admitted.
enum Work {
    One(Job),
    Many(Vec<Job>),
    Fail(RpcError),
}

/// The encoded answer to one request, `None` for a notification.
type Reply = Option<Bytes>;

type ReplyFuture = BoxFuture<Reply>;

/// One element of a batch on its way.
enum Slot {
    Done(Reply),
    /// Started, waiting for something, holding its permit.
    Running(ReplyFuture, OwnedSemaphorePermit),
    /// Not started: no permit was free.
    Waiting(Job),
}

impl Router {
    pub(crate) fn new(
        methods: Vec<(String, ErasedHandler)>,
        state: StateMap,
        metrics: Arc<Metrics>,
        limits: RequestLimits,
    ) -> Self {
        let routes = methods
            .into_iter()
            .map(|(name, handler)| {
                let m = metrics.method(&name);
                (
                    name.into_boxed_str(),
                    Route {
                        handler,
                        metrics: m,
                    },
                )
            })
            .collect();
        Router {
            routes,
            state: Arc::new(state),
            metrics,
            limits,
        }
    }

    /// The names of the registered methods, sorted.
    pub(crate) fn method_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.routes.keys().map(|k| &**k).collect();
        names.sort_unstable();
        names
    }

    fn job(&self, parsed: Parsed<'_>, client: &Client, hub: &Hub) -> Job {
        match parsed {
            Parsed::Invalid(id, e) => Job::Error(Some(id), e),
            Parsed::Request(req) => match self.routes.get(&*req.method) {
                None => Job::Error(req.id, RpcError::method_not_found(&req.method)),
                Some(route) => Job::Call {
                    id: req.id,
                    handler: Arc::clone(&route.handler),
                    ctx: RequestContext {
                        client: client.clone(),
                        hub: hub.clone(),
                        state: Arc::clone(&self.state),
                        params: req.params.map(ToOwned::to_owned),
                        method: route.metrics.name.clone(),
                    },
                    metrics: Arc::clone(&route.metrics),
                },
            },
        }
    }

    /// A request refused by `admit` (the rate limiter) is answered with
    /// the error it returns instead of running.
    fn admitted_job(
        &self,
        parsed: Parsed<'_>,
        client: &Client,
        hub: &Hub,
        admit: &mut dyn FnMut() -> Option<RpcError>,
    ) -> Job {
        match admit() {
            None => self.job(parsed, client, hub),
            Some(e) => {
                let id = match parsed {
                    Parsed::Invalid(id, _) => Some(id),
                    Parsed::Request(req) => req.id,
                };
                Job::Error(id, e)
            }
        }
    }

    /// Parses a message and asks `admit` before each request (each element
    /// of a batch, before any of them runs; a message that is refused
    /// whole counts as one).
    fn work(
        &self,
        text: &str,
        client: &Client,
        hub: &Hub,
        admit: &mut dyn FnMut() -> Option<RpcError>,
    ) -> Work {
        match jsonrpc::parse_limited(text, self.limits.max_batch) {
            Message::Single(p) => Work::One(self.admitted_job(p, client, hub, admit)),
            Message::Batch(items) => Work::Many(
                items
                    .into_iter()
                    .map(|p| self.admitted_job(p, client, hub, admit))
                    .collect(),
            ),
            Message::Error(e) => Work::Fail(admit().unwrap_or(e)),
        }
    }

    /// The answer to a message refused whole.
    fn fail(&self, e: &RpcError) -> Bytes {
        self.metrics.error(e.kind());
        jsonrpc::encode_error(&Id::null(), e)
    }

    /// Parses a text message and returns the future that runs it and yields
    /// the response to send, if any.
    ///
    /// The returned future owns everything it needs, so the caller can run
    /// it inline or spawn it.
    #[cfg(feature = "internal-hooks")]
    pub(crate) fn dispatch(
        &self,
        text: &str,
        client: &Client,
        hub: &Hub,
    ) -> (usize, impl Future<Output = Option<Bytes>> + Send + 'static) {
        self.dispatch_with(text, client, hub, &mut || None)
    }

    /// Like [`Router::dispatch`], asking `admit` before each request (each
    /// element of a batch, and an unparsable message counts as one). The
    /// elements of a batch all run at once: there is no connection here to
    /// bound them.
    #[cfg(feature = "internal-hooks")]
    pub(crate) fn dispatch_with(
        &self,
        text: &str,
        client: &Client,
        hub: &Hub,
        admit: &mut dyn FnMut() -> Option<RpcError>,
    ) -> (usize, impl Future<Output = Option<Bytes>> + Send + 'static) {
        let work = self.work(text, client, hub, admit);
        let count = match &work {
            Work::One(_) | Work::Fail(_) => 1,
            Work::Many(jobs) => jobs.len(),
        };
        let failed = match &work {
            Work::Fail(e) => Some(self.fail(e)),
            _ => None,
        };
        let (metrics, limits) = (Arc::clone(&self.metrics), self.limits);
        let fut = async move {
            match work {
                Work::Fail(_) => failed,
                Work::One(job) => run_job(job, metrics, limits, None).await,
                Work::Many(jobs) => {
                    let budget = Arc::new(AtomicUsize::new(limits.max_response_size));
                    let replies = futures_util::future::join_all(jobs.into_iter().map(|j| {
                        run_job(j, Arc::clone(&metrics), limits, Some(Arc::clone(&budget)))
                    }))
                    .await;
                    encode_replies(replies)
                }
            }
        };
        (count, fut)
    }

    /// Runs one whole message of a connection: `Some(text)` for a text
    /// message, `None` for a binary one (refused with -32600). `admit` is
    /// asked before each request (each element of a batch, all before any
    /// runs; a message refused whole counts as one) and answers those it
    /// refuses.
    ///
    /// Never waits. Each request is polled once here, holding one of
    /// `inflight`'s permits; most handlers finish at once and are answered
    /// at once. One that waits goes on in a task of `inflight`, keeping its
    /// permit until it ends. The elements of a batch that find no permit
    /// free wait for one in that task before they start. Replies go to the
    /// client's queue.
    pub(crate) fn on_message(
        &self,
        text: Option<&str>,
        client: &Client,
        hub: &Hub,
        inflight: &mut InFlight,
        admit: &mut (dyn FnMut() -> Option<RpcError> + Send),
    ) {
        let Some(text) = text else {
            let e = admit().unwrap_or_else(|| {
                RpcError::invalid_request(
                    "binary frames are not accepted: send JSON-RPC in text frames",
                )
            });
            let _ = client.send_text(self.fail(&e));
            return;
        };
        match self.work(text, client, hub, admit) {
            Work::Fail(e) => {
                let _ = client.send_text(self.fail(&e));
            }
            Work::One(job) => self.run_one(job, client, inflight),
            Work::Many(jobs) => self.run_batch(jobs, client, inflight),
        }
    }

    fn run_one(&self, job: Job, client: &Client, inflight: &mut InFlight) {
        let mut fut = Box::pin(run_job(job, Arc::clone(&self.metrics), self.limits, None));
        match poll_once(&mut fut) {
            Poll::Ready(reply) => send(client, reply),
            Poll::Pending => {
                // The connection only hands over a message while a permit
                // is free, and nothing else takes one meanwhile.
                let permit = inflight.try_permit();
                let client = client.clone();
                inflight.spawn(async move {
                    let reply = fut.await;
                    drop(permit);
                    send(&client, reply);
                });
            }
        }
    }

    fn run_batch(&self, jobs: Vec<Job>, client: &Client, inflight: &mut InFlight) {
        let limits = self.limits;
        let budget = Arc::new(AtomicUsize::new(limits.max_response_size));
        let mut waiting = false;
        let slots: Vec<Slot> = jobs
            .into_iter()
            .map(|job| {
                if matches!(job, Job::Error(..)) {
                    return Slot::Done(finish(job, &self.metrics));
                }
                let Some(permit) = inflight.try_permit() else {
                    waiting = true;
                    return Slot::Waiting(job);
                };
                let mut fut: ReplyFuture = Box::pin(run_job(
                    job,
                    Arc::clone(&self.metrics),
                    limits,
                    Some(Arc::clone(&budget)),
                ));
                match poll_once(&mut fut) {
                    Poll::Ready(reply) => Slot::Done(reply),
                    Poll::Pending => {
                        waiting = true;
                        Slot::Running(fut, permit)
                    }
                }
            })
            .collect();
        if !waiting {
            let replies = slots.into_iter().map(|s| match s {
                Slot::Done(r) => r,
                Slot::Running(..) | Slot::Waiting(_) => None,
            });
            send(client, encode_replies(replies));
            return;
        }
        let (client, metrics, permits) = (
            client.clone(),
            Arc::clone(&self.metrics),
            inflight.permits(),
        );
        inflight.spawn(async move {
            let replies = futures_util::future::join_all(slots.into_iter().map(|slot| {
                let (metrics, permits, budget) = (
                    Arc::clone(&metrics),
                    Arc::clone(&permits),
                    Arc::clone(&budget),
                );
                async move {
                    match slot {
                        Slot::Done(reply) => reply,
                        Slot::Running(fut, permit) => {
                            let reply = fut.await;
                            drop(permit);
                            reply
                        }
                        Slot::Waiting(job) => {
                            let permit = permits.acquire_owned().await.ok()?;
                            let reply = run_job(job, metrics, limits, Some(budget)).await;
                            drop(permit);
                            reply
                        }
                    }
                }
            }))
            .await;
            send(&client, encode_replies(replies));
        });
    }
}

/// Polls a future once, without a waker: for the handlers that finish
/// without waiting, which is most of them.
fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
    std::pin::Pin::new(fut).poll(&mut cx)
}

fn send(client: &Client, bytes: Option<Bytes>) {
    if let Some(bytes) = bytes {
        let _ = client.send_text(bytes);
    }
}

/// Joins the replies of a batch into one array; `None` when every element
/// was a notification.
fn encode_replies(replies: impl IntoIterator<Item = Reply>) -> Option<Bytes> {
    let parts: Vec<Bytes> = replies.into_iter().flatten().collect();
    (!parts.is_empty()).then(|| jsonrpc::encode_batch(&parts))
}

/// Runs one request: the handler (panics caught, cancelled past the request
/// timeout), then its reply, bounded in size.
///
/// `budget` is what is left of the batch's response bound; `None` for a
/// single request, bounded alone.
async fn run_job(
    job: Job,
    metrics: Arc<Metrics>,
    limits: RequestLimits,
    budget: Option<Arc<AtomicUsize>>,
) -> Reply {
    let Job::Call {
        id,
        handler,
        ctx,
        metrics: m,
    } = job
    else {
        return finish(job, &metrics);
    };
    let started = Instant::now();
    let run = AssertUnwindSafe(async move { handler(ctx).await }).catch_unwind();
    let outcome = match limits.request_timeout {
        None => run.await,
        // Boxed: a timer in this future would make every request's future
        // (allocated per request) larger, timeouts or not.
        Some(t) => match Box::pin(tokio::time::timeout(t, run)).await {
            Ok(outcome) => outcome,
            Err(_) => {
                metrics.incr("request_timeouts");
                tracing::debug!(method = %m.name, timeout = ?t, "request timed out: handler cancelled");
                Ok(Err(RpcError::request_timeout(t)))
            }
        },
    };
    let result = match outcome {
        Ok(r) => r,
        Err(panic) => {
            metrics.handler_panic();
            let detail = panic_message(&*panic);
            let detail = jsonrpc::cut(&detail, jsonrpc::MAX_DETAIL);
            tracing::error!(method = %m.name, %detail, "handler panicked");
            Err(RpcError::internal(format!("handler panicked: {detail}")))
        }
    };
    let result = match (result, &id) {
        (Ok(v), Some(id)) => fit(v, id, &metrics, limits, budget.as_deref()),
        (r, _) => r,
    };
    m.observe(started.elapsed(), result.is_ok());
    finish_result(id, result, &metrics)
}

/// Whether a result fits the response bound (the batch's `budget`, or the
/// whole bound for a single request); if not, the error that replaces it.
fn fit(
    v: Box<serde_json::value::RawValue>,
    id: &Id,
    metrics: &Metrics,
    limits: RequestLimits,
    budget: Option<&AtomicUsize>,
) -> HandlerResult {
    // The envelope `{"jsonrpc":"2.0","result":,"id":}` and a batch's comma.
    let size = v.get().len() + id.as_json().len() + 37;
    let fits = match budget {
        None => size <= limits.max_response_size,
        Some(b) => b
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(size)
            })
            .is_ok(),
    };
    if fits {
        return Ok(v);
    }
    metrics.incr("responses_too_large");
    tracing::debug!(
        bytes = size,
        max = limits.max_response_size,
        "response too large: replaced by -32603"
    );
    Err(RpcError::response_too_large(size, limits.max_response_size))
}

/// The reply to a job that does not run (an error found while parsing or
/// admitting it).
fn finish(job: Job, metrics: &Metrics) -> Reply {
    match job {
        Job::Error(id, e) => finish_result(id, Err(e), metrics),
        Job::Call { .. } => None,
    }
}

fn finish_result(id: Option<Id>, result: HandlerResult, metrics: &Metrics) -> Reply {
    if let Err(e) = &result {
        metrics.error(e.kind());
    }
    // Notifications are never answered, not even with an error.
    let id = id?;
    Some(match result {
        Ok(v) => jsonrpc::encode_result(&id, &v),
        Err(e) => jsonrpc::encode_error(&id, &e),
    })
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
