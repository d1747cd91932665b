//! permessage-deflate figures over loopback sockets: bytes on the wire,
//! server CPU per broadcast delivery (compressed once and shared, not
//! compressed, compressed per recipient), reply throughput, and idle
//! memory per connection.
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-benches cargo bench -p nbio-ws-benches --bench compression
//! ```
//!
//! The server runs in a child process (this same executable, started with
//! `DEFLATE_BENCH_SERVER=1`) so that its CPU time and RSS are its own; the
//! clients, written here on raw sockets with flate2, run in this process.
//! `DEFLATE_BENCH_CLIENTS` (default 2000), `DEFLATE_BENCH_BROADCASTS` (50)
//! and `DEFLATE_BENCH_SECONDS` (5, the reply run) change the load.
//! Results: a table on stdout and `benches/results/compression.json`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use nbio_ws_benches::proc::{cpu_seconds, raise_nofile_limit, vm_rss_kib};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

const TAIL: [u8; 4] = [0, 0, 0xff, 0xff];
const OFFER: &str = "permessage-deflate; client_max_window_bits";

// ---- the server (child process) ---------------------------------------

fn server_main() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let config = nbio_ws::Config::from_env().expect("WS_* variables");
        let server = nbio_ws::Server::builder()
            .config(config)
            .registered_methods(false)
            .send_buffer(1024)
            .method(
                "self.reply",
                |nbio_ws::Params(p): nbio_ws::Params<Value>| async move {
                    Ok::<_, nbio_ws::RpcError>(p)
                },
            )
            // Serialized once, compressed once per window, shared.
            .method(
                "broadcast",
                |hub: nbio_ws::Hub, nbio_ws::Params(p): nbio_ws::Params<Value>| async move {
                    hub.broadcast("broadcast", &p)
                        .map_err(nbio_ws::RpcError::internal)?;
                    Ok::<_, nbio_ws::RpcError>(true)
                },
            )
            // Serialized once, then queued as each client's own message:
            // every recipient's writer compresses it again, as a server
            // with per-connection compression contexts does.
            .method(
                "broadcast.each",
                |hub: nbio_ws::Hub, nbio_ws::Params(p): nbio_ws::Params<Value>| async move {
                    let text = json!({"jsonrpc": "2.0", "method": "broadcast", "params": p});
                    let bytes = bytes::Bytes::from(text.to_string());
                    hub.for_each(|c| {
                        let _ = c.send_text(bytes.clone());
                    });
                    Ok::<_, nbio_ws::RpcError>(true)
                },
            )
            .build()
            .expect("server builds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("PORT {}", listener.local_addr().unwrap().port());
        // Runs until the parent closes stdin.
        let stop = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {}
        });
        server
            .serve_listener(listener, async move {
                let _ = stop.await;
            })
            .await
            .unwrap();
    });
}

struct ServerProc {
    child: Child,
    addr: SocketAddr,
}

impl ServerProc {
    fn start(compression: bool) -> ServerProc {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env("DEFLATE_BENCH_SERVER", "1")
            .env("WS_LOG_LEVEL", "warn")
            .env("WS_COMPRESSION", compression.to_string())
            .env("WS_MAX_CONNECTIONS", "0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line.trim().strip_prefix("PORT ").unwrap().parse().unwrap();
        ServerProc {
            child,
            addr: ([127, 0, 0, 1], port).into(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn cpu(&self) -> f64 {
        cpu_seconds(self.pid()).unwrap()
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- the client ---------------------------------------------------------

/// One client connection on a raw socket. Compressed requests keep their
/// context (as browsers do); the server's messages never do.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    deflate: Option<(Compress, Decompress)>,
    /// Bytes read from the socket since the handshake.
    wire_in: u64,
}

struct Frame {
    rsv1: bool,
    /// Header and payload, as on the wire.
    wire: usize,
    payload: Vec<u8>,
}

impl Conn {
    async fn connect(addr: SocketAddr, offer: bool) -> Conn {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let ext = if offer {
            format!("Sec-WebSocket-Extensions: {OFFER}\r\n")
        } else {
            String::new()
        };
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::with_capacity(1024);
        let head = loop {
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "eof in the handshake");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..pos]).to_lowercase();
                buf.drain(..pos + 4);
                break head;
            }
        };
        assert!(head.starts_with("http/1.1 101"), "{head}");
        let negotiated = head.contains("sec-websocket-extensions: permessage-deflate");
        assert_eq!(negotiated, offer, "{head}");
        let deflate = negotiated.then(|| {
            (
                Compress::new_with_window_bits(Compression::new(6), false, 12),
                Decompress::new(false),
            )
        });
        Conn {
            stream,
            buf,
            deflate,
            wire_in: 0,
        }
    }

    /// Sends a text message (compressed when negotiated); returns the bytes
    /// written.
    async fn send(&mut self, text: &str) -> usize {
        let (first, payload) = match &mut self.deflate {
            Some((c, _)) => {
                let mut out = Vec::with_capacity(text.len() + 64);
                c.compress_vec(text.as_bytes(), &mut out, FlushCompress::Sync)
                    .unwrap();
                out.truncate(out.len() - 4);
                (0xC1u8, out)
            }
            None => (0x81u8, text.as_bytes().to_vec()),
        };
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
        out.extend_from_slice(&[0, 0, 0, 0]); // a zero mask
        out.extend_from_slice(&payload);
        self.stream.write_all(&out).await.unwrap();
        out.len()
    }

    async fn fill(&mut self, n: usize) {
        while self.buf.len() < n {
            let mut chunk = [0u8; 16384];
            let r = self.stream.read(&mut chunk).await.unwrap();
            assert!(r > 0, "eof");
            self.wire_in += r as u64;
            self.buf.extend_from_slice(&chunk[..r]);
        }
    }

    /// The next data frame (pings are skipped).
    async fn frame(&mut self) -> Frame {
        loop {
            self.fill(2).await;
            let (b0, b1) = (self.buf[0], self.buf[1]);
            let (mut len, mut head) = ((b1 & 0x7f) as usize, 2);
            if len == 126 {
                self.fill(4).await;
                len = u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize;
                head = 4;
            } else if len == 127 {
                self.fill(10).await;
                len = u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize;
                head = 10;
            }
            self.fill(head + len).await;
            let payload = self.buf[head..head + len].to_vec();
            self.buf.drain(..head + len);
            if b0 & 0x0f == 1 || b0 & 0x0f == 2 {
                return Frame {
                    rsv1: b0 & 0x40 != 0,
                    wire: head + len,
                    payload,
                };
            }
        }
    }

    /// The next message, inflated.
    async fn message(&mut self) -> (Frame, Vec<u8>) {
        let f = self.frame().await;
        let text = if f.rsv1 {
            let (_, d) = self
                .deflate
                .as_mut()
                .expect("compressed only if negotiated");
            d.reset(false);
            let mut input = f.payload.clone();
            input.extend_from_slice(&TAIL);
            let mut out = Vec::with_capacity(input.len() * 8 + 1024);
            d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
                .unwrap();
            out
        } else {
            f.payload.clone()
        };
        (f, text)
    }
}

// ---- the payload ----------------------------------------------------------

/// A typical 1 KB JSON payload: chat messages with users, ids and
/// timestamps, words drawn by a fixed pseudo-random sequence.
fn payload_1k() -> Value {
    const WORDS: &[&str] = &[
        "hello", "meeting", "today", "at", "the", "office", "see", "you", "later", "thanks",
        "sounds", "good", "release", "build", "is", "green", "deploy", "after", "lunch", "ok",
        "review", "please", "merged", "ticket", "customer", "asked", "about", "pricing", "call",
        "tomorrow", "morning", "coffee",
    ];
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let users = ["ada", "grace", "linus", "margaret", "dennis", "barbara"];
    let mut messages = Vec::new();
    let mut ts = 1_764_700_000_000u64;
    loop {
        let words = (0..6 + next() % 8)
            .map(|_| WORDS[(next() % WORDS.len() as u64) as usize])
            .collect::<Vec<_>>()
            .join(" ");
        ts += next() % 90_000;
        messages.push(json!({
            "id": format!("m{:08x}", next() as u32),
            "user": users[(next() % users.len() as u64) as usize],
            "room": "lobby",
            "ts": ts,
            "text": words,
        }));
        let v = json!({ "room": "lobby", "messages": messages });
        if v.to_string().len() >= 1000 {
            return v;
        }
    }
}

fn request(method: &str, params: &Value, id: u64) -> String {
    json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id}).to_string()
}

// ---- the scenarios ----------------------------------------------------------

/// Bytes on the wire for one `self.reply` and one broadcast of the 1 KB
/// payload.
async fn wire(compression: bool) -> Value {
    let server = ServerProc::start(compression);
    let p = payload_1k();
    let mut c = Conn::connect(server.addr, compression).await;
    let req = request("self.reply", &p, 1);
    let sent = c.send(&req).await;
    let (reply, text) = c.message().await;
    let v: Value = serde_json::from_slice(&text).unwrap();
    assert_eq!(v["result"], p);
    let req_b = request("broadcast", &p, 2);
    c.send(&req_b).await;
    let mut bcast = None;
    for _ in 0..2 {
        let (f, text) = c.message().await;
        let v: Value = serde_json::from_slice(&text).unwrap();
        if v["method"] == "broadcast" {
            bcast = Some((f.wire, f.rsv1, text.len()));
        }
    }
    let (bcast_wire, bcast_rsv1, bcast_len) = bcast.unwrap();
    json!({
        "compression": compression,
        "request_json_bytes": req.len(),
        "request_wire_bytes": sent,
        "reply_json_bytes": text.len(),
        "reply_wire_bytes": reply.wire,
        "reply_compressed": reply.rsv1,
        "broadcast_json_bytes": bcast_len,
        "broadcast_wire_bytes": bcast_wire,
        "broadcast_compressed": bcast_rsv1,
    })
}

/// `connected_clients` of the server's `/health`.
async fn connected(addr: SocketAddr) -> usize {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = Vec::new();
    s.read_to_end(&mut body).await.unwrap();
    let body = String::from_utf8_lossy(&body);
    let json = &body[body.find("\r\n\r\n").map_or(0, |i| i + 4)..];
    serde_json::from_str::<Value>(json).unwrap()["connected_clients"]
        .as_u64()
        .unwrap() as usize
}

/// Server CPU per delivery: `clients` connections, `broadcasts` 1 KB
/// broadcasts, each sent once every client got the previous one.
async fn fanout(compression: bool, method: &str, clients: usize, broadcasts: usize) -> Value {
    let server = ServerProc::start(compression);
    let received = Arc::new(AtomicU64::new(0));
    let bytes_in = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(Notify::new());
    let mut tasks = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(Conn::connect(server.addr, compression).await);
    }
    let mut sender = Conn::connect(server.addr, compression).await;
    for mut c in conns {
        let (received, bytes_in, progress) = (received.clone(), bytes_in.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..broadcasts + 1 {
                let (f, _text) = c.message().await;
                assert_eq!(f.rsv1, compression);
                received.fetch_add(1, Ordering::Relaxed);
                progress.notify_one();
            }
            bytes_in.fetch_add(c.wire_in, Ordering::Relaxed);
        }));
    }
    let p = payload_1k();
    let wait_for = |n: u64| {
        let (received, progress) = (received.clone(), progress.clone());
        async move {
            while received.load(Ordering::Relaxed) < n {
                let _ = tokio::time::timeout(Duration::from_millis(50), progress.notified()).await;
            }
        }
    };
    // One broadcast to warm up (and to know everyone is registered: the
    // server counts clients only after their upgrade completes).
    let total = clients as u64;
    // Every connection registered before the first broadcast.
    while connected(server.addr).await < clients + 1 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sender.send(&request(method, &p, 0)).await;
    tokio::time::timeout(Duration::from_secs(60), wait_for(total))
        .await
        .expect("the warm-up broadcast reaches every client");
    let cpu0 = server.cpu();
    let t0 = Instant::now();
    for i in 1..=broadcasts as u64 {
        sender.send(&request(method, &p, i)).await;
        wait_for(total * (i + 1)).await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = server.cpu() - cpu0;
    for t in tasks {
        t.await.unwrap();
    }
    let deliveries = total * broadcasts as u64;
    json!({
        "compression": compression,
        "method": method,
        "clients": clients,
        "broadcasts": broadcasts,
        "deliveries": deliveries,
        "server_cpu_s": cpu,
        "server_cpu_us_per_delivery": cpu * 1e6 / deliveries as f64,
        "elapsed_s": elapsed,
        "client_wire_bytes_per_delivery": bytes_in.load(Ordering::Relaxed) as f64 / (total * (broadcasts as u64 + 1)) as f64,
    })
}

/// `self.reply` throughput: `conns` connections, each keeping `window`
/// requests in flight, for `seconds`.
async fn replies(compression: bool, conns: usize, window: usize, seconds: f64) -> Value {
    let server = ServerProc::start(compression);
    let p = payload_1k();
    let req = request("self.reply", &p, 1);
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let cpu0 = server.cpu();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let mut c = Conn::connect(server.addr, compression).await;
        let (done, req) = (done.clone(), req.clone());
        tasks.push(tokio::spawn(async move {
            let mut inflight = 0;
            loop {
                while inflight < window && Instant::now() < deadline {
                    c.send(&req).await;
                    inflight += 1;
                }
                if inflight == 0 {
                    return;
                }
                let (f, _) = c.message().await;
                assert_eq!(f.rsv1, compression);
                inflight -= 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = server.cpu() - cpu0;
    let n = done.load(Ordering::Relaxed);
    json!({
        "compression": compression,
        "connections": conns,
        "in_flight": window,
        "replies": n,
        "elapsed_s": elapsed,
        "replies_per_s": n as f64 / elapsed,
        "server_cpu_us_per_reply": cpu * 1e6 / n as f64,
    })
}

/// Server RSS per idle connection. `exchange`: every client sends one
/// compressed request first (its inflate state is then allocated: the
/// client keeps its context).
async fn idle(compression: bool, exchange: bool, clients: usize) -> Value {
    let server = ServerProc::start(compression);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = vm_rss_kib(server.pid()).unwrap();
    let p = payload_1k();
    let mut conns = Vec::with_capacity(clients);
    for i in 0..clients {
        let mut c = Conn::connect(server.addr, compression).await;
        if exchange {
            c.send(&request("self.reply", &p, i as u64)).await;
            let (f, _) = c.message().await;
            assert_eq!(f.rsv1, compression);
        }
        conns.push(c);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = vm_rss_kib(server.pid()).unwrap();
    drop(conns);
    json!({
        "compression": compression,
        "after_one_compressed_message": exchange,
        "clients": clients,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_connection": (after.saturating_sub(before)) as f64 / clients as f64,
    })
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if std::env::var_os("DEFLATE_BENCH_SERVER").is_some() {
        return server_main();
    }
    // `cargo bench` passes --bench; `cargo test --benches` runs it too:
    // only measure when asked to bench.
    if !std::env::args().any(|a| a == "--bench") {
        println!("compression bench: run with cargo bench");
        return;
    }
    let clients = env_or("DEFLATE_BENCH_CLIENTS", 2000);
    let broadcasts = env_or("DEFLATE_BENCH_BROADCASTS", 50);
    let seconds = env_or("DEFLATE_BENCH_SECONDS", 5) as f64;
    raise_nofile_limit((clients as u64 + 64) * 2);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let machine_busy0 = nbio_ws_benches::proc::machine_busy_seconds();
    let t0 = Instant::now();
    let results = rt.block_on(async {
        let mut r = serde_json::Map::new();
        r.insert("wire".into(), json!([wire(false).await, wire(true).await]));
        let mut fan = Vec::new();
        for (compression, method) in [
            (false, "broadcast"),
            (true, "broadcast"),
            (true, "broadcast.each"),
        ] {
            fan.push(fanout(compression, method, clients, broadcasts).await);
        }
        r.insert("fanout".into(), Value::Array(fan));
        r.insert(
            "replies".into(),
            json!([
                replies(false, 50, 8, seconds).await,
                replies(true, 50, 8, seconds).await
            ]),
        );
        r.insert(
            "idle".into(),
            json!([
                idle(false, false, clients).await,
                idle(false, true, clients).await,
                idle(true, false, clients).await,
                idle(true, true, clients).await
            ]),
        );
        Value::Object(r)
    });
    let wall = t0.elapsed().as_secs_f64();
    let others = machine_busy0
        .zip(nbio_ws_benches::proc::machine_busy_seconds())
        .map(|(a, b)| (b - a) / wall);
    println!("{}", serde_json::to_string_pretty(&results).unwrap());
    println!("machine busy cores during the run (all processes): {others:?}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("results/compression.json");
    let mut doc = results;
    doc["machine_busy_cores"] = json!(others);
    std::fs::write(&out, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    println!("wrote {}", out.display());
}
