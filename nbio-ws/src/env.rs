//! Reading the `WS_*` environment: [`ConfigError`], the variable reader
//! every concern's `from_env` uses, and the parsers for durations, sizes
//! and booleans. A leaf: it depends on nothing else in the crate.
//!
//! Durations are written `500ms`, `10s`, `1m`, `1h` (a bare number is
//! seconds). Sizes accept a plain byte count or a `KiB`/`MiB` suffix.
//! Booleans are `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`. Empty
//! values count as unset.

use std::collections::HashMap;
use std::time::Duration;

/// A configuration value that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {var}={value:?}: {reason}")]
pub struct ConfigError {
    /// The environment variable.
    pub var: &'static str,
    /// The value as given.
    pub value: String,
    /// What was expected.
    pub reason: String,
}

/// Reads variables, treating empty values as unset.
pub(crate) struct Env<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    cache: std::cell::RefCell<HashMap<&'static str, Option<String>>>,
}

impl<'a> Env<'a> {
    pub(crate) fn new(lookup: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Env {
            lookup,
            cache: Default::default(),
        }
    }

    pub(crate) fn string(&self, var: &'static str) -> Result<Option<String>, ConfigError> {
        let mut cache = self.cache.borrow_mut();
        let v = cache.entry(var).or_insert_with(|| {
            (self.lookup)(var)
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        });
        Ok(v.clone())
    }

    pub(crate) fn invalid(&self, var: &'static str, value: &str, expected: &str) -> ConfigError {
        ConfigError {
            var,
            value: value.to_owned(),
            reason: format!("expected {expected}"),
        }
    }

    pub(crate) fn parse<T>(
        &self,
        var: &'static str,
        expected: &str,
        f: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>, ConfigError> {
        match self.string(var)? {
            None => Ok(None),
            Some(v) => f(&v)
                .map(Some)
                .ok_or_else(|| self.invalid(var, &v, expected)),
        }
    }

    pub(crate) fn duration_nonzero(
        &self,
        var: &'static str,
    ) -> Result<Option<Duration>, ConfigError> {
        self.parse(var, "a positive duration such as 500ms, 10s or 1m", |v| {
            parse_duration(v).filter(|d| !d.is_zero())
        })
    }

    /// A positive whole number (`expected` says of what, for the error).
    pub(crate) fn positive(
        &self,
        var: &'static str,
        expected: &str,
    ) -> Result<Option<usize>, ConfigError> {
        self.parse(var, expected, |v| v.parse().ok().filter(|n| *n > 0))
    }

    /// A positive size in bytes (see [`parse_size`]).
    pub(crate) fn size(&self, var: &'static str) -> Result<Option<usize>, ConfigError> {
        self.parse(
            var,
            "a positive size in bytes (e.g. 65536, 64KiB or 1MiB)",
            |v| parse_size(v).filter(|n| *n > 0),
        )
    }

    pub(crate) fn boolean(&self, var: &'static str) -> Result<Option<bool>, ConfigError> {
        self.parse(var, "true or false", parse_bool)
    }
}

/// Parses `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`.
pub(crate) fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Parses a duration: `250ms`, `10s`, `1m`, `2h`, `1m30s`, or a bare
/// number of seconds.
pub(crate) fn parse_duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = v;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let secs = match unit {
            "ms" => n / 1000.0,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            _ => return None,
        };
        total = total.checked_add(Duration::try_from_secs_f64(secs).ok()?)?;
    }
    Some(total)
}

/// Parses a size: a byte count, or a number with `KiB`, `MiB`, `KB`, `MB`.
pub(crate) fn parse_size(v: &str) -> Option<usize> {
    let v = v.trim();
    let (num, mult) = if let Some(n) = v
        .strip_suffix("KiB")
        .or_else(|| v.strip_suffix("KB"))
        .or_else(|| v.strip_suffix("K"))
    {
        (n, 1024)
    } else if let Some(n) = v
        .strip_suffix("MiB")
        .or_else(|| v.strip_suffix("MB"))
        .or_else(|| v.strip_suffix("M"))
    {
        (n, 1024 * 1024)
    } else {
        (v, 1)
    };
    num.trim().parse::<usize>().ok()?.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("10"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("ten"), None);
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn sizes_and_booleans() {
        assert_eq!(parse_size("64KiB"), Some(65536));
        assert_eq!(parse_size("2MiB"), Some(2 << 20));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("-1"), None);
        assert_eq!(parse_bool("on"), Some(true));
        assert_eq!(parse_bool("No"), Some(false));
        assert_eq!(parse_bool("maybe"), None);
    }
}
