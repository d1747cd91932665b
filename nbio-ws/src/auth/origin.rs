//! The origin allow-list (`WS_ALLOWED_ORIGINS`).

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
