//! Entry points for the cargo-fuzz targets in `nbio-ws/fuzz/` (and their
//! regression tests): each takes arbitrary bytes, drives one part of the
//! input path, and panics only when an invariant breaks. Not a public API.

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;

use crate::deflate::Inflater;
use crate::hub::{Client, OutRx, SendBuffer};
use crate::jsonrpc::{self, Message, Parsed};
use crate::ws::conn::Mode;
use crate::ws::frame::{FrameReader, InFrame, OpCode, Violation};
use crate::ws::message::{close_event, Assembler, RawMessage};
use crate::{Params, RpcError, Server};

fn assert_json(bytes: &[u8]) {
    if let Err(e) = serde_json::from_slice::<serde_json::Value>(bytes) {
        panic!(
            "the server produced invalid JSON ({e}): {:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}

/// The JSON-RPC decoder and encoders: whatever the text, parsing does not
/// panic, agrees with the two-pass reference parse, and every response it
/// leads to is valid JSON echoing the id.
pub fn jsonrpc_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let check = |p: &Parsed<'_>| match p {
        Parsed::Invalid(id, e) => assert_json(&jsonrpc::encode_error(id, e)),
        Parsed::Request(r) => {
            let _ = jsonrpc::deserialize_params::<serde_json::Value>(r.params);
            if let Some(id) = &r.id {
                let out = jsonrpc::encode_error(id, &RpcError::method_not_found(&r.method));
                assert_json(&out);
                let v: serde_json::Value = serde_json::from_slice(&out).unwrap_or_default();
                let sent: serde_json::Value =
                    serde_json::from_str(id.as_json()).unwrap_or_default();
                assert_eq!(v["id"], sent, "the id is echoed");
            }
        }
    };
    let parsed = jsonrpc::parse(text);
    assert_eq!(
        format!("{parsed:?}"),
        format!("{:?}", jsonrpc::parse_two_pass(text)),
        "the one-pass shortcut answers as the two-pass parse"
    );
    match parsed {
        Message::Single(p) => check(&p),
        Message::Batch(items) => {
            assert!(!items.is_empty());
            items.iter().for_each(check);
        }
        Message::Error(e) => assert_json(&jsonrpc::encode_error(&jsonrpc::Id::null(), &e)),
    }
}

/// A server's router with one client that is not connected to anything.
pub struct Dispatcher {
    server: Server,
    client: Client,
    _rx: OutRx,
}

impl Default for Dispatcher {
    fn default() -> Self {
        Self::new()
    }
}

impl Dispatcher {
    /// A router with a few methods: `echo`, `add`, `fail`.
    pub fn new() -> Self {
        let server = Server::builder()
            .registered_methods(false)
            .method("echo", |Params(v): Params<serde_json::Value>| async move {
                Ok::<_, RpcError>(v)
            })
            .method("add", |Params((a, b)): Params<(i64, i64)>| async move {
                a.checked_add(b)
                    .ok_or_else(|| RpcError::invalid_params("overflow"))
            })
            .method("fail", || async {
                Err::<(), _>(RpcError::new(-32001, "no"))
            })
            // (No panicking handler: libFuzzer treats every panic, even a
            // caught one, as a crash.)
            .build()
            .expect("the fuzz server builds");
        let hub = server.hub().clone();
        let (client, rx) = Client::new(
            &hub,
            ([127, 0, 0, 1], 1).into(),
            None,
            SendBuffer::messages(1024),
        );
        Dispatcher {
            server,
            client,
            _rx: rx,
        }
    }

    /// Dispatches `data` (the first byte chooses which requests the rate
    /// limiter refuses); every response is valid JSON.
    pub fn dispatch(&self, data: &[u8]) -> Option<Bytes> {
        let (&mask, rest) = data.split_first()?;
        let text = std::str::from_utf8(rest).ok()?;
        let shared = &self.server.endpoint_ref().shared;
        let Mode::Rpc(router) = &shared.mode else {
            return None;
        };
        let mut n = 0u32;
        let mut admit = || {
            n += 1;
            (mask >> (n % 8) & 1 == 1)
                .then(|| RpcError::rate_limited(std::time::Duration::from_millis(5)))
        };
        let (_, fut) = router.dispatch_with(text, &self.client, &shared.hub, &mut admit);
        let out = fut.now_or_never().flatten();
        if let Some(b) = &out {
            assert_json(b);
        }
        out
    }
}

fn opcode(bits: u8) -> OpCode {
    match bits % 4 {
        0 => OpCode::Continuation,
        1 => OpCode::Text,
        2 => OpCode::Binary,
        _ => OpCode::Close,
    }
}

/// The fragment assembler: the bytes are a script of frames (a header
/// byte: FIN and opcode; a length byte; the payload). Whole messages never
/// exceed the limit and text messages are valid UTF-8.
pub fn assembler(data: &[u8]) {
    const MAX: usize = 64;
    // Compression is negotiated in every run: RSV1 (0x40 in the header
    // byte) marks a compressed message, inflated under the same limit.
    let new = || Assembler::new(MAX).with_inflater(Inflater::new(15, false));
    let mut a = new();
    let mut rest = data;
    while let [head, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (payload, after) = tail.split_at(n);
        rest = after;
        let op = opcode(*head);
        if op == OpCode::Close {
            // Control frames go to close-frame parsing, not the assembler.
            close_frame(payload);
            continue;
        }
        let frame = InFrame {
            fin: head & 0x80 != 0,
            rsv1: head & 0x40 != 0 && op != OpCode::Continuation,
            opcode: op,
            payload: BytesMut::from(payload),
        };
        match a.push(frame) {
            Ok(None) => {}
            Ok(Some(msg)) => check_message(&msg, MAX),
            // After a violation the connection ends: start over.
            Err(v) => {
                check_violation(v);
                a = new();
            }
        }
    }
}

fn check_message(msg: &RawMessage, max: usize) {
    assert!(msg.bytes().len() <= max, "a message over the limit");
    if let RawMessage::Text(b) = msg {
        assert!(
            std::str::from_utf8(b).is_ok(),
            "a text message with bad UTF-8"
        );
    }
}

fn check_violation(v: Violation) {
    assert!(
        matches!(v.0, 1001 | 1002 | 1007 | 1008 | 1009),
        "unexpected close code {}",
        v.0
    );
    assert!(v.1.len() <= 123, "a close reason too long for a frame");
}

/// Close-frame parsing: an accepted code is one a peer may send, with a
/// UTF-8 reason.
pub fn close_frame(payload: &[u8]) {
    match close_event(payload) {
        Ok(None) => assert!(payload.is_empty()),
        Ok(Some(code)) => {
            assert!(matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999));
            assert!(std::str::from_utf8(&payload[2..]).is_ok());
        }
        Err(v) => check_violation(v),
    }
}

/// The whole message path from raw bytes: the frame reader (fed in chunks
/// whose sizes the first byte picks), the assembler and close-frame
/// parsing, as a connection runs them.
pub fn frames(data: &[u8]) {
    const MAX: usize = 256;
    let Some((&chunking, mut input)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunking % 16) + 1;
    let mut reader = FrameReader::new(MAX);
    let mut a = Assembler::new(MAX);
    if chunking & 0x80 != 0 {
        // permessage-deflate negotiated, the client keeping its context.
        reader.allow_compressed(crate::ws::message::compressed_limit(MAX));
        a = a.with_inflater(Inflater::new(12, false));
    }
    loop {
        loop {
            match reader.next_frame() {
                Ok(Some(f)) => {
                    let fin = f.fin;
                    match f.opcode {
                        OpCode::Close => {
                            assert!(fin && f.payload.len() <= 125);
                            close_frame(&f.payload);
                            return;
                        }
                        OpCode::Ping | OpCode::Pong => assert!(fin && f.payload.len() <= 125),
                        _ => match a.push(f) {
                            Ok(Some(msg)) => check_message(&msg, MAX),
                            Ok(None) => {}
                            Err(v) => return check_violation(v),
                        },
                    }
                }
                Ok(None) => break,
                Err(v) => return check_violation(v),
            }
        }
        if input.is_empty() {
            return;
        }
        let n = chunk.min(input.len());
        let mut piece = &input[..n];
        input = &input[n..];
        // Reading from a slice never waits.
        match reader.fill(&mut piece).now_or_never() {
            Some(Ok(_)) => {}
            _ => return,
        }
    }
}

/// Broker envelopes, as a peer on the broker (or anyone who can publish
/// on its channels) may send them: decoding never panics, what decodes
/// encodes back to the same entries, and applying its presence entries to
/// a replica (from a fresh one, then again as a repeat) never panics.
pub fn envelope(data: &[u8]) {
    use crate::cluster::envelope::{self, Entry};
    use crate::cluster::presence::Replica;

    let Ok(env) = envelope::decode(Bytes::copy_from_slice(data)) else {
        return;
    };
    let again = envelope::encode(env.origin, env.first_seq, &env.entries);
    match envelope::decode(again) {
        Ok(back) => assert_eq!(back.entries, env.entries, "round trip"),
        Err(e) => panic!("a re-encoded envelope does not decode: {e}"),
    }
    let replica = Replica::new(std::time::Duration::from_secs(1));
    let (events, _rx) = tokio::sync::broadcast::channel(64);
    for _ in 0..2 {
        for entry in &env.entries {
            if let Entry::Presence(p) = entry {
                replica.apply(1, env.origin, p.clone(), &events);
            }
        }
    }
    let mut members = Vec::new();
    replica.members("lobby", &mut members);
    replica.expire(&events);
}
