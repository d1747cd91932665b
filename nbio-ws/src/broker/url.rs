//! Broker URL checks and redaction, for every backend (and backends
//! written outside this crate).

use crate::env::ConfigError;

/// Checks the shape of a broker URL: a known scheme and a host, with a
/// numeric port if there is one. The value in the error has its password
/// masked.
pub fn check_url(var: &'static str, url: &str, schemes: &[&str]) -> Result<(), ConfigError> {
    let err = |reason: String| ConfigError {
        var,
        value: redact_url(url),
        reason,
    };
    let expected = schemes
        .iter()
        .map(|s| format!("{s}://"))
        .collect::<Vec<_>>()
        .join(" or ");
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(err(format!("expected a URL starting with {expected}")));
    };
    if !schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme)) {
        return Err(err(format!(
            "unsupported scheme {scheme:?}: expected {expected}"
        )));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':')),
            None => return Err(err("unterminated [IPv6] host".into())),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(err("the URL has no host".into()));
    }
    if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(err("the host contains spaces".into()));
    }
    if let Some(p) = port {
        if p.parse::<u16>().is_err() {
            return Err(err(format!(
                "the port {p:?} is not a number between 0 and 65535"
            )));
        }
    }
    Ok(())
}

/// The URL with any password (or bare token) replaced by `***`, for
/// errors and logs.
///
/// ```
/// use nbio_ws::broker::redact_url;
///
/// assert_eq!(redact_url("redis://:s3cret@db:6379/0"), "redis://:***@db:6379/0");
/// assert_eq!(redact_url("nats://token@host:4222"), "nats://***@host:4222");
/// assert_eq!(redact_url("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            if userinfo.contains(':') || !user.is_empty() {
                // `user:pass@` or a bare token `secret@` (NATS): mask it.
                let masked = if userinfo.contains(':') {
                    format!("{user}:***")
                } else {
                    "***".to_owned()
                };
                format!("{scheme}://{masked}@{host}{tail}")
            } else {
                url.to_owned()
            }
        }
        None => url.to_owned(),
    }
}
