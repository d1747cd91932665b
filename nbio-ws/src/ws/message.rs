//! Whole messages: reassembly of fragments (size limit on the whole
//! message, UTF-8 checked as fragments arrive) and close-frame validation.

use bytes::{Bytes, BytesMut};

use super::frame::{InFrame, OpCode, Violation};

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
}

struct Partial {
    text: bool,
    buf: BytesMut,
    /// Bytes of `buf` known to be valid UTF-8 (text only).
    checked: usize,
}

const INVALID_UTF8: Violation = Violation(1007, "invalid UTF-8 in a text message");

impl Assembler {
    pub(crate) fn new(max: usize) -> Self {
        Assembler { max, partial: None }
    }

    pub(crate) fn push(&mut self, frame: InFrame) -> Result<Option<RawMessage>, Violation> {
        let payload = frame.payload;
        match (frame.opcode, self.partial.as_mut()) {
            (OpCode::Text | OpCode::Binary, Some(_)) => {
                Err(Violation(1002, "new data frame before the last fragment"))
            }
            (OpCode::Continuation, None) => {
                Err(Violation(1002, "continuation frame without a message"))
            }
            (opcode, None) => {
                if payload.len() > self.max {
                    return Err(Violation(1009, "message too big"));
                }
                let text = opcode == OpCode::Text;
                if frame.fin {
                    if text && std::str::from_utf8(&payload).is_err() {
                        return Err(INVALID_UTF8);
                    }
                    let b = payload.freeze();
                    return Ok(Some(if text {
                        RawMessage::Text(b)
                    } else {
                        RawMessage::Binary(b)
                    }));
                }
                let mut p = Partial {
                    text,
                    buf: payload,
                    checked: 0,
                };
                if text {
                    check_utf8(&mut p, false)?;
                }
                self.partial = Some(p);
                Ok(None)
            }
            (_, Some(p)) => {
                if p.buf.len() + payload.len() > self.max {
                    self.partial = None;
                    return Err(Violation(1009, "message too big"));
                }
                p.buf.extend_from_slice(&payload);
                if p.text {
                    check_utf8(p, frame.fin)?;
                }
                if !frame.fin {
                    return Ok(None);
                }
                let Some(p) = self.partial.take() else {
                    return Ok(None);
                };
                let b = p.buf.freeze();
                Ok(Some(if p.text {
                    RawMessage::Text(b)
                } else {
                    RawMessage::Binary(b)
                }))
            }
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
