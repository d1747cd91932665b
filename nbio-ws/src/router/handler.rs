//! Handlers and extractors: what a method is made of, and the
//! compile-time registry that `#[rpc_method]` feeds.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::hub::{Client, Hub};
use crate::jsonrpc::{self, RpcError};

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
pub(crate) struct StateMap(HashMap<TypeId, Arc<dyn Any + Send + Sync>>);

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
