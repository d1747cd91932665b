//! # nbio-ws
//!
//! An embeddable framework for realtime WebSocket servers: clients speak
//! JSON-RPC 2.0 over WebSocket, handlers are plain functions annotated with
//! [`#[rpc_method]`](rpc_method), and a [`Hub`] knows every connected
//! client for broadcasts and send-to-one.
//!
//! ```no_run
//! use nbio_ws::{rpc_method, Hub, Params, RpcError, Server};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct Text { text: String }
//!
//! #[derive(Serialize)]
//! struct Echo { echo: String, text_length: usize }
//!
//! #[rpc_method("self.reply")]
//! fn self_reply(Params(p): Params<Text>) -> Echo {
//!     Echo { text_length: p.text.len(), echo: p.text }
//! }
//!
//! #[rpc_method("broadcast")]
//! async fn broadcast(hub: Hub, Params(p): Params<Text>) -> Result<serde_json::Value, RpcError> {
//!     hub.broadcast("broadcast", &serde_json::json!({ "text": p.text }))
//!         .map_err(RpcError::internal)?;
//!     Ok(serde_json::json!({ "status": "broadcasted", "text_length": p.text.len() }))
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let config = nbio_ws::Config::from_env()?; // WS_HOST, WS_PORT, ...
//!     nbio_ws::init_logging(&config);
//!     Server::builder().config(config).build()?.serve().await?;
//!     Ok(())
//! }
//! ```
//!
//! ## How it is put together
//!
//! | module | owns |
//! |---|---|
//! | [`server`] | [`Server`], [`ServerBuilder`], the accept loop, graceful shutdown |
//! | [`http`] | `/ws` upgrade, `/health`, `/metrics`, 404/405; [`WsEndpoint`] for embedding |
//! | [`connection`] | one WebSocket: reader, writer, ping/pong, limits, close codes |
//! | [`hub`] | registry of clients, broadcast, send-to-one |
//! | [`rooms`] | rooms, fan-out to a room, presence |
//! | [`client`] | [`Client`]: id, identity, notify, close, extensions |
//! | [`jsonrpc`] | wire types, parsing incl. batches, error codes |
//! | [`router`] | method table, dispatch, extractors, the compile-time registry |
//! | [`broker`] | scale-out: the [`Broker`] trait; `local`, `redis` and `nats` backends |
//! | [`auth`] | authentication before the upgrade ([`Authenticator`](auth::Authenticator), bearer tokens, JWT), the origin allow-list |
//! | [`limits`] | rate limiting, connection caps, trusted proxies, handshake limits |
//! | [`tls`] | `wss://` with rustls (`tls` feature) |
//! | [`config`] | [`Config`] and the `WS_*` variables |
//! | [`metrics`] | counters and the Prometheus text format |
//!
//! Data flows one way: socket → `connection` → `jsonrpc` parse → `router`
//! dispatch → handler → reply into the client's bounded outbound queue →
//! writer task → socket. A broadcast is serialized once and the bytes are
//! shared by every recipient's queue; with a [`broker`] configured, the
//! same bytes also go, through one ordered queue per hub, to the other
//! instances of the server.
//!
//! ## JSON-RPC semantics
//!
//! Requests, notifications (never answered) and batches are supported.
//! Errors: `-32700` (unparsable JSON, id `null`), `-32600` (invalid request
//! object, empty batch, binary frame), `-32601` (unknown method),
//! `-32602` (params that do not fit, with `data.detail`), `-32603` (a
//! handler that failed internally or panicked), `-32029` (refused by the
//! connection's rate limit, with `data.retry_after_ms`; see [`limits`]).
//! The connection stays open after each of them. Requests of one connection may run concurrently;
//! each response carries its request's id, echoed exactly.

#![warn(missing_docs)]

extern crate self as nbio_ws;

pub mod auth;
pub mod broker;
pub mod client;
pub mod config;
pub mod connection;
mod frame;
mod gate;
pub mod http;
pub mod hub;
pub mod jsonrpc;
pub mod limits;
pub mod metrics;
pub mod presence;
pub mod rooms;
pub mod router;
pub mod server;
pub mod tls;

pub use broker::{Broker, PubSubConfig};
pub use client::{Client, ClientId, SendError};
pub use config::{Config, ConfigError, LogFormat};
pub use connection::RawMessage;
pub use gate::SecurityStats;
pub use http::WsEndpoint;
pub use hub::Hub;
pub use jsonrpc::RpcError;
pub use rooms::{Member, PresenceEvent, RoomSender};
pub use router::{
    registered_methods, FromRequest, Handler, MethodDef, Params, RequestContext, State,
};
pub use server::{shutdown_signal, BuildError, ServeError, Server, ServerBuilder};

/// Registers a function as a JSON-RPC method, at compile time.
///
/// ```
/// use nbio_ws::{rpc_method, Client, Params, RpcError};
/// use serde::Deserialize;
///
/// #[derive(Deserialize)]
/// struct Greet { name: String }
///
/// #[rpc_method("greet")]
/// async fn greet(Params(p): Params<Greet>, client: Client) -> Result<String, RpcError> {
///     if p.name.is_empty() {
///         return Err(RpcError::invalid_params("name must not be empty"));
///     }
///     Ok(format!("hello {}, you are client {}", p.name, client.id()))
/// }
///
/// assert!(nbio_ws::registered_methods().any(|m| m.name() == "greet"));
/// ```
pub use nbio_ws_macros::rpc_method;

#[doc(hidden)]
pub use router::__private;

/// Installs a global `tracing` subscriber with the configured level
/// (`WS_LOG_LEVEL`, overridden by `RUST_LOG` when set) and format
/// (`WS_LOG_FORMAT`). Does nothing if one is already installed.
pub fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(&config.log_level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match config.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Hooks for the cargo-fuzz targets in `nbio-ws/fuzz/`: arbitrary bytes
/// into the JSON-RPC decoder, the dispatcher and the connection's message
/// path. Not a public API.
#[doc(hidden)]
#[path = "fuzz_hooks.rs"]
pub mod __fuzz;

/// Hooks for the criterion benches in `benches/`: drive the router and the
/// hub without sockets. Not a public API.
#[doc(hidden)]
pub mod __bench {

    use crate::client::{Client, OutRx};
    use crate::connection::Mode;
    use crate::{Hub, ServerBuilder};
    use bytes::Bytes;
    use futures_util::FutureExt;

    /// A server's router with one fake client, to time parse + dispatch.
    pub struct RpcFixture {
        server: crate::Server,
        client: Client,
        _rx: OutRx,
    }

    impl RpcFixture {
        /// Builds the server and a client that is not connected to anything.
        pub fn new(builder: ServerBuilder) -> Self {
            let server = builder.build().expect("bench server builds");
            let hub = server.hub().clone();
            let (client, rx) = Client::new(&hub, ([127, 0, 0, 1], 1).into(), None, 1024);
            RpcFixture {
                server,
                client,
                _rx: rx,
            }
        }

        /// Parses and dispatches one message; returns the response bytes.
        /// Handlers that wait are not supported (returns `None`).
        pub fn dispatch(&self, text: &str) -> Option<Bytes> {
            let shared = &self.server.endpoint_ref().shared;
            match &shared.mode {
                Mode::Rpc(router) => {
                    let (_, fut) = router.dispatch(text, &self.client, &shared.hub);
                    fut.now_or_never().flatten()
                }
                Mode::Raw(_) => None,
            }
        }
    }

    /// A hub with `n` registered clients whose queues are drained by hand.
    pub struct HubFixture {
        /// The hub.
        pub hub: Hub,
        /// Its clients, in registration order.
        pub clients: Vec<Client>,
        rxs: Vec<OutRx>,
    }

    impl HubFixture {
        /// `n` clients with queues of `queue` messages.
        pub fn new(n: usize, queue: usize) -> Self {
            let hub = Hub::new();
            let mut rxs = Vec::with_capacity(n);
            let mut clients = Vec::with_capacity(n);
            for _ in 0..n {
                let (c, rx) = Client::new(&hub, ([127, 0, 0, 1], 1).into(), None, queue);
                hub.register(c.clone());
                clients.push(c);
                rxs.push(rx);
            }
            HubFixture { hub, clients, rxs }
        }

        /// Empties every queue; returns how many messages were queued.
        pub fn drain(&mut self) -> usize {
            let mut n = 0;
            for rx in &mut self.rxs {
                while rx.try_recv().is_some() {
                    n += 1;
                }
            }
            n
        }
    }
}
