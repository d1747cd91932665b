//! JSON Web Tokens (HS256 and RS256), with the `jwt` cargo feature.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Validates JSON Web Tokens (HS256 and RS256): `exp` (required) and `nbf`
/// with 60 s leeway, `aud` and `iss` when configured; `sub` (required)
/// becomes the identity. Only with the `jwt` cargo feature.
///
/// A connection admitted with a token is closed with
/// [`close::CREDENTIALS_EXPIRED`](crate::close::CREDENTIALS_EXPIRED)
/// (4001) at its `exp`, without leeway (see the [module docs](super)).
///
/// ```
/// use nbio_ws::auth::{BearerAuth, JwtVerifier};
///
/// let jwt = JwtVerifier::hs256(b"a long random secret")?.audience(["chat"]);
/// let auth = BearerAuth::new(Vec::new()).jwt(jwt);
/// let _ = nbio_ws::Server::builder().authenticator(auth).build();
/// # Ok::<(), String>(())
/// ```
pub struct JwtVerifier {
    hs256: Option<jsonwebtoken::DecodingKey>,
    rs256: Option<jsonwebtoken::DecodingKey>,
    audience: Vec<String>,
    issuer: Option<String>,
}

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

impl JwtVerifier {
    pub(crate) fn empty() -> Self {
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

    pub(crate) fn has_keys(&self) -> bool {
        self.hs256.is_some() || self.rs256.is_some()
    }

    /// The token's `sub`, if the token is valid.
    pub fn verify(&self, token: &str) -> Option<String> {
        self.verify_expiring(token).map(|(sub, _)| sub)
    }

    /// The token's `sub` and `exp` (`None`: too far off to represent), if
    /// the token is valid.
    pub(crate) fn verify_expiring(&self, token: &str) -> Option<(String, Option<SystemTime>)> {
        use jsonwebtoken::{Algorithm, Validation};
        #[derive(serde::Deserialize)]
        struct Claims {
            sub: String,
            // A number, as validation accepts it: a whole or a fraction,
            // finite and not negative (checked before this is read).
            exp: f64,
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
            Ok(data) if !data.claims.sub.is_empty() => {
                // Rounded, as validation rounds it; `as` saturates.
                let exp = Duration::from_secs(data.claims.exp.round() as u64);
                Some((data.claims.sub, UNIX_EPOCH.checked_add(exp)))
            }
            Ok(_) => None,
            Err(e) => {
                // The error kind only: never the token.
                tracing::debug!(error = ?e.kind(), "JWT refused");
                None
            }
        }
    }
}
