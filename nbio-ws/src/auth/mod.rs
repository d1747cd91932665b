//! Authentication before the upgrade, and the origin allow-list.
//!
//! An [`Authenticator`] looks at the upgrade request (method, path, query,
//! headers, peer address) before any WebSocket exists and either admits
//! it, with an identity that handlers read with
//! [`Client::identity`](crate::Client::identity), or rejects it with an
//! HTTP answer: no upgrade happens.
//!
//! ## Built in: bearer tokens (`WS_AUTH_ENABLED`, `WS_BEARER_TOKENS`)
//!
//! With `WS_AUTH_ENABLED=true`, [`BearerAuth`] accepts the tokens listed in
//! `WS_BEARER_TOKENS` (comma-separated; an entry `alice:s3cret` gives the
//! identity `alice`, a bare entry the identity `token-N`, its position in
//! the list counting from 1). Tokens are compared in constant time. A
//! client presents its token in one of three ways, looked at in this
//! order:
//!
//! 1. `Authorization: Bearer <token>`: for every client that can set
//!    headers.
//! 2. `Sec-WebSocket-Protocol: bearer, <token>`: for browsers, which
//!    cannot set headers on a WebSocket: `new WebSocket(url, ["bearer",
//!    token])`. The entry after `bearer` is the token. The server selects
//!    the subprotocol `bearer` in its 101 response, as browsers require (a
//!    browser fails the connection when the server selects none of the
//!    offered subprotocols). The token must consist of HTTP token
//!    characters: base64url and JWTs do; standard base64 with `/`, `+` or
//!    `=` does not.
//! 3. `?token=<token>` in the query string, as the Go seed did. Proxies
//!    tend to log URLs: prefer the other two.
//!
//! With the `jwt` cargo feature, `WS_JWT_SECRET` (HS256) and/or
//! `WS_JWT_PUBLIC_KEY` (a PEM file, RS256) make [`BearerAuth`] accept JSON
//! Web Tokens as well; `exp` is required, `exp` and `nbf` are checked (60 s
//! leeway), `aud` is checked against `WS_JWT_AUDIENCE` when that is set
//! (comma-separated), `iss` against `WS_JWT_ISSUER` when set, and `sub`
//! becomes the identity.
//!
//! ## Credentials that expire
//!
//! A connection admitted with credentials that expire is closed with
//! [`close::CREDENTIALS_EXPIRED`](crate::close::CREDENTIALS_EXPIRED)
//! (4001, reason `credentials expired`) when they do: the client should
//! get fresh credentials, then reconnect (the JavaScript client calls its
//! `getToken` before every attempt). For a JWT that time is its `exp`, on
//! the server's clock: the leeway applies to the upgrade only, so a token
//! up to 60 s past its `exp` is still admitted — and then closed with 4001
//! at once, which a browser can see, unlike a refused upgrade. An
//! authenticator of your own gives an expiry with
//! [`Authenticated::with_expiry`]. The timer is armed when the connection
//! starts (later changes of the wall clock do not move it); a connection
//! without an expiry has none.
//!
//! A request without a valid token gets `401 Unauthorized` with
//! `WWW-Authenticate: Bearer realm="nbio-ws"` (plus `error="invalid_token"`
//! when a token was presented but is wrong) and no upgrade.
//!
//! Secrets stay out of logs: tokens are never logged at any level, query
//! strings are logged as `?<redacted>`, and the `Debug` output of
//! [`Config`](crate::Config) shows `<redacted>` in place of secrets.
//!
//! ## Your own authenticator
//!
//! ```
//! use nbio_ws::auth::{self, AuthRejection, Authenticated};
//!
//! let server = nbio_ws::Server::builder()
//!     .authenticator(auth::from_fn(|req: &auth::AuthRequest| {
//!         // Take what you need from the request, then check it (async).
//!         let user = req.header("x-user").map(str::to_owned);
//!         async move {
//!             match user {
//!                 Some(u) if u != "mallory" => Ok(Authenticated::identity(u)),
//!                 Some(_) => Err(AuthRejection::forbidden("not you")),
//!                 None => Err(AuthRejection::unauthorized("who are you?")),
//!             }
//!         }
//!     }))
//!     .build();
//! assert!(server.is_ok());
//! ```
//!
//! ## Origins (`WS_ALLOWED_ORIGINS`)
//!
//! Browsers send an `Origin` header; `WS_ALLOWED_ORIGINS` lists the
//! origins allowed to connect (comma-separated, `scheme://host[:port]`,
//! matched exactly on scheme, host and port, default ports made explicit).
//! The default, `*`, allows every origin, as the seed did. A request
//! without `Origin` (not a browser) is allowed. Any other origin gets
//! `403 Forbidden`. Startup warns when authentication is on and every
//! origin is allowed: a page on any site could then use a browser's
//! credentials.

mod bearer;
#[cfg(feature = "jwt")]
mod jwt;
mod origin;

pub use bearer::{BearerAuth, BearerToken};
#[cfg(feature = "jwt")]
pub use jwt::JwtVerifier;
pub use origin::AllowedOrigins;

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use hyper::header;
use hyper::{HeaderMap, Method, StatusCode, Uri};

use crate::env::{ConfigError, Env};

/// A secret string (token, key): compared like a string, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Authentication settings. Part of [`Config`](crate::Config)
/// (`config.auth`); its `Debug` output hides the secrets.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct AuthConfig {
    /// Whether clients must authenticate (`WS_AUTH_ENABLED`, default `false`).
    pub enabled: bool,
    /// Accepted bearer tokens (`WS_BEARER_TOKENS`).
    pub bearer_tokens: Vec<BearerToken>,
    /// HS256 secret for JWTs (`WS_JWT_SECRET`; needs the `jwt` feature).
    pub jwt_secret: Option<Secret>,
    /// PEM file of the RS256 public key for JWTs (`WS_JWT_PUBLIC_KEY`;
    /// needs the `jwt` feature).
    pub jwt_public_key: Option<std::path::PathBuf>,
    /// Accepted JWT audiences (`WS_JWT_AUDIENCE`, comma-separated); empty:
    /// `aud` is not checked.
    pub jwt_audience: Vec<String>,
    /// Required JWT issuer (`WS_JWT_ISSUER`).
    pub jwt_issuer: Option<String>,
    /// Origins allowed to connect (`WS_ALLOWED_ORIGINS`, default `*`).
    pub allowed_origins: AllowedOrigins,
}

impl AuthConfig {
    pub(crate) fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        let secret_err = |var: &'static str, reason: &str| ConfigError {
            var,
            value: "<redacted>".into(),
            reason: reason.into(),
        };
        let enabled = env.boolean("WS_AUTH_ENABLED")?.unwrap_or(false);
        let bearer_tokens = env
            .string("WS_BEARER_TOKENS")?
            .map(|v| BearerToken::parse_list(v.split(',')))
            .unwrap_or_default();
        let jwt_secret = env.string("WS_JWT_SECRET")?.map(Secret::new);
        let jwt_public_key = env
            .string("WS_JWT_PUBLIC_KEY")?
            .map(std::path::PathBuf::from);
        if !cfg!(feature = "jwt") {
            if jwt_secret.is_some() {
                return Err(secret_err(
                    "WS_JWT_SECRET",
                    "JWT support needs nbio-ws built with the `jwt` cargo feature",
                ));
            }
            if let Some(p) = &jwt_public_key {
                return Err(env.invalid(
                    "WS_JWT_PUBLIC_KEY",
                    &p.display().to_string(),
                    "nbio-ws built with the `jwt` cargo feature",
                ));
            }
        }
        let cfg = AuthConfig {
            enabled,
            bearer_tokens,
            jwt_secret,
            jwt_public_key,
            jwt_audience: env
                .string("WS_JWT_AUDIENCE")?
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            jwt_issuer: env.string("WS_JWT_ISSUER")?,
            allowed_origins: env
                .parse(
                    "WS_ALLOWED_ORIGINS",
                    "* or comma-separated origins such as https://example.com:8443",
                    |v| AllowedOrigins::parse(v).ok(),
                )?
                .unwrap_or_default(),
        };
        if cfg.enabled && !cfg.has_credentials() {
            return Err(env.invalid(
                "WS_AUTH_ENABLED",
                "true",
                "WS_BEARER_TOKENS, WS_JWT_SECRET or WS_JWT_PUBLIC_KEY to be set as well",
            ));
        }
        Ok(cfg)
    }

    fn has_credentials(&self) -> bool {
        !self.bearer_tokens.is_empty() || self.jwt_secret.is_some() || self.jwt_public_key.is_some()
    }

    /// The built-in authenticator these settings describe, if
    /// authentication is enabled.
    pub(crate) fn authenticator(&self) -> Result<Option<BearerAuth>, String> {
        if !self.enabled {
            return Ok(None);
        }
        if !self.has_credentials() {
            return Err("authentication is enabled but no token or JWT key is configured".into());
        }
        #[allow(unused_mut)]
        let mut auth = BearerAuth::new(self.bearer_tokens.clone());
        #[cfg(feature = "jwt")]
        {
            let mut jwt = JwtVerifier::empty();
            if let Some(s) = &self.jwt_secret {
                jwt = jwt.with_hs256(s.expose().as_bytes())?;
            }
            if let Some(path) = &self.jwt_public_key {
                let pem = std::fs::read(path).map_err(|e| {
                    format!("cannot read WS_JWT_PUBLIC_KEY {}: {e}", path.display())
                })?;
                jwt = jwt
                    .with_rs256_pem(&pem)
                    .map_err(|e| format!("WS_JWT_PUBLIC_KEY {}: {e}", path.display()))?;
            }
            if jwt.has_keys() {
                jwt = jwt.audience(self.jwt_audience.iter().cloned());
                if let Some(iss) = &self.jwt_issuer {
                    jwt = jwt.issuer(iss.clone());
                }
                auth = auth.jwt(jwt);
            }
        }
        Ok(Some(auth))
    }
}

// ---------------------------------------------------------------------------
// The request an authenticator sees

/// Where a client's token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`.
    Header,
    /// `Sec-WebSocket-Protocol: bearer, <token>`; the server selects `bearer`.
    Subprotocol,
    /// `?token=<token>`.
    Query,
}

/// The upgrade request, as an [`Authenticator`] sees it.
#[derive(Debug)]
pub struct AuthRequest {
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) headers: HeaderMap,
    pub(crate) peer: SocketAddr,
    pub(crate) remote: SocketAddr,
}

impl AuthRequest {
    /// A request, for testing authenticators.
    pub fn new(method: Method, uri: Uri, headers: HeaderMap, peer: SocketAddr) -> Self {
        AuthRequest {
            method,
            uri,
            headers,
            peer,
            remote: peer,
        }
    }

    /// The HTTP method (always `GET` for a WebSocket upgrade).
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The path.
    pub fn path(&self) -> &str {
        self.uri.path()
    }

    /// The raw query string, if any.
    pub fn query(&self) -> Option<&str> {
        self.uri.query()
    }

    /// A query parameter, percent-decoded (`+` is a space).
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.uri.query()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k).as_deref() == Some(name))
                .then(|| percent_decode(v))
                .flatten()
        })
    }

    /// The request headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// A header's value, if present and valid text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The TCP peer (the proxy, when there is one).
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The client's address: the peer, or the forwarded address when the
    /// peer is a trusted proxy (see [`limits`](crate::limits)).
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote
    }

    /// The subprotocols the client offered, in order.
    pub fn subprotocols(&self) -> impl Iterator<Item = &str> {
        self.headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
    }

    /// The bearer token the client presented, and where: the
    /// `Authorization` header, else the `bearer, <token>` subprotocol pair,
    /// else the `token` query parameter.
    pub fn bearer_token(&self) -> Option<(String, TokenSource)> {
        if let Some(v) = self.header("authorization") {
            let v = v.trim();
            if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
                let t = v[7..].trim();
                if !t.is_empty() {
                    return Some((t.to_owned(), TokenSource::Header));
                }
            }
        }
        let mut offered = self.subprotocols();
        while let Some(p) = offered.next() {
            if p == "bearer" {
                if let Some(t) = offered.next() {
                    return Some((t.to_owned(), TokenSource::Subprotocol));
                }
            }
        }
        self.query_param("token")
            .filter(|t| !t.is_empty())
            .map(|t| (t, TokenSource::Query))
    }
}

/// Decodes `%XX` escapes and `+`; `None` for invalid escapes or UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The request target for logs: the path, and `?<redacted>` in place of
/// any query string (which may carry a token).
pub(crate) fn redacted_target(uri: &Uri) -> String {
    match uri.query() {
        Some(_) => format!("{}?<redacted>", uri.path()),
        None => uri.path().to_owned(),
    }
}

// ---------------------------------------------------------------------------
// Outcomes

/// An admitted client: its identity, the subprotocol to select, and when
/// its credentials expire.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Authenticated {
    pub(crate) identity: Option<String>,
    pub(crate) subprotocol: Option<String>,
    pub(crate) expires_at: Option<SystemTime>,
}

impl Authenticated {
    /// Admitted with an identity, read by handlers with
    /// [`Client::identity`](crate::Client::identity).
    pub fn identity(identity: impl Into<String>) -> Self {
        Authenticated {
            identity: Some(identity.into()),
            ..Authenticated::default()
        }
    }

    /// Admitted without an identity.
    pub fn anonymous() -> Self {
        Authenticated::default()
    }

    /// Selects this subprotocol in the 101 response (it must be one the
    /// client offered).
    pub fn with_subprotocol(mut self, protocol: impl Into<String>) -> Self {
        self.subprotocol = Some(protocol.into());
        self
    }

    /// The credentials expire at `at`: the connection is closed then with
    /// [`close::CREDENTIALS_EXPIRED`](crate::close::CREDENTIALS_EXPIRED)
    /// (4001), telling the client to refresh them and reconnect. A time
    /// already past closes the connection as soon as it starts.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use nbio_ws::auth::Authenticated;
    ///
    /// let until = SystemTime::now() + Duration::from_secs(3600);
    /// let ok = Authenticated::identity("ada").with_expiry(until);
    /// assert_eq!(ok.expires_at(), Some(until));
    /// ```
    pub fn with_expiry(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// The identity, if any.
    pub fn identity_str(&self) -> Option<&str> {
        self.identity.as_deref()
    }

    /// When the credentials expire, if they do.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }
}

/// What a connection keeps of its authentication.
#[derive(Debug, Clone, Default)]
pub(crate) struct Credentials {
    pub identity: Option<Arc<str>>,
    pub expires_at: Option<SystemTime>,
}

/// A refused upgrade: the HTTP status and a short message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRejection {
    status: StatusCode,
    message: Cow<'static, str>,
    challenge: Option<&'static str>,
}

impl AuthRejection {
    /// `401 Unauthorized` with `WWW-Authenticate: Bearer realm="nbio-ws"`:
    /// no credentials.
    pub fn unauthorized(message: impl Into<Cow<'static, str>>) -> Self {
        AuthRejection {
            status: StatusCode::UNAUTHORIZED,
            message: message.into(),
            challenge: Some(r#"Bearer realm="nbio-ws""#),
        }
    }

    /// `401 Unauthorized` with
    /// `WWW-Authenticate: Bearer realm="nbio-ws", error="invalid_token"`:
    /// credentials that are wrong or expired.
    pub fn invalid_token() -> Self {
        AuthRejection {
            status: StatusCode::UNAUTHORIZED,
            message: "invalid token".into(),
            challenge: Some(r#"Bearer realm="nbio-ws", error="invalid_token""#),
        }
    }

    /// `403 Forbidden`: known, but not allowed.
    pub fn forbidden(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    /// Any status (a 4xx or 5xx) and message.
    pub fn new(status: StatusCode, message: impl Into<Cow<'static, str>>) -> Self {
        AuthRejection {
            status,
            message: message.into(),
            challenge: None,
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message sent as the response body.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The `WWW-Authenticate` challenge sent with the response, if any.
    pub fn www_authenticate(&self) -> Option<&'static str> {
        self.challenge
    }
}

/// What an authenticator decides.
pub type AuthResult = Result<Authenticated, AuthRejection>;

/// The future an [`Authenticator`] returns.
pub type AuthFuture<'a> = Pin<Box<dyn Future<Output = AuthResult> + Send + 'a>>;

/// Decides, before the upgrade, whether a client may connect and who it
/// is. See the [module docs](self) and [`from_fn`] for closures.
///
/// ```
/// use nbio_ws::auth::{AuthFuture, AuthRejection, AuthRequest, Authenticated, Authenticator};
///
/// /// Lets in clients that present an API key known to a (here: static) store.
/// struct ApiKeys;
///
/// impl Authenticator for ApiKeys {
///     fn authenticate<'a>(&'a self, req: &'a AuthRequest) -> AuthFuture<'a> {
///         Box::pin(async move {
///             match req.header("x-api-key") {
///                 Some("k-123") => Ok(Authenticated::identity("service-a")),
///                 _ => Err(AuthRejection::unauthorized("an API key is required")),
///             }
///         })
///     }
/// }
/// let _ = nbio_ws::Server::builder().authenticator(ApiKeys).build();
/// ```
pub trait Authenticator: Send + Sync + 'static {
    /// Admits the request, or rejects it.
    fn authenticate<'a>(&'a self, req: &'a AuthRequest) -> AuthFuture<'a>;
}

impl<T: Authenticator + ?Sized> Authenticator for Arc<T> {
    fn authenticate<'a>(&'a self, req: &'a AuthRequest) -> AuthFuture<'a> {
        (**self).authenticate(req)
    }
}

/// An [`Authenticator`] made of a function; see [`from_fn`].
#[derive(Clone)]
pub struct FnAuthenticator<F>(F);

impl<F> fmt::Debug for FnAuthenticator<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnAuthenticator")
    }
}

/// An authenticator from a function that reads what it needs from the
/// request and returns a future of the decision. See the module example.
pub fn from_fn<F, Fut>(f: F) -> FnAuthenticator<F>
where
    F: Fn(&AuthRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = AuthResult> + Send + 'static,
{
    FnAuthenticator(f)
}

impl<F, Fut> Authenticator for FnAuthenticator<F>
where
    F: Fn(&AuthRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = AuthResult> + Send + 'static,
{
    fn authenticate<'a>(&'a self, req: &'a AuthRequest) -> AuthFuture<'a> {
        Box::pin((self.0)(req))
    }
}

/// An upgrade request with these headers, for unit tests.
#[cfg(test)]
pub(crate) fn test_request(uri: &str, headers: &[(&str, &str)]) -> AuthRequest {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.append(
            hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    AuthRequest::new(
        Method::GET,
        uri.parse().unwrap(),
        h,
        "127.0.0.1:1".parse().unwrap(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, headers: &[(&str, &str)]) -> AuthRequest {
        test_request(uri, headers)
    }

    #[test]
    fn tokens_from_each_source() {
        assert_eq!(
            req("/ws", &[("authorization", "Bearer abc")]).bearer_token(),
            Some(("abc".into(), TokenSource::Header))
        );
        assert_eq!(
            req("/ws", &[("authorization", "bearer   abc ")]).bearer_token(),
            Some(("abc".into(), TokenSource::Header))
        );
        assert_eq!(
            req(
                "/ws",
                &[("sec-websocket-protocol", "chat, bearer, t.o-k_en")]
            )
            .bearer_token(),
            Some(("t.o-k_en".into(), TokenSource::Subprotocol))
        );
        assert_eq!(
            req("/ws?a=1&token=a%2Bb%3D", &[]).bearer_token(),
            Some(("a+b=".into(), TokenSource::Query))
        );
        assert_eq!(
            req("/ws", &[("authorization", "Basic x")]).bearer_token(),
            None
        );
        assert_eq!(
            req("/ws", &[("sec-websocket-protocol", "bearer")]).bearer_token(),
            None
        );
        assert_eq!(req("/ws?token=", &[]).bearer_token(), None);
        assert_eq!(req("/ws?token=%zz", &[]).bearer_token(), None);
    }

    #[test]
    fn config_hides_secrets() {
        let vars = [
            ("WS_AUTH_ENABLED", "true"),
            ("WS_BEARER_TOKENS", "alice:sup3r-s3cret,plain-s3cret"),
        ];
        let cfg = crate::Config::from_lookup(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
        .unwrap();
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("alice"), "{shown}");
        assert_eq!(cfg.auth.bearer_tokens[1].identity, "token-2");

        let err = crate::Config::from_lookup(|k| (k == "WS_AUTH_ENABLED").then(|| "yes".into()))
            .unwrap_err();
        assert_eq!(err.var, "WS_AUTH_ENABLED");
        #[cfg(not(feature = "jwt"))]
        {
            let err = crate::Config::from_lookup(|k| {
                (k == "WS_JWT_SECRET").then(|| "very-secret".into())
            })
            .unwrap_err();
            assert!(!err.to_string().contains("very-secret"), "{err}");
        }
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redacted_target(&"/ws?token=abc".parse().unwrap()),
            "/ws?<redacted>"
        );
        assert_eq!(redacted_target(&"/ws".parse().unwrap()), "/ws");
    }
}
