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

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::client::Client;
use crate::hub::Hub;
use crate::jsonrpc::{self, Id, Message, Parsed, RpcError};
use crate::metrics::{MethodMetrics, Metrics};

/// A boxed, sendable future, as handlers return once type-erased.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a type-erased handler produces: the serialized result, or an error.
pub type HandlerResult = Result<Box<RawValue>, RpcError>;

/// A type-erased handler: the form every method takes inside the router.
pub type ErasedHandler = Arc<dyn Fn(RequestContext) -> BoxFuture<HandlerResult> + Send + Sync>;

/// Everything an extractor may look at for one request.
pub struct RequestContext {
    pub(crate) client: Client,
    pub(crate) hub: Hub,
    pub(crate) state: Arc<StateMap>,
    pub(crate) params: Option<Box<RawValue>>,
    pub(crate) method: Arc<str>,
}

impl RequestContext {
    /// The client that sent the request.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The hub of the server handling the request.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The raw `params` of the request, if any.
    pub fn params(&self) -> Option<&RawValue> {
        self.params.as_deref()
    }

    /// The name of the method being called.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// Shared state of type `T`, if the builder was given one.
    pub fn state<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.state.get::<T>()
    }
}

/// Shared application state, keyed by type.
#[derive(Default)]
pub struct StateMap(HashMap<TypeId, Arc<dyn Any + Send + Sync>>);

impl StateMap {
    pub(crate) fn insert<T: Send + Sync + 'static>(&mut self, value: T) {
        self.0.insert(TypeId::of::<T>(), Arc::new(value));
    }

    pub(crate) fn get<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.0
            .get(&TypeId::of::<T>())
            .and_then(|v| Arc::clone(v).downcast::<T>().ok())
    }
}

/// A handler argument that is built from the request.
///
/// ```
/// use nbio_ws::{FromRequest, RequestContext, RpcError};
///
/// /// The caller's id as a string, for handlers that only need that.
/// struct CallerId(String);
///
/// impl FromRequest for CallerId {
///     fn from_request(ctx: &RequestContext) -> Result<Self, RpcError> {
///         Ok(CallerId(ctx.client().id().to_string()))
///     }
/// }
/// ```
pub trait FromRequest: Sized {
    /// Builds the value, or fails the request with an error.
    fn from_request(ctx: &RequestContext) -> Result<Self, RpcError>;
}

/// Extracts the request's params, deserialized into `T`.
///
/// A struct accepts params by name (`{"text": "hi"}`) and by position
/// (`["hi"]`). Use `Params<Option<T>>` when params may be absent. A
/// mismatch answers `-32602` with `data.detail` saying what is wrong.
///
/// ```
/// use nbio_ws::{rpc_method, Params};
/// use serde::Deserialize;
///
/// #[derive(Deserialize)]
/// struct Add { a: i64, b: i64 }
///
/// #[rpc_method("math.add")]
/// fn add(Params(p): Params<Add>) -> i64 {
///     p.a + p.b
/// }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Params<T>(pub T);

impl<T: DeserializeOwned> FromRequest for Params<T> {
    fn from_request(ctx: &RequestContext) -> Result<Self, RpcError> {
        jsonrpc::deserialize_params(ctx.params()).map(Params)
    }
}

impl<T> Deref for Params<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl FromRequest for Client {
    fn from_request(ctx: &RequestContext) -> Result<Self, RpcError> {
        Ok(ctx.client.clone())
    }
}

impl FromRequest for Hub {
    fn from_request(ctx: &RequestContext) -> Result<Self, RpcError> {
        Ok(ctx.hub.clone())
    }
}

/// Extracts shared state given to [`ServerBuilder::state`](crate::ServerBuilder::state).
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use nbio_ws::{rpc_method, State};
///
/// #[derive(Default)]
/// struct Counter(AtomicU64);
///
/// #[rpc_method("counter.next")]
/// fn next(State(counter): State<Counter>) -> u64 {
///     counter.0.fetch_add(1, Ordering::Relaxed)
/// }
///
/// let server = nbio_ws::Server::builder().state(Counter::default()).build();
/// assert!(server.is_ok());
/// ```
pub struct State<T>(pub Arc<T>);

impl<T: Send + Sync + 'static> FromRequest for State<T> {
    fn from_request(ctx: &RequestContext) -> Result<Self, RpcError> {
        ctx.state.get::<T>().map(State).ok_or_else(|| {
            RpcError::internal(format!(
                "no state of type {} was given to the server builder",
                std::any::type_name::<T>()
            ))
        })
    }
}

impl<T> Deref for State<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> Clone for State<T> {
    fn clone(&self) -> Self {
        State(Arc::clone(&self.0))
    }
}

/// Converts a handler's return value into a serialized result.
///
/// Implemented for `Result<T, E>` with `T: Serialize` and
/// `E: Into<RpcError>`. (Functions annotated with `#[rpc_method]` may also
/// return a plain `T: Serialize`.)
pub trait IntoRpcResult {
    /// Serializes the success value, or converts the error.
    fn into_rpc_result(self) -> HandlerResult;
}

impl<T: Serialize, E: Into<RpcError>> IntoRpcResult for Result<T, E> {
    fn into_rpc_result(self) -> HandlerResult {
        match self {
            Ok(v) => serialize_result(&v),
            Err(e) => Err(e.into()),
        }
    }
}

pub(crate) fn serialize_result<T: Serialize + ?Sized>(v: &T) -> HandlerResult {
    serde_json::value::to_raw_value(v)
        .map_err(|e| RpcError::internal(format!("cannot serialize the result: {e}")))
}

/// A function usable as a method: its arguments are extractors and it
/// returns a future of `Result<T, E>`.
///
/// Implemented for async functions and closures of up to eight extractor
/// arguments. Used by [`ServerBuilder::method`](crate::ServerBuilder::method).
pub trait Handler<Args>: Clone + Send + Sync + 'static {
    /// Runs the handler for one request.
    fn call(&self, ctx: RequestContext) -> BoxFuture<HandlerResult>;
}

macro_rules! impl_handler {
    ($($arg:ident),*) => {
        #[allow(non_snake_case, unused_variables)]
        impl<F, Fut, R, $($arg,)*> Handler<($($arg,)*)> for F
        where
            F: Fn($($arg),*) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future<Output = R> + Send + 'static,
            R: IntoRpcResult,
            $($arg: FromRequest + Send + 'static,)*
        {
            fn call(&self, ctx: RequestContext) -> BoxFuture<HandlerResult> {
                $(
                    let $arg = match $arg::from_request(&ctx) {
                        Ok(v) => v,
                        Err(e) => return Box::pin(std::future::ready(Err(e))),
                    };
                )*
                let fut = (self)($($arg),*);
                Box::pin(async move { fut.await.into_rpc_result() })
            }
        }
    };
}

impl_handler!();
impl_handler!(A1);
impl_handler!(A1, A2);
impl_handler!(A1, A2, A3);
impl_handler!(A1, A2, A3, A4);
impl_handler!(A1, A2, A3, A4, A5);
impl_handler!(A1, A2, A3, A4, A5, A6);
impl_handler!(A1, A2, A3, A4, A5, A6, A7);
impl_handler!(A1, A2, A3, A4, A5, A6, A7, A8);

/// A method registered at compile time by `#[rpc_method]`.
///
/// You do not build these by hand: the attribute submits one per annotated
/// function. [`registered_methods`] lists them.
pub struct MethodDef {
    name: &'static str,
    handler: fn(RequestContext) -> BoxFuture<HandlerResult>,
    location: &'static str,
}

impl MethodDef {
    #[doc(hidden)]
    pub const fn new(
        name: &'static str,
        handler: fn(RequestContext) -> BoxFuture<HandlerResult>,
        location: &'static str,
    ) -> Self {
        MethodDef {
            name,
            handler,
            location,
        }
    }

    /// The JSON-RPC method name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Where the function was defined (`module::path::function`).
    pub fn location(&self) -> &'static str {
        self.location
    }

    pub(crate) fn erased(&self) -> ErasedHandler {
        let f = self.handler;
        Arc::new(f)
    }
}

impl fmt::Debug for MethodDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MethodDef")
            .field("name", &self.name)
            .field("location", &self.location)
            .finish()
    }
}

inventory::collect!(MethodDef);

/// Every method registered with `#[rpc_method]` in the crates linked into
/// this binary.
///
/// ```
/// #[nbio_ws::rpc_method("ping")]
/// fn ping() -> &'static str { "pong" }
///
/// assert!(nbio_ws::registered_methods().any(|m| m.name() == "ping"));
/// ```
pub fn registered_methods() -> impl Iterator<Item = &'static MethodDef> {
    inventory::iter::<MethodDef>.into_iter()
}

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

/// Items used by the code `#[rpc_method]` generates. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use super::{BoxFuture, FromRequest, HandlerResult, MethodDef, RequestContext};
    pub use crate::jsonrpc::RpcError;
    pub use inventory;
    use serde::Serialize;

    /// Tag for return values of type `Result<T, E>`.
    pub struct ResultTag;
    /// Tag for return values of any other serializable type.
    pub struct SerializeTag;

    /// Picks [`ResultTag`] for `Result<T, E>` (method resolution by autoref).
    pub trait ResultKind {
        #[inline]
        fn __nbio_ws_kind(&self) -> ResultTag {
            ResultTag
        }
    }
    impl<T: Serialize, E: Into<RpcError>> ResultKind for Result<T, E> {}

    /// Picks [`SerializeTag`] for every other `T: Serialize`.
    pub trait SerializeKind {
        #[inline]
        fn __nbio_ws_kind(&self) -> SerializeTag {
            SerializeTag
        }
    }
    impl<T: Serialize> SerializeKind for &T {}

    impl ResultTag {
        #[inline]
        pub fn convert<T: Serialize, E: Into<RpcError>>(self, r: Result<T, E>) -> HandlerResult {
            match r {
                Ok(v) => super::serialize_result(&v),
                Err(e) => Err(e.into()),
            }
        }
    }

    impl SerializeTag {
        #[inline]
        pub fn convert<T: Serialize>(self, v: T) -> HandlerResult {
            super::serialize_result(&v)
        }
    }

    /// Builds the argument of type `T` for a generated wrapper.
    #[inline]
    pub fn extract<T: FromRequest>(ctx: &RequestContext) -> Result<T, RpcError> {
        T::from_request(ctx)
    }
}
