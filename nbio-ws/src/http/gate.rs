//! The checks an upgrade request passes before it becomes a WebSocket, in
//! this order (cheapest first): origin (403), global connection cap (503),
//! per-address cap (429), authentication (401 or what the authenticator
//! says). See [`auth`](crate::auth) and [`limits`](crate::limits). The
//! HTTP rendering of every refusal lives here; the policy modules decide,
//! this module answers.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use tokio::sync::Semaphore;

use super::{Body, WsEndpoint};
use crate::auth::{
    redacted_target, AllowedOrigins, AuthRejection, AuthRequest, Authenticator, Credentials,
};
use crate::config::Config;
use crate::limits::{
    CapExceeded, Caps, ConnectionSlot, LiveCount, RateLimit, RateLimiter, TrustedProxies,
};
use crate::metrics::Metrics;

/// What every upgrade request is checked against.
pub(crate) struct Gate {
    origins: AllowedOrigins,
    authenticator: Option<Arc<dyn Authenticator>>,
    caps: Arc<Caps>,
    proxies: TrustedProxies,
    auth_timeout: Duration,
    rate_limit: RateLimit,
    live_limiters: Arc<LiveCount>,
    /// Permits for TCP connections not yet upgraded (the standalone server).
    pub(crate) pending: Option<Arc<Semaphore>>,
    max_pending: usize,
    metrics: Arc<Metrics>,
}

/// A request that passed the gate.
pub(crate) struct Admitted {
    /// The client's address (forwarded, when from a trusted proxy).
    pub remote: SocketAddr,
    /// Its identity and when its credentials expire.
    pub credentials: Credentials,
    /// The subprotocol to select in the 101 response.
    pub subprotocol: Option<HeaderValue>,
    /// Held for the life of the connection.
    pub slot: ConnectionSlot,
}

impl Gate {
    pub(crate) fn new(
        cfg: &Config,
        custom: Option<Arc<dyn Authenticator>>,
        metrics: Arc<Metrics>,
    ) -> Result<Gate, String> {
        let authenticator: Option<Arc<dyn Authenticator>> = match custom {
            Some(a) => Some(a),
            None => cfg
                .auth
                .authenticator()?
                .map(|a| Arc::new(a) as Arc<dyn Authenticator>),
        };
        let origins = cfg.auth.allowed_origins.clone();
        if authenticator.is_some() && origins.is_any() {
            tracing::warn!(
                "authentication is on but every origin may connect (WS_ALLOWED_ORIGINS=*): \
                 set WS_ALLOWED_ORIGINS to the sites allowed to use this server from a browser"
            );
        }
        let l = &cfg.limits;
        Ok(Gate {
            origins,
            authenticator,
            caps: Arc::new(Caps::new(l.max_connections, l.max_connections_per_ip)),
            proxies: l.trusted_proxies.clone(),
            auth_timeout: l.handshake_timeout,
            rate_limit: l.rate_limit,
            live_limiters: Arc::new(LiveCount::default()),
            pending: (l.max_pending_handshakes > 0)
                .then(|| Arc::new(Semaphore::new(l.max_pending_handshakes))),
            max_pending: l.max_pending_handshakes,
            metrics,
        })
    }

    /// The rate limiter of a new connection, if rate limiting is on.
    pub(crate) fn rate_limiter(&self) -> Option<RateLimiter> {
        RateLimiter::new(&self.rate_limit, Arc::clone(&self.live_limiters))
    }

    /// Runs the checks; the error is the HTTP answer.
    pub(crate) async fn admit<B>(
        &self,
        req: &mut Request<B>,
        peer: SocketAddr,
    ) -> Result<Admitted, Response<Body>> {
        let remote = self.proxies.client_addr(peer, req.headers());
        let refused = |status: StatusCode, reason: &str, uri: &hyper::Uri| {
            tracing::debug!(
                %peer,
                %remote,
                target = %redacted_target(uri),
                status = status.as_u16(),
                reason,
                "upgrade refused"
            );
        };

        let origin = req
            .headers()
            .get(header::ORIGIN)
            .map(|v| v.to_str().unwrap_or("<invalid>"));
        if !self.origins.allows(origin) {
            self.metrics.incr("origin_rejections");
            refused(StatusCode::FORBIDDEN, "origin not allowed", req.uri());
            return Err(text(StatusCode::FORBIDDEN, "origin not allowed\n", None));
        }

        let slot = match self.caps.acquire(remote.ip()) {
            Ok(slot) => slot,
            Err(CapExceeded::Global) => {
                self.metrics.incr("connection_limit_rejections");
                refused(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "connection limit",
                    req.uri(),
                );
                return Err(text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server is at its connection limit; try again later\n",
                    Some("5"),
                ));
            }
            Err(CapExceeded::PerIp) => {
                self.metrics.incr("per_ip_limit_rejections");
                refused(
                    StatusCode::TOO_MANY_REQUESTS,
                    "per-address limit",
                    req.uri(),
                );
                return Err(text(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many connections from your address\n",
                    Some("5"),
                ));
            }
        };

        let (credentials, subprotocol) = match &self.authenticator {
            None => (Credentials::default(), None),
            Some(authenticator) => {
                // The headers are moved out for the authenticator and put
                // back for the upgrade: no copy, and the request's body type
                // need not be `Sync`.
                let areq = AuthRequest {
                    method: req.method().clone(),
                    uri: req.uri().clone(),
                    headers: std::mem::take(req.headers_mut()),
                    peer,
                    remote,
                };
                let outcome = tokio::time::timeout(
                    self.auth_timeout,
                    AssertUnwindSafe(authenticator.authenticate(&areq)).catch_unwind(),
                )
                .await;
                let AuthRequest { headers, uri, .. } = areq;
                *req.headers_mut() = headers;
                match outcome {
                    Ok(Ok(Ok(ok))) => {
                        let sub = ok.subprotocol.and_then(|p| {
                            let offered = req
                                .headers()
                                .get_all(header::SEC_WEBSOCKET_PROTOCOL)
                                .iter()
                                .filter_map(|v| v.to_str().ok())
                                .flat_map(|v| v.split(','))
                                .any(|o| o.trim() == p);
                            if !offered {
                                tracing::warn!(
                                    protocol = %p,
                                    "the authenticator selected a subprotocol the client did not offer; ignored"
                                );
                            }
                            offered.then(|| HeaderValue::from_str(&p).ok()).flatten()
                        });
                        tracing::debug!(%remote, identity = ?ok.identity, "authenticated");
                        let credentials = Credentials {
                            identity: ok.identity.map(Arc::from),
                            expires_at: ok.expires_at,
                        };
                        (credentials, sub)
                    }
                    Ok(Ok(Err(rejection))) => {
                        self.metrics.incr("auth_failures");
                        refused(rejection.status(), rejection.message(), &uri);
                        return Err(rejection_response(rejection));
                    }
                    Ok(Err(_panic)) => {
                        tracing::error!(%remote, "authenticator panicked");
                        return Err(text(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "authentication failed\n",
                            None,
                        ));
                    }
                    Err(_elapsed) => {
                        self.metrics.incr("auth_timeouts");
                        refused(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "authenticator timed out",
                            &uri,
                        );
                        return Err(text(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "authentication timed out; try again later\n",
                            Some("1"),
                        ));
                    }
                }
            }
        };
        Ok(Admitted {
            remote,
            credentials,
            subprotocol,
            slot,
        })
    }

    pub(crate) fn stats(&self) -> SecurityStats {
        SecurityStats {
            connections: self.caps.total(),
            tracked_addresses: self.caps.tracked_ips(),
            rate_limiters: self.live_limiters.get(),
            pending_handshakes: self.pending.as_ref().map_or(0, |s| {
                self.max_pending.saturating_sub(s.available_permits())
            }),
        }
    }
}

fn text(
    status: StatusCode,
    body: &'static str,
    retry_after: Option<&'static str>,
) -> Response<Body> {
    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some(secs) = retry_after {
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static(secs));
    }
    res
}

/// The HTTP response a client refused by its authenticator gets: the
/// rejection's status and message, and its `WWW-Authenticate` challenge.
pub(crate) fn rejection_response(rejection: AuthRejection) -> Response<Body> {
    let mut body = rejection.message().to_owned();
    body.push('\n');
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = rejection.status();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some(c) = rejection.www_authenticate() {
        h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
    }
    res
}

/// How much per-client state the security layer holds now: every count
/// returns to zero when every client has gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SecurityStats {
    /// Connections counted against `WS_MAX_CONNECTIONS` (upgraded, or
    /// admitted and upgrading).
    pub connections: usize,
    /// Client addresses with a per-address count (`WS_MAX_CONNECTIONS_PER_IP`).
    pub tracked_addresses: usize,
    /// Per-connection rate limiters alive.
    pub rate_limiters: usize,
    /// TCP connections accepted and not yet upgraded (standalone server).
    pub pending_handshakes: usize,
}

impl SecurityStats {
    /// Renders the counts as Prometheus gauges.
    pub(crate) fn render(&self) -> String {
        format!(
            "# HELP nbio_ws_counted_connections Connections counted against the connection caps.\n\
             # TYPE nbio_ws_counted_connections gauge\nnbio_ws_counted_connections {}\n\
             # HELP nbio_ws_tracked_addresses Client addresses with a per-address connection count.\n\
             # TYPE nbio_ws_tracked_addresses gauge\nnbio_ws_tracked_addresses {}\n\
             # HELP nbio_ws_rate_limiters Per-connection rate limiters alive.\n\
             # TYPE nbio_ws_rate_limiters gauge\nnbio_ws_rate_limiters {}\n\
             # HELP nbio_ws_pending_handshakes TCP connections accepted and not yet upgraded.\n\
             # TYPE nbio_ws_pending_handshakes gauge\nnbio_ws_pending_handshakes {}\n",
            self.connections, self.tracked_addresses, self.rate_limiters, self.pending_handshakes
        )
    }
}

impl WsEndpoint {
    /// How much per-client state the security layer (connection caps, rate
    /// limiters, handshakes in progress) holds now.
    pub fn security_stats(&self) -> SecurityStats {
        self.gate.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_render_status_and_challenge() {
        let res = rejection_response(AuthRejection::invalid_token());
        assert_eq!(res.status(), 401);
        assert_eq!(
            res.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer realm="nbio-ws", error="invalid_token""#
        );
        let res = rejection_response(AuthRejection::forbidden("no"));
        assert_eq!(res.status(), 403);
        assert!(res.headers().get(header::WWW_AUTHENTICATE).is_none());
    }
}
