//! Where the chat keeps the last messages of each room: in memory, or in
//! Redis (`--features redis` and the redis pub/sub adapter).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Messages kept per room and sent to whoever joins.
const HISTORY: usize = 50;

/// A chat message, as sent in `chat.message` and kept in history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ChatMessage {
    pub(crate) room: String,
    pub(crate) nick: String,
    pub(crate) text: String,
    /// Milliseconds since the Unix epoch.
    pub(crate) ts: u64,
}

/// The last [`HISTORY`] messages of each room, oldest first: in this
/// process by default, in Redis when the binary has the `redis` feature
/// and the server uses the redis pub/sub adapter (see
/// [`History::from_config`]).
pub(crate) struct History(Store);

enum Store {
    /// Per instance, forgotten on restart.
    Memory(MemoryHistory),
    /// Shared by the instances on the same Redis, kept across restarts.
    #[cfg(feature = "redis")]
    Redis(std::sync::Arc<redis_history::RedisHistory>),
}

impl History {
    /// Redis when built with the `redis` feature and configured with
    /// `WS_PUBSUB_ENABLED=true WS_PUBSUB_ADAPTER=redis` (at
    /// `WS_REDIS_URL`, under the `WS_PUBSUB_CHANNEL` prefix); memory
    /// otherwise. Logs the choice. Fails only on an unusable URL: an
    /// unreachable Redis is not an error (see [`redis_history`]).
    pub(crate) fn from_config(config: &nbio_ws::Config) -> Result<History, String> {
        let pubsub = &config.pubsub;
        #[cfg(feature = "redis")]
        if pubsub.enabled && pubsub.adapter == "redis" {
            let store = redis_history::RedisHistory::start(pubsub.url(), &pubsub.channel)?;
            tracing::info!(
                url = %store.url(),
                key = %store.key("{room}"),
                keep = HISTORY,
                "history: in Redis, shared by the instances"
            );
            return Ok(History(Store::Redis(store)));
        }
        if pubsub.enabled {
            tracing::info!(
                adapter = %pubsub.adapter,
                keep = HISTORY,
                "history: in memory, per instance (only the redis adapter, built with --features redis, shares it)"
            );
        } else {
            tracing::info!(keep = HISTORY, "history: in memory, per instance");
        }
        Ok(History(Store::Memory(MemoryHistory::default())))
    }

    /// Keeps `msg` as the newest message of its room. Best effort: with
    /// Redis unreachable the message is not kept (and that is logged, once
    /// per outage).
    pub(crate) async fn push(&self, msg: &ChatMessage) {
        match &self.0 {
            Store::Memory(m) => m.push(msg.clone()),
            #[cfg(feature = "redis")]
            Store::Redis(r) => r.push(msg).await,
        }
    }

    /// The room's last messages, oldest first; empty while Redis is
    /// unreachable.
    pub(crate) async fn of(&self, room: &str) -> Vec<ChatMessage> {
        match &self.0 {
            Store::Memory(m) => m.of(room),
            #[cfg(feature = "redis")]
            Store::Redis(r) => r.of(room).await,
        }
    }
}

/// The in-process store.
#[derive(Default)]
struct MemoryHistory(Mutex<HashMap<String, VecDeque<ChatMessage>>>);

impl MemoryHistory {
    fn push(&self, msg: ChatMessage) {
        let mut rooms = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let q = rooms.entry(msg.room.clone()).or_default();
        if q.len() == HISTORY {
            q.pop_front();
        }
        q.push_back(msg);
    }

    fn of(&self, room: &str) -> Vec<ChatMessage> {
        let rooms = self.0.lock().unwrap_or_else(|p| p.into_inner());
        rooms
            .get(room)
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// The Redis store: one list per room, `{WS_PUBSUB_CHANNEL}:history:{room}`,
/// holding the JSON of the last [`HISTORY`] messages, oldest first.
///
/// - A push is `MULTI; RPUSH key json; LTRIM key -50 -1; EXEC`, so the list
///   never holds more than 50 and concurrent pushes from several instances
///   cannot lose the trim. A read is `LRANGE key 0 -1`; entries that are
///   not chat messages are skipped (logged at debug).
/// - One `ConnectionManager` (a multiplexed connection that reconnects
///   when its connection drops), created lazily: startup never waits for
///   Redis, and a server started while Redis is down serves at once and
///   uses Redis as soon as it answers.
/// - Every call, connecting included, is bounded by `TIMEOUT` (1 s). After a
///   failure Redis is left alone for a pause (250 ms, doubling up to 2 s
///   while it keeps failing), then tried by one call at a time: the calls
///   in between skip it at once instead of each waiting for a timeout. A
///   timeout, or an error the manager does not recover from by itself
///   (authentication, say), replaces the manager with a fresh one.
/// - Losing and regaining Redis is logged once each (warn, info), not per
///   message; a task pings Redis every few seconds so that both are noticed
///   without traffic, and the connection is ready when a message comes.
#[cfg(feature = "redis")]
mod redis_history {
    use std::future::Future;
    use std::sync::{Arc, Mutex, Weak};
    use std::time::Duration;

    use redis::aio::{ConnectionManager, ConnectionManagerConfig};
    use tokio::time::Instant;

    use super::{ChatMessage, HISTORY};

    /// The longest any Redis call (connecting included) may take.
    const TIMEOUT: Duration = Duration::from_secs(1);
    /// How long Redis is left alone after a failure: this, doubled after
    /// each further failure up to [`MAX_PAUSE`].
    const MIN_PAUSE: Duration = Duration::from_millis(250);
    const MAX_PAUSE: Duration = Duration::from_secs(2);
    /// How often the background task pings Redis.
    const PING_EVERY: Duration = Duration::from_secs(5);

    pub(super) struct RedisHistory {
        client: redis::Client,
        conn: Mutex<ConnectionManager>,
        /// `{channel}:history:`
        prefix: String,
        /// `WS_REDIS_URL` with any password masked, for logs.
        url: String,
        link: Mutex<Link>,
    }

    /// What the store knows of its connection to Redis.
    struct Link {
        state: LinkState,
        /// While down: no call before this.
        retry_at: Option<Instant>,
        pause: Duration,
    }

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum LinkState {
        /// No call has finished yet.
        Unknown,
        Up,
        Down,
    }

    fn manager(client: &redis::Client) -> redis::RedisResult<ConnectionManager> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            // One attempt per (re)connection: the pause paces the retries.
            .set_number_of_retries(0);
        ConnectionManager::new_lazy_with_config(client.clone(), config)
    }

    impl RedisHistory {
        /// The store for the Redis at `url`, with its ping task. Needs a
        /// tokio runtime; does not connect (the ping task and the first
        /// message do).
        pub(super) fn start(url: &str, channel: &str) -> Result<Arc<RedisHistory>, String> {
            let shown = nbio_ws::broker::redact_url(url);
            let client =
                redis::Client::open(url).map_err(|e| format!("WS_REDIS_URL={shown}: {e}"))?;
            let conn = manager(&client).map_err(|e| format!("WS_REDIS_URL={shown}: {e}"))?;
            let store = Arc::new(RedisHistory {
                client,
                conn: Mutex::new(conn),
                prefix: format!("{channel}:history:"),
                url: shown,
                link: Mutex::new(Link {
                    state: LinkState::Unknown,
                    retry_at: None,
                    pause: MIN_PAUSE,
                }),
            });
            tokio::spawn(ping(Arc::downgrade(&store)));
            Ok(store)
        }

        pub(super) fn url(&self) -> &str {
            &self.url
        }

        /// The list of `room` (room names are checked before this).
        pub(super) fn key(&self, room: &str) -> String {
            format!("{}{room}", self.prefix)
        }

        pub(super) async fn push(&self, msg: &ChatMessage) {
            let json = match serde_json::to_string(msg) {
                Ok(j) => j,
                Err(e) => {
                    tracing::warn!(error = %e, "history: cannot encode a message");
                    return;
                }
            };
            let key = self.key(&msg.room);
            let mut pipe = redis::pipe();
            pipe.atomic()
                .rpush(&key, json)
                .ignore()
                .ltrim(&key, -(HISTORY as isize), -1)
                .ignore();
            let pipe = &pipe;
            self.call(move |mut conn| async move { pipe.exec_async(&mut conn).await })
                .await;
        }

        pub(super) async fn of(&self, room: &str) -> Vec<ChatMessage> {
            let key = &self.key(room);
            let entries = self
                .call(move |mut conn| async move {
                    redis::cmd("LRANGE")
                        .arg(key)
                        .arg(0)
                        .arg(-1)
                        .query_async::<Vec<Vec<u8>>>(&mut conn)
                        .await
                })
                .await
                .unwrap_or_default();
            entries
                .iter()
                .filter_map(|entry| match serde_json::from_slice::<ChatMessage>(entry) {
                    Ok(msg) => Some(msg),
                    Err(e) => {
                        tracing::debug!(%room, error = %e, "history: skipping an entry that is not a chat message");
                        None
                    }
                })
                .collect()
        }

        /// Runs one Redis call within [`TIMEOUT`]: `None` if it failed,
        /// timed out, or was skipped because Redis failed moments ago.
        async fn call<T, F, Fut>(&self, f: F) -> Option<T>
        where
            F: Fn(ConnectionManager) -> Fut,
            Fut: Future<Output = redis::RedisResult<T>>,
        {
            if !self.may_try() {
                return None;
            }
            let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let attempt = async {
                match f(conn.clone()).await {
                    // The manager keeps the outcome of its last connection
                    // attempt: a refusal may be from when Redis was down.
                    // Refused means nothing was sent, and the manager is
                    // now reconnecting: once more, on the new connection.
                    Err(e) if e.is_connection_refusal() => f(conn).await,
                    done => done,
                }
            };
            let (why, renew) = match tokio::time::timeout(TIMEOUT, attempt).await {
                Ok(Ok(v)) => {
                    self.succeeded();
                    return Some(v);
                }
                // The manager reconnects by itself after I/O errors, and a
                // server error leaves the connection usable; anything else
                // (authentication, say) it would keep returning.
                Ok(Err(e)) => {
                    let recovers =
                        e.is_io_error() || matches!(e.kind(), redis::ErrorKind::Server(_));
                    (e.to_string(), !recovers)
                }
                Err(_) => (format!("no answer within {TIMEOUT:?}"), true),
            };
            if renew {
                match manager(&self.client) {
                    Ok(fresh) => *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = fresh,
                    Err(e) => {
                        tracing::debug!(error = %e, "history: cannot renew the Redis connection")
                    }
                }
            }
            self.failed(&why);
            None
        }

        /// Whether to call Redis now: always while it answers; after a
        /// failure, not before the pause is over, and then one call at a
        /// time (a call that never ends holds the others off for at most
        /// [`TIMEOUT`]).
        fn may_try(&self) -> bool {
            let mut link = self.link.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            match link.retry_at {
                None => true,
                Some(at) if now < at => false,
                Some(_) => {
                    link.retry_at = Some(now + TIMEOUT);
                    true
                }
            }
        }

        fn succeeded(&self) {
            let mut link = self.link.lock().unwrap_or_else(|p| p.into_inner());
            match link.state {
                LinkState::Up => return,
                LinkState::Unknown => tracing::info!(url = %self.url, "history: Redis answers"),
                LinkState::Down => tracing::info!(
                    url = %self.url,
                    "history: Redis answers again; messages are kept again"
                ),
            }
            link.state = LinkState::Up;
            link.retry_at = None;
            link.pause = MIN_PAUSE;
        }

        fn failed(&self, why: &str) {
            let mut link = self.link.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if link.state == LinkState::Down {
                tracing::debug!(url = %self.url, error = %why, "history: Redis still unreachable");
                link.pause = (link.pause * 2).min(MAX_PAUSE);
            } else {
                tracing::warn!(
                    "history: Redis at WS_REDIS_URL={} is unreachable ({why}); messages are still \
                     delivered but not kept, and chat.join returns an empty history, until it answers",
                    self.url
                );
                link.state = LinkState::Down;
                link.pause = MIN_PAUSE;
            }
            link.retry_at = Some(now + link.pause);
        }
    }

    /// Pings Redis every [`PING_EVERY`] until the store is dropped: connects
    /// at startup, notices a lost or regained Redis without traffic.
    async fn ping(store: Weak<RedisHistory>) {
        loop {
            let Some(s) = store.upgrade() else { return };
            s.call(
                |mut conn| async move { redis::cmd("PING").query_async::<String>(&mut conn).await },
            )
            .await;
            drop(s);
            tokio::time::sleep(PING_EVERY).await;
        }
    }
}
