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

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{HeaderMap, Method, Response, StatusCode, Uri};
use subtle::ConstantTimeEq;

use crate::config::{ConfigError, Env};
use crate::http::Body;

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

/// One accepted bearer token and the identity it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BearerToken {
    /// The identity a client presenting this token gets.
    pub identity: String,
    /// The token.
    pub token: Secret,
}

impl BearerToken {
    /// Parses the entries of a `WS_BEARER_TOKENS` list: `name:token` or a
    /// bare `token` (identity `token-N`, N counting from 1).
    pub fn parse_list<'a>(entries: impl IntoIterator<Item = &'a str>) -> Vec<BearerToken> {
        entries
            .into_iter()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .enumerate()
            .map(|(i, e)| match e.split_once(':') {
                Some((name, token)) if !name.trim().is_empty() && !token.trim().is_empty() => {
                    BearerToken {
                        identity: name.trim().to_owned(),
                        token: Secret::new(token.trim()),
                    }
                }
                _ => BearerToken {
                    identity: format!("token-{}", i + 1),
                    token: Secret::new(e),
                },
            })
            .collect()
    }
}

/// An origin: scheme, host and port, normalized.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    /// Parses `scheme://host[:port]` (no path); lowercases scheme and host
    /// and makes default ports explicit.
    fn parse(s: &str) -> Option<Origin> {
        let (scheme, rest) = s.trim().split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
            return None;
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6.split_once(']')?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':')?),
            };
            (format!("[{}]", h.to_ascii_lowercase()), port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_ascii_lowercase(), Some(p)),
                None => (rest.to_ascii_lowercase(), None),
            }
        };
        if host.is_empty() || host.contains(':') && !host.starts_with('[') {
            return None;
        }
        let port = match port {
            Some(p) => p.parse().ok()?,
            None => match scheme.as_str() {
                "http" | "ws" => 80,
                "https" | "wss" => 443,
                _ => return None,
            },
        };
        Some(Origin { scheme, host, port })
    }
}

/// The origins allowed to open a WebSocket (`WS_ALLOWED_ORIGINS`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AllowedOrigins(Option<Vec<Origin>>);

impl AllowedOrigins {
    /// Every origin (`*`), the default.
    pub fn any() -> Self {
        AllowedOrigins(None)
    }

    /// Parses a comma-separated list, or `*`. The entry that does not parse
    /// is the error.
    pub fn parse(list: &str) -> Result<Self, String> {
        let items: Vec<&str> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if items.is_empty() || items.contains(&"*") {
            return Ok(Self::any());
        }
        let mut origins = Vec::new();
        for item in items {
            origins.push(Origin::parse(item).ok_or_else(|| item.to_owned())?);
        }
        Ok(AllowedOrigins(Some(origins)))
    }

    /// Whether every origin is allowed.
    pub fn is_any(&self) -> bool {
        self.0.is_none()
    }

    /// Whether a request with this `Origin` header value may connect
    /// (`None`: no header, allowed).
    pub fn allows(&self, origin: Option<&str>) -> bool {
        match (&self.0, origin) {
            (None, _) | (_, None) => true,
            (Some(list), Some(o)) => Origin::parse(o).is_some_and(|o| list.contains(&o)),
        }
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

/// An admitted client: its identity, and the subprotocol to select.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Authenticated {
    pub(crate) identity: Option<String>,
    pub(crate) subprotocol: Option<String>,
}

impl Authenticated {
    /// Admitted with an identity, read by handlers with
    /// [`Client::identity`](crate::Client::identity).
    pub fn identity(identity: impl Into<String>) -> Self {
        Authenticated {
            identity: Some(identity.into()),
            subprotocol: None,
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

    /// The identity, if any.
    pub fn identity_str(&self) -> Option<&str> {
        self.identity.as_deref()
    }
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

    /// The HTTP response the client gets.
    pub fn into_response(self) -> Response<Body> {
        let mut body = self.message.into_owned();
        body.push('\n');
        let mut res = Response::new(Full::new(Bytes::from(body)));
        *res.status_mut() = self.status;
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let Some(c) = self.challenge {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
        res
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

// ---------------------------------------------------------------------------
// Bearer tokens

/// The built-in authenticator: static bearer tokens (and JWTs with the
/// `jwt` feature), from the header, the `bearer` subprotocol or the query.
///
/// ```
/// use nbio_ws::auth::{BearerAuth, BearerToken};
///
/// let auth = BearerAuth::new(BearerToken::parse_list(["alice:tok-a", "tok-b"]));
/// let server = nbio_ws::Server::builder().authenticator(auth).build();
/// assert!(server.is_ok());
/// ```
pub struct BearerAuth {
    tokens: Vec<BearerToken>,
    #[cfg(feature = "jwt")]
    jwt: Option<JwtVerifier>,
}

impl fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerAuth")
            .field("tokens", &self.tokens.len())
            .finish_non_exhaustive()
    }
}

impl BearerAuth {
    /// Accepts these tokens.
    pub fn new(tokens: Vec<BearerToken>) -> Self {
        BearerAuth {
            tokens,
            #[cfg(feature = "jwt")]
            jwt: None,
        }
    }

    /// Also accepts JWTs that `verifier` validates.
    #[cfg(feature = "jwt")]
    pub fn jwt(mut self, verifier: JwtVerifier) -> Self {
        self.jwt = Some(verifier);
        self
    }

    /// The identity of a token, checked in constant time against every
    /// configured token (no early exit, so timing tells nothing about which
    /// token nearly matched).
    fn check_static(&self, token: &str) -> Option<&str> {
        let presented = token.as_bytes();
        let mut found: Option<&str> = None;
        for t in &self.tokens {
            let known = t.token.expose().as_bytes();
            // Unequal lengths compare false at once: only the length of a
            // configured token can leak, never its content.
            let equal: bool = known.ct_eq(presented).into();
            if equal && found.is_none() {
                found = Some(&t.identity);
            }
        }
        found
    }

    fn check(&self, token: &str) -> Option<String> {
        if let Some(id) = self.check_static(token) {
            return Some(id.to_owned());
        }
        #[cfg(feature = "jwt")]
        if let Some(jwt) = &self.jwt {
            return jwt.verify(token);
        }
        None
    }
}

impl Authenticator for BearerAuth {
    fn authenticate<'a>(&'a self, req: &'a AuthRequest) -> AuthFuture<'a> {
        let outcome = match req.bearer_token() {
            None => Err(AuthRejection::unauthorized("authentication required")),
            Some((token, source)) => match self.check(&token) {
                None => Err(AuthRejection::invalid_token()),
                Some(id) => {
                    let ok = Authenticated::identity(id);
                    Ok(if source == TokenSource::Subprotocol {
                        ok.with_subprotocol("bearer")
                    } else {
                        ok
                    })
                }
            },
        };
        Box::pin(std::future::ready(outcome))
    }
}

// ---------------------------------------------------------------------------
// JWT

/// Validates JSON Web Tokens (HS256 and RS256): `exp` (required) and `nbf`
/// with 60 s leeway, `aud` and `iss` when configured; `sub` (required)
/// becomes the identity. Only with the `jwt` cargo feature.
///
/// ```
/// use nbio_ws::auth::{BearerAuth, JwtVerifier};
///
/// let jwt = JwtVerifier::hs256(b"a long random secret")?.audience(["chat"]);
/// let auth = BearerAuth::new(Vec::new()).jwt(jwt);
/// let _ = nbio_ws::Server::builder().authenticator(auth).build();
/// # Ok::<(), String>(())
/// ```
#[cfg(feature = "jwt")]
pub struct JwtVerifier {
    hs256: Option<jsonwebtoken::DecodingKey>,
    rs256: Option<jsonwebtoken::DecodingKey>,
    audience: Vec<String>,
    issuer: Option<String>,
}

#[cfg(feature = "jwt")]
impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("hs256", &self.hs256.is_some())
            .field("rs256", &self.rs256.is_some())
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .finish()
    }
}

#[cfg(feature = "jwt")]
impl JwtVerifier {
    fn empty() -> Self {
        JwtVerifier {
            hs256: None,
            rs256: None,
            audience: Vec::new(),
            issuer: None,
        }
    }

    /// Accepts HS256 tokens signed with `secret` (not empty).
    pub fn hs256(secret: &[u8]) -> Result<Self, String> {
        Self::empty().with_hs256(secret)
    }

    /// Accepts RS256 tokens signed by the key whose public half is in
    /// `pem` (`-----BEGIN PUBLIC KEY-----` or `BEGIN RSA PUBLIC KEY`).
    pub fn rs256_pem(pem: &[u8]) -> Result<Self, String> {
        Self::empty().with_rs256_pem(pem)
    }

    /// Also accepts HS256 tokens signed with `secret` (not empty).
    pub fn with_hs256(mut self, secret: &[u8]) -> Result<Self, String> {
        let key = jsonwebtoken::DecodingKey::from_secret(secret)
            .map_err(|e| format!("unusable HS256 secret: {e}"))?;
        self.hs256 = Some(key);
        Ok(self)
    }

    /// Also accepts RS256 tokens signed by the key in `pem`.
    pub fn with_rs256_pem(mut self, pem: &[u8]) -> Result<Self, String> {
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(pem)
            .map_err(|e| format!("not an RSA public key in PEM: {e}"))?;
        self.rs256 = Some(key);
        Ok(self)
    }

    /// Requires `aud` to name one of these (none: `aud` is not checked).
    pub fn audience<S: Into<String>>(mut self, aud: impl IntoIterator<Item = S>) -> Self {
        self.audience = aud.into_iter().map(Into::into).collect();
        self
    }

    /// Requires `iss` to be this.
    pub fn issuer(mut self, iss: impl Into<String>) -> Self {
        self.issuer = Some(iss.into());
        self
    }

    fn has_keys(&self) -> bool {
        self.hs256.is_some() || self.rs256.is_some()
    }

    /// The token's `sub`, if the token is valid.
    pub fn verify(&self, token: &str) -> Option<String> {
        use jsonwebtoken::{Algorithm, Validation};
        #[derive(serde::Deserialize)]
        struct Claims {
            sub: String,
        }
        let header = jsonwebtoken::decode_header(token).ok()?;
        // The key is picked by the algorithm, and the validation allows only
        // that algorithm: an HS256 token "signed" with the public key is
        // refused.
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref()?,
            Algorithm::RS256 => self.rs256.as_ref()?,
            _ => return None,
        };
        let mut v = Validation::new(header.alg);
        // A configured audience or issuer must be present, not merely
        // right when present.
        let mut required = vec!["exp", "sub"];
        if !self.audience.is_empty() {
            required.push("aud");
        }
        if self.issuer.is_some() {
            required.push("iss");
        }
        v.set_required_spec_claims(&required);
        v.validate_exp = true;
        v.validate_nbf = true;
        v.leeway = 60;
        if self.audience.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&self.audience);
        }
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
        }
        match jsonwebtoken::decode::<Claims>(token, key, &v) {
            Ok(data) if !data.claims.sub.is_empty() => Some(data.claims.sub),
            Ok(_) => None,
            Err(e) => {
                // The error kind only: never the token.
                tracing::debug!(error = ?e.kind(), "JWT refused");
                None
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Builder

impl crate::ServerBuilder {
    /// Authenticates every upgrade request with `authenticator` (replacing
    /// the built-in bearer token check of `WS_AUTH_ENABLED`). See
    /// [`auth`](crate::auth).
    pub fn authenticator(mut self, authenticator: impl Authenticator) -> Self {
        self.authenticator = Some(Arc::new(authenticator));
        self
    }

    /// Turns authentication on with these bearer tokens (`name:token` or
    /// a bare token), like `WS_AUTH_ENABLED=true` and `WS_BEARER_TOKENS`.
    pub fn bearer_tokens<'a>(mut self, tokens: impl IntoIterator<Item = &'a str>) -> Self {
        self.config.auth.enabled = true;
        self.config.auth.bearer_tokens = BearerToken::parse_list(tokens);
        self
    }

    /// The origins allowed to connect (`WS_ALLOWED_ORIGINS`), e.g.
    /// `["https://app.example.com"]`; `["*"]` allows all (the default).
    /// An origin that does not parse makes [`build`](crate::ServerBuilder::build) fail.
    pub fn allowed_origins<'a>(mut self, origins: impl IntoIterator<Item = &'a str>) -> Self {
        let list: Vec<&str> = origins.into_iter().collect();
        match AllowedOrigins::parse(&list.join(",")) {
            Ok(o) => self.config.auth.allowed_origins = o,
            Err(bad) => self.security_error = Some(format!("invalid allowed origin {bad:?}")),
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, headers: &[(&str, &str)]) -> AuthRequest {
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

    #[tokio::test]
    async fn bearer_auth_identities() {
        let auth = BearerAuth::new(BearerToken::parse_list(["alice:aaa", "bbb", " "]));
        let ok = auth
            .authenticate(&req("/ws", &[("authorization", "Bearer aaa")]))
            .await
            .unwrap();
        assert_eq!(ok.identity_str(), Some("alice"));
        assert_eq!(ok.subprotocol, None);
        let ok = auth
            .authenticate(&req("/ws", &[("sec-websocket-protocol", "bearer, bbb")]))
            .await
            .unwrap();
        assert_eq!(ok.identity_str(), Some("token-2"));
        assert_eq!(ok.subprotocol.as_deref(), Some("bearer"));
        let no = auth.authenticate(&req("/ws", &[])).await.unwrap_err();
        assert_eq!(no.status(), StatusCode::UNAUTHORIZED);
        let res = auth
            .authenticate(&req("/ws?token=aa", &[]))
            .await
            .unwrap_err()
            .into_response();
        assert_eq!(res.status(), 401);
        assert_eq!(
            res.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer realm="nbio-ws", error="invalid_token""#
        );
    }

    #[test]
    fn origins() {
        let o = AllowedOrigins::parse("https://app.example.com, http://localhost:3000").unwrap();
        assert!(o.allows(None));
        assert!(o.allows(Some("https://app.example.com")));
        assert!(o.allows(Some("HTTPS://App.Example.com:443")));
        assert!(o.allows(Some("http://localhost:3000")));
        assert!(!o.allows(Some("http://localhost:3001")));
        assert!(!o.allows(Some("http://app.example.com")));
        assert!(!o.allows(Some("https://app.example.com.evil.test")));
        assert!(!o.allows(Some("null")));
        assert!(AllowedOrigins::parse("*")
            .unwrap()
            .allows(Some("https://x")));
        assert_eq!(
            AllowedOrigins::parse("https://a/path").unwrap_err(),
            "https://a/path"
        );
        assert_eq!(
            AllowedOrigins::parse("example.com").unwrap_err(),
            "example.com"
        );
        let v6 = AllowedOrigins::parse("http://[::1]:8080").unwrap();
        assert!(v6.allows(Some("http://[::1]:8080")));
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
