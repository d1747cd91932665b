//! [`JetStreamHistory`]: history in a NATS JetStream stream, shared by
//! every instance (cargo feature `nats`, chosen with
//! `WS_PUBSUB_ADAPTER=nats`).

use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::{self, consumer, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::Mutex;
use tokio::time::{timeout, Instant};

use super::{Appended, HistoryError, HistoryPolicy, HistoryStore, Range, Stored};
use crate::broker::{BrokerError, PubSubConfig};
use crate::types::BoxFuture;

/// Longest wait for one request to the server.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest an append may take, retries included.
const APPEND_DEADLINE: Duration = Duration::from_secs(5);
/// Most attempts of one append when other publishers win the race.
const MAX_ATTEMPTS: u32 = 100;
/// Longest a read may take.
const READ_DEADLINE: Duration = Duration::from_secs(5);
/// The header holding the offset of the previous publication of the room.
const PREV_HEADER: &str = "Nbio-Prev";
/// The server checks this against the subject's last sequence.
const EXPECTED_LAST: &str = "Nats-Expected-Last-Subject-Sequence";

/// History in a JetStream stream, so that every instance on the same NATS
/// server (or cluster) shares it.
///
/// ## Layout
///
/// One stream per pub/sub channel, named `NBIO_<CHANNEL>_HISTORY` (the
/// channel upper-cased, characters other than letters, digits, `-` and
/// `_` replaced by `_`), on the subjects `<channel>.history.>`. Each room
/// has one subject: `<channel>.history.room.<room>` when the room name is
/// a plain token (letters, digits, `-`, `_`, at most 128 bytes), else
/// `<channel>.history.roomh.<64-bit hash>`. The stream is created on
/// first use (file storage, one replica) if it does not exist.
///
/// ## Guarantees
///
/// - A publication's offset is its stream sequence: offsets of a room
///   strictly increase, but are not consecutive (the rooms share one
///   sequence). Its `prev` is the sequence of the room's previous
///   publication, stored in the `Nbio-Prev` header.
/// - Instances never disagree on `prev`: each publish carries
///   `Nats-Expected-Last-Subject-Sequence: <prev>`, so the server rejects
///   it when another instance published to the room in between; the
///   append then reads the room's last sequence again and retries (at most
///   100 attempts within 5 s, after which it fails with
///   [`HistoryError::Unavailable`]).
/// - The epoch comes from the stream's creation time: a deleted and
///   recreated stream has a new epoch (an instance notices when it next
///   has to look the stream up, after an error).
/// - Limits: `max_messages_per_subject` is the largest `size` and
///   `max_age` the largest `ttl` of the policies appended with so far
///   (the stream is updated when a larger one appears, never shrunk).
///   A room whose policy is smaller than the largest may therefore keep
///   more than its own size and TTL; a read of the latest publications
///   still returns at most the room's `size`.
/// - A room's current position is its subject's last sequence: once every
///   publication of the room has expired (or been removed), it reads
///   offset 0 in the same epoch until the next publication (whose `prev`
///   is then 0). Recovery stays exact: a client whose position is past
///   that is told `recovered: false`.
/// - Two rooms whose names hash to the same 64-bit value share a subject
///   (and so a sequence of publications); plain room names never collide.
///
/// ## Costs
///
/// An append is one publish with its acknowledgement, plus one lookup of
/// the room's last message when this instance does not know it yet or
/// another instance published in between. A read is one lookup of the
/// last message plus, when entries are wanted, one ordered consumer that
/// streams the entries (for the latest `n`, every stored entry of the
/// room is streamed and the last `n` kept). One NATS connection per
/// store, besides the broker's.
///
/// ## When the server is unreachable
///
/// Every operation fails fast with [`HistoryError::Unavailable`]: at once
/// while the client is disconnected, else after at most 2 s per request.
/// The client reconnects in the background; the first connection is
/// attempted again on the next operation.
///
/// ```no_run
/// use nbio_ws::broker::PubSubConfig;
/// use nbio_ws::history::{HistoryPolicy, HistoryStore, JetStreamHistory};
/// use std::time::Duration;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let config = PubSubConfig::nats("nats://127.0.0.1:4222");
/// let store = JetStreamHistory::new(&config)?;
/// let policy = HistoryPolicy::new(100, Duration::from_secs(600));
/// let appended = store.append("lobby", policy, r#"{"method":"m","params":1}"#.into()).await?;
/// let range = store.read("lobby", policy, Some(appended.prev), 10).await?;
/// assert!(range.covers(appended.prev));
/// # Ok(()) }
/// ```
pub struct JetStreamHistory {
    servers: Vec<async_nats::ServerAddr>,
    shown: String,
    channel: String,
    stream_name: String,
    client: Mutex<Option<async_nats::Client>>,
    stream: Mutex<Option<StreamState>>,
    /// The last sequence this instance knows per room subject.
    last: dashmap::DashMap<String, u64>,
}

#[derive(Clone)]
struct StreamState {
    stream: stream::Stream,
    js: jetstream::Context,
    epoch: Arc<str>,
    size: usize,
    ttl: Duration,
}

impl std::fmt::Debug for JetStreamHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamHistory")
            .field("url", &self.shown)
            .field("stream", &self.stream_name)
            .finish_non_exhaustive()
    }
}

/// The history factory of `WS_PUBSUB_ADAPTER=nats`.
pub(crate) fn create(config: &PubSubConfig) -> Result<Arc<dyn HistoryStore>, BrokerError> {
    Ok(Arc::new(JetStreamHistory::new(config)?))
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> HistoryError {
    HistoryError::Unavailable(format!("jetstream {what}: {e}"))
}

/// `NBIO_<CHANNEL>_HISTORY`, a valid stream name.
fn stream_name(channel: &str) -> String {
    let clean: String = channel
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("NBIO_{clean}_HISTORY")
}

/// Base 36 of the creation time in nanoseconds.
fn epoch_of(created_nanos: i128) -> String {
    let mut n = created_nanos.unsigned_abs();
    if n == 0 {
        return "0".into();
    }
    let mut digits = Vec::new();
    while n > 0 {
        let d = (n % 36) as u8;
        digits.push(char::from(if d < 10 { b'0' + d } else { b'a' + d - 10 }));
        n /= 36;
    }
    digits.iter().rev().collect()
}

impl JetStreamHistory {
    /// A store on the NATS server(s) of `config` (`config.url()`, several
    /// separated by commas), in the stream of `config.channel`. Only parses
    /// the URLs; it connects on first use.
    pub fn new(config: &PubSubConfig) -> Result<Self, BrokerError> {
        let url = config.url();
        let mut servers = Vec::new();
        for one in url.split(',').map(str::trim) {
            crate::broker::check_url("WS_NATS_URL", one, &["nats", "tls"])?;
            let addr =
                one.parse::<async_nats::ServerAddr>()
                    .map_err(|e| crate::env::ConfigError {
                        var: "WS_NATS_URL",
                        value: crate::broker::redact_url(one),
                        reason: e.to_string(),
                    })?;
            servers.push(addr);
        }
        let shown = url
            .split(',')
            .map(|u| crate::broker::redact_url(u.trim()))
            .collect::<Vec<_>>()
            .join(",");
        Ok(JetStreamHistory {
            servers,
            shown,
            channel: config.channel.clone(),
            stream_name: stream_name(&config.channel),
            client: Mutex::new(None),
            stream: Mutex::new(None),
            last: dashmap::DashMap::new(),
        })
    }

    /// The stream's name.
    pub fn stream_name(&self) -> &str {
        &self.stream_name
    }

    /// The subject of `room`.
    fn subject(&self, room: &str) -> String {
        crate::cluster::link::room_channel(&format!("{}.history", self.channel), room)
    }

    /// A connected client (connecting on first use; fails at once while
    /// disconnected).
    async fn client(&self) -> Result<async_nats::Client, HistoryError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return match c.connection_state() {
                State::Connected => Ok(c.clone()),
                _ => Err(unavailable("connection", "not connected")),
            };
        }
        let connect = async_nats::ConnectOptions::new()
            .name("nbio-ws-history")
            .max_reconnects(None)
            .connection_timeout(OP_TIMEOUT)
            .request_timeout(Some(OP_TIMEOUT))
            .ping_interval(Duration::from_secs(5))
            .reconnect_delay_callback(|attempts| {
                crate::broker::Backoff::delay_for(
                    u32::try_from(attempts.saturating_sub(1)).unwrap_or(u32::MAX),
                )
            })
            .connect(self.servers.clone());
        let c = timeout(OP_TIMEOUT * 2, connect)
            .await
            .map_err(|_| unavailable("connect", "timed out"))?
            .map_err(|e| unavailable("connect", e))?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// The stream, created or enlarged to cover `policy` (`None`: as it is).
    async fn stream(&self, policy: Option<HistoryPolicy>) -> Result<StreamState, HistoryError> {
        let client = self.client().await?;
        let mut slot = self.stream.lock().await;
        if let Some(s) = slot.as_ref() {
            if policy.is_none_or(|p| p.size <= s.size && p.ttl <= s.ttl) {
                return Ok(s.clone());
            }
        }
        let mut js = jetstream::new(client);
        js.set_timeout(OP_TIMEOUT);
        let want = policy.unwrap_or(HistoryPolicy::new(1, Duration::from_secs(1)));
        let config = stream::Config {
            name: self.stream_name.clone(),
            subjects: vec![format!("{}.history.>", self.channel)],
            max_messages_per_subject: i64::try_from(want.size.max(1)).unwrap_or(i64::MAX),
            max_age: want.ttl,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::Old,
            allow_direct: true,
            ..Default::default()
        };
        let mut stream = timeout(OP_TIMEOUT, js.get_or_create_stream(config.clone()))
            .await
            .map_err(|_| unavailable("stream", "timed out"))?
            .map_err(|e| unavailable("stream", e))?;
        let info = stream.cached_info().clone();
        let have_size = usize::try_from(info.config.max_messages_per_subject.max(0)).unwrap_or(0);
        let have_ttl = info.config.max_age;
        let size = have_size.max(want.size);
        let ttl = if have_ttl.is_zero() {
            have_ttl
        } else {
            have_ttl.max(want.ttl)
        };
        if size != have_size || ttl != have_ttl {
            let mut bigger = info.config.clone();
            bigger.max_messages_per_subject = i64::try_from(size).unwrap_or(i64::MAX);
            bigger.max_age = ttl;
            timeout(OP_TIMEOUT, js.update_stream(bigger))
                .await
                .map_err(|_| unavailable("stream update", "timed out"))?
                .map_err(|e| unavailable("stream update", e))?;
            let _ = timeout(OP_TIMEOUT, stream.info()).await;
        }
        let state = StreamState {
            stream,
            js,
            epoch: epoch_of(info.created.unix_timestamp_nanos()).into(),
            size,
            ttl: if ttl.is_zero() { Duration::MAX } else { ttl },
        };
        *slot = Some(state.clone());
        Ok(state)
    }

    /// Forgets the stream (looked up again next time: it may have been
    /// recreated).
    async fn forget(&self) {
        *self.stream.lock().await = None;
        self.last.clear();
    }

    /// The sequence of the last message on `subject` (0: none).
    async fn last_sequence(s: &StreamState, subject: &str) -> Result<u64, HistoryError> {
        use stream::LastRawMessageErrorKind as K;
        match timeout(
            OP_TIMEOUT,
            s.stream.get_last_raw_message_by_subject(subject),
        )
        .await
        {
            Err(_) => Err(unavailable("last message", "timed out")),
            Ok(Ok(m)) => Ok(m.sequence),
            Ok(Err(e)) if e.kind() == K::NoMessageFound => Ok(0),
            Ok(Err(e)) => Err(unavailable("last message", e)),
        }
    }

    async fn append_inner(
        &self,
        room: &str,
        policy: HistoryPolicy,
        data: Bytes,
    ) -> Result<Appended, HistoryError> {
        use jetstream::context::PublishErrorKind as K;
        let s = self.stream(Some(policy)).await?;
        let subject = self.subject(room);
        let deadline = Instant::now() + APPEND_DEADLINE;
        let mut known = self.last.get(&subject).map(|v| *v);
        for attempt in 0..MAX_ATTEMPTS {
            if Instant::now() >= deadline {
                break;
            }
            let prev = match known {
                Some(p) => p,
                None => Self::last_sequence(&s, &subject).await?,
            };
            let mut headers = HeaderMap::new();
            headers.insert(EXPECTED_LAST, prev.to_string().as_str());
            headers.insert(PREV_HEADER, prev.to_string().as_str());
            let sent = timeout(
                OP_TIMEOUT,
                s.js.publish_with_headers(subject.clone(), headers, data.clone()),
            )
            .await
            .map_err(|_| unavailable("publish", "timed out"))?;
            let ack = match sent {
                Ok(fut) => timeout(OP_TIMEOUT, fut)
                    .await
                    .map_err(|_| unavailable("publish", "no acknowledgement in time"))?,
                Err(e) => Err(e),
            };
            match ack {
                Ok(ack) => {
                    self.last.insert(subject, ack.sequence);
                    return Ok(Appended {
                        epoch: s.epoch.clone(),
                        offset: ack.sequence,
                        prev,
                    });
                }
                Err(e) if e.kind() == K::WrongLastSequence => {
                    known = None;
                    if attempt >= 2 {
                        // Let the other publishers through.
                        let jitter = u64::from(std::process::id() ^ attempt) % 7;
                        tokio::time::sleep(Duration::from_millis(1 + jitter)).await;
                    }
                }
                Err(e) if e.kind() == K::MaxPayloadExceeded => {
                    return Err(HistoryError::Invalid(e.to_string()))
                }
                Err(e) => {
                    if e.kind() == K::StreamNotFound {
                        self.forget().await;
                    }
                    return Err(unavailable("publish", e));
                }
            }
        }
        self.last.remove(&subject);
        Err(unavailable(
            "publish",
            "other instances kept publishing to the room; retries exhausted",
        ))
    }

    async fn read_inner(
        &self,
        room: &str,
        policy: HistoryPolicy,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Range, HistoryError> {
        let s = self.stream(None).await?;
        let subject = self.subject(room);
        let top = Self::last_sequence(&s, &subject).await?;
        let (start, keep) = match after {
            Some(a) => (a.saturating_add(1), limit),
            None => (1, limit.min(policy.size)),
        };
        let mut entries = std::collections::VecDeque::new();
        if keep == 0 || top < start {
            return Ok(Range {
                epoch: s.epoch,
                top,
                entries: entries.into(),
            });
        }
        let deliver_policy = if start <= 1 {
            consumer::DeliverPolicy::All
        } else {
            consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start,
            }
        };
        let consumer = timeout(
            OP_TIMEOUT,
            s.stream.create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subject.clone(),
                deliver_policy,
                ..Default::default()
            }),
        )
        .await
        .map_err(|_| unavailable("consumer", "timed out"))?
        .map_err(|e| unavailable("consumer", e))?;
        let mut messages = timeout(OP_TIMEOUT, consumer.messages())
            .await
            .map_err(|_| unavailable("consumer", "timed out"))?
            .map_err(|e| unavailable("consumer", e))?;
        let deadline = Instant::now() + READ_DEADLINE;
        loop {
            let next = tokio::time::timeout_at(deadline, messages.next())
                .await
                .map_err(|_| unavailable("read", "timed out"))?;
            let Some(m) = next else { break };
            let m = m.map_err(|e| unavailable("read", e))?;
            let (offset, pending) = m
                .info()
                .map(|i| (i.stream_sequence, i.pending))
                .map_err(|e| unavailable("read", e))?;
            if offset > top {
                break;
            }
            let prev = m
                .headers
                .as_ref()
                .and_then(|h| h.get(PREV_HEADER))
                .and_then(|v| v.as_str().parse().ok())
                .unwrap_or(0);
            entries.push_back(Stored {
                offset,
                prev,
                data: m.payload.clone(),
            });
            if entries.len() > keep {
                entries.pop_front();
            }
            if offset >= top || pending == 0 || (after.is_some() && entries.len() == keep) {
                break;
            }
        }
        Ok(Range {
            epoch: s.epoch,
            top,
            entries: entries.into(),
        })
    }
}

impl HistoryStore for JetStreamHistory {
    fn name(&self) -> &'static str {
        "jetstream"
    }

    fn append<'a>(
        &'a self,
        room: &'a str,
        policy: HistoryPolicy,
        data: Bytes,
    ) -> BoxFuture<'a, Result<Appended, HistoryError>> {
        Box::pin(self.append_inner(room, policy, data))
    }

    fn read<'a>(
        &'a self,
        room: &'a str,
        policy: HistoryPolicy,
        after: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Range, HistoryError>> {
        Box::pin(self.read_inner(room, policy, after, limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid() {
        assert_eq!(stream_name("nbio-ws"), "NBIO_NBIO-WS_HISTORY");
        assert_eq!(stream_name("a.b c*>"), "NBIO_A_B_C___HISTORY");
        assert_eq!(epoch_of(0), "0");
        assert_eq!(epoch_of(35), "z");
        assert_ne!(
            epoch_of(1_700_000_000_000_000_001),
            epoch_of(1_700_000_000_000_000_002)
        );
    }
}
