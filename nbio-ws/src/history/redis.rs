//! [`RedisHistory`]: history kept in Redis, shared by every instance
//! (cargo feature `redis`; chosen by `WS_PUBSUB_ADAPTER=redis`).
//! The layout, guarantees and costs are documented on the type.

use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, RedisError, Script};
use bytes::Bytes;
use tokio::time::Instant;

use super::{new_epoch, Appended, HistoryError, HistoryPolicy, HistoryStore, Range, Stored};
use crate::types::BoxFuture;

/// How long connecting, and each script, may take before the call fails
/// with [`HistoryError::Unavailable`].
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a room's meta hash (its epoch and latest offset) outlives the
/// room's last publication or read, unless the room's TTL is longer.
pub const REDIS_META_TTL: Duration = Duration::from_secs(24 * 3600);

/// The first delay before reconnecting after a failed attempt.
const RETRY_MIN: Duration = Duration::from_millis(50);
/// The longest delay between attempts.
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Shared by both scripts: the time, and the room's epoch and latest
/// offset, starting a new epoch (and dropping what the log held) when the
/// meta hash is missing. `ARGV[1]` is a fresh epoch, `ARGV[2]` the TTL
/// in milliseconds, `ARGV[3]` the meta hash's.
const PROLOGUE: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'top')
local epoch = meta[1]
local top = tonumber(meta[2])
if not epoch or not top then
  epoch = ARGV[1]
  top = 0
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'top', 0)
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local cutoff = now - ttl
local function stamp(item)
  return tonumber(string.match(item, '^%d+:(%d+):'))
end
";

/// Appends `ARGV[4]` with the next offset, trims to `ARGV[5]` entries
/// and by age; returns `{epoch, offset}`.
const APPEND: &str = r"
local offset = redis.call('HINCRBY', KEYS[1], 'top', 1)
redis.call('RPUSH', KEYS[2], string.format('%d:%d:', offset, now) .. ARGV[4])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[5]), -1)
for _ = 1, 64 do
  local first = redis.call('LINDEX', KEYS[2], 0)
  if not first then break end
  local at = stamp(first)
  if at and at >= cutoff then break end
  redis.call('LPOP', KEYS[2])
end
redis.call('PEXPIRE', KEYS[2], ttl)
return {epoch, offset}
";

/// Reads at most `ARGV[5]` entries after offset `ARGV[4]` (the latest
/// ones for a negative `ARGV[4]`), skipping those older than the TTL;
/// returns `{epoch, top, {entries}}`.
const READ: &str = r"
local after = tonumber(ARGV[4])
local limit = tonumber(ARGV[5])
local out = {}
local len = redis.call('LLEN', KEYS[2])
if limit > 0 and len > 0 then
  local s
  if after < 0 then
    s = math.max(len - limit, 0)
  else
    local first = redis.call('LINDEX', KEYS[2], 0)
    local first_offset = tonumber(string.match(first, '^(%d+):')) or 1
    s = math.max(after - first_offset + 1, 0)
  end
  if s < len then
    for _, item in ipairs(redis.call('LRANGE', KEYS[2], s, s + limit - 1)) do
      local at = stamp(item)
      if at and at >= cutoff then table.insert(out, item) end
    end
  end
end
return {epoch, top, out}
";

/// History kept in Redis, shared by every instance that uses the same
/// Redis and channel.
///
/// ## Layout
///
/// Two keys per room, under the pub/sub channel (`WS_PUBSUB_CHANNEL`):
///
/// | key | type | holds |
/// |---|---|---|
/// | `{channel}.history.{room}.meta` | hash | `epoch` (a random string), `top` (the latest offset) |
/// | `{channel}.history.{room}.log` | list | one element per kept publication: `offset:unix-ms:` then the stored data |
///
/// The room name is written between braces, with every byte other than
/// ASCII letters, digits, `-`, `_`, `.` and `:` as `%XX` (so any room
/// name makes one key of its own, and the braces make both keys of a room
/// a Redis Cluster hash tag: they live in one slot, as a script needs).
/// For room `lobby` and the default channel:
/// `websocket.broadcast.history.{lobby}.meta`.
///
/// ## Guarantees
///
/// - **Offsets are assigned by Redis**, in one Lua script per publication
///   (`EVALSHA`, loaded again by itself after a Redis restart): the script
///   increments `top` and appends the entry atomically, so two instances
///   never give one offset twice and a room's offsets have no holes.
/// - **Epochs change when the history is lost.** A script that finds no
///   meta hash (the room is new, the key expired, was evicted or deleted,
///   Redis restarted without persistence) starts a new epoch — a random
///   string made by the instance that got there first — and drops any
///   entries left from the old one. A client holding a position of the
///   old epoch gets `recovered: false`.
/// - **Bounded by size and age.** Each append trims the list to the
///   room's history size (`LTRIM`) and drops entries older than its TTL
///   from the front; reads skip entries older than the TTL too (by Redis's
///   clock, `TIME`). The log key expires one TTL after the room's last
///   publication, so idle rooms take no memory. The meta hash expires
///   [`REDIS_META_TTL`] (at least one TTL; see
///   [`RedisHistory::meta_ttl`]) after the room's last publication or
///   read: a room quiet for less than that keeps its epoch, so its
///   connected members are not told to recover for nothing.
/// - **Reads are atomic**: one script returns the epoch, the latest offset
///   and the entries asked for, as of one moment.
/// - Needs Redis 5 or later (tested with 7.0). With persistence off, a
///   Redis restart loses every room's history (new epochs); with it on,
///   the history survives as far as the last save.
///
/// ## Costs
///
/// - **Publish**: one round trip (`EVALSHA`, O(1) plus the entries it
///   trims), then the broker's `PUBLISH` as for any room message.
/// - **Recovery or position read**: one round trip (`EVALSHA`: `LRANGE`
///   of the entries asked for).
/// - **Memory in Redis** per kept publication: the stored data
///   (`{"method":…,"params":…}`) plus its `offset:ms:` prefix (about 20
///   bytes) plus the list's own overhead (a few bytes per element in a
///   listpack): `MEMORY USAGE` of a log of 1,000 publications of 100
///   bytes is 123,568 bytes on Redis 7.0 (about 124 bytes each). Per
///   room, a meta hash of about 80 bytes.
/// - One multiplexed connection per instance for history, besides the
///   broker's two.
///
/// ## When Redis is unreachable
///
/// A publication that cannot be stored fails with
/// [`HistoryError::Unavailable`] (`-32003` through
/// `From<HistoryError> for RpcError`) and is delivered to nobody; ephemeral
/// [`notify`](crate::RoomSender::notify) keeps reaching this instance's
/// members. Recovery and position reads fail the same way. Connecting and
/// each script are bounded by [`REDIS_TIMEOUT`]; after a failed connection
/// attempt, calls fail at once until the next attempt is due (50 ms,
/// doubling up to 2 s), so handlers do not queue behind a dead Redis.
/// A script that timed out may still have run: that publication is in
/// the history without having been delivered live, and the members get
/// it from there (the next publication shows the gap, which is filled
/// from the history) or when they recover.
///
/// ## Use
///
/// Made by the server itself with `WS_PUBSUB_ADAPTER=redis`
/// ([`PubSubConfig::redis`](crate::broker::PubSubConfig::redis)), from
/// the same URL and channel as the broker; or by hand for
/// [`ServerBuilder::history_store`](crate::ServerBuilder::history_store):
///
/// ```no_run
/// use nbio_ws::history::RedisHistory;
/// use std::time::Duration;
///
/// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisHistory::new("redis://127.0.0.1:6379/0", "myapp")?;
/// assert_eq!(store.meta_key("lobby"), "myapp.history.{lobby}.meta");
/// let server = nbio_ws::Server::builder()
///     .history("chat.*", 100, Duration::from_secs(600))
///     .history_store(store)
///     .build()?;
/// # Ok(()) }
/// ```
pub struct RedisHistory {
    client: ::redis::Client,
    prefix: String,
    meta_ttl: Duration,
    append: Script,
    read: Script,
    link: tokio::sync::Mutex<Link>,
}

/// The connection, made on first use and again after a failure.
struct Link {
    conn: Option<(MultiplexedConnection, u64)>,
    /// Bumped at each new connection, so that a late failure of an old
    /// one does not drop its successor.
    generation: u64,
    /// No attempt before this.
    retry_at: Option<Instant>,
    delay: Duration,
}

impl std::fmt::Debug for RedisHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisHistory")
            .field("prefix", &self.prefix)
            .field("meta_ttl", &self.meta_ttl)
            .finish_non_exhaustive()
    }
}

impl RedisHistory {
    /// A store in the Redis at `url` (`redis://[:password@]host[:port][/db]`),
    /// with keys under `channel` (the pub/sub channel, `WS_PUBSUB_CHANNEL`).
    /// Only parses the URL: the connection is made on first use.
    pub fn new(url: &str, channel: &str) -> Result<Self, HistoryError> {
        // The URL is not repeated in the error: it may hold a password.
        let client = ::redis::Client::open(url).map_err(|_| {
            HistoryError::Invalid(
                "the Redis URL does not parse (expected redis://[:password@]host[:port][/db])"
                    .into(),
            )
        })?;
        Ok(RedisHistory {
            client,
            prefix: format!("{channel}.history."),
            meta_ttl: REDIS_META_TTL,
            append: Script::new(&format!("{PROLOGUE}{APPEND}")),
            read: Script::new(&format!("{PROLOGUE}{READ}")),
            link: tokio::sync::Mutex::new(Link {
                conn: None,
                generation: 0,
                retry_at: None,
                delay: RETRY_MIN,
            }),
        })
    }

    /// How long a room's epoch survives without publications or reads
    /// ([`REDIS_META_TTL`]; never less than the room's TTL). A room idle
    /// for longer starts a new epoch.
    pub fn meta_ttl(mut self, ttl: Duration) -> Self {
        self.meta_ttl = ttl.max(Duration::from_secs(1));
        self
    }

    /// The key of `room`'s meta hash (`epoch`, `top`).
    pub fn meta_key(&self, room: &str) -> String {
        self.key(room, "meta")
    }

    /// The key of `room`'s list of entries.
    pub fn log_key(&self, room: &str) -> String {
        self.key(room, "log")
    }

    fn key(&self, room: &str, kind: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + room.len() + kind.len() + 3);
        k.push_str(&self.prefix);
        k.push('{');
        for b in room.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':') {
                k.push(char::from(b));
            } else {
                k.push_str(&format!("%{b:02X}"));
            }
        }
        k.push_str("}.");
        k.push_str(kind);
        k
    }

    /// The connection, connecting if there is none and an attempt is due.
    async fn connection(&self) -> Result<(MultiplexedConnection, u64), HistoryError> {
        let mut link = self.link.lock().await;
        if let Some(c) = &link.conn {
            return Ok(c.clone());
        }
        if link.retry_at.is_some_and(|at| Instant::now() < at) {
            return Err(HistoryError::Unavailable(
                "Redis is unreachable (the last connection attempt failed)".into(),
            ));
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT));
        let made = tokio::time::timeout(
            REDIS_TIMEOUT,
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await;
        let error = match made {
            Ok(Ok(conn)) => {
                link.generation += 1;
                let c = (conn, link.generation);
                link.conn = Some(c.clone());
                link.retry_at = None;
                link.delay = RETRY_MIN;
                return Ok(c);
            }
            Ok(Err(e)) => format!("cannot connect to Redis: {e}"),
            Err(_) => "connecting to Redis timed out".to_owned(),
        };
        link.retry_at = Some(Instant::now() + link.delay);
        link.delay = (link.delay * 2).min(RETRY_MAX);
        tracing::debug!(%error, "redis history: connection failed");
        Err(HistoryError::Unavailable(error))
    }

    /// Runs one script, bounded by [`REDIS_TIMEOUT`]; a connection that failed
    /// is dropped (the next call makes a new one).
    async fn run<T: ::redis::FromRedisValue>(
        &self,
        script: &Script,
        room: &str,
        args: &[&[u8]],
    ) -> Result<T, HistoryError> {
        let (mut conn, generation) = self.connection().await?;
        let mut call = script.key(self.meta_key(room));
        call.key(self.log_key(room));
        for a in args {
            call.arg(*a);
        }
        let result = tokio::time::timeout(REDIS_TIMEOUT, call.invoke_async::<T>(&mut conn)).await;
        let error = match result {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => {
                if connection_lost(&e) {
                    self.drop_connection(generation).await;
                }
                format!("Redis: {e}")
            }
            Err(_) => {
                self.drop_connection(generation).await;
                "Redis did not answer in time".to_owned()
            }
        };
        Err(HistoryError::Unavailable(error))
    }

    async fn drop_connection(&self, generation: u64) {
        let mut link = self.link.lock().await;
        if link.conn.as_ref().is_some_and(|(_, g)| *g == generation) {
            link.conn = None;
            link.retry_at = None;
        }
    }

    fn meta_ttl_ms(&self, policy: HistoryPolicy) -> u64 {
        millis(self.meta_ttl.max(policy.ttl))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn connection_lost(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}

/// Splits a log element, `offset:ms:data`.
fn entry(item: Vec<u8>) -> Option<Stored> {
    let item = Bytes::from(item);
    let first = item.iter().position(|b| *b == b':')?;
    let second = first + 1 + item[first + 1..].iter().position(|b| *b == b':')?;
    let offset: u64 = std::str::from_utf8(&item[..first]).ok()?.parse().ok()?;
    Some(Stored {
        offset,
        prev: offset.checked_sub(1)?,
        data: item.slice(second + 1..),
    })
}

impl HistoryStore for RedisHistory {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn append<'a>(
        &'a self,
        room: &'a str,
        policy: HistoryPolicy,
        data: Bytes,
    ) -> BoxFuture<'a, Result<Appended, HistoryError>> {
        Box::pin(async move {
            if !policy.enabled() {
                return Err(HistoryError::NoHistory(room.to_owned()));
            }
            let epoch = new_epoch();
            let ttl = millis(policy.ttl).to_string();
            let meta_ttl = self.meta_ttl_ms(policy).to_string();
            let size = policy.size.to_string();
            let (epoch, offset): (String, u64) = self
                .run(
                    &self.append,
                    room,
                    &[
                        epoch.as_bytes(),
                        ttl.as_bytes(),
                        meta_ttl.as_bytes(),
                        &data,
                        size.as_bytes(),
                    ],
                )
                .await?;
            Ok(Appended {
                epoch: Arc::from(epoch),
                offset,
                prev: offset.saturating_sub(1),
            })
        })
    }

    fn read<'a>(
        &'a self,
        room: &'a str,
        policy: HistoryPolicy,
        after: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Range, HistoryError>> {
        Box::pin(async move {
            let epoch = new_epoch();
            let ttl = millis(policy.ttl).to_string();
            let meta_ttl = self.meta_ttl_ms(policy).to_string();
            // Offsets stay below 2^53 (exact in Lua's numbers).
            let after = after.map_or_else(|| "-1".to_owned(), |a| a.min(1 << 53).to_string());
            let limit = limit.min(super::MAX_HISTORY_SIZE).to_string();
            let (epoch, top, items): (String, u64, Vec<Vec<u8>>) = self
                .run(
                    &self.read,
                    room,
                    &[
                        epoch.as_bytes(),
                        ttl.as_bytes(),
                        meta_ttl.as_bytes(),
                        after.as_bytes(),
                        limit.as_bytes(),
                    ],
                )
                .await?;
            Ok(Range {
                epoch: Arc::from(epoch),
                top,
                entries: items.into_iter().filter_map(entry).collect(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_escape_room_names() {
        let s = RedisHistory::new("redis://127.0.0.1:1/0", "ws").unwrap();
        assert_eq!(s.meta_key("lobby"), "ws.history.{lobby}.meta");
        assert_eq!(s.log_key("chat.a:b-c_d"), "ws.history.{chat.a:b-c_d}.log");
        assert_eq!(
            s.meta_key("a b}{%é"),
            "ws.history.{a%20b%7D%7B%25%C3%A9}.meta"
        );
        assert_ne!(s.meta_key("a%20b"), s.meta_key("a b"));
        assert!(RedisHistory::new("http://x", "ws").is_err());
    }

    #[test]
    fn entries_split() {
        let e = entry(b"42:1700000000000:{\"method\":\"m\"}".to_vec()).unwrap();
        assert_eq!((e.offset, e.prev), (42, 41));
        assert_eq!(&e.data[..], b"{\"method\":\"m\"}");
        let e = entry(b"7:1:a:b".to_vec()).unwrap();
        assert_eq!(&e.data[..], b"a:b");
        assert!(entry(b"x:1:a".to_vec()).is_none());
        assert!(entry(b"0:1:a".to_vec()).is_none());
        assert!(entry(b"12".to_vec()).is_none());
    }
}
