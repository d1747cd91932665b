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
//! The public API is the types at the crate root plus four policy
//! modules; everything else is private (see `ARCHITECTURE.md` in the
//! repository for the whole module map and its rules):
//!
//! | where | what |
//! |---|---|
//! | crate root | [`Server`], [`ServerBuilder`], [`Config`], [`CompressionConfig`], [`Hub`], [`Client`], [`RoomSender`], the extractors ([`Params`], [`State`]), [`RpcError`], [`WsEndpoint`] for embedding |
//! | [`auth`] | authentication before the upgrade ([`Authenticator`](auth::Authenticator), bearer tokens, JWT), the origin allow-list |
//! | [`limits`] | rate limiting, connection caps, trusted proxies, handshake limits |
//! | [`broker`] | scale-out: the [`Broker`](broker::Broker) trait; `local`, `redis` and `nats` backends |
//! | [`tls`] | `wss://` with rustls (`tls` feature) |
//! | [`metrics`] | counters and the Prometheus text format |
//!
//! Data flows one way: socket → `connection` → `jsonrpc` parse → `router`
//! dispatch → handler → reply into the client's bounded outbound queue →
//! writer task → socket. A broadcast is serialized once and the bytes are
//! shared by every recipient's queue; with a broker configured, the
//! same bytes also go, through one ordered queue per hub, to the other
//! instances of the server.
//!
//! ## Compression
//!
//! With permessage-deflate on (`WS_COMPRESSION=true`,
//! [`ServerBuilder::compression`]; see [`CompressionConfig`]) a broadcast
//! is also *compressed* once: the compressed bytes are shared by every
//! recipient that negotiated compression, the uncompressed bytes by the
//! others. Replies are compressed per message; short ones (under the
//! threshold) go as they are. The size limit applies to the inflated
//! message, checked while inflating.
//!
//! ## JSON-RPC semantics
//!
//! Requests, notifications (never answered) and batches are supported.
//! Errors: `-32700` (unparsable JSON, id `null`), `-32600` (invalid request
//! object, empty batch, binary frame), `-32601` (unknown method),
//! `-32602` (params that do not fit, with `data.detail`), `-32603` (a
//! handler that failed internally or panicked, or a result too large to
//! send), `-32008` (the handler ran past the request timeout and was
//! cancelled, with `data.timeout_ms`), `-32029` (refused by the
//! connection's rate limit, with `data.retry_after_ms`; see [`limits`]).
//! The connection stays open after each of them. Requests of one connection may run concurrently;
//! each response carries its request's id, echoed exactly.
//!
//! ## What one client can cost
//!
//! | limit | default | past it |
//! |---|---|---|
//! | elements of a batch ([`ServerBuilder::max_batch`], `WS_MAX_BATCH`) | 100 | one `-32600` "batch too large: at most 100 requests", id `null`; nothing runs. Counted while scanning: a huge batch costs no more than 101 elements |
//! | requests running at once per connection ([`ServerBuilder::max_concurrent_requests`], `WS_MAX_CONCURRENT_REQUESTS`) | 64 | each batch element counts; the connection reads no new message until one finishes (pings, the pong timeout, its queue, close and shutdown go on) |
//! | handler run time ([`ServerBuilder::request_timeout`], `WS_REQUEST_TIMEOUT`) | none | cancelled; `-32008` "Request timed out", `data.timeout_ms` |
//! | result bytes in the reply to one message ([`ServerBuilder::max_response_size`], `WS_MAX_RESPONSE_SIZE`) | 4 MiB | that result becomes `-32603` "Response too large" (a batch's results share the bound) |
//! | client data in an error | — | `data.method` at most 128 bytes (with `data.truncated`), `data.detail` at most 256 |
//!
//! Every element of a batch counts against the rate limit before any
//! runs. Handlers belong to their connection: those still running when it
//! ends are cancelled; graceful shutdown gives them up to the shutdown
//! timeout, then writes their replies before closing with 1001.
//!
//! ## Rooms and presence
//!
//! Rooms are named groups of clients: fan-out to a room, and who is in it —
//! on this instance and, with a broker, on all of them.
//!
//! ```
//! # async fn demo(client: nbio_ws::Client, hub: nbio_ws::Hub) -> Result<(), nbio_ws::JoinError> {
//! use serde_json::json;
//!
//! client.join_with("lobby", json!({"nick": "ada"}))?; // Err past a limit
//! // Everyone in the lobby but the sender, serialized once:
//! hub.to("lobby").except(client.id()).notify("chat.message", &json!({"text": "hi"})).ok();
//! let members = hub.members("lobby").await;
//! assert!(members.iter().any(|m| m.client == client.id()));
//! client.leave("lobby");
//! # Ok(()) }
//! ```
//!
//! Membership lives on the instance the client is connected to and is
//! dropped when the client disconnects; every join and leave (including
//! those caused by a disconnect) is published as a [`PresenceEvent`] on
//! [`Hub::presence_events`]. Each member carries the JSON `meta` it joined
//! with (a nickname, a user id), which is what [`Hub::members`] reports.
//!
//! ### Limits
//!
//! What one client can make the registry hold is bounded; a join past a
//! limit changes nothing and returns a [`JoinError`], which a handler
//! returns with `?` as the JSON-RPC error `-32020`
//! ([`RpcError::JOIN_REFUSED`]) — the connection carries on:
//!
//! | limit | default | the caller gets |
//! |---|---|---|
//! | rooms per client | 100 (`WS_MAX_ROOMS_PER_CLIENT`, [`ServerBuilder::max_rooms_per_client`]) | `{"code":-32020,"message":"Join refused","data":{"reason":"too_many_rooms","limit":100,"detail":"…"}}` |
//! | room name | [`Client::MAX_ROOM_NAME_BYTES`]: 256 bytes of UTF-8 | `"reason":"room_name_too_long","limit":256` |
//! | presence data | [`Client::MAX_META_BYTES`]: 4 KiB of serialized JSON | `"reason":"meta_too_large","limit":4096` |
//!
//! With a broker, an instance holds one room subscription per room its
//! members are in, so at most its clients times the rooms limit.
//!
//! ### Across instances
//!
//! With a [`broker`], rooms span every instance that shares
//! it:
//!
//! - **Messages.** [`Hub::to`] delivers to the local members at once and
//!   publishes the message (serialized once) on the room's own channel,
//!   `{WS_PUBSUB_CHANNEL}.room.{room}`. An instance subscribes to that
//!   channel when the room's first local member joins and unsubscribes when
//!   the last one leaves, so it receives traffic only for rooms it has
//!   members in — one Redis `SUBSCRIBE` (on one shared connection) or one
//!   NATS subscription per such room, not a firehose.
//!   [`Hub::room_ready`] waits until the subscription is confirmed.
//! - **Presence.** Joins and leaves are replicated to every instance on
//!   `{WS_PUBSUB_CHANNEL}.presence` (small entries: room, client id, meta),
//!   with heartbeats and snapshots so that it heals after lost messages and
//!   after an instance crashes (its members expire after the presence TTL,
//!   15 s by default, `WS_PRESENCE_TTL`). So [`Hub::members`] lists the
//!   members of every instance, answered from memory, and
//!   [`Hub::presence_events`] reports remote joins and leaves (and
//!   expiries) too. The model is eventual consistency; see
//!   [`broker`](crate::broker#presence-across-instances) for the protocol
//!   and its timings.
//!
//! ## Close codes
//!
//! The connection enforces the protocol and the limits with these close
//! codes ([`close`] says which of them mean "reconnect and recover" and
//! which "do not come back", and defines the 4000–4999 codes nbio-ws
//! uses):
//!
//! | condition | answer |
//! |---|---|
//! | a message over the size limit, counting every fragment | close 1009 |
//! | a control frame over 125 bytes (close frames included) | close 1002 |
//! | a malformed close frame or an invalid close code | close 1002 |
//! | an unmasked frame, reserved bits or opcodes | close 1002 |
//! | invalid UTF-8 in a text message or a close reason | close 1007 |
//! | a fragment sequence broken by a new data frame, or a stray continuation | close 1002 |
//! | nothing heard from the peer (not even a pong) for the pong timeout | close 1001 |
//! | outbound queue full, in messages (`WS_SEND_BUFFER`) or bytes (`WS_SEND_BUFFER_BYTES`): a slow consumer | close 1008, without waiting |
//! | server shutting down | close 1001, after running handlers (within the shutdown timeout) and queued messages |

#![warn(missing_docs)]

extern crate self as nbio_ws;

// Leaves: depend on nothing else in the crate.
pub mod close;
mod env;
mod jsonrpc;
pub mod metrics;
mod types;

// Policy: each depends only on the leaves.
pub mod auth;
mod deflate;
pub mod limits;
pub mod tls;

// Scale-out: history, the broker trait and backends, then the cluster
// machinery.
pub mod broker;
mod cluster;
pub mod history;

// The registry: hub, clients, rooms (the one allowed cycle).
mod hub;

// Requests and the wire.
mod router;
mod ws;

// Self-description: the OpenRPC document (feature `openrpc`).
#[cfg(feature = "openrpc")]
pub mod openrpc;

// Composition: configuration, HTTP, the server and its builder.
mod config;
mod http;
mod server;

pub use config::{Config, LogFormat};
pub use deflate::CompressionConfig;
pub use env::ConfigError;
pub use http::{Body, SecurityStats, WsEndpoint};
pub use hub::{Client, Hub, RoomSender, SendError};
pub use jsonrpc::RpcError;
pub use router::{
    registered_methods, FromRequest, Handler, MethodDef, Params, RequestContext, State,
};
pub use server::{shutdown_signal, BuildError, ServeError, Server, ServerBuilder};
pub use types::{BroadcastError, ClientId, JoinError, Member, ParseClientIdError, PresenceEvent};
pub use ws::RawMessage;

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

/// Without the `openrpc` feature, `#[rpc_method]`'s description of a
/// method compiles to nothing. Not a public API.
#[cfg(not(feature = "openrpc"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __nbio_ws_openrpc_method {
    ($($description:tt)*) => {};
}

/// Installs a global `tracing` subscriber with the configured level
/// (`WS_LOG_LEVEL`, overridden by `RUST_LOG` when set) and format
/// (`WS_LOG_FORMAT`). Logs go to standard error, with ANSI colours only
/// when it is a terminal (never in a file, a pipe or a log collector).
/// Does nothing if one is already installed.
pub fn init_logging(config: &Config) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(&config.log_level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match config.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Hooks for the cargo-fuzz targets in `nbio-ws/fuzz/`: arbitrary bytes
/// into the JSON-RPC decoder, the dispatcher and the connection's message
/// path. Not a public API: only with the `internal-hooks` cargo feature.
#[cfg(feature = "internal-hooks")]
#[doc(hidden)]
#[path = "hooks_fuzz.rs"]
pub mod __fuzz;

/// Hooks for the criterion benches in `benches/`: drive the router and the
/// hub without sockets. Not a public API: only with the `internal-hooks`
/// cargo feature.
#[cfg(feature = "internal-hooks")]
#[doc(hidden)]
#[path = "hooks_bench.rs"]
pub mod __bench;
