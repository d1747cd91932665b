//! permessage-deflate (RFC 7692): negotiation, and compressing and
//! inflating one message.
//!
//! The server always answers with `server_no_context_takeover`: every
//! message it sends is a complete deflate stream on its own, so any
//! deflater can produce it, and the same compressed bytes can be queued
//! for every recipient whose negotiated window is at least the one they
//! were made with. Deflaters are therefore not kept per connection but
//! per thread ([`deflate_message`]); a connection with compression
//! negotiated holds no deflate state at all.
//!
//! What the client sends is inflated by an [`Inflater`]. When the client
//! agreed to `client_no_context_takeover` every message starts afresh and
//! a per-thread inflater is used too; otherwise the client's compression
//! context lives across messages and the connection owns an inflater,
//! created on the first compressed message, whose window is bounded by
//! `client_max_window_bits` (the server asks for
//! [`CompressionConfig::client_max_window_bits`] whenever the offer
//! allows it).
//!
//! Inflating is bounded: output is produced in steps and stops as soon as
//! it passes the message size limit, so a small frame that would inflate
//! to gigabytes costs at most the limit.

use std::cell::RefCell;
use std::sync::OnceLock;

use bytes::Bytes;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::env::{ConfigError, Env};

/// The extension's name in `Sec-WebSocket-Extensions`.
pub(crate) const EXTENSION: &str = "permessage-deflate";

/// The four octets a sync flush ends with; stripped from every sent
/// message and appended to every received one (RFC 7692 §7.2.1, §7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Smallest and largest LZ77 window sizes RFC 7692 allows, as bits.
const MIN_WINDOW_BITS: u8 = 8;
const MAX_WINDOW_BITS: u8 = 15;

/// permessage-deflate settings: whether the server accepts a client's
/// offer, and how it compresses.
///
/// Off by default. `WS_COMPRESSION=true` turns it on;
/// `WS_COMPRESSION_LEVEL` and `WS_COMPRESSION_THRESHOLD` set the level and
/// the threshold; the [`ServerBuilder`](crate::ServerBuilder) has a setter
/// for each field.
///
/// The server never keeps compression context between the messages it
/// sends (it answers every offer with `server_no_context_takeover`), so a
/// broadcast or room message is compressed once and its compressed bytes
/// are shared by every recipient that negotiated the same window. A
/// connection holds no deflate state; it holds inflate state only while
/// its client keeps context between messages, created on the first
/// compressed message and bounded by [`client_max_window_bits`](Self::client_max_window_bits).
///
/// ```
/// let cfg = nbio_ws::Config::from_lookup(|k| match k {
///     "WS_COMPRESSION" => Some("true".into()),
///     "WS_COMPRESSION_LEVEL" => Some("1".into()),
///     _ => None,
/// })
/// .unwrap();
/// assert!(cfg.compression.enabled);
/// assert_eq!(cfg.compression.level, 1);
/// assert_eq!(cfg.compression.threshold, 256);
///
/// let err = nbio_ws::Config::from_lookup(|k| (k == "WS_COMPRESSION").then(|| "maybe".into()))
///     .unwrap_err();
/// assert_eq!(err.var, "WS_COMPRESSION");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompressionConfig {
    /// Accept `permessage-deflate` offers (`WS_COMPRESSION`).
    pub enabled: bool,
    /// Deflate level, 0 (store) to 9 (smallest) (`WS_COMPRESSION_LEVEL`).
    pub level: u32,
    /// Messages shorter than this many bytes are sent uncompressed
    /// (`WS_COMPRESSION_THRESHOLD`). So are longer ones that deflate does
    /// not shrink, except with a threshold of 0, which compresses every
    /// message (for peers that mishandle uncompressed messages on a
    /// compressed connection, which RFC 7692 allows).
    pub threshold: usize,
    /// Largest LZ77 window the server compresses with, as bits (8–15). A
    /// client may ask for less. Deflaters are shared per thread, so this
    /// costs no memory per connection.
    pub server_max_window_bits: u8,
    /// Largest window the server lets a client compress with, as bits
    /// (8–15), asked for when the client's offer allows it. It bounds the
    /// inflate state of a connection whose client keeps its context.
    pub client_max_window_bits: u8,
    /// Ask clients not to keep their compression context between
    /// messages. No connection then holds inflate state between messages;
    /// client messages compress less well.
    pub client_no_context_takeover: bool,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig {
            enabled: false,
            level: 6,
            threshold: 256,
            server_max_window_bits: MAX_WINDOW_BITS,
            client_max_window_bits: 12,
            client_no_context_takeover: false,
        }
    }
}

impl CompressionConfig {
    /// Reads `WS_COMPRESSION`, `WS_COMPRESSION_LEVEL` and
    /// `WS_COMPRESSION_THRESHOLD` over the defaults.
    pub(crate) fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        let d = CompressionConfig::default();
        Ok(CompressionConfig {
            enabled: env.boolean("WS_COMPRESSION")?.unwrap_or(d.enabled),
            level: env
                .parse("WS_COMPRESSION_LEVEL", "a deflate level from 0 to 9", |v| {
                    v.parse().ok().filter(|l| *l <= 9)
                })?
                .unwrap_or(d.level),
            threshold: env
                .parse(
                    "WS_COMPRESSION_THRESHOLD",
                    "a size in bytes (e.g. 256 or 1KiB)",
                    crate::env::parse_size,
                )?
                .unwrap_or(d.threshold),
            ..d
        })
    }

    /// Checks the values a builder may have set.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.level > 9 {
            return Err(format!("compression level {} is not 0-9", self.level));
        }
        for (name, bits) in [
            ("server_max_window_bits", self.server_max_window_bits),
            ("client_max_window_bits", self.client_max_window_bits),
        ] {
            if !(MIN_WINDOW_BITS..=MAX_WINDOW_BITS).contains(&bits) {
                return Err(format!("{name} {bits} is not 8-15"));
            }
        }
        Ok(())
    }

    /// Picks the first acceptable `permessage-deflate` offer among the
    /// `Sec-WebSocket-Extensions` header values, and returns what was
    /// agreed with the response header value. `None` (compression off, no
    /// offer, or none acceptable) means the connection is uncompressed.
    pub(crate) fn negotiate<'a>(
        &self,
        header_values: impl IntoIterator<Item = &'a [u8]>,
    ) -> Option<(Deflate, String)> {
        if !self.enabled {
            return None;
        }
        for value in header_values {
            // A header value that does not parse is skipped whole: the
            // connection goes on without what it offered.
            let Some(exts) = std::str::from_utf8(value).ok().and_then(parse_extensions) else {
                continue;
            };
            for ext in exts {
                if !ext.name.eq_ignore_ascii_case(EXTENSION) {
                    continue;
                }
                if let Some(accepted) = self.accept(&ext.params) {
                    return Some(accepted);
                }
            }
        }
        None
    }

    /// Accepts one offer (RFC 7692 §7.1), or declines it when a parameter
    /// is unknown, repeated or has an invalid value.
    fn accept(&self, params: &[(String, Option<String>)]) -> Option<(Deflate, String)> {
        let mut server_nct = false;
        let mut client_nct = false;
        let mut server_bits: Option<u8> = None;
        // None: not offered; Some(None): offered without a value.
        let mut client_bits: Option<Option<u8>> = None;
        for (name, value) in params {
            match name.to_ascii_lowercase().as_str() {
                "server_no_context_takeover" if !server_nct && value.is_none() => server_nct = true,
                "client_no_context_takeover" if !client_nct && value.is_none() => client_nct = true,
                "server_max_window_bits" if server_bits.is_none() => {
                    server_bits = Some(window_bits(value.as_deref()?)?);
                }
                "client_max_window_bits" if client_bits.is_none() => {
                    client_bits = Some(match value {
                        None => None,
                        Some(v) => Some(window_bits(v)?),
                    });
                }
                _ => return None,
            }
        }
        // The server never keeps context (§7.1.1.1 lets it say so even
        // when not asked); it honours a smaller window, and announces its
        // own when that is smaller than the default 15.
        let server_window = server_bits
            .unwrap_or(MAX_WINDOW_BITS)
            .min(self.server_max_window_bits);
        let client_nct = client_nct || self.client_no_context_takeover;
        // The client's window can only be limited when it said it
        // supports the parameter (§7.1.2.2).
        let client_window = match client_bits {
            None => MAX_WINDOW_BITS,
            Some(None) => self.client_max_window_bits,
            Some(Some(b)) => b.min(self.client_max_window_bits),
        };
        let mut response = format!("{EXTENSION}; server_no_context_takeover");
        if client_nct {
            response.push_str("; client_no_context_takeover");
        }
        if server_bits.is_some() || server_window < MAX_WINDOW_BITS {
            response.push_str(&format!("; server_max_window_bits={server_window}"));
        }
        if client_bits.is_some() && client_window < MAX_WINDOW_BITS
            || matches!(client_bits, Some(Some(_)))
        {
            response.push_str(&format!("; client_max_window_bits={client_window}"));
        }
        Some((
            Deflate {
                level: self.level,
                threshold: self.threshold,
                server_window_bits: server_window,
                client_window_bits: client_window,
                client_no_context_takeover: client_nct,
            },
            response,
        ))
    }
}

/// A window size parameter: a decimal 8 to 15 without leading zeros.
fn window_bits(v: &str) -> Option<u8> {
    match v.as_bytes() {
        [d @ b'8'..=b'9'] => Some(d - b'0'),
        [b'1', d @ b'0'..=b'5'] => Some(10 + d - b'0'),
        _ => None,
    }
}

/// One element of a `Sec-WebSocket-Extensions` list.
#[derive(Debug, PartialEq)]
struct Extension {
    name: String,
    params: Vec<(String, Option<String>)>,
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// Parses `extension *( "," extension )` with
/// `extension = token *( ";" token [ "=" ( token / quoted-string ) ] )`
/// (RFC 6455 §9.1; empty list elements are allowed as in RFC 9110 §5.6.1).
/// `None` if the value does not follow the grammar.
fn parse_extensions(s: &str) -> Option<Vec<Extension>> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t') {
            *i += 1;
        }
    };
    let token = |i: &mut usize| -> Option<String> {
        let start = *i;
        while *i < b.len() && is_tchar(b[*i]) {
            *i += 1;
        }
        (*i > start).then(|| s[start..*i].to_owned())
    };
    loop {
        skip_ws(&mut i);
        if i == b.len() {
            break;
        }
        if b[i] == b',' {
            i += 1;
            continue;
        }
        let name = token(&mut i)?;
        let mut params = Vec::new();
        loop {
            skip_ws(&mut i);
            if i == b.len() || b[i] == b',' {
                break;
            }
            if b[i] != b';' {
                return None;
            }
            i += 1;
            skip_ws(&mut i);
            let pname = token(&mut i)?;
            skip_ws(&mut i);
            let mut value = None;
            if i < b.len() && b[i] == b'=' {
                i += 1;
                skip_ws(&mut i);
                if i < b.len() && b[i] == b'"' {
                    i += 1;
                    let mut v = String::new();
                    loop {
                        match b.get(i)? {
                            b'"' => break,
                            b'\\' => {
                                i += 1;
                                v.push(char::from(*b.get(i)?));
                            }
                            c => v.push(char::from(*c)),
                        }
                        i += 1;
                    }
                    i += 1;
                    // RFC 6455 §9.1: a quoted value must still be a token.
                    if v.is_empty() || !v.bytes().all(is_tchar) {
                        return None;
                    }
                    value = Some(v);
                } else {
                    value = Some(token(&mut i)?);
                }
            }
            params.push((pname, value));
        }
        out.push(Extension { name, params });
    }
    Some(out)
}

/// What a connection agreed to: how it compresses what it sends and
/// inflates what it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deflate {
    /// Deflate level of what the server sends.
    pub level: u32,
    /// Messages shorter than this go uncompressed.
    pub threshold: usize,
    /// Window the server compresses with (8–15).
    pub server_window_bits: u8,
    /// Window the client compresses with (8–15).
    pub client_window_bits: u8,
    /// The client starts a fresh context for every message.
    pub client_no_context_takeover: bool,
}

impl Deflate {
    /// The inflater for what this connection receives (allocates nothing
    /// until a compressed message arrives).
    pub(crate) fn inflater(&self) -> Inflater {
        Inflater::new(self.client_window_bits, self.client_no_context_takeover)
    }

    /// The compressed payload of a message to send, or `None` when it goes
    /// uncompressed: shorter than the threshold, or no smaller compressed
    /// (unless the threshold is 0: then every message is compressed).
    pub(crate) fn compress(&self, payload: &[u8]) -> Option<Vec<u8>> {
        if payload.len() < self.threshold {
            return None;
        }
        let c = deflate_message(self.level, self.server_window_bits, payload);
        (self.threshold == 0 || c.len() < payload.len()).then_some(c)
    }
}

/// A text message queued for many connections (a broadcast, a room
/// publication): the uncompressed bytes, shared, and its compressed
/// forms, each made at most once, by the first connection that needs it,
/// then shared by every connection that negotiated the same window.
pub(crate) struct SharedText {
    bytes: Bytes,
    /// By server window bits − 8; `None` inside: sent uncompressed.
    compressed: [OnceLock<Option<Bytes>>; 8],
}

impl std::fmt::Debug for SharedText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedText")
            .field("len", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

impl SharedText {
    pub(crate) fn new(bytes: Bytes) -> Self {
        SharedText {
            bytes,
            compressed: Default::default(),
        }
    }

    /// The uncompressed message.
    pub(crate) fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The compressed payload for a connection that agreed to `d`, or
    /// `None` when the message goes uncompressed. Every connection of a
    /// server has the same level and threshold, so the window is the key.
    pub(crate) fn compressed(&self, d: &Deflate) -> Option<&Bytes> {
        if self.bytes.len() < d.threshold {
            return None;
        }
        let slot = usize::from(d.server_window_bits.clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS) - 8);
        self.compressed[slot]
            .get_or_init(|| d.compress(&self.bytes).map(Bytes::from))
            .as_ref()
    }

    /// How many compressed forms were made (for tests).
    #[cfg(test)]
    pub(crate) fn compressions(&self) -> usize {
        self.compressed.iter().filter(|c| c.get().is_some()).count()
    }
}

/// zlib has no raw deflate with a 256-byte window; with a 512-byte one
/// its matches reach back at most 512 − 262 = 250 bytes, which a
/// 256-byte window decodes, so 8 is compressed as 9 (as Node's zlib does).
fn zlib_bits(bits: u8) -> u8 {
    bits.clamp(9, MAX_WINDOW_BITS)
}

thread_local! {
    /// Deflaters of this thread, one per (level, window bits) in use.
    static DEFLATERS: RefCell<Vec<(u32, u8, Compress)>> = const { RefCell::new(Vec::new()) };
    /// Inflaters of this thread for messages without context, one per
    /// window size in use.
    static INFLATERS: RefCell<Vec<(u8, Decompress)>> = const { RefCell::new(Vec::new()) };
}

/// Compresses one whole message as a complete deflate stream (no context
/// before or after it), sync-flushed with the final `00 00 ff ff`
/// removed: the payload of a frame with RSV1 set.
pub(crate) fn deflate_message(level: u32, window_bits: u8, input: &[u8]) -> Vec<u8> {
    let bits = zlib_bits(window_bits);
    DEFLATERS.with(|cell| {
        let mut cache = cell.borrow_mut();
        let at = match cache.iter().position(|(l, b, _)| *l == level && *b == bits) {
            Some(at) => at,
            None => {
                cache.push((
                    level,
                    bits,
                    Compress::new_with_window_bits(Compression::new(level), false, bits),
                ));
                cache.len() - 1
            }
        };
        let c = &mut cache[at].2;
        c.reset();
        let mut out = Vec::with_capacity(input.len() / 2 + 64);
        let start = c.total_in();
        loop {
            // Room for what is left, in the worst case stored blocks (5
            // bytes per 16 KiB) plus the flush marker.
            let done = (c.total_in() - start) as usize;
            let left = input.len() - done;
            out.reserve(left + left / 1024 * 5 + 64);
            // Compressing into memory cannot fail: the stream is valid
            // and the output has room.
            let _ = c.compress_vec(&input[done..], &mut out, FlushCompress::Sync);
            if (c.total_in() - start) as usize == input.len() && out.len() < out.capacity() {
                break;
            }
        }
        if out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        out
    })
}

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InflateError {
    /// It inflates past the size limit (close 1009).
    TooBig,
    /// It is not valid deflate data (close 1007).
    Corrupt,
}

impl InflateError {
    /// The close code and reason for this error.
    pub(crate) fn close(self) -> (u16, &'static str) {
        match self {
            InflateError::TooBig => (1009, "message too big"),
            InflateError::Corrupt => (1007, "invalid compressed data"),
        }
    }
}

/// Inflates the messages of one connection.
pub(crate) struct Inflater {
    bits: u8,
    no_context_takeover: bool,
    /// The context kept between messages; created on first use.
    state: Option<Box<Decompress>>,
}

impl Inflater {
    /// An inflater for a client window of `bits` (8–15). Allocates nothing.
    pub(crate) fn new(bits: u8, no_context_takeover: bool) -> Self {
        Inflater {
            bits: zlib_bits(bits),
            no_context_takeover,
            state: None,
        }
    }

    /// Whether inflate state is held (for memory accounting and tests).
    #[cfg(test)]
    pub(crate) fn holds_state(&self) -> bool {
        self.state.is_some()
    }

    /// Inflates one whole message (the payloads of its frames joined) into
    /// at most `max` bytes.
    pub(crate) fn inflate(&mut self, payload: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
        if self.no_context_takeover {
            let bits = self.bits;
            return INFLATERS.with(|cell| {
                let mut cache = cell.borrow_mut();
                let at = match cache.iter().position(|(b, _)| *b == bits) {
                    Some(at) => at,
                    None => {
                        cache.push((bits, Decompress::new_with_window_bits(false, bits)));
                        cache.len() - 1
                    }
                };
                let d = &mut cache[at].1;
                d.reset(false);
                let r = inflate_into(d, payload, max);
                if r.is_err() {
                    d.reset(false);
                }
                r
            });
        }
        let bits = self.bits;
        let d = self
            .state
            .get_or_insert_with(|| Box::new(Decompress::new_with_window_bits(false, bits)));
        inflate_into(d, payload, max)
    }
}

/// Runs `payload` and the sync-flush tail through `d`, producing at most
/// `max` bytes: the output grows in steps and inflating stops at the
/// first byte past the limit.
fn inflate_into(d: &mut Decompress, payload: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
    let cap = max.saturating_add(1);
    let mut out: Vec<u8> = Vec::new();
    let mut ended = false;
    for chunk in [payload, &TAIL[..]] {
        let mut pos = 0;
        loop {
            if out.len() == out.capacity() {
                if out.len() >= cap {
                    return Err(InflateError::TooBig);
                }
                let grow = (out.capacity().max(chunk.len() * 2).max(256)).min(cap - out.len());
                out.reserve_exact(grow);
            }
            let (in0, out0) = (d.total_in(), out.len());
            let status = d
                .decompress_vec(&chunk[pos..], &mut out, FlushDecompress::Sync)
                .map_err(|_| InflateError::Corrupt)?;
            pos += (d.total_in() - in0) as usize;
            if out.len() > max {
                return Err(InflateError::TooBig);
            }
            if status == Status::StreamEnd {
                // The client ended the deflate stream (BFINAL): anything
                // after it in this message is not deflate data, and the
                // next message starts a new stream.
                ended = true;
                break;
            }
            let progressed = d.total_in() != in0 || out.len() != out0;
            if pos == chunk.len() && out.len() < out.capacity() || !progressed {
                break;
            }
        }
        if ended {
            break;
        }
    }
    if ended {
        d.reset(false);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on() -> CompressionConfig {
        CompressionConfig {
            enabled: true,
            ..CompressionConfig::default()
        }
    }

    fn negotiate(cfg: &CompressionConfig, headers: &[&str]) -> Option<(Deflate, String)> {
        cfg.negotiate(headers.iter().map(|h| h.as_bytes()))
    }

    fn response(cfg: &CompressionConfig, headers: &[&str]) -> Option<String> {
        negotiate(cfg, headers).map(|(_, r)| r)
    }

    #[test]
    fn off_unless_enabled() {
        let cfg = CompressionConfig::default();
        assert!(!cfg.enabled);
        assert_eq!(response(&cfg, &["permessage-deflate"]), None);
    }

    #[test]
    fn browser_offer_gets_a_small_client_window() {
        // What Chromium and Firefox send.
        let (d, r) = negotiate(&on(), &["permessage-deflate; client_max_window_bits"]).unwrap();
        assert_eq!(
            r,
            "permessage-deflate; server_no_context_takeover; client_max_window_bits=12"
        );
        assert_eq!(d.client_window_bits, 12);
        assert_eq!(d.server_window_bits, 15);
        assert!(!d.client_no_context_takeover);
        // The client keeps its context: the connection's own inflater,
        // not allocated until a compressed message arrives.
        let mut inf = d.inflater();
        assert!(!inf.holds_state());
        let m = json_payload(600);
        let c = deflate_message(6, 12, &m);
        assert_eq!(inf.inflate(&c, 1 << 20).unwrap(), m);
        assert!(inf.holds_state());
    }

    #[test]
    fn bare_offer_leaves_the_client_window_alone() {
        let (d, r) = negotiate(&on(), &["permessage-deflate"]).unwrap();
        assert_eq!(r, "permessage-deflate; server_no_context_takeover");
        assert_eq!(d.client_window_bits, 15);
    }

    #[test]
    fn every_parameter() {
        let (d, r) = negotiate(
            &on(),
            &[
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
               server_max_window_bits=10; client_max_window_bits=9",
            ],
        )
        .unwrap();
        assert_eq!(
            r,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=10; client_max_window_bits=9"
        );
        assert_eq!(
            d,
            Deflate {
                level: 6,
                threshold: 256,
                server_window_bits: 10,
                client_window_bits: 9,
                client_no_context_takeover: true,
            }
        );
        // A client window larger than configured is lowered.
        let (d, r) = negotiate(&on(), &["permessage-deflate; client_max_window_bits=15"]).unwrap();
        assert_eq!(d.client_window_bits, 12);
        assert!(r.ends_with("client_max_window_bits=12"), "{r}");
        // A server window larger than configured is lowered too.
        let cfg = CompressionConfig {
            server_max_window_bits: 11,
            ..on()
        };
        let (d, r) = negotiate(&cfg, &["permessage-deflate; server_max_window_bits=13"]).unwrap();
        assert_eq!(d.server_window_bits, 11);
        assert!(r.contains("server_max_window_bits=11"), "{r}");
        // ... and announced even when not asked for.
        let r = response(&cfg, &["permessage-deflate"]).unwrap();
        assert!(r.contains("server_max_window_bits=11"), "{r}");
        // Configured client_no_context_takeover is asked for.
        let cfg = CompressionConfig {
            client_no_context_takeover: true,
            ..on()
        };
        let (d, r) = negotiate(&cfg, &["permessage-deflate"]).unwrap();
        assert!(d.client_no_context_takeover);
        assert!(r.contains("client_no_context_takeover"), "{r}");
    }

    #[test]
    fn quoted_values_and_case() {
        let (d, _) = negotiate(
            &on(),
            &["PerMessage-Deflate ; Server_Max_Window_Bits = \"9\" ; client_max_window_bits"],
        )
        .unwrap();
        assert_eq!(d.server_window_bits, 9);
    }

    #[test]
    fn declines_what_it_cannot_honour_and_takes_the_next_offer() {
        for bad in [
            "permessage-deflate; unknown_param",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=09",
            "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
            "permessage-deflate; client_no_context_takeover=\"x\"",
        ] {
            assert_eq!(response(&on(), &[bad]), None, "{bad}");
            // The next offer in the same header is taken.
            let both = format!("{bad}, permessage-deflate; server_max_window_bits=10");
            let (d, _) = negotiate(&on(), &[&both]).unwrap();
            assert_eq!(d.server_window_bits, 10, "{both}");
            // So is one in the next header line.
            let (d, _) = negotiate(
                &on(),
                &[bad, "permessage-deflate; client_max_window_bits=9"],
            )
            .unwrap();
            assert_eq!(d.client_window_bits, 9, "{bad}");
        }
    }

    #[test]
    fn first_acceptable_offer_wins_and_other_extensions_are_skipped() {
        let (d, _) = negotiate(
            &on(),
            &[
                "x-webkit-deflate-frame, permessage-deflate; client_max_window_bits=10, \
               permessage-deflate; client_max_window_bits=11",
            ],
        )
        .unwrap();
        assert_eq!(d.client_window_bits, 10);
        assert_eq!(
            response(&on(), &["x-webkit-deflate-frame; max_window_bits=10"]),
            None
        );
        assert_eq!(response(&on(), &[]), None);
    }

    #[test]
    fn malformed_headers_are_skipped() {
        for bad in [
            "permessage-deflate;",
            "permessage-deflate; =1",
            "permessage-deflate client_max_window_bits",
            "permessage-deflate; server_max_window_bits=\"10",
            "permessage-deflate; server_max_window_bits=\"\"",
            "permessage-deflate; server_max_window_bits=\"1 0\"",
            ";",
        ] {
            assert_eq!(response(&on(), &[bad]), None, "{bad}");
            assert!(
                response(&on(), &[bad, "permessage-deflate"]).is_some(),
                "{bad}"
            );
        }
        assert_eq!(
            on().negotiate([&b"permessage-deflate\xff"[..]]),
            None,
            "not UTF-8"
        );
        assert!(response(&on(), &[" , ,permessage-deflate ,"]).is_some());
    }

    #[test]
    fn env_variables() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let read = |pairs: &'static [(&'static str, &'static str)]| {
            let lookup = vars(pairs);
            CompressionConfig::from_env(&Env::new(&lookup))
        };
        assert_eq!(read(&[]).unwrap(), CompressionConfig::default());
        let c = read(&[
            ("WS_COMPRESSION", "true"),
            ("WS_COMPRESSION_LEVEL", "1"),
            ("WS_COMPRESSION_THRESHOLD", "1KiB"),
        ])
        .unwrap();
        assert!(c.enabled);
        assert_eq!((c.level, c.threshold), (1, 1024));
        for (var, value) in [
            ("WS_COMPRESSION", "maybe"),
            ("WS_COMPRESSION_LEVEL", "10"),
            ("WS_COMPRESSION_THRESHOLD", "big"),
        ] {
            let lookup = move |k: &str| (k == var).then(|| value.to_string());
            let e = CompressionConfig::from_env(&Env::new(&lookup)).unwrap_err();
            assert_eq!(e.var, var);
            assert!(e.to_string().contains(value), "{e}");
        }
    }

    #[test]
    fn validate_checks_ranges() {
        assert!(on().validate().is_ok());
        for bad in [
            CompressionConfig { level: 10, ..on() },
            CompressionConfig {
                server_max_window_bits: 7,
                ..on()
            },
            CompressionConfig {
                client_max_window_bits: 16,
                ..on()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    fn json_payload(n: usize) -> Vec<u8> {
        let mut s = String::from("{\"jsonrpc\":\"2.0\",\"method\":\"broadcast\",\"params\":[");
        let mut i = 0;
        while s.len() < n {
            s.push_str(&format!(
                "{{\"user\":\"user{i}\",\"text\":\"hello number {i}\"}},"
            ));
            i += 1;
        }
        s.push_str("{}]}");
        s.into_bytes()
    }

    /// Inflates with a plain raw inflater, the way a client does.
    fn client_inflate(data: &[u8], bits: u8) -> Vec<u8> {
        let mut d = Decompress::new_with_window_bits(false, zlib_bits(bits));
        let mut input = data.to_vec();
        input.extend_from_slice(&TAIL);
        let mut out = Vec::with_capacity(1 << 22);
        d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
            .unwrap();
        out
    }

    #[test]
    fn deflate_round_trips_at_every_level_and_window() {
        let msg = json_payload(5000);
        for level in [0, 1, 6, 9] {
            for bits in 8..=15 {
                let c = deflate_message(level, bits, &msg);
                assert!(!c.ends_with(&TAIL));
                assert_eq!(client_inflate(&c, bits), msg, "level {level} bits {bits}");
                if level > 0 {
                    assert!(c.len() * 3 < msg.len(), "{} of {}", c.len(), msg.len());
                }
            }
        }
        // Empty, tiny and large (over one output reserve) messages.
        for msg in [
            vec![],
            b"x".to_vec(),
            (0..300_000u32).map(|i| (i * 7919 % 251) as u8).collect(),
        ] {
            let c = deflate_message(6, 15, &msg);
            assert_eq!(client_inflate(&c, 15), msg);
        }
    }

    #[test]
    fn a_shared_message_is_compressed_once_per_window() {
        let (d15, _) = negotiate(&on(), &["permessage-deflate"]).unwrap();
        let (d10, _) =
            negotiate(&on(), &["permessage-deflate; server_max_window_bits=10"]).unwrap();
        let msg = Bytes::from(json_payload(1024));
        let shared = SharedText::new(msg.clone());
        let a = shared.compressed(&d15).unwrap().clone();
        let b = shared.compressed(&d15).unwrap().clone();
        assert_eq!(a.as_ptr(), b.as_ptr(), "the same bytes, not a copy");
        assert_eq!(shared.compressions(), 1);
        assert_eq!(client_inflate(&a, 15), &msg[..]);
        let c = shared.compressed(&d10).unwrap();
        assert_eq!(client_inflate(c, 10), &msg[..]);
        assert_eq!(shared.compressions(), 2);
        assert_eq!(shared.bytes(), &msg);
        // Below the threshold, or incompressible: sent as it is.
        let small = SharedText::new(Bytes::from_static(b"{\"jsonrpc\":\"2.0\"}"));
        assert!(small.compressed(&d15).is_none());
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        assert!(d15.compress(&noise).is_none());
        // A threshold of 0 compresses everything.
        let always = Deflate {
            threshold: 0,
            ..d15
        };
        assert!(always.compress(&noise).is_some());
        assert!(always.compress(b"").is_some());
    }

    #[test]
    fn deflated_messages_share_no_context() {
        // The same message compresses to the same bytes every time: no
        // history from the previous one is used.
        let msg = json_payload(1000);
        let a = deflate_message(6, 15, &msg);
        let b = deflate_message(6, 15, &msg);
        assert_eq!(a, b);
        // And each decodes with a fresh inflater.
        assert_eq!(client_inflate(&b, 15), msg);
    }

    #[test]
    fn inflate_with_and_without_context() {
        let msgs: Vec<Vec<u8>> = (0..5).map(|i| json_payload(500 + i * 300)).collect();
        // A client that keeps its context across messages.
        let mut client = Compress::new_with_window_bits(Compression::new(6), false, 12);
        let mut inf = Inflater::new(12, false);
        assert!(!inf.holds_state(), "allocated lazily");
        for m in &msgs {
            let mut out = Vec::with_capacity(m.len() + 64);
            client
                .compress_vec(m, &mut out, FlushCompress::Sync)
                .unwrap();
            assert!(out.ends_with(&TAIL));
            out.truncate(out.len() - 4);
            assert_eq!(&inf.inflate(&out, 1 << 20).unwrap(), m);
        }
        assert!(inf.holds_state());
        // A client without context: every message on its own.
        let mut inf = Inflater::new(12, true);
        for m in &msgs {
            let c = deflate_message(6, 12, m);
            assert_eq!(&inf.inflate(&c, 1 << 20).unwrap(), m);
        }
        assert!(!inf.holds_state());
    }

    #[test]
    fn a_final_block_ends_the_stream() {
        // A message compressed to a complete stream (BFINAL set).
        let mut c = Compress::new_with_window_bits(Compression::new(6), false, 15);
        let mut inf = Inflater::new(15, false);
        for m in [b"first message".to_vec(), b"second message".to_vec()] {
            c.reset();
            let mut out = Vec::with_capacity(128);
            c.compress_vec(&m, &mut out, FlushCompress::Finish).unwrap();
            assert_eq!(inf.inflate(&out, 100).unwrap(), m);
        }
    }

    #[test]
    fn the_size_limit_applies_to_the_inflated_message() {
        let msg = vec![b'a'; 10_000];
        let c = deflate_message(9, 15, &msg);
        let mut inf = Inflater::new(15, true);
        assert_eq!(inf.inflate(&c, 10_000).unwrap(), msg);
        assert_eq!(inf.inflate(&c, 9_999), Err(InflateError::TooBig));
        assert_eq!(InflateError::TooBig.close().0, 1009);
        // The thread's inflater is usable after the failure.
        assert_eq!(inf.inflate(&c, 10_000).unwrap(), msg);
    }

    #[test]
    fn a_zip_bomb_is_stopped_at_the_limit() {
        // Zeros compress about 1000:1: 16 MiB of them (about 16 KiB
        // compressed), inflated with a 1 MiB limit.
        let mut c = Compress::new_with_window_bits(Compression::new(9), false, 15);
        let zeros = vec![0u8; 1 << 20];
        let mut bomb = Vec::with_capacity(1 << 17);
        for _ in 0..16 {
            bomb.reserve(1 << 12);
            c.compress_vec(&zeros, &mut bomb, FlushCompress::None)
                .unwrap();
        }
        loop {
            bomb.reserve(1 << 12);
            c.compress_vec(&[], &mut bomb, FlushCompress::Sync).unwrap();
            if bomb.ends_with(&TAIL) && bomb.len() < bomb.capacity() {
                break;
            }
        }
        bomb.truncate(bomb.len() - 4);
        assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
        let limit = 1 << 20;
        for no_context in [true, false] {
            let mut inf = Inflater::new(15, no_context);
            assert_eq!(inf.inflate(&bomb, limit), Err(InflateError::TooBig));
        }
        // The output never grows past the limit: a direct look at the
        // bounded inflate.
        let mut d = Decompress::new_with_window_bits(false, 15);
        assert_eq!(
            inflate_into(&mut d, &bomb, limit),
            Err(InflateError::TooBig)
        );
        assert!(d.total_out() <= limit as u64 + 1, "{}", d.total_out());
    }

    #[test]
    fn corrupt_data_is_refused() {
        let mut inf = Inflater::new(15, true);
        // BTYPE 11 is reserved.
        assert_eq!(
            inf.inflate(&[0xff, 0xff, 0xff], 1000),
            Err(InflateError::Corrupt)
        );
        assert_eq!(InflateError::Corrupt.close().0, 1007);
        // A message that refers back into a context this side never saw.
        let msg = json_payload(800);
        let mut client = Compress::new_with_window_bits(Compression::new(6), false, 15);
        let mut first = Vec::with_capacity(4096);
        client
            .compress_vec(&msg, &mut first, FlushCompress::Sync)
            .unwrap();
        let mut second = Vec::with_capacity(4096);
        client
            .compress_vec(&msg, &mut second, FlushCompress::Sync)
            .unwrap();
        assert!(
            second.len() < first.len() / 4,
            "the second refers to the first"
        );
        second.truncate(second.len() - 4);
        assert_eq!(inf.inflate(&second, 1 << 20), Err(InflateError::Corrupt));
        let good = deflate_message(6, 15, b"hello hello hello hello");
        let mut inf = Inflater::new(15, true);
        assert_eq!(
            inf.inflate(&good, 1000).unwrap(),
            b"hello hello hello hello"
        );
    }
}
