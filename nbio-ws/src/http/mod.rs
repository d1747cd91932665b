//! Plain HTTP on the server's port: the WebSocket upgrade, `/health`,
//! `/metrics`, and 404/405 for everything else. With an admin address
//! (`WS_ADMIN_ADDR`), `/health` and `/metrics` are served on that listener
//! only, and the public port answers 404 for them.
//!
//! [`WsEndpoint`] is also the way to mount nbio-ws inside an existing hyper
//! or axum application: hand it the request and the peer address, and it
//! answers the upgrade (or an HTTP error) and runs the connection.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio_util::task::TaskTracker;

pub(crate) mod gate;

pub use gate::SecurityStats;

use crate::hub::Hub;
use crate::ws::conn::{self, Shared};
use gate::Gate;

/// The response body type used by nbio-ws.
pub type Body = Full<Bytes>;

/// The WebSocket endpoint of a server, usable on its own inside another
/// hyper or axum application.
///
/// ```no_run
/// use std::net::SocketAddr;
/// use axum::{extract::{ConnectInfo, Request}, routing::get, Router};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let ws = nbio_ws::Server::builder().build()?.endpoint();
/// let app = Router::new()
///     .route("/", get(|| async { "hello" }))
///     .route("/ws", get(move |ConnectInfo(peer): ConnectInfo<SocketAddr>, req: Request| {
///         let ws = ws.clone();
///         async move { ws.upgrade(req, peer).await }
///     }));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct WsEndpoint {
    pub(crate) shared: Arc<Shared>,
    /// Origin, caps, authentication and rate-limit settings.
    pub(crate) gate: Arc<Gate>,
    pub(crate) path: Arc<str>,
    pub(crate) tracker: TaskTracker,
    /// Static pages served with GET, by path.
    pub(crate) pages: Arc<std::collections::HashMap<String, (&'static str, Bytes)>>,
    /// `/health` and `/metrics` are served on the admin listener instead.
    pub(crate) admin_elsewhere: bool,
}

impl std::fmt::Debug for WsEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsEndpoint")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut res = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    res.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    res
}

impl WsEndpoint {
    /// The hub of the server this endpoint belongs to.
    pub fn hub(&self) -> &Hub {
        &self.shared.hub
    }

    /// The path the endpoint serves WebSocket upgrades on.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Answers a WebSocket upgrade request and runs the connection in a
    /// new task. Anything that is not a valid upgrade gets an HTTP error:
    /// 405 for a method other than GET, 426 for a request without the
    /// upgrade headers or with a WebSocket version other than 13, 400 for a
    /// missing key, 503 while the server shuts down. Then come the security
    /// checks (see [`auth`](crate::auth) and [`limits`](crate::limits)):
    /// 403 for an origin not allowed, 503 at the connection cap, 429 at the
    /// per-address cap, 401 (or the authenticator's answer) without valid
    /// credentials.
    ///
    /// `remote` is the TCP peer; with trusted proxies configured, the
    /// client's address is taken from `X-Forwarded-For` when the peer is
    /// one of them.
    pub async fn upgrade<B>(&self, mut req: Request<B>, remote: SocketAddr) -> Response<Body> {
        if req.method() != Method::GET {
            return method_not_allowed("GET");
        }
        if !fastwebsockets::upgrade::is_upgrade_request(&req) {
            let mut res = text(
                StatusCode::UPGRADE_REQUIRED,
                "this endpoint speaks WebSocket: connect with a WebSocket client\n",
            );
            res.headers_mut()
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            return res;
        }
        if self.shared.shutting_down.load(Ordering::Acquire) {
            return text(StatusCode::SERVICE_UNAVAILABLE, "server is shutting down\n");
        }
        let admitted = match self.gate.admit(&mut req, remote).await {
            Ok(a) => a,
            Err(refusal) => return refusal,
        };
        let (res, fut) = match fastwebsockets::upgrade::upgrade(&mut req) {
            Ok(pair) => pair,
            Err(fastwebsockets::WebSocketError::InvalidSecWebsocketVersion) => {
                let mut res = text(
                    StatusCode::UPGRADE_REQUIRED,
                    "unsupported WebSocket version; use 13\n",
                );
                res.headers_mut()
                    .insert("sec-websocket-version", HeaderValue::from_static("13"));
                return res;
            }
            Err(_) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "missing or invalid Sec-WebSocket-Key\n",
                )
            }
        };
        // permessage-deflate: the first acceptable offer, if enabled.
        let deflate = self.shared.settings.compression.negotiate(
            req.headers()
                .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
                .iter()
                .map(HeaderValue::as_bytes),
        );
        let shared = Arc::clone(&self.shared);
        let (deflate, extensions) = deflate.unzip();
        self.tracker.spawn(conn::run(
            fut,
            shared,
            admitted.remote,
            admitted.credentials,
            admitted.slot,
            self.gate.rate_limiter(),
            deflate,
        ));
        let (mut parts, _) = res.into_parts();
        if let Some(value) = extensions.and_then(|v| HeaderValue::from_str(&v).ok()) {
            parts
                .headers
                .insert(header::SEC_WEBSOCKET_EXTENSIONS, value);
        }
        if let Some(protocol) = admitted.subprotocol {
            parts
                .headers
                .insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
        }
        Response::from_parts(parts, Full::new(Bytes::new()))
    }

    /// Routes a plain HTTP request the way the standalone server does:
    /// the WebSocket path, the static pages given to
    /// [`ServerBuilder::page`](crate::ServerBuilder::page), `GET /health`,
    /// `GET /metrics` (unless an admin address is set: see
    /// [`ServerBuilder::admin_addr`](crate::ServerBuilder::admin_addr)),
    /// `GET /openrpc.json` (feature `openrpc`, served like a page), 404
    /// otherwise.
    pub async fn handle<B>(&self, req: Request<B>, remote: SocketAddr) -> Response<Body> {
        let path = req.uri().path();
        let page = self.pages.get(path);
        if path == &*self.path
            && (page.is_none() || fastwebsockets::upgrade::is_upgrade_request(&req))
        {
            return self.upgrade(req, remote).await;
        }
        if let Some((content_type, body)) = page {
            if req.method() != Method::GET && req.method() != Method::HEAD {
                return method_not_allowed("GET, HEAD");
            }
            let mut res = Response::new(Full::new(body.clone()));
            res.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            return res;
        }
        if self.admin_elsewhere {
            return text(StatusCode::NOT_FOUND, "not found\n");
        }
        self.handle_admin(&req)
    }

    /// What the admin listener serves: `GET /health`, `GET /metrics`, 404
    /// otherwise.
    pub(crate) fn handle_admin<B>(&self, req: &Request<B>) -> Response<Body> {
        match req.uri().path() {
            "/health" => {
                if req.method() != Method::GET && req.method() != Method::HEAD {
                    return method_not_allowed("GET, HEAD");
                }
                self.health()
            }
            "/metrics" => {
                if req.method() != Method::GET && req.method() != Method::HEAD {
                    return method_not_allowed("GET, HEAD");
                }
                self.metrics()
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    /// The `/health` response: `{"status":"healthy","uptime_seconds":...,"connected_clients":...}`.
    ///
    /// With a broker, a `"broker":{"adapter":"redis","connected":true}`
    /// field is added, and while the broker is unreachable the status is
    /// `"degraded"` — still HTTP 200, since the instance keeps serving its
    /// own clients. Only shutdown answers 503.
    pub fn health(&self) -> Response<Body> {
        let hub = &self.shared.hub;
        let shutting_down = self.shared.shutting_down.load(Ordering::Acquire);
        let broker = hub.broker_health();
        let status = if shutting_down {
            "shutting_down"
        } else if broker.is_some_and(|b| !b.connected) {
            "degraded"
        } else {
            "healthy"
        };
        let mut body = serde_json::json!({
            "status": status,
            "uptime_seconds": hub.started_at().elapsed().as_secs(),
            "connected_clients": hub.len(),
        });
        if let Some(b) = broker {
            body["broker"] = serde_json::json!(b);
        }
        let mut res = Response::new(Full::new(Bytes::from(body.to_string())));
        if shutting_down {
            *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        res
    }

    /// The `/metrics` response, in the Prometheus text format.
    pub fn metrics(&self) -> Response<Body> {
        let hub = &self.shared.hub;
        let mut body = hub.metrics().render(hub.len(), hub.started_at().elapsed());
        let mut gauge = |name: &str, help: &str, value: usize| {
            body.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
            ));
        };
        gauge(
            "nbio_ws_rooms",
            "Rooms with at least one member on this instance.",
            hub.room_count(),
        );
        if let (Some(b), Some(subscriptions)) = (hub.broker_health(), hub.room_subscriptions()) {
            gauge(
                "nbio_ws_broker_connected",
                &format!(
                    "Whether the pub/sub broker is reachable (adapter {}).",
                    b.adapter
                ),
                usize::from(b.connected),
            );
            gauge(
                "nbio_ws_broker_room_subscriptions",
                "Room channels this instance is subscribed to.",
                subscriptions,
            );
            gauge(
                "nbio_ws_presence_remote_instances",
                "Other instances whose room members are replicated here.",
                hub.remote_instances(),
            );
            gauge(
                "nbio_ws_presence_remote_members",
                "Room memberships of other instances replicated here.",
                hub.remote_members(),
            );
        }
        body.push_str(&self.gate.stats().render());
        let mut res = Response::new(Full::new(Bytes::from(body)));
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        res
    }
}
