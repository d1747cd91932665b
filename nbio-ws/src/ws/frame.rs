//! The WebSocket frame codec of a server connection (RFC 6455 section 5).
//!
//! Why not fastwebsockets' reader: its `read_frame` allocates an 8 KiB
//! buffer per connection up front and is not cancel-safe, which forces a
//! second task per connection just to read. This reader keeps all of its
//! state in [`FrameReader`] and only ever awaits `read_buf`, so it can sit
//! in a `select!` beside the outbound queue: one task per connection, and a
//! buffer that grows for the frame at hand and is released when idle.
//! fastwebsockets still performs the HTTP upgrade and the unmasking.
//!
//! Server frames are written by hand too: they are never masked, so a frame
//! is a 2–10 byte header and the payload; several queued messages are
//! coalesced into one write.

use std::io::IoSlice;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Frame opcodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpCode {
    Continuation = 0,
    Text = 1,
    Binary = 2,
    Close = 8,
    Ping = 9,
    Pong = 10,
}

impl OpCode {
    fn from_bits(b: u8) -> Option<OpCode> {
        Some(match b {
            0 => OpCode::Continuation,
            1 => OpCode::Text,
            2 => OpCode::Binary,
            8 => OpCode::Close,
            9 => OpCode::Ping,
            10 => OpCode::Pong,
            _ => return None,
        })
    }

    fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// A frame received from a client, unmasked.
#[derive(Debug)]
pub(crate) struct InFrame {
    pub fin: bool,
    /// RSV1: the first frame of a compressed message (permessage-deflate).
    pub rsv1: bool,
    pub opcode: OpCode,
    pub payload: BytesMut,
}

/// A protocol violation: the close code and reason to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Violation(pub u16, pub &'static str);

/// Bytes reserved when the buffer is empty: enough for a typical request
/// in one read, small enough that idle connections cost little.
const IDLE_READ: usize = 512;
/// An empty buffer larger than this is released instead of kept.
const KEEP_CAPACITY: usize = 16 * 1024;

/// Parses client frames out of a growable buffer.
pub(crate) struct FrameReader {
    buf: BytesMut,
    max_payload: usize,
    /// permessage-deflate was negotiated: RSV1 may be set.
    rsv1_allowed: bool,
}

impl FrameReader {
    pub(crate) fn new(max_payload: usize) -> Self {
        FrameReader {
            buf: BytesMut::new(),
            max_payload,
            rsv1_allowed: false,
        }
    }

    /// Accepts RSV1 on the first frame of a data message (permessage-deflate
    /// was negotiated), with frames of up to `max_payload` bytes.
    pub(crate) fn allow_compressed(&mut self, max_payload: usize) {
        self.rsv1_allowed = true;
        self.max_payload = max_payload;
    }

    /// Reads more bytes from `io`. Cancel-safe: bytes are only ever
    /// appended to the buffer by a completed read. `Ok(0)` is EOF.
    pub(crate) async fn fill<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
    ) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() == 0 {
            self.buf.reserve(IDLE_READ);
        }
        io.read_buf(&mut self.buf).await
    }

    /// Releases a large buffer once it is empty.
    pub(crate) fn shrink_if_idle(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > KEEP_CAPACITY {
            self.buf = BytesMut::new();
        }
    }

    /// The next complete frame in the buffer, `None` if more bytes are
    /// needed, or the violation that ends the connection.
    pub(crate) fn next_frame(&mut self) -> Result<Option<InFrame>, Violation> {
        let b = &self.buf[..];
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        let rsv1 = b[0] & 0x40 != 0;
        if b[0] & 0x30 != 0 || rsv1 && !self.rsv1_allowed {
            return Err(Violation(1002, "reserved bits set"));
        }
        let opcode = OpCode::from_bits(b[0] & 0x0f).ok_or(Violation(1002, "unknown opcode"))?;
        if rsv1 && (opcode.is_control() || opcode == OpCode::Continuation) {
            // RFC 7692 §6: only the first frame of a data message says it
            // is compressed; control frames never are.
            return Err(Violation(
                1002,
                "RSV1 set on a control or continuation frame",
            ));
        }
        if b[1] & 0x80 == 0 {
            return Err(Violation(1002, "client frames must be masked"));
        }
        let (len, mut head) = match b[1] & 0x7f {
            126 => {
                if b.len() < 4 {
                    return Ok(None);
                }
                (u64::from(u16::from_be_bytes([b[2], b[3]])), 4)
            }
            127 => {
                if b.len() < 10 {
                    return Ok(None);
                }
                let mut n = [0u8; 8];
                n.copy_from_slice(&b[2..10]);
                let len = u64::from_be_bytes(n);
                if len >> 63 != 0 {
                    return Err(Violation(1002, "invalid payload length"));
                }
                (len, 10)
            }
            n => (u64::from(n), 2),
        };
        if opcode.is_control() {
            if !fin {
                return Err(Violation(1002, "fragmented control frame"));
            }
            if len > 125 {
                return Err(Violation(1002, "control frame over 125 bytes"));
            }
        } else if len > self.max_payload as u64 {
            return Err(Violation(1009, "message too big"));
        }
        // `len` fits in usize: it is at most max_payload or 125.
        let len = len as usize;
        if b.len() < head + 4 {
            return Ok(None);
        }
        let mask = [b[head], b[head + 1], b[head + 2], b[head + 3]];
        head += 4;
        let total = head + len;
        if self.buf.len() < total {
            // Make room for the whole frame so it arrives in few reads.
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(head);
        let mut payload = self.buf.split_to(len);
        fastwebsockets::unmask(&mut payload, mask);
        Ok(Some(InFrame {
            fin,
            rsv1,
            opcode,
            payload,
        }))
    }
}

/// Appends a server frame header (FIN set, unmasked; RSV1 when
/// `compressed`) to `out`.
pub(crate) fn put_header(out: &mut Vec<u8>, opcode: OpCode, compressed: bool, len: usize) {
    out.push(0x80 | if compressed { 0x40 } else { 0 } | opcode as u8);
    if len < 126 {
        out.push(len as u8);
    } else if len <= 0xFFFF {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Payloads up to this size are copied into the coalescing buffer; larger
/// ones are written from where they are.
const COPY_LIMIT: usize = 16 * 1024;

/// Coalesces outgoing frames into few writes.
pub(crate) struct FrameWriter {
    buf: Vec<u8>,
}

impl FrameWriter {
    pub(crate) fn new() -> Self {
        FrameWriter { buf: Vec::new() }
    }

    /// Queues a frame; call [`FrameWriter::flush`] to send. A large payload
    /// is written at once (after what is queued).
    pub(crate) async fn frame<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        opcode: OpCode,
        payload: &[u8],
    ) -> std::io::Result<()> {
        self.data_frame(io, opcode, false, payload).await
    }

    /// Like [`FrameWriter::frame`], with RSV1 set when the payload is
    /// compressed.
    pub(crate) async fn data_frame<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        opcode: OpCode,
        compressed: bool,
        payload: &[u8],
    ) -> std::io::Result<()> {
        put_header(&mut self.buf, opcode, compressed, payload.len());
        if payload.len() <= COPY_LIMIT {
            self.buf.extend_from_slice(payload);
            if self.buf.len() >= 4 * COPY_LIMIT {
                self.flush(io).await?;
            }
            return Ok(());
        }
        write_all_vectored(io, &self.buf, payload).await?;
        self.buf.clear();
        Ok(())
    }

    /// Writes everything queued.
    pub(crate) async fn flush<W: AsyncWrite + Unpin>(&mut self, io: &mut W) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            io.write_all(&self.buf).await?;
            self.buf.clear();
        }
        if self.buf.capacity() > 4 * KEEP_CAPACITY {
            self.buf = Vec::new();
        }
        Ok(())
    }
}

async fn write_all_vectored<W: AsyncWrite + Unpin>(
    io: &mut W,
    a: &[u8],
    b: &[u8],
) -> std::io::Result<()> {
    let (mut a, mut b) = (a, b);
    while !a.is_empty() || !b.is_empty() {
        let n = io
            .write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
            .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[n - from_a..];
    }
    io.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut out = vec![first];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len < 65536 {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn reader_with(bytes: &[u8], max: usize) -> FrameReader {
        let mut r = FrameReader::new(max);
        r.buf.extend_from_slice(bytes);
        r
    }

    #[test]
    fn parses_frames_of_every_length_encoding() {
        for len in [0usize, 5, 125, 126, 65535, 65536, 100_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut bytes = masked(0x82, &payload);
            bytes.extend_from_slice(&masked(0x89, b"p"));
            let mut r = reader_with(&bytes, 1 << 20);
            let f = r.next_frame().unwrap().unwrap();
            assert!(f.fin);
            assert_eq!(f.opcode, OpCode::Binary);
            assert_eq!(&f.payload[..], &payload[..]);
            let f = r.next_frame().unwrap().unwrap();
            assert_eq!(f.opcode, OpCode::Ping);
            assert!(r.next_frame().unwrap().is_none());
        }
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let bytes = masked(0x81, b"hello world");
        for cut in 0..bytes.len() {
            let mut r = reader_with(&bytes[..cut], 100);
            assert!(r.next_frame().unwrap().is_none(), "cut at {cut}");
            r.buf.extend_from_slice(&bytes[cut..]);
            assert_eq!(
                &r.next_frame().unwrap().unwrap().payload[..],
                b"hello world"
            );
        }
    }

    #[test]
    fn violations() {
        let cases: [(Vec<u8>, u16); 6] = [
            (masked(0xC1, b"x"), 1002),         // RSV1
            (masked(0x83, b"x"), 1002),         // reserved opcode
            (vec![0x81, 0x01, b'x'], 1002),     // unmasked
            (masked(0x09, b"x"), 1002),         // fragmented ping
            (masked(0x89, &[0; 126]), 1002),    // big ping
            (masked(0x81, &[b'a'; 101]), 1009), // over the limit
        ];
        for (bytes, code) in cases {
            assert_eq!(reader_with(&bytes, 100).next_frame().unwrap_err().0, code);
        }
    }

    #[test]
    fn rsv1_only_where_compression_was_negotiated() {
        // Negotiated: RSV1 on the first frame of a data message.
        let mut r = reader_with(&masked(0xC1, b"x"), 100);
        r.allow_compressed(100);
        assert!(r.next_frame().unwrap().unwrap().rsv1);
        let mut r = reader_with(&masked(0x42, b"x"), 100);
        r.allow_compressed(100);
        assert!(r.next_frame().unwrap().unwrap().rsv1);
        let mut r = reader_with(&masked(0x81, b"x"), 100);
        r.allow_compressed(100);
        assert!(!r.next_frame().unwrap().unwrap().rsv1);
        // Never on control or continuation frames, never RSV2/RSV3.
        for first in [0xC9, 0xCA, 0xC8, 0xC0, 0xA1, 0x91, 0xE1] {
            let mut r = reader_with(&masked(first, b"x"), 100);
            r.allow_compressed(100);
            assert_eq!(r.next_frame().unwrap_err().0, 1002, "{first:#x}");
        }
    }

    #[test]
    fn the_size_check_comes_before_buffering() {
        // Only the header of a huge frame has arrived: refused at once.
        let mut head = vec![0x82, 0x80 | 127];
        head.extend_from_slice(&(1u64 << 40).to_be_bytes());
        assert_eq!(
            reader_with(&head, 1 << 20).next_frame().unwrap_err().0,
            1009
        );
    }

    #[test]
    fn headers() {
        for (len, expect) in [(5usize, 2usize), (126, 4), (65535, 4), (65536, 10)] {
            let mut out = Vec::new();
            put_header(&mut out, OpCode::Text, false, len);
            assert_eq!(out.len(), expect);
            assert_eq!(out[0], 0x81);
        }
    }
}
