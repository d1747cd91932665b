//! # nbio-ws-testkit
//!
//! What the workspace's tests and benches share, so that each test says
//! only what it checks:
//!
//! * [`ws`]: a WebSocket client on tokio-tungstenite (an implementation
//!   independent of the server's) and a raw frame client for sending what
//!   well-behaved clients never send;
//! * [`server`]: a server built from a [`nbio_ws::ServerBuilder`] and served
//!   in-process on a free loopback port;
//! * [`process`]: a child process killed when the test ends, and the
//!   example binaries started as a user starts them (configured by `WS_*`
//!   variables, ready once `/health` answers);
//! * [`broker`]: real `redis-server` and `nats-server` processes on free
//!   loopback ports, which a test can kill and restart on the same port, and
//!   the [`Backend`](broker::Backend) a scale-out test runs on;
//! * [`http`]: plain HTTP/1.1 requests and raw upgrade requests over real
//!   sockets;
//! * [`net`]: free ports and waiting for a condition, with a bound;
//! * [`tools`]: [`require_tool`], which fails a test whose external tool is
//!   missing, naming the tool (or, with `NBIO_WS_SKIP_MISSING_TOOLS=1`,
//!   skips it with a `SKIP:` line);
//! * [`seed`]: the methods of the seed-compatible example server
//!   (`self.reply`, `broadcast`).
//!
//! Nothing here is timed: every wait is bounded (a backstop that fails the
//! test), never an assertion about how long something took.

pub mod broker;
pub mod http;
pub mod net;
pub mod process;
pub mod server;
pub mod tools;
pub mod ws;

pub use nbio_ws_examples::seed;

pub use http::{http_request, try_http_request, upgrade_request};
pub use net::{eventually, free_port, loopback, wait_port};
pub use process::Proc;
pub use server::TestServer;
pub use tools::require_tool;
pub use ws::{Ended, RawClient, RawFrame, Ws, WsClient};

use std::time::Duration;

/// How long a single step (a connect, an answer, a close) may take before
/// a test fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`eventually`] keeps trying before a test fails: a backstop
/// for state that converges (brokers connecting, presence spreading).
pub const WAIT: Duration = Duration::from_secs(15);

/// The value of `name` in a Prometheus text exposition (`name value`
/// lines), if present and numeric.
///
/// ```
/// let text = "# HELP x\nnbio_ws_connected_clients 3\nnbio_ws_connections_total 7\n";
/// assert_eq!(nbio_ws_testkit::metric(text, "nbio_ws_connected_clients"), Some(3));
/// assert_eq!(nbio_ws_testkit::metric(text, "nbio_ws_connections"), None);
/// ```
pub fn metric(exposition: &str, name: &str) -> Option<u64> {
    exposition.lines().find_map(|l| {
        l.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse::<f64>()
            .ok()
            .map(|v| v as u64)
    })
}
