//! [`PubSubConfig`]: which broker, where, on which channel.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{adapter_names, find_adapter, ADAPTERS};
use crate::env::{ConfigError, Env};

/// Pub/sub settings: the seed's `WS_PUBSUB_*`, `WS_REDIS_URL` and
/// `WS_NATS_URL` variables (part of [`Config`](crate::Config), field
/// `pubsub`).
///
/// | variable | default | meaning |
/// |---|---|---|
/// | `WS_PUBSUB_ENABLED` | `false` | use a broker at all |
/// | `WS_PUBSUB_ADAPTER` | `local` | `local`, `redis` or `nats` |
/// | `WS_REDIS_URL` | `redis://127.0.0.1:6379/0` | Redis to use with `redis` |
/// | `WS_NATS_URL` | `nats://127.0.0.1:4222` | NATS server(s) to use with `nats` (comma-separated) |
/// | `WS_PUBSUB_CHANNEL` | `websocket.broadcast` | the channel (Redis) or subject (NATS) every instance shares |
/// | `WS_PRESENCE_TTL` | `15s` | the members of an instance not heard from this long are dropped (see [`broker`](crate::broker)) |
/// | `WS_PUBSUB_QUEUE_BYTES` | `64MiB` | most bytes waiting in the publish queue (see [Limits](crate::broker#limits)) |
///
/// ```
/// use nbio_ws::broker::PubSubConfig;
///
/// let server = nbio_ws::Server::builder()
///     .pubsub(PubSubConfig::new("local").channel("chat.broadcast"))
///     .build()
///     .unwrap();
/// assert_eq!(server.config().pubsub.channel, "chat.broadcast");
/// assert_eq!(PubSubConfig::redis("redis://db:6379/0").url(), "redis://db:6379/0");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PubSubConfig {
    /// Whether a broker is used (`WS_PUBSUB_ENABLED`). Without one, a hub
    /// reaches only its own clients.
    pub enabled: bool,
    /// The backend, as `WS_PUBSUB_ADAPTER` names it: `local`, `redis`
    /// (cargo feature `redis`) or `nats` (cargo feature `nats`).
    pub adapter: String,
    /// Backend URLs by adapter name (`WS_REDIS_URL` under `redis`,
    /// `WS_NATS_URL` under `nats`); an adapter without an entry uses its
    /// default URL. See [`PubSubConfig::url`].
    pub urls: BTreeMap<String, String>,
    /// The channel or subject shared by the instances (`WS_PUBSUB_CHANNEL`).
    /// Rooms and presence use channels named after it
    /// (`{channel}.room.{room}`, `{channel}.presence`).
    pub channel: String,
    /// How long the other instances keep this one's room members without
    /// hearing from it (`WS_PRESENCE_TTL`); it sends a heartbeat every
    /// third of that.
    pub presence_ttl: Duration,
    /// Most bytes of messages waiting in the hub's publish queue
    /// (`WS_PUBSUB_QUEUE_BYTES`, [`DEFAULT_QUEUE_BYTES`]): past it a
    /// message still reaches this instance's clients but not the others
    /// (counted in `nbio_ws_broker_publish_failures_total`), and no single
    /// message larger than this can cross instances.
    pub queue_bytes: usize,
}

/// The default `WS_PUBSUB_CHANNEL`.
pub const DEFAULT_CHANNEL: &str = "websocket.broadcast";

/// The default `WS_PRESENCE_TTL`: the members of an instance not heard
/// from for this long are dropped by the others.
pub const DEFAULT_PRESENCE_TTL: Duration = Duration::from_secs(15);

/// The default `WS_PUBSUB_QUEUE_BYTES`: the publish queue holds at most
/// 64 MiB of messages (and at most 8192 of them).
pub const DEFAULT_QUEUE_BYTES: usize = 64 << 20;

impl Default for PubSubConfig {
    fn default() -> Self {
        PubSubConfig {
            enabled: false,
            adapter: "local".into(),
            urls: BTreeMap::new(),
            channel: DEFAULT_CHANNEL.into(),
            presence_ttl: DEFAULT_PRESENCE_TTL,
            queue_bytes: DEFAULT_QUEUE_BYTES,
        }
    }
}

impl PubSubConfig {
    /// Enabled, with the named adapter (`local`, `redis`, `nats`) and the
    /// default URL and channel.
    pub fn new(adapter: impl Into<String>) -> Self {
        PubSubConfig {
            enabled: true,
            adapter: adapter.into(),
            ..PubSubConfig::default()
        }
    }

    /// Redis at `url`, enabled.
    pub fn redis(url: impl Into<String>) -> Self {
        PubSubConfig::new("redis").with_url(url)
    }

    /// NATS at `url`, enabled.
    pub fn nats(url: impl Into<String>) -> Self {
        PubSubConfig::new("nats").with_url(url)
    }

    /// Sets the URL of the chosen adapter.
    pub fn with_url(mut self, url: impl Into<String>) -> Self {
        self.urls
            .insert(self.adapter.to_ascii_lowercase(), url.into());
        self
    }

    /// The channel (Redis) or subject (NATS) shared by the instances.
    pub fn channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = channel.into();
        self
    }

    /// How long other instances keep this one's room members without a
    /// heartbeat (at least 300 ms).
    pub fn presence_ttl(mut self, ttl: Duration) -> Self {
        self.presence_ttl = ttl.max(Duration::from_millis(300));
        self
    }

    /// Most bytes of messages waiting to be published (at least 64 KiB).
    pub fn queue_bytes(mut self, bytes: usize) -> Self {
        self.queue_bytes = bytes.max(MIN_QUEUE_BYTES);
        self
    }

    /// The URL the chosen adapter uses: the one set for it, else its
    /// default (empty for an adapter without a URL, such as `local`).
    pub fn url(&self) -> &str {
        let name = find_adapter(&self.adapter).map_or("", |r| r.name);
        self.url_of(name)
            .or_else(|| {
                find_adapter(name)
                    .and_then(|r| r.def)
                    .map(|d| d.default_url)
            })
            .unwrap_or("")
    }

    /// The URL set for adapter `name`, if any.
    pub fn url_of(&self, name: &str) -> Option<&str> {
        self.urls.get(name).map(String::as_str)
    }

    /// Reads the pub/sub variables (used by
    /// [`Config::from_lookup`](crate::Config::from_lookup)).
    pub(crate) fn from_env(env: &Env<'_>) -> Result<PubSubConfig, ConfigError> {
        let d = PubSubConfig::default();
        let mut urls = BTreeMap::new();
        for reg in ADAPTERS {
            if let Some(var) = reg.def.and_then(|d| d.url_var) {
                if let Some(url) = env.string(var)? {
                    urls.insert(reg.name.to_owned(), url);
                }
            }
        }
        let adapter = match env.string("WS_PUBSUB_ADAPTER")? {
            None => d.adapter,
            Some(v) => match find_adapter(&v) {
                Some(reg) => reg.name.to_owned(),
                None => return Err(env.invalid("WS_PUBSUB_ADAPTER", &v, &adapter_names())),
            },
        };
        let cfg = PubSubConfig {
            enabled: env.boolean("WS_PUBSUB_ENABLED")?.unwrap_or(d.enabled),
            adapter,
            urls,
            channel: env.string("WS_PUBSUB_CHANNEL")?.unwrap_or(d.channel),
            presence_ttl: env
                .duration_nonzero("WS_PRESENCE_TTL")?
                .unwrap_or(d.presence_ttl),
            queue_bytes: env.size("WS_PUBSUB_QUEUE_BYTES")?.unwrap_or(d.queue_bytes),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub(crate) fn unknown_adapter(&self) -> ConfigError {
        ConfigError {
            var: "WS_PUBSUB_ADAPTER",
            value: self.adapter.clone(),
            reason: format!("expected {}", adapter_names()),
        }
    }

    /// Checks what can be checked without the network: the channel name
    /// and, when enabled, that the adapter is compiled in and the shape of
    /// its URL. Errors name the variable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_channel(&self.channel)?;
        if self.presence_ttl < Duration::from_millis(300) {
            return Err(ConfigError {
                var: "WS_PRESENCE_TTL",
                value: format!("{:?}", self.presence_ttl),
                reason: "expected at least 300ms (heartbeats go out every third of it)".into(),
            });
        }
        if self.queue_bytes < MIN_QUEUE_BYTES {
            return Err(ConfigError {
                var: "WS_PUBSUB_QUEUE_BYTES",
                value: self.queue_bytes.to_string(),
                reason: "expected at least 64KiB".into(),
            });
        }
        if !self.enabled {
            return Ok(());
        }
        let reg = find_adapter(&self.adapter).ok_or_else(|| self.unknown_adapter())?;
        match reg.def {
            Some(def) => (def.check_url)(self.url()),
            None => Err(ConfigError {
                var: "WS_PUBSUB_ADAPTER",
                value: reg.name.into(),
                reason: format!(
                    "the {0} adapter is not compiled into this binary; build with the `{1}` cargo \
                     feature of nbio-ws (e.g. `cargo build --features nbio-ws/{1}`)",
                    reg.name,
                    reg.feature.unwrap_or(reg.name)
                ),
            }),
        }
    }
}

/// The smallest `WS_PUBSUB_QUEUE_BYTES`.
const MIN_QUEUE_BYTES: usize = 64 << 10;

fn check_channel(channel: &str) -> Result<(), ConfigError> {
    let bad = channel.is_empty()
        || channel.len() > 255
        || channel
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '*' || c == '>')
        || channel.starts_with('.')
        || channel.ends_with('.')
        || channel.contains("..");
    if bad {
        return Err(ConfigError {
            var: "WS_PUBSUB_CHANNEL",
            value: channel.into(),
            reason: "expected a channel name such as websocket.broadcast (no spaces or \
                     wildcards, no empty dot-separated parts)"
                .into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::redact_url;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> Result<crate::Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        crate::Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn seed_variables() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.pubsub, PubSubConfig::default());
        assert!(!c.pubsub.enabled);
        assert_eq!(c.pubsub.channel, "websocket.broadcast");

        let c = cfg(&[
            ("WS_PUBSUB_ENABLED", "true"),
            ("WS_PUBSUB_ADAPTER", "local"),
            ("WS_PUBSUB_CHANNEL", "chat.all"),
            ("WS_REDIS_URL", "redis://:pw@10.0.0.1:6380/2"),
            ("WS_PUBSUB_QUEUE_BYTES", "8MiB"),
        ])
        .unwrap();
        assert_eq!(c.pubsub.queue_bytes, 8 << 20);
        assert!(c.pubsub.enabled);
        assert_eq!(c.pubsub.adapter, "local");
        assert_eq!(c.pubsub.channel, "chat.all");
        assert_eq!(
            c.pubsub.url_of("redis"),
            Some("redis://:pw@10.0.0.1:6380/2")
        );
    }

    #[test]
    fn errors_name_the_variable() {
        for (vars, var) in [
            (vec![("WS_PUBSUB_ENABLED", "maybe")], "WS_PUBSUB_ENABLED"),
            (vec![("WS_PUBSUB_ADAPTER", "kafka")], "WS_PUBSUB_ADAPTER"),
            (vec![("WS_PUBSUB_CHANNEL", "a b")], "WS_PUBSUB_CHANNEL"),
            (vec![("WS_PUBSUB_CHANNEL", "a.*")], "WS_PUBSUB_CHANNEL"),
            (
                vec![("WS_PUBSUB_QUEUE_BYTES", "lots")],
                "WS_PUBSUB_QUEUE_BYTES",
            ),
            (
                vec![("WS_PUBSUB_QUEUE_BYTES", "1KiB")],
                "WS_PUBSUB_QUEUE_BYTES",
            ),
            (
                vec![
                    ("WS_PUBSUB_ENABLED", "1"),
                    ("WS_PUBSUB_ADAPTER", "redis"),
                    ("WS_REDIS_URL", "http://127.0.0.1:6379"),
                ],
                "WS_REDIS_URL",
            ),
            (
                vec![
                    ("WS_PUBSUB_ENABLED", "1"),
                    ("WS_PUBSUB_ADAPTER", "redis"),
                    ("WS_REDIS_URL", "redis://127.0.0.1:port/0"),
                ],
                "WS_REDIS_URL",
            ),
            (
                vec![
                    ("WS_PUBSUB_ENABLED", "1"),
                    ("WS_PUBSUB_ADAPTER", "nats"),
                    ("WS_NATS_URL", "127.0.0.1:4222"),
                ],
                "WS_NATS_URL",
            ),
        ] {
            let e = cfg(&vars).unwrap_err();
            assert_eq!(e.var, var, "{e}");
            assert!(e.to_string().starts_with(&format!("invalid {var}=")), "{e}");
        }
        // A disabled broker's URL is not checked.
        assert!(cfg(&[("WS_REDIS_URL", "nonsense")]).is_ok());
    }

    #[test]
    fn passwords_are_masked_in_errors() {
        let e = cfg(&[
            ("WS_PUBSUB_ENABLED", "true"),
            ("WS_PUBSUB_ADAPTER", "redis"),
            ("WS_REDIS_URL", "redis://user:hunter2@127.0.0.1:notaport/0"),
        ])
        .unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(e.to_string().contains("user:***@127.0.0.1"), "{e}");
        assert_eq!(
            redact_url("nats://s3cr3t@127.0.0.1:4222"),
            "nats://***@127.0.0.1:4222"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
    }

    #[cfg(not(feature = "redis"))]
    #[test]
    fn an_adapter_not_compiled_names_its_feature() {
        let e = cfg(&[
            ("WS_PUBSUB_ENABLED", "true"),
            ("WS_PUBSUB_ADAPTER", "redis"),
        ])
        .unwrap_err();
        assert_eq!(e.var, "WS_PUBSUB_ADAPTER");
        assert!(e.to_string().contains("`redis` cargo feature"), "{e}");
        let e = crate::Server::builder()
            .pubsub(PubSubConfig::redis("redis://127.0.0.1:6379"))
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("`redis` cargo feature"), "{e}");
    }

    #[cfg(not(feature = "nats"))]
    #[test]
    fn nats_not_compiled_names_its_feature() {
        let e = cfg(&[("WS_PUBSUB_ENABLED", "true"), ("WS_PUBSUB_ADAPTER", "nats")]).unwrap_err();
        assert!(e.to_string().contains("`nats` cargo feature"), "{e}");
    }
}
