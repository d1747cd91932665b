//! The envelope instances exchange through the broker.
//!
//! One broker message carries one or more JSON-RPC messages that the
//! origin's publisher found waiting in its queue (batching keeps the
//! broker's per-message cost off the hot path at high rates without adding
//! any delay: nothing waits for a batch to fill). Binary, big-endian:
//!
//! ```text
//! 0      1        2          10         18
//! +------+--------+----------+----------+---------------------------+
//! | 0x4E | ver=1  | origin   | first    | entries...                |
//! | 'N'  |        | (u64)    | seq (u64)|                           |
//! +------+--------+----------+----------+---------------------------+
//! entry: 'B' len(u32) text            a broadcast
//!        'D' client(u64) len(u32) text a message for one client
//! ```
//!
//! `origin` is the publishing hub's random instance id (an instance skips
//! its own envelopes: it delivered them locally already). Entries are
//! numbered from `first seq` on, consecutively per origin; a receiver
//! skips entries it has already seen (a broker that redelivers cannot
//! cause duplicates) and counts holes as lost messages. `text` is the
//! encoded JSON-RPC message, sent to clients as is; it is checked to be
//! UTF-8 (it goes out in a text frame) but not parsed.

use bytes::{BufMut, Bytes, BytesMut};

use crate::client::ClientId;

const MAGIC: u8 = b'N';
const VERSION: u8 = 1;
const HEADER: usize = 18;

/// One message to carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    /// For every client of every other instance.
    Broadcast(Bytes),
    /// For one client, wherever it is connected.
    Direct(ClientId, Bytes),
}

impl Entry {
    /// Bytes the entry adds to an envelope.
    pub(crate) fn encoded_len(&self) -> usize {
        match self {
            Entry::Broadcast(b) => 5 + b.len(),
            Entry::Direct(_, b) => 13 + b.len(),
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
                put_text(&mut out, text);
            }
            Entry::Direct(id, text) => {
                out.put_u8(b'D');
                out.put_u64(id.0);
                put_text(&mut out, text);
            }
        }
    }
    out.freeze()
}

fn put_text(out: &mut BytesMut, text: &[u8]) {
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
    let mut entries = Vec::new();
    let mut at = HEADER;
    while at < buf.len() {
        let kind = buf[at];
        at += 1;
        let target = match kind {
            b'B' => None,
            b'D' => {
                let id = read_u64(&buf, at)?;
                at += 8;
                Some(ClientId(id))
            }
            other => return Err(DecodeError::Kind(other)),
        };
        let len = usize::try_from(read_u32(&buf, at)?).map_err(|_| DecodeError::Truncated)?;
        at += 4;
        let end = at.checked_add(len).ok_or(DecodeError::Truncated)?;
        if end > buf.len() {
            return Err(DecodeError::Truncated);
        }
        if std::str::from_utf8(&buf[at..end]).is_err() {
            return Err(DecodeError::Utf8);
        }
        let text = buf.slice(at..end);
        at = end;
        entries.push(match target {
            None => Entry::Broadcast(text),
            Some(id) => Entry::Direct(id, text),
        });
    }
    Ok(Envelope {
        origin,
        first_seq,
        entries,
    })
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
            Entry::Direct(ClientId(42), Bytes::from_static("é".as_bytes())),
            Entry::Broadcast(Bytes::new()),
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
    fn garbage_is_rejected_not_panicked_on() {
        let good = encode(
            1,
            0,
            &[Entry::Direct(ClientId(1), Bytes::from_static(b"hi"))],
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
        v[HEADER] = b'X';
        assert_eq!(decode(Bytes::from(v)).unwrap_err(), DecodeError::Kind(b'X'));
        let bad = encode(1, 0, &[Entry::Broadcast(Bytes::from_static(b"\xff\xfe"))]);
        assert_eq!(decode(bad).unwrap_err(), DecodeError::Utf8);
        let mut v = encode(1, 0, &[Entry::Broadcast(Bytes::from_static(b"abc"))]).to_vec();
        v[HEADER + 1..HEADER + 5].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode(Bytes::from(v)).unwrap_err(), DecodeError::Truncated);
    }
}
