//! permessage-deflate (RFC 7692) over real sockets: negotiation in the
//! upgrade, compressed requests and replies in JSON-RPC and raw mode, the
//! same inside axum, broadcasts compressed once for every compressed
//! recipient, the inflate limit, and the protocol errors. The client side
//! is written here with flate2, independently of the server's code.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use nbio_ws::{Client, Hub, Params, RawMessage, RpcError, Server};
use nbio_ws_testkit::{RawClient, RawFrame, TestServer};
use serde::Deserialize;
use serde_json::{json, Value};

const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";
const TAIL: [u8; 4] = [0, 0, 0xff, 0xff];

#[derive(Deserialize)]
struct Text {
    text: String,
}

fn rpc_server() -> nbio_ws::ServerBuilder {
    Server::builder()
        .registered_methods(false)
        .compression(true)
        .max_message_size(64 * 1024)
        .method("self.reply", |Params(p): Params<Text>| async move {
            Ok::<_, RpcError>(json!({ "echo": p.text }))
        })
        .method(
            "broadcast",
            |hub: Hub, Params(p): Params<Text>| async move {
                hub.broadcast("broadcast", &json!({ "text": p.text }))
                    .map_err(RpcError::internal)?;
                Ok::<_, RpcError>(json!({ "status": "broadcasted" }))
            },
        )
}

/// The client side of one connection: a compressor that keeps its context
/// (as browsers do) and an inflater for the server's messages, which never
/// carry context.
struct Deflating {
    raw: RawClient,
    compress: Compress,
}

impl Deflating {
    async fn connect(addr: SocketAddr, path: &str) -> (Deflating, String) {
        let (raw, head) = RawClient::connect_with(addr, path, OFFER).await;
        let compress = Compress::new_with_window_bits(Compression::new(6), false, 12);
        (Deflating { raw, compress }, head)
    }

    fn deflate(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + 64);
        self.compress
            .compress_vec(data, &mut out, FlushCompress::Sync)
            .unwrap();
        assert!(out.ends_with(&TAIL));
        out.truncate(out.len() - 4);
        out
    }

    /// Sends a compressed text message.
    async fn send(&mut self, text: &str) {
        let c = self.deflate(text.as_bytes());
        self.raw.send_first(0xC1, &c).await;
    }

    async fn data_frame(&mut self) -> RawFrame {
        loop {
            let f = self.raw.read_frame().await.expect("a frame");
            if f.opcode == 1 || f.opcode == 2 || f.opcode == 8 {
                return f;
            }
        }
    }
}

/// Inflates one server message with a fresh inflater (the server never
/// keeps context between messages).
fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut d = Decompress::new(false);
    let mut input = payload.to_vec();
    input.extend_from_slice(&TAIL);
    let mut out = Vec::with_capacity(1 << 20);
    d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .unwrap();
    assert_eq!(d.total_in() as usize, input.len(), "consumed whole");
    out
}

fn text_of(f: &RawFrame) -> String {
    assert_eq!(f.opcode, 1, "a text frame");
    let bytes = if f.rsv1 {
        inflate(&f.payload)
    } else {
        f.payload.clone()
    };
    String::from_utf8(bytes).unwrap()
}

fn extensions(head: &str) -> Option<String> {
    head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("sec-websocket-extensions:")
            .map(|v| v.trim().to_owned())
    })
}

fn long_text(n: usize) -> String {
    let mut s = String::new();
    let mut i = 0;
    while s.len() < n {
        s.push_str(&format!("message {i} from the chat room, ",));
        i += 1;
    }
    s
}

#[tokio::test]
async fn json_rpc_requests_and_replies_are_compressed() {
    let s = TestServer::start(rpc_server()).await;
    let (mut c, head) = Deflating::connect(s.addr, "/ws").await;
    assert_eq!(
        extensions(&head).as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_max_window_bits=12")
    );
    // Several requests: the client keeps its context, so later messages
    // refer back to earlier ones and only decode with that context.
    let text = long_text(1000);
    for id in 0..3 {
        let req =
            json!({"jsonrpc": "2.0", "method": "self.reply", "params": {"text": text}, "id": id});
        c.send(&req.to_string()).await;
        let f = c.data_frame().await;
        assert!(f.rsv1, "a reply over the threshold is compressed");
        assert!(
            f.payload.len() * 3 < text.len(),
            "{} bytes",
            f.payload.len()
        );
        let v: Value = serde_json::from_str(&text_of(&f)).unwrap();
        assert_eq!(v["id"], id);
        assert_eq!(v["result"]["echo"], text);
    }
    // A short reply goes uncompressed, a request may be uncompressed too.
    c.raw
        .send_frame(
            true,
            1,
            br#"{"jsonrpc":"2.0","method":"self.reply","params":{"text":"hi"},"id":9}"#,
        )
        .await;
    let f = c.data_frame().await;
    assert!(!f.rsv1);
    let v: Value = serde_json::from_str(&text_of(&f)).unwrap();
    assert_eq!(v["result"]["echo"], "hi");
    // A compressed message in fragments: RSV1 on the first only.
    let req = json!({"jsonrpc": "2.0", "method": "self.reply", "params": {"text": text}, "id": 10});
    let z = c.deflate(req.to_string().as_bytes());
    let (a, b) = z.split_at(z.len() / 2);
    c.raw.send_first(0x41, a).await;
    c.raw.send_first(0x80, b).await;
    let v: Value = serde_json::from_str(&text_of(&c.data_frame().await)).unwrap();
    assert_eq!(v["id"], 10);
}

#[tokio::test]
async fn a_broadcast_is_compressed_for_compressed_clients_only() {
    let s = TestServer::start(rpc_server()).await;
    let (mut a, _) = Deflating::connect(s.addr, "/ws").await;
    let (mut b, _) = Deflating::connect(s.addr, "/ws").await;
    let mut plain = RawClient::connect(s.addr, "/ws").await;
    for _ in 0..200 {
        if s.hub.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let text = long_text(1024);
    let req = json!({"jsonrpc": "2.0", "method": "broadcast", "params": {"text": text}, "id": 1});
    a.send(&req.to_string()).await;
    // Every recipient gets the notification; the two compressed clients
    // the same compressed bytes, the other client the plain text.
    let mut compressed = Vec::new();
    for c in [&mut a, &mut b] {
        let f = loop {
            let f = c.data_frame().await;
            if !text_of(&f).contains("\"id\":1") {
                break f;
            }
        };
        assert!(f.rsv1);
        let v: Value = serde_json::from_str(&text_of(&f)).unwrap();
        assert_eq!(v["method"], "broadcast");
        assert_eq!(v["params"]["text"], text);
        compressed.push(f.payload);
    }
    assert_eq!(compressed[0], compressed[1]);
    let f = plain.read_frame().await.unwrap();
    assert!(!f.rsv1);
    let v: Value = serde_json::from_str(&String::from_utf8(f.payload).unwrap()).unwrap();
    assert_eq!(v["params"]["text"], text);
    assert!(compressed[0].len() * 3 < v.to_string().len());
}

#[tokio::test]
async fn raw_mode_echoes_compressed_messages() {
    let s = TestServer::start(
        Server::builder()
            .compression(true)
            .compression_threshold(0)
            .raw(|c: Client, m: RawMessage| async move {
                let _ = match m {
                    RawMessage::Text(t) => c.send_text(t),
                    RawMessage::Binary(b) => c.send_binary(b),
                };
            }),
    )
    .await;
    let (mut c, head) = Deflating::connect(s.addr, "/ws").await;
    assert!(extensions(&head).is_some());
    c.send("hello").await;
    let f = c.data_frame().await;
    assert!(f.rsv1, "threshold 0: everything is compressed");
    assert_eq!(text_of(&f), "hello");
    let bin: Vec<u8> = (0..5000u32).map(|i| (i % 7) as u8).collect();
    let z = c.deflate(&bin);
    c.raw.send_first(0xC2, &z).await;
    let f = c.data_frame().await;
    assert_eq!((f.opcode, f.rsv1), (2, true));
    assert_eq!(inflate(&f.payload), bin);
}

#[tokio::test]
async fn compression_is_off_unless_enabled_and_rsv1_is_then_a_protocol_error() {
    // Off by default: no extension in the response, RSV1 closes with 1002.
    let s = TestServer::start(Server::builder()).await;
    let (mut raw, head) = RawClient::connect_with(s.addr, "/ws", OFFER).await;
    assert_eq!(extensions(&head), None);
    raw.send_first(0xC1, &[0x01, 0x00]).await;
    assert_eq!(raw.expect_close().await, Some(1002));
    // On, but not offered by this client: the same.
    let s = TestServer::start(rpc_server()).await;
    let (mut raw, head) = RawClient::connect_with(s.addr, "/ws", "").await;
    assert_eq!(extensions(&head), None);
    raw.send_first(0xC1, &[0x01, 0x00]).await;
    assert_eq!(raw.expect_close().await, Some(1002));
    // An offer the server cannot honour is declined, the next one taken.
    let (_, head) = RawClient::connect_with(
        s.addr,
        "/ws",
        "Sec-WebSocket-Extensions: permessage-deflate; x=1, permessage-deflate; server_max_window_bits=10\r\n",
    )
    .await;
    assert_eq!(
        extensions(&head).as_deref(),
        Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=10")
    );
}

#[tokio::test]
async fn bad_compressed_messages_close_the_connection() {
    let s = TestServer::start(rpc_server()).await;
    // RSV1 on a control frame.
    let (mut c, _) = Deflating::connect(s.addr, "/ws").await;
    c.raw.send_first(0xC9, b"").await;
    assert_eq!(c.raw.expect_close().await, Some(1002));
    // RSV1 on a continuation frame.
    let (mut c, _) = Deflating::connect(s.addr, "/ws").await;
    c.raw.send_first(0x01, b"{").await;
    c.raw.send_first(0xC0, b"}").await;
    assert_eq!(c.raw.expect_close().await, Some(1002));
    // Data that does not inflate.
    let (mut c, _) = Deflating::connect(s.addr, "/ws").await;
    c.raw.send_first(0xC1, &[0xff, 0xff, 0xff]).await;
    assert_eq!(c.raw.expect_close().await, Some(1007));
    // Inflates to invalid UTF-8 in a text message.
    let (mut c, _) = Deflating::connect(s.addr, "/ws").await;
    let z = c.deflate(b"\xc3\x28");
    c.raw.send_first(0xC1, &z).await;
    assert_eq!(c.raw.expect_close().await, Some(1007));
    // A zip bomb: 2 KiB on the wire that inflate to 16 MiB, over the
    // 64 KiB limit: stopped at the limit with 1009.
    let (mut c, _) = Deflating::connect(s.addr, "/ws").await;
    let mut bomb = Vec::with_capacity(64 * 1024);
    let zeros = vec![b' '; 1 << 20];
    for _ in 0..16 {
        bomb.reserve(8192);
        c.compress
            .compress_vec(&zeros, &mut bomb, FlushCompress::None)
            .unwrap();
    }
    bomb.reserve(8192);
    c.compress
        .compress_vec(&[], &mut bomb, FlushCompress::Sync)
        .unwrap();
    bomb.truncate(bomb.len() - 4);
    assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
    c.raw.send_first(0xC1, &bomb).await;
    assert_eq!(c.raw.expect_close().await, Some(1009));
    // The server is fine afterwards.
    let (mut c, _) = Deflating::connect(s.addr, "/ws").await;
    c.send(r#"{"jsonrpc":"2.0","method":"self.reply","params":{"text":"ok"},"id":1}"#)
        .await;
    let v: Value = serde_json::from_str(&text_of(&c.data_frame().await)).unwrap();
    assert_eq!(v["result"]["echo"], "ok");
}

#[tokio::test]
async fn negotiated_the_same_inside_axum() {
    use axum::extract::{ConnectInfo, Request};
    use axum::routing::get;
    let server = rpc_server().build().unwrap();
    let ws = server.endpoint();
    let app = axum::Router::new().route(
        "/socket",
        get(
            move |ConnectInfo(peer): ConnectInfo<SocketAddr>, req: Request| {
                let ws = ws.clone();
                async move { ws.upgrade(req, peer).await }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serve = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    let (mut c, head) = Deflating::connect(addr, "/socket").await;
    assert!(extensions(&head)
        .unwrap()
        .starts_with("permessage-deflate; server_no_context_takeover"));
    let text = long_text(600);
    c.send(
        &json!({"jsonrpc": "2.0", "method": "self.reply", "params": {"text": text}, "id": 1})
            .to_string(),
    )
    .await;
    let f = c.data_frame().await;
    assert!(f.rsv1);
    let v: Value = serde_json::from_str(&text_of(&f)).unwrap();
    assert_eq!(v["result"]["echo"], text);
    serve.abort();
}

/// Python's `websockets` offers permessage-deflate by default: it must
/// negotiate it and exchange compressed messages both ways.
#[tokio::test]
async fn python_websockets_negotiates_and_works() {
    nbio_ws_testkit::require_tools!("python3:websockets");
    let s = TestServer::start(rpc_server()).await;
    let script = r#"
import asyncio, json, sys
import websockets
from websockets.extensions.permessage_deflate import PerMessageDeflate

async def main(url):
    async with websockets.connect(url, max_size=2**20) as ws:
        print("extensions:", ws.response.headers.get("Sec-WebSocket-Extensions"))
        assert any(isinstance(e, PerMessageDeflate) for e in ws.protocol.extensions), ws.protocol.extensions
        text = "a chat line that repeats, " * 100
        for i in range(20):
            await ws.send(json.dumps({"jsonrpc": "2.0", "method": "self.reply", "params": {"text": text + str(i)}, "id": i}))
            reply = json.loads(await ws.recv())
            assert reply["id"] == i and reply["result"]["echo"] == text + str(i), reply
        await ws.send(json.dumps({"jsonrpc": "2.0", "method": "broadcast", "params": {"text": text}, "id": 99}))
        got = [json.loads(await ws.recv()) for _ in range(2)]
        assert any(m.get("method") == "broadcast" and m["params"]["text"] == text for m in got), got
    print("python websockets: ok")

asyncio.run(main(sys.argv[1]))
"#;
    let url = s.url("/ws");
    // Blocking: run off the runtime, which keeps serving.
    let out = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .args(["60", "python3", "-c", script, &url])
            .output()
    })
    .await
    .unwrap()
    .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("extensions: permessage-deflate; server_no_context_takeover"),
        "{stdout}"
    );
    assert!(stdout.contains("python websockets: ok"), "{stdout}");
}
