//! [`MemoryHistory`]: history in this process's memory, the embedded
//! default (one instance, no broker).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;

use super::{new_epoch, Appended, HistoryError, HistoryPolicy, HistoryStore, Range, Stored};
use crate::types::BoxFuture;

/// Bytes of publications a [`MemoryHistory`] keeps by default, over all
/// rooms.
pub const DEFAULT_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Fixed cost counted per stored entry besides its data.
const ENTRY_OVERHEAD: usize = 48;

/// History kept in memory: per room, the last `size` publications for at
/// most `ttl`, and at most `max_bytes` of them over all rooms (the oldest
/// entries of the room being published to go first, then those of other
/// rooms). Lost when the process exits: a restarted instance has new
/// epochs, so clients that recover from it are told `recovered: false`.
///
/// Costs: one `VecDeque` entry (the data plus ~48 bytes) per stored
/// publication; an append or a read locks only its room.
///
/// ```
/// use nbio_ws::history::{HistoryPolicy, HistoryStore, MemoryHistory};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = MemoryHistory::new();
/// let policy = HistoryPolicy::new(2, Duration::from_secs(60));
/// for text in ["a", "b", "c"] {
///     store.append("lobby", policy, text.into()).await.unwrap();
/// }
/// let range = store.read("lobby", policy, Some(0), 10).await.unwrap();
/// assert_eq!(range.top, 3);
/// assert_eq!(range.entries.len(), 2); // "a" was trimmed
/// assert!(!range.covers(0));
/// assert!(store.read("lobby", policy, Some(1), 10).await.unwrap().covers(1));
/// # }
/// ```
pub struct MemoryHistory {
    rooms: DashMap<Arc<str>, Arc<Mutex<RoomLog>>>,
    /// Bytes stored over all rooms.
    bytes: AtomicUsize,
    max_bytes: usize,
    /// Prefix of every epoch this store gives out.
    epoch: String,
    /// Makes each room state's epoch unique.
    generation: AtomicU64,
    appends: AtomicU64,
}

struct RoomLog {
    epoch: Arc<str>,
    /// Offset of the latest publication.
    top: u64,
    entries: VecDeque<Entry>,
    last_used: Instant,
}

struct Entry {
    offset: u64,
    prev: u64,
    data: Bytes,
    at: Instant,
}

impl std::fmt::Debug for MemoryHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryHistory")
            .field("rooms", &self.rooms.len())
            .field("bytes", &self.bytes())
            .finish_non_exhaustive()
    }
}

impl Default for MemoryHistory {
    fn default() -> Self {
        Self::with_max_bytes(DEFAULT_MAX_BYTES)
    }
}

impl MemoryHistory {
    /// A store of at most [`DEFAULT_MAX_BYTES`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A store of at most `max_bytes` of publications over all rooms.
    pub fn with_max_bytes(max_bytes: usize) -> Self {
        MemoryHistory {
            rooms: DashMap::new(),
            bytes: AtomicUsize::new(0),
            max_bytes: max_bytes.max(1024),
            epoch: new_epoch(),
            generation: AtomicU64::new(0),
            appends: AtomicU64::new(0),
        }
    }

    /// Bytes of publications stored now (data plus a fixed overhead each).
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Rooms with a stream now.
    pub fn rooms(&self) -> usize {
        self.rooms.len()
    }

    fn log(&self, room: &str) -> Arc<Mutex<RoomLog>> {
        if let Some(l) = self.rooms.get(room) {
            return Arc::clone(l.value());
        }
        let entry = self.rooms.entry(Arc::from(room)).or_insert_with(|| {
            let generation = self.generation.fetch_add(1, Ordering::Relaxed);
            Arc::new(Mutex::new(RoomLog {
                epoch: Arc::from(format!("{}{generation:x}", self.epoch)),
                top: 0,
                entries: VecDeque::new(),
                last_used: Instant::now(),
            }))
        });
        Arc::clone(entry.value())
    }

    fn lock(log: &Mutex<RoomLog>) -> std::sync::MutexGuard<'_, RoomLog> {
        log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops the entries older than `ttl` and, past `size`, the oldest.
    fn trim(&self, log: &mut RoomLog, policy: HistoryPolicy, now: Instant) {
        while let Some(front) = log.entries.front() {
            let expired = now.saturating_duration_since(front.at) > policy.ttl;
            if !expired && log.entries.len() <= policy.size {
                break;
            }
            if let Some(e) = log.entries.pop_front() {
                self.bytes
                    .fetch_sub(e.data.len() + ENTRY_OVERHEAD, Ordering::Relaxed);
            }
        }
    }

    /// Brings the total under `max_bytes`, oldest entries of other rooms
    /// first (the current room's were trimmed by the caller), and forgets
    /// rooms that are empty and unused for longer than `idle`.
    fn enforce_budget(&self, current: &str, idle: Duration) {
        let sweep = self
            .appends
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(1024);
        if self.bytes() <= self.max_bytes && !sweep {
            return;
        }
        let now = Instant::now();
        let logs: Vec<(Arc<str>, Arc<Mutex<RoomLog>>)> = self
            .rooms
            .iter()
            .map(|e| (Arc::clone(e.key()), Arc::clone(e.value())))
            .collect();
        for (name, log) in logs {
            if &*name == current {
                continue;
            }
            let mut l = Self::lock(&log);
            while self.bytes() > self.max_bytes {
                match l.entries.pop_front() {
                    Some(e) => {
                        self.bytes
                            .fetch_sub(e.data.len() + ENTRY_OVERHEAD, Ordering::Relaxed);
                    }
                    None => break,
                }
            }
            let forget = l.entries.is_empty() && now.duration_since(l.last_used) > idle;
            drop(l);
            if forget {
                self.rooms.remove_if(&name, |_, v| {
                    let l = Self::lock(v);
                    l.entries.is_empty() && now.duration_since(l.last_used) > idle
                });
            }
        }
    }
}

impl HistoryStore for MemoryHistory {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn append<'a>(
        &'a self,
        room: &'a str,
        policy: HistoryPolicy,
        data: Bytes,
    ) -> BoxFuture<'a, Result<Appended, HistoryError>> {
        let result = if !policy.enabled() {
            Err(HistoryError::NoHistory(room.to_owned()))
        } else if data.len() + ENTRY_OVERHEAD > self.max_bytes {
            Err(HistoryError::Invalid(format!(
                "a publication of {} bytes does not fit in the history ({} bytes)",
                data.len(),
                self.max_bytes
            )))
        } else {
            let log = self.log(room);
            let now = Instant::now();
            let appended = {
                let mut l = Self::lock(&log);
                let prev = l.top;
                l.top += 1;
                l.last_used = now;
                let offset = l.top;
                self.bytes
                    .fetch_add(data.len() + ENTRY_OVERHEAD, Ordering::Relaxed);
                l.entries.push_back(Entry {
                    offset,
                    prev,
                    data,
                    at: now,
                });
                self.trim(&mut l, policy, now);
                // Over budget: this room's oldest go first.
                while self.bytes() > self.max_bytes && l.entries.len() > 1 {
                    if let Some(e) = l.entries.pop_front() {
                        self.bytes
                            .fetch_sub(e.data.len() + ENTRY_OVERHEAD, Ordering::Relaxed);
                    }
                }
                Appended {
                    epoch: Arc::clone(&l.epoch),
                    offset,
                    prev,
                }
            };
            self.enforce_budget(room, policy.ttl);
            Ok(appended)
        };
        Box::pin(std::future::ready(result))
    }

    fn read<'a>(
        &'a self,
        room: &'a str,
        policy: HistoryPolicy,
        after: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Range, HistoryError>> {
        let log = self.log(room);
        let range = {
            let mut l = Self::lock(&log);
            let now = Instant::now();
            l.last_used = now;
            self.trim(&mut l, policy, now);
            let entries: Vec<Stored> = match after {
                Some(after) => l
                    .entries
                    .iter()
                    .filter(|e| e.offset > after)
                    .take(limit)
                    .map(stored)
                    .collect(),
                None => {
                    let skip = l.entries.len().saturating_sub(limit);
                    l.entries.iter().skip(skip).map(stored).collect()
                }
            };
            Range {
                epoch: Arc::clone(&l.epoch),
                top: l.top,
                entries,
            }
        };
        Box::pin(std::future::ready(Ok(range)))
    }
}

fn stored(e: &Entry) -> Stored {
    Stored {
        offset: e.offset,
        prev: e.prev,
        data: e.data.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(size: usize) -> HistoryPolicy {
        HistoryPolicy::new(size, Duration::from_secs(60))
    }

    #[tokio::test]
    async fn offsets_increase_and_reads_cover() {
        let s = MemoryHistory::new();
        for i in 1..=5u64 {
            let a = s
                .append("r", policy(10), Bytes::from(format!("{i}")))
                .await
                .unwrap();
            assert_eq!((a.offset, a.prev), (i, i - 1));
        }
        let r = s.read("r", policy(10), Some(2), 100).await.unwrap();
        assert_eq!(r.top, 5);
        assert_eq!(
            r.entries.iter().map(|e| e.offset).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        assert!(r.covers(2));
        let limited = s.read("r", policy(10), Some(0), 2).await.unwrap();
        assert!(!limited.covers(0));
        let latest = s.read("r", policy(10), None, 2).await.unwrap();
        assert_eq!(
            latest.entries.iter().map(|e| e.offset).collect::<Vec<_>>(),
            [4, 5]
        );
        // Another room has its own offsets and epoch.
        let other = s.append("q", policy(10), Bytes::from("x")).await.unwrap();
        assert_eq!(other.offset, 1);
        assert_ne!(other.epoch, r.epoch);
        // A room without history refuses.
        assert!(matches!(
            s.append("z", policy(0), Bytes::from("x")).await,
            Err(HistoryError::NoHistory(_))
        ));
    }

    #[tokio::test]
    async fn ttl_and_budget_bound_what_is_kept() {
        let s = MemoryHistory::with_max_bytes(10 * (100 + ENTRY_OVERHEAD));
        let p = HistoryPolicy::new(1000, Duration::from_secs(60));
        for _ in 0..50 {
            s.append("a", p, Bytes::from(vec![b'x'; 100]))
                .await
                .unwrap();
        }
        assert!(s.bytes() <= 10 * (100 + ENTRY_OVERHEAD), "{}", s.bytes());
        let r = s.read("a", p, Some(0), 1000).await.unwrap();
        assert_eq!(r.top, 50);
        assert_eq!(r.entries.len(), 10);
        assert!(!r.covers(0));
        assert!(r.covers(40));
        // Entries older than the TTL are gone (and so not recoverable).
        let short = HistoryPolicy {
            size: 1000,
            ttl: Duration::from_millis(1),
        };
        std::thread::sleep(Duration::from_millis(5));
        let r = s.read("a", short, Some(45), 1000).await.unwrap();
        assert!(r.entries.is_empty());
        assert_eq!(r.top, 50);
        assert!(!r.covers(45));
        assert_eq!(s.bytes(), 0);
    }
}
