//! The envelope instances exchange through the broker.
//!
//! One broker message carries one or more entries that the origin's
//! publisher found waiting in its queue for the same channel (batching
//! keeps the broker's per-message cost off the hot path at high rates
//! without adding any delay: nothing waits for a batch to fill). Binary,
//! big-endian:
//!
//! ```text
//! 0      1        2          10         18
//! +------+--------+----------+----------+---------------------------+
//! | 0x4E | ver=4  | origin   | first    | entries...                |
//! | 'N'  |        | (u64)    | seq (u64)|                           |
//! +------+--------+----------+----------+---------------------------+
//! str  = len(u32) UTF-8 bytes
//! client = a client id (u128: instance id, counter)
//! entry: 'B' str(text)                           a broadcast
//!        'D' client str(text)                    a message for one client
//!        'R' str(room) except(client) str(text)  a message for a room (except: 0 = none)
//!        'J' version(u64) str(room) client str(meta JSON)   a join
//!        'L' version(u64) str(room) client                  a leave
//!        'H' version(u64) ttl_ms(u32)            presence heartbeat
//!        'S' since(u64) part(u32) parts(u32) count(u32) count × (str(room) version(u64) client str(meta))
//!                                                part `part` (0-based) of `parts` of a presence snapshot:
//!                                                `since` is the version before it was taken, each member
//!                                                carries its room's version
//!        'Q' target(u64)                         "send your snapshot" (0: everyone)
//!        'X'                                     the origin is shutting down
//! ```
//!
//! `origin` is the publishing hub's random instance id (an instance skips
//! its own envelopes: it delivered them locally already). Entries are
//! numbered from `first seq` on, consecutively per origin and channel; a
//! receiver skips entries it has already seen (a broker that redelivers
//! cannot cause duplicates) and counts holes as lost messages. `text` is
//! the encoded JSON-RPC message, sent to clients as is; it is checked to
//! be UTF-8 (it goes out in a text frame) but not parsed. The presence
//! entries are described in [`presence`](super::presence).

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::types::ClientId;

const MAGIC: u8 = b'N';
const VERSION: u8 = 4;
/// The bytes of an envelope before its entries.
pub(crate) const HEADER: usize = 18;
/// Most entries one envelope may hold (a publisher packs at most 256): a
/// message of tiny entries cannot make a receiver allocate far more than
/// its size.
pub(crate) const MAX_ENTRIES: usize = 1024;
/// The fixed bytes of one snapshot member: two string lengths, a room
/// version and a client id.
const SNAPSHOT_MEMBER: usize = 4 + 8 + 16 + 4;

/// One message to carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    /// For every client of every other instance.
    Broadcast(Bytes),
    /// For one client, wherever it is connected.
    Direct(ClientId, Bytes),
    /// For the members of a room on the other instances.
    Room {
        room: Arc<str>,
        except: Option<ClientId>,
        text: Bytes,
    },
    /// A publication to a room with history: the room's frame with its
    /// position, and the offset before it (for gap detection).
    Publication {
        room: Arc<str>,
        except: Option<ClientId>,
        epoch: Arc<str>,
        offset: u64,
        prev: u64,
        text: Bytes,
    },
    /// Presence replication.
    Presence(Presence),
}

/// Memberships as a snapshot carries them: room, the room's version,
/// client, meta (JSON).
pub(crate) type SnapshotMembers = Vec<(Arc<str>, u64, ClientId, Bytes)>;

/// The presence entries (see [`presence`](super::presence)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Presence {
    Join {
        version: u64,
        room: Arc<str>,
        client: ClientId,
        meta: Bytes,
    },
    Leave {
        version: u64,
        room: Arc<str>,
        client: ClientId,
    },
    Heartbeat {
        version: u64,
        ttl_ms: u32,
    },
    Snapshot {
        since: u64,
        part: u32,
        parts: u32,
        members: SnapshotMembers,
    },
    SyncRequest {
        target: u64,
    },
    Gone,
}

/// Which channel an entry travels on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    /// The channel every instance shares (`WS_PUBSUB_CHANNEL`).
    Main,
    /// The presence channel.
    Presence,
    /// A room's channel.
    Room(&'a str),
}

impl Entry {
    /// Bytes the entry adds to an envelope.
    pub(crate) fn encoded_len(&self) -> usize {
        match self {
            Entry::Broadcast(b) => 5 + b.len(),
            Entry::Direct(_, b) => 21 + b.len(),
            Entry::Room { room, text, .. } => 25 + room.len() + text.len(),
            Entry::Publication {
                room, epoch, text, ..
            } => 45 + room.len() + epoch.len() + text.len(),
            Entry::Presence(p) => match p {
                Presence::Join { room, meta, .. } => 33 + room.len() + meta.len(),
                Presence::Leave { room, .. } => 29 + room.len(),
                Presence::Heartbeat { .. } => 13,
                Presence::Snapshot { members, .. } => {
                    21 + members
                        .iter()
                        .map(|(r, _, _, m)| Entry::snapshot_member_len(r, m))
                        .sum::<usize>()
                }
                Presence::SyncRequest { .. } => 9,
                Presence::Gone => 1,
            },
        }
    }

    /// Bytes one member adds to a snapshot.
    pub(crate) fn snapshot_member_len(room: &str, meta: &[u8]) -> usize {
        SNAPSHOT_MEMBER + room.len() + meta.len()
    }

    /// A join, as published (`meta`: JSON).
    pub(crate) fn presence_join(
        version: u64,
        room: &Arc<str>,
        client: ClientId,
        meta: Bytes,
    ) -> Entry {
        Entry::Presence(Presence::Join {
            version,
            room: Arc::clone(room),
            client,
            meta,
        })
    }

    /// A leave, as published.
    pub(crate) fn presence_leave(version: u64, room: &Arc<str>, client: ClientId) -> Entry {
        Entry::Presence(Presence::Leave {
            version,
            room: Arc::clone(room),
            client,
        })
    }

    /// The channel the entry goes to.
    pub(crate) fn route(&self) -> Route<'_> {
        match self {
            Entry::Broadcast(_) | Entry::Direct(..) => Route::Main,
            Entry::Room { room, .. } | Entry::Publication { room, .. } => Route::Room(room),
            Entry::Presence(_) => Route::Presence,
        }
    }
}

/// Encodes `entries`, numbered from `first_seq`, from instance `origin`.
pub(crate) fn encode(origin: u64, first_seq: u64, entries: &[Entry]) -> Bytes {
    let len = HEADER + entries.iter().map(Entry::encoded_len).sum::<usize>();
    let mut out = BytesMut::with_capacity(len);
    out.put_u8(MAGIC);
    out.put_u8(VERSION);
    out.put_u64(origin);
    out.put_u64(first_seq);
    for e in entries {
        match e {
            Entry::Broadcast(text) => {
                out.put_u8(b'B');
                put_str(&mut out, text);
            }
            Entry::Direct(id, text) => {
                out.put_u8(b'D');
                out.put_u128(id.as_u128());
                put_str(&mut out, text);
            }
            Entry::Room { room, except, text } => {
                out.put_u8(b'R');
                put_str(&mut out, room.as_bytes());
                out.put_u128(except.map_or(0, ClientId::as_u128));
                put_str(&mut out, text);
            }
            Entry::Publication {
                room,
                except,
                epoch,
                offset,
                prev,
                text,
            } => {
                out.put_u8(b'P');
                put_str(&mut out, room.as_bytes());
                out.put_u128(except.map_or(0, ClientId::as_u128));
                put_str(&mut out, epoch.as_bytes());
                out.put_u64(*offset);
                out.put_u64(*prev);
                put_str(&mut out, text);
            }
            Entry::Presence(Presence::Join {
                version,
                room,
                client,
                meta,
            }) => {
                out.put_u8(b'J');
                out.put_u64(*version);
                put_str(&mut out, room.as_bytes());
                out.put_u128(client.as_u128());
                put_str(&mut out, meta);
            }
            Entry::Presence(Presence::Leave {
                version,
                room,
                client,
            }) => {
                out.put_u8(b'L');
                out.put_u64(*version);
                put_str(&mut out, room.as_bytes());
                out.put_u128(client.as_u128());
            }
            Entry::Presence(Presence::Heartbeat { version, ttl_ms }) => {
                out.put_u8(b'H');
                out.put_u64(*version);
                out.put_u32(*ttl_ms);
            }
            Entry::Presence(Presence::Snapshot {
                since,
                part,
                parts,
                members,
            }) => {
                out.put_u8(b'S');
                out.put_u64(*since);
                out.put_u32(*part);
                out.put_u32(*parts);
                out.put_u32(u32::try_from(members.len()).unwrap_or(u32::MAX));
                for (room, version, client, meta) in members {
                    put_str(&mut out, room.as_bytes());
                    out.put_u64(*version);
                    out.put_u128(client.as_u128());
                    put_str(&mut out, meta);
                }
            }
            Entry::Presence(Presence::SyncRequest { target }) => {
                out.put_u8(b'Q');
                out.put_u64(*target);
            }
            Entry::Presence(Presence::Gone) => out.put_u8(b'X'),
        }
    }
    out.freeze()
}

fn put_str(out: &mut BytesMut, text: &[u8]) {
    // Texts are bounded by the queue's batch limit and the broker's
    // message size, far below 4 GiB; saturate rather than wrap.
    out.put_u32(u32::try_from(text.len()).unwrap_or(u32::MAX));
    out.put_slice(text);
}

/// A decoded envelope; entry texts share the received buffer.
#[derive(Debug)]
pub(crate) struct Envelope {
    pub origin: u64,
    pub first_seq: u64,
    pub entries: Vec<Entry>,
}

/// Why a broker message was not understood.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("not an nbio-ws envelope")]
    NotAnEnvelope,
    #[error("unsupported envelope version {0}")]
    Version(u8),
    #[error("truncated envelope")]
    Truncated,
    #[error("unknown entry kind {0:#x}")]
    Kind(u8),
    #[error("an entry is not valid UTF-8")]
    Utf8,
    #[error("more than {MAX_ENTRIES} entries")]
    TooMany,
}

/// The origin of an envelope, read from the header only (so an instance
/// skips its own messages without decoding them).
pub(crate) fn origin(buf: &[u8]) -> Option<u64> {
    if buf.len() < HEADER || buf[0] != MAGIC {
        return None;
    }
    Some(u64::from_be_bytes(buf[2..10].try_into().ok()?))
}

/// Decodes an envelope; entry texts are slices of `buf` (no copy).
pub(crate) fn decode(buf: Bytes) -> Result<Envelope, DecodeError> {
    if buf.len() < 2 || buf[0] != MAGIC {
        return Err(DecodeError::NotAnEnvelope);
    }
    if buf[1] != VERSION {
        return Err(DecodeError::Version(buf[1]));
    }
    if buf.len() < HEADER {
        return Err(DecodeError::Truncated);
    }
    let origin = read_u64(&buf, 2)?;
    let first_seq = read_u64(&buf, 10)?;
    let mut r = Reader {
        buf: &buf,
        at: HEADER,
    };
    let mut entries = Vec::new();
    while r.at < buf.len() {
        if entries.len() == MAX_ENTRIES {
            return Err(DecodeError::TooMany);
        }
        let kind = r.u8()?;
        entries.push(match kind {
            b'B' => Entry::Broadcast(r.text()?),
            b'D' => {
                let id = r.client()?;
                Entry::Direct(id, r.text()?)
            }
            b'R' => {
                let room = r.name()?;
                let except = Some(r.client()?).filter(|c| c.as_u128() != 0);
                Entry::Room {
                    room,
                    except,
                    text: r.text()?,
                }
            }
            b'P' => {
                let room = r.name()?;
                let except = Some(r.client()?).filter(|c| c.as_u128() != 0);
                Entry::Publication {
                    room,
                    except,
                    epoch: r.name()?,
                    offset: r.u64()?,
                    prev: r.u64()?,
                    text: r.text()?,
                }
            }
            b'J' => Entry::Presence(Presence::Join {
                version: r.u64()?,
                room: r.name()?,
                client: r.client()?,
                meta: r.text()?,
            }),
            b'L' => Entry::Presence(Presence::Leave {
                version: r.u64()?,
                room: r.name()?,
                client: r.client()?,
            }),
            b'H' => Entry::Presence(Presence::Heartbeat {
                version: r.u64()?,
                ttl_ms: r.u32()?,
            }),
            b'S' => {
                let since = r.u64()?;
                let part = r.u32()?;
                let parts = r.u32()?;
                if part >= parts {
                    return Err(DecodeError::Truncated);
                }
                let count = r.u32()?;
                // Each member takes at least SNAPSHOT_MEMBER bytes: a count
                // that cannot fit is a lie, not a reason to allocate.
                let room_left = (buf.len() - r.at) / SNAPSHOT_MEMBER;
                let mut members = Vec::with_capacity((count as usize).min(room_left));
                for _ in 0..count {
                    let room = r.name()?;
                    let version = r.u64()?;
                    let client = r.client()?;
                    members.push((room, version, client, r.text()?));
                }
                Entry::Presence(Presence::Snapshot {
                    since,
                    part,
                    parts,
                    members,
                })
            }
            b'Q' => Entry::Presence(Presence::SyncRequest { target: r.u64()? }),
            b'X' => Entry::Presence(Presence::Gone),
            other => return Err(DecodeError::Kind(other)),
        });
    }
    Ok(Envelope {
        origin,
        first_seq,
        entries,
    })
}

/// A cursor over a received envelope.
struct Reader<'a> {
    buf: &'a Bytes,
    at: usize,
}

impl Reader<'_> {
    fn u8(&mut self) -> Result<u8, DecodeError> {
        let v = *self.buf.get(self.at).ok_or(DecodeError::Truncated)?;
        self.at += 1;
        Ok(v)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let v = read_u32(self.buf, self.at)?;
        self.at += 4;
        Ok(v)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let v = read_u64(self.buf, self.at)?;
        self.at += 8;
        Ok(v)
    }

    fn client(&mut self) -> Result<ClientId, DecodeError> {
        let v = self
            .buf
            .get(self.at..self.at + 16)
            .and_then(|s| s.try_into().ok())
            .map(u128::from_be_bytes)
            .ok_or(DecodeError::Truncated)?;
        self.at += 16;
        Ok(ClientId::from_u128(v))
    }

    /// A length-prefixed UTF-8 string, as a slice of the buffer (no copy).
    fn text(&mut self) -> Result<Bytes, DecodeError> {
        let len = usize::try_from(self.u32()?).map_err(|_| DecodeError::Truncated)?;
        let end = self.at.checked_add(len).ok_or(DecodeError::Truncated)?;
        if end > self.buf.len() {
            return Err(DecodeError::Truncated);
        }
        if std::str::from_utf8(&self.buf[self.at..end]).is_err() {
            return Err(DecodeError::Utf8);
        }
        let text = self.buf.slice(self.at..end);
        self.at = end;
        Ok(text)
    }

    /// A room name.
    fn name(&mut self) -> Result<Arc<str>, DecodeError> {
        let text = self.text()?;
        // Checked to be UTF-8 by `text`.
        std::str::from_utf8(&text)
            .map(Arc::from)
            .map_err(|_| DecodeError::Utf8)
    }
}

fn read_u64(buf: &[u8], at: usize) -> Result<u64, DecodeError> {
    buf.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or(DecodeError::Truncated)
}

fn read_u32(buf: &[u8], at: usize) -> Result<u32, DecodeError> {
    buf.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or(DecodeError::Truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let entries = vec![
            Entry::Broadcast(Bytes::from_static(br#"{"jsonrpc":"2.0","method":"m"}"#)),
            Entry::Direct(
                ClientId::from_parts(0xabcd, 42),
                Bytes::from_static("é".as_bytes()),
            ),
            Entry::Broadcast(Bytes::new()),
            Entry::Room {
                room: Arc::from("lobby"),
                except: Some(ClientId::from_parts(0xabcd, 9)),
                text: Bytes::from_static(b"{}"),
            },
            Entry::Room {
                room: Arc::from("Zoë's room"),
                except: None,
                text: Bytes::from_static(b"[]"),
            },
            Entry::presence_join(
                3,
                &Arc::from("lobby"),
                ClientId::from_parts(0xabcd, 5),
                Bytes::from_static(br#"{"nick":"ada"}"#),
            ),
            Entry::presence_leave(4, &Arc::from("lobby"), ClientId::from_parts(0xabcd, 5)),
            Entry::Presence(Presence::Heartbeat {
                version: 4,
                ttl_ms: 15_000,
            }),
            Entry::Presence(Presence::Snapshot {
                since: 4,
                part: 1,
                parts: 2,
                members: vec![
                    (
                        Arc::from("a"),
                        3,
                        ClientId::from_parts(0xabcd, 1),
                        Bytes::from_static(b"null"),
                    ),
                    (
                        Arc::from("b"),
                        4,
                        ClientId::from_parts(0xabcd, 2),
                        Bytes::from_static(br#"{"x":1}"#),
                    ),
                ],
            }),
            Entry::Presence(Presence::SyncRequest { target: 77 }),
            Entry::Presence(Presence::Gone),
        ];
        let buf = encode(7, 100, &entries);
        assert_eq!(
            buf.len(),
            HEADER + entries.iter().map(Entry::encoded_len).sum::<usize>()
        );
        assert_eq!(origin(&buf), Some(7));
        let env = decode(buf).unwrap();
        assert_eq!(env.origin, 7);
        assert_eq!(env.first_seq, 100);
        assert_eq!(env.entries, entries);
    }

    #[test]
    fn a_lying_snapshot_count_allocates_nothing_and_fails() {
        let mut v = encode(
            1,
            0,
            &[Entry::Presence(Presence::Snapshot {
                since: 1,
                part: 0,
                parts: 1,
                members: vec![],
            })],
        )
        .to_vec();
        let count_at = HEADER + 1 + 8 + 4 + 4;
        v[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode(Bytes::from(v)).unwrap_err(), DecodeError::Truncated);
    }

    #[test]
    fn garbage_is_rejected_not_panicked_on() {
        let good = encode(
            1,
            0,
            &[Entry::Direct(
                ClientId::from_parts(0xabcd, 1),
                Bytes::from_static(b"hi"),
            )],
        );
        for cut in 0..good.len() {
            let r = decode(good.slice(..cut));
            assert!(r.is_err() || cut == HEADER, "cut at {cut}: {r:?}");
        }
        assert_eq!(
            decode(Bytes::from_static(b"hello")).unwrap_err(),
            DecodeError::NotAnEnvelope
        );
        let mut v = good.to_vec();
        v[1] = 9;
        assert_eq!(decode(Bytes::from(v)).unwrap_err(), DecodeError::Version(9));
        let mut v = good.to_vec();
        v[HEADER] = b'Z';
        assert_eq!(decode(Bytes::from(v)).unwrap_err(), DecodeError::Kind(b'Z'));
        let bad = encode(1, 0, &[Entry::Broadcast(Bytes::from_static(b"\xff\xfe"))]);
        assert_eq!(decode(bad).unwrap_err(), DecodeError::Utf8);
        let mut v = encode(1, 0, &[Entry::Broadcast(Bytes::from_static(b"abc"))]).to_vec();
        v[HEADER + 1..HEADER + 5].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode(Bytes::from(v)).unwrap_err(), DecodeError::Truncated);
    }

    #[test]
    fn the_fuzz_seeds_decode() {
        for (name, seed) in [
            (
                "broadcast_direct",
                &include_bytes!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/fuzz/corpus/envelope/broadcast_direct"
                ))[..],
            ),
            (
                "room",
                &include_bytes!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/fuzz/corpus/envelope/room"
                ))[..],
            ),
            (
                "presence",
                &include_bytes!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/fuzz/corpus/envelope/presence"
                ))[..],
            ),
        ] {
            let env =
                decode(Bytes::copy_from_slice(seed)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!env.entries.is_empty(), "{name}");
        }
    }

    #[test]
    fn too_many_entries_are_refused() {
        let many = vec![Entry::Presence(Presence::Gone); MAX_ENTRIES + 1];
        assert_eq!(
            decode(encode(1, 0, &many)).unwrap_err(),
            DecodeError::TooMany
        );
        let enough = &many[..MAX_ENTRIES];
        assert_eq!(
            decode(encode(1, 0, enough)).unwrap().entries.len(),
            MAX_ENTRIES
        );
    }
}
