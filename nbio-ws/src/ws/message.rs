//! Whole messages: reassembly of fragments (size limit on the whole
//! message, UTF-8 checked as fragments arrive) and close-frame validation.

use bytes::{Bytes, BytesMut};

use super::frame::{InFrame, OpCode, Violation};
use crate::deflate::Inflater;

/// A whole message received in raw mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawMessage {
    /// A text message (valid UTF-8).
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
}

impl RawMessage {
    /// The text of a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            RawMessage::Text(b) => std::str::from_utf8(b).ok(),
            RawMessage::Binary(_) => None,
        }
    }

    /// The payload, text or binary.
    pub fn bytes(&self) -> &Bytes {
        match self {
            RawMessage::Text(b) | RawMessage::Binary(b) => b,
        }
    }
}

/// Validates a close frame's payload: the peer's code (`None` for an empty
/// payload), or the violation.
pub(crate) fn close_event(payload: &[u8]) -> Result<Option<u16>, Violation> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(Violation(1002, "close frame with a 1-byte payload")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !valid_close_code(code) {
                Err(Violation(1002, "invalid close code"))
            } else if std::str::from_utf8(&payload[2..]).is_err() {
                Err(Violation(1007, "invalid UTF-8 in the close reason"))
            } else {
                Ok(Some(code))
            }
        }
    }
}

/// Close codes a peer may send (RFC 6455 section 7.4 and the IANA registry).
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Reassembles fragmented messages, enforcing the size limit on the whole
/// message and validating UTF-8 as fragments arrive (so an invalid text
/// message fails fast).
pub(crate) struct Assembler {
    max: usize,
    partial: Option<Partial>,
    /// With permessage-deflate: the inflater, and the largest compressed
    /// message accepted (a little over `max`: deflate can grow
    /// incompressible data slightly).
    inflate: Option<(Inflater, usize)>,
}

struct Partial {
    text: bool,
    /// The frames are compressed (RSV1 on the first): UTF-8 is checked
    /// after inflating.
    compressed: bool,
    buf: BytesMut,
    /// Bytes of `buf` known to be valid UTF-8 (text only).
    checked: usize,
}

/// The largest compressed form of a message of `max` bytes: stored
/// blocks cost 5 bytes per 64 KiB, plus the block that ends a flush.
pub(crate) fn compressed_limit(max: usize) -> usize {
    max.saturating_add(max / 16_384 * 5 + 64)
}

const INVALID_UTF8: Violation = Violation(1007, "invalid UTF-8 in a text message");

impl Assembler {
    pub(crate) fn new(max: usize) -> Self {
        Assembler {
            max,
            partial: None,
            inflate: None,
        }
    }

    /// Inflates compressed messages with `inflater`; the size limit then
    /// applies to the inflated message.
    pub(crate) fn with_inflater(mut self, inflater: Inflater) -> Self {
        self.inflate = Some((inflater, compressed_limit(self.max)));
        self
    }

    pub(crate) fn push(&mut self, frame: InFrame) -> Result<Option<RawMessage>, Violation> {
        let payload = frame.payload;
        // Compressed frames reach here only when the reader accepted RSV1,
        // that is with an inflater.
        let wire_max = match (&self.inflate, self.partial.as_ref()) {
            (Some((_, limit)), Some(p)) if p.compressed => *limit,
            (Some((_, limit)), None) if frame.rsv1 => *limit,
            _ => self.max,
        };
        match (frame.opcode, self.partial.as_mut()) {
            (OpCode::Text | OpCode::Binary, Some(_)) => {
                Err(Violation(1002, "new data frame before the last fragment"))
            }
            (OpCode::Continuation, None) => {
                Err(Violation(1002, "continuation frame without a message"))
            }
            (opcode, None) => {
                if payload.len() > wire_max {
                    return Err(Violation(1009, "message too big"));
                }
                let mut p = Partial {
                    text: opcode == OpCode::Text,
                    compressed: frame.rsv1,
                    buf: payload,
                    checked: 0,
                };
                if frame.fin {
                    return self.finish(p).map(Some);
                }
                if p.text && !p.compressed {
                    check_utf8(&mut p, false)?;
                }
                self.partial = Some(p);
                Ok(None)
            }
            (_, Some(p)) => {
                if p.buf.len() + payload.len() > wire_max {
                    self.partial = None;
                    return Err(Violation(1009, "message too big"));
                }
                p.buf.extend_from_slice(&payload);
                if p.text && !p.compressed {
                    check_utf8(p, frame.fin)?;
                }
                if !frame.fin {
                    return Ok(None);
                }
                let Some(p) = self.partial.take() else {
                    return Ok(None);
                };
                self.finish(p).map(Some)
            }
        }
    }

    /// The whole message: inflated if compressed, UTF-8 checked if text.
    fn finish(&mut self, p: Partial) -> Result<RawMessage, Violation> {
        let (b, checked) = match (&mut self.inflate, p.compressed) {
            (Some((inflater, _)), true) => {
                let out = inflater
                    .inflate(&p.buf, self.max)
                    .map_err(|e| Violation(e.close().0, e.close().1))?;
                (Bytes::from(out), 0)
            }
            _ => (p.buf.freeze(), p.checked),
        };
        if p.text {
            if std::str::from_utf8(&b[checked..]).is_err() {
                return Err(INVALID_UTF8);
            }
            Ok(RawMessage::Text(b))
        } else {
            Ok(RawMessage::Binary(b))
        }
    }
}

fn check_utf8(p: &mut Partial, fin: bool) -> Result<(), Violation> {
    match std::str::from_utf8(&p.buf[p.checked..]) {
        Ok(_) => {
            p.checked = p.buf.len();
            Ok(())
        }
        Err(e) if e.error_len().is_some() || fin => Err(INVALID_UTF8),
        Err(e) => {
            // An incomplete sequence at the end: it may complete later.
            p.checked += e.valid_up_to();
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin: bool, opcode: OpCode, data: &[u8]) -> InFrame {
        InFrame {
            fin,
            rsv1: false,
            opcode,
            payload: BytesMut::from(data),
        }
    }

    fn fail_code(r: Result<Option<RawMessage>, Violation>) -> u16 {
        match r {
            Err(v) => v.0,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    fn compressed(fin: bool, opcode: OpCode, data: &[u8]) -> InFrame {
        InFrame {
            fin,
            rsv1: opcode != OpCode::Continuation,
            opcode,
            payload: BytesMut::from(data),
        }
    }

    fn deflate(data: &[u8]) -> Vec<u8> {
        crate::deflate::deflate_message(6, 15, data)
    }

    fn inflating(max: usize) -> Assembler {
        Assembler::new(max).with_inflater(Inflater::new(15, true))
    }

    #[test]
    fn compressed_messages_are_inflated_whole_or_in_fragments() {
        let text = "hello hello hello hello, compressed €".repeat(20);
        let c = deflate(text.as_bytes());
        assert!(c.len() < text.len() / 4);
        let mut a = inflating(1000);
        let msg = a.push(compressed(true, OpCode::Text, &c)).unwrap().unwrap();
        assert_eq!(msg.as_text(), Some(&text[..]));
        // Fragmented: RSV1 on the first frame only.
        let (x, y) = c.split_at(c.len() / 2);
        assert!(a
            .push(compressed(false, OpCode::Text, x))
            .unwrap()
            .is_none());
        let msg = a
            .push(compressed(true, OpCode::Continuation, y))
            .unwrap()
            .unwrap();
        assert_eq!(msg.as_text(), Some(&text[..]));
        // Uncompressed messages still pass on the same connection.
        let msg = a
            .push(frame(true, OpCode::Binary, b"plain"))
            .unwrap()
            .unwrap();
        assert_eq!(msg, RawMessage::Binary(Bytes::from_static(b"plain")));
    }

    #[test]
    fn the_limit_applies_to_the_inflated_message() {
        let big = vec![b'a'; 2000];
        let c = deflate(&big);
        assert!(c.len() < 100);
        assert_eq!(
            fail_code(inflating(1999).push(compressed(true, OpCode::Binary, &c))),
            1009
        );
        assert!(inflating(2000)
            .push(compressed(true, OpCode::Binary, &c))
            .unwrap()
            .is_some());
        // The compressed bytes are bounded too, with a little slack for
        // incompressible data.
        let limit = compressed_limit(100);
        assert!(limit > 100);
        let junk = vec![0u8; limit + 1];
        assert_eq!(
            fail_code(inflating(100).push(compressed(true, OpCode::Binary, &junk))),
            1009
        );
    }

    #[test]
    fn bad_compressed_data_and_bad_inflated_utf8() {
        assert_eq!(
            fail_code(inflating(100).push(compressed(true, OpCode::Text, &[0xff, 0xff]))),
            1007
        );
        let c = deflate(b"\xc3\x28 not utf-8");
        assert_eq!(
            fail_code(inflating(100).push(compressed(true, OpCode::Text, &c))),
            1007
        );
        // Valid UTF-8 only once inflated is fine; and a binary message is
        // not checked.
        let c = deflate("€".as_bytes());
        let mut a = inflating(100);
        assert_eq!(
            a.push(compressed(true, OpCode::Text, &c))
                .unwrap()
                .unwrap()
                .as_text(),
            Some("€")
        );
        let c = deflate(b"\xff");
        assert!(a
            .push(compressed(true, OpCode::Binary, &c))
            .unwrap()
            .is_some());
    }

    #[test]
    fn reassembles_fragments() {
        let mut a = Assembler::new(10);
        assert!(a.push(frame(false, OpCode::Text, b"he")).unwrap().is_none());
        assert!(a
            .push(frame(false, OpCode::Continuation, b"ll"))
            .unwrap()
            .is_none());
        let msg = a
            .push(frame(true, OpCode::Continuation, b"o"))
            .unwrap()
            .unwrap();
        assert_eq!(msg.as_text(), Some("hello"));
    }

    #[test]
    fn limit_applies_to_the_whole_message() {
        let mut a = Assembler::new(4);
        assert!(a
            .push(frame(false, OpCode::Binary, b"abc"))
            .unwrap()
            .is_none());
        assert_eq!(
            fail_code(a.push(frame(true, OpCode::Continuation, b"de"))),
            1009
        );
        assert_eq!(
            fail_code(Assembler::new(4).push(frame(true, OpCode::Text, b"abcde"))),
            1009
        );
    }

    #[test]
    fn utf8_is_checked_across_fragments() {
        let euro = "€".as_bytes();
        let mut a = Assembler::new(100);
        assert!(a
            .push(frame(false, OpCode::Text, &euro[..1]))
            .unwrap()
            .is_none());
        let msg = a
            .push(frame(true, OpCode::Continuation, &euro[1..]))
            .unwrap()
            .unwrap();
        assert_eq!(msg.as_text(), Some("€"));

        let mut a = Assembler::new(100);
        assert_eq!(
            fail_code(a.push(frame(false, OpCode::Text, b"a\xff"))),
            1007
        );
        let mut a = Assembler::new(100);
        assert!(a
            .push(frame(false, OpCode::Text, &euro[..2]))
            .unwrap()
            .is_none());
        assert_eq!(
            fail_code(a.push(frame(true, OpCode::Continuation, b""))),
            1007
        );
        assert_eq!(
            fail_code(Assembler::new(100).push(frame(true, OpCode::Text, b"\xc3\x28"))),
            1007
        );
    }

    #[test]
    fn broken_fragment_sequences() {
        let mut a = Assembler::new(100);
        assert_eq!(
            fail_code(a.push(frame(true, OpCode::Continuation, b"x"))),
            1002
        );
        let mut a = Assembler::new(100);
        a.push(frame(false, OpCode::Text, b"x")).unwrap();
        assert_eq!(fail_code(a.push(frame(true, OpCode::Text, b"y"))), 1002);
    }

    #[test]
    fn close_frames() {
        assert_eq!(close_event(&[]), Ok(None));
        assert_eq!(close_event(&[3]).unwrap_err().0, 1002);
        assert_eq!(close_event(&1000u16.to_be_bytes()), Ok(Some(1000)));
        assert_eq!(close_event(&4999u16.to_be_bytes()), Ok(Some(4999)));
        for bad in [0u16, 999, 1004, 1005, 1006, 1015, 2000, 2999, 5000] {
            assert_eq!(
                close_event(&bad.to_be_bytes()).unwrap_err().0,
                1002,
                "{bad}"
            );
        }
        let mut bad = 1000u16.to_be_bytes().to_vec();
        bad.extend_from_slice(b"\xff");
        assert_eq!(close_event(&bad).unwrap_err().0, 1007);
    }
}
