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

#[doc(hidden)]
pub use handler::__private;
pub use handler::{
    registered_methods, FromRequest, Handler, MethodDef, Params, RequestContext, State,
};
pub(crate) use handler::{BoxFuture, ErasedHandler, StateMap};

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures_util::FutureExt;
use tokio::sync::Semaphore;

use crate::hub::{Client, Hub};
use crate::jsonrpc::{self, Id, Message, Parsed, RpcError};
use crate::metrics::{MethodMetrics, Metrics};

struct Route {
    handler: ErasedHandler,
    metrics: Arc<MethodMetrics>,
}

/// The method table of a server.
pub(crate) struct Router {
    routes: HashMap<Box<str>, Route>,
    state: Arc<StateMap>,
    metrics: Arc<Metrics>,
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

impl Router {
    pub(crate) fn new(
        methods: Vec<(String, ErasedHandler)>,
        state: StateMap,
        metrics: Arc<Metrics>,
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

    /// Like [`Router::dispatch`], asking `admit` before each request (each
    /// element of a batch, and an unparsable message counts as one).
    pub(crate) fn dispatch_with(
        &self,
        text: &str,
        client: &Client,
        hub: &Hub,
        admit: &mut dyn FnMut() -> Option<RpcError>,
    ) -> (usize, impl Future<Output = Option<Bytes>> + Send + 'static) {
        enum Work {
            One(Job),
            Many(Vec<Job>),
            Fail(RpcError),
        }
        let work = match jsonrpc::parse(text) {
            Message::Single(p) => Work::One(self.admitted_job(p, client, hub, admit)),
            Message::Batch(items) => Work::Many(
                items
                    .into_iter()
                    .map(|p| self.admitted_job(p, client, hub, admit))
                    .collect(),
            ),
            Message::Error(e) => Work::Fail(admit().unwrap_or(e)),
        };
        let count = match &work {
            Work::One(_) | Work::Fail(_) => 1,
            Work::Many(jobs) => jobs.len(),
        };
        let metrics = Arc::clone(&self.metrics);
        let fut = async move {
            match work {
                Work::Fail(e) => {
                    metrics.error(e.kind());
                    Some(jsonrpc::encode_error(&Id::null(), &e))
                }
                Work::One(job) => run_job(job, &metrics).await,
                Work::Many(jobs) => {
                    let results = futures_util::future::join_all(
                        jobs.into_iter().map(|j| run_job(j, &metrics)),
                    )
                    .await;
                    let parts: Vec<Bytes> = results.into_iter().flatten().collect();
                    if parts.is_empty() {
                        None
                    } else {
                        Some(jsonrpc::encode_batch(&parts))
                    }
                }
            }
        };
        (count, fut)
    }
}

impl Router {
    /// Runs one whole message of a connection: `Some(text)` for a text
    /// message, `None` for a binary one (refused with -32600). `admit` is
    /// asked before each request (each element of a batch; an unparsable
    /// message counts as one) and answers those it refuses. Handlers that
    /// finish without waiting run here; the others are spawned, holding a
    /// permit of `inflight` while they run. Replies go to the client's
    /// queue.
    pub(crate) async fn on_message(
        &self,
        text: Option<&str>,
        client: &Client,
        hub: &Hub,
        inflight: &Arc<Semaphore>,
        admit: &mut (dyn FnMut() -> Option<RpcError> + Send),
    ) {
        let Some(text) = text else {
            let e = admit().unwrap_or_else(|| {
                RpcError::invalid_request(
                    "binary frames are not accepted: send JSON-RPC in text frames",
                )
            });
            self.metrics.error(e.kind());
            let _ = client.send_text(jsonrpc::encode_error(&Id::null(), &e));
            return;
        };
        let (_count, fut) = self.dispatch_with(text, client, hub, admit);
        let mut fut = Box::pin(fut);
        // Most handlers finish without waiting: poll once here and only
        // spawn a task for those that do wait. Requests that wait run
        // concurrently, up to `inflight`'s permits per connection.
        let polled = {
            let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
            fut.as_mut().poll(&mut cx)
        };
        match polled {
            Poll::Ready(reply) => {
                if let Some(bytes) = reply {
                    let _ = client.send_text(bytes);
                }
            }
            Poll::Pending => {
                let Ok(permit) = Arc::clone(inflight).acquire_owned().await else {
                    return;
                };
                let client = client.clone();
                tokio::spawn(async move {
                    if let Some(bytes) = fut.await {
                        let _ = client.send_text(bytes);
                    }
                    drop(permit);
                });
            }
        }
    }
}

async fn run_job(job: Job, metrics: &Metrics) -> Option<Bytes> {
    let (id, result) = match job {
        Job::Error(id, e) => (id, Err(e)),
        Job::Call {
            id,
            handler,
            ctx,
            metrics: m,
        } => {
            let started = Instant::now();
            let outcome = AssertUnwindSafe(async move { handler(ctx).await })
                .catch_unwind()
                .await;
            let result = match outcome {
                Ok(r) => r,
                Err(panic) => {
                    metrics.handler_panic();
                    let detail = panic_message(&*panic);
                    tracing::error!(method = %m.name, %detail, "handler panicked");
                    Err(RpcError::internal(format!("handler panicked: {detail}")))
                }
            };
            m.observe(started.elapsed(), result.is_ok());
            (id, result)
        }
    };
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
