//! The built-in authenticator: static bearer tokens, compared in constant
//! time (and JWTs with the `jwt` feature).

use std::fmt;

use subtle::ConstantTimeEq;

#[cfg(feature = "jwt")]
use super::JwtVerifier;
use super::{
    AuthFuture, AuthRejection, AuthRequest, Authenticated, Authenticator, Secret, TokenSource,
};

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

    /// Who the token stands for, and when it expires (static tokens do
    /// not).
    fn check(&self, token: &str) -> Option<Authenticated> {
        if let Some(id) = self.check_static(token) {
            return Some(Authenticated::identity(id));
        }
        #[cfg(feature = "jwt")]
        if let Some(jwt) = &self.jwt {
            let (sub, exp) = jwt.verify_expiring(token)?;
            let ok = Authenticated::identity(sub);
            return Some(match exp {
                Some(at) => ok.with_expiry(at),
                None => ok,
            });
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
                Some(ok) => Ok(if source == TokenSource::Subprotocol {
                    ok.with_subprotocol("bearer")
                } else {
                    ok
                }),
            },
        };
        Box::pin(std::future::ready(outcome))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::StatusCode;

    fn req(uri: &str, headers: &[(&str, &str)]) -> AuthRequest {
        crate::auth::test_request(uri, headers)
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
            .unwrap_err();
        assert_eq!(res.status(), 401);
        assert_eq!(
            res.www_authenticate(),
            Some(r#"Bearer realm="nbio-ws", error="invalid_token""#)
        );
    }
}
