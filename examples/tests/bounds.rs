//! The example server under what one client can send: huge batches
//! (memory measured from /proc), the seed's answers for a missing text,
//! logs without colour codes, the admin listener from `WS_ADMIN_ADDR`.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// The peak resident memory the example server may reach while 8 clients
/// each send a 1 MB batch of 520,000 elements at once (BENCHMARKS.md
/// records what was measured).
const PEAK_RSS_BOUND_KIB: u64 = 32 * 1024;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn server(port: u16) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_server"));
    cmd.env("WS_HOST", "127.0.0.1")
        .env("WS_PORT", port.to_string())
        .env("WS_LOG_LEVEL", "warn")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

async fn get(port: u16, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return (0, String::new());
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (status, body)
}

async fn wait_http(port: u16, path: &str) {
    for _ in 0..400 {
        if get(port, path).await.0 == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("server on port {port} did not answer {path}");
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(port: u16) -> Ws {
    tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws"))
        .await
        .unwrap()
        .0
}

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message in time")
            .expect("open")
            .expect("no error")
        {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// `VmHWM` (peak resident set) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

#[tokio::test]
async fn eight_clients_sending_1mb_batches_at_once_cost_little() {
    let port = free_port();
    let proc = Proc(server(port).spawn().unwrap());
    wait_http(port, "/health").await;
    let pid = proc.0.id();
    let before = peak_rss_kib(pid);

    // A JSON array of 520,000 `1`s: 1,040,001 bytes, under the 1 MiB limit.
    let batch = format!("[{}1]", "1,".repeat(519_999));
    assert!(batch.len() > 1_000_000 && batch.len() < 1 << 20);
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(connect(port).await);
    }
    let mut other = connect(port).await;
    // All eight at once.
    futures_util::future::join_all(
        clients
            .iter_mut()
            .map(|ws| ws.send(Message::text(batch.clone()))),
    )
    .await
    .into_iter()
    .for_each(|r| r.unwrap());
    // Another client is served meanwhile.
    other
        .send(Message::text(
            json!({"jsonrpc": "2.0", "method": "self.reply", "params": {"text": "still here"}, "id": 1})
                .to_string(),
        ))
        .await
        .unwrap();
    assert_eq!(next_json(&mut other).await["result"]["echo"], "still here");
    // Each batch gets one small error and runs nothing.
    for ws in &mut clients {
        let r = next_json(ws).await;
        assert_eq!(r["error"]["code"], -32600, "{r}");
        assert_eq!(
            r["error"]["message"], "batch too large: at most 100 requests",
            "{r}"
        );
        assert_eq!(r["id"], Value::Null);
    }
    // And the connections go on.
    for ws in &mut clients {
        ws.send(Message::text(
            json!({"jsonrpc": "2.0", "method": "self.reply", "params": {"text": "ok"}, "id": 2})
                .to_string(),
        ))
        .await
        .unwrap();
        assert_eq!(next_json(ws).await["result"]["echo"], "ok");
    }
    let peak = peak_rss_kib(pid);
    println!("peak RSS of the server: {before} KiB at start, {peak} KiB after 8 x 1 MB batches");
    assert!(
        peak < PEAK_RSS_BOUND_KIB,
        "peak RSS {peak} KiB over the documented {PEAK_RSS_BOUND_KIB} KiB"
    );
}

#[tokio::test]
async fn a_missing_or_empty_text_is_answered_as_the_seed_does() {
    let port = free_port();
    let _proc = Proc(server(port).spawn().unwrap());
    wait_http(port, "/health").await;
    let mut ws = connect(port).await;
    let mut id = 0;
    for method in ["self.reply", "broadcast"] {
        for params in [
            Some(json!({"text": ""})),
            Some(json!({})),
            Some(json!({"text": null})),
            Some(json!({"text": 5})),
            Some(json!([])),
            None,
        ] {
            id += 1;
            let mut req = json!({"jsonrpc": "2.0", "method": method, "id": id});
            if let Some(p) = &params {
                req["params"] = p.clone();
            }
            ws.send(Message::text(req.to_string())).await.unwrap();
            let r = next_json(&mut ws).await;
            assert_eq!(r["id"], id, "{method} {params:?}: {r}");
            assert_eq!(r["error"]["code"], -32602, "{method} {params:?}: {r}");
            assert_eq!(
                r["error"]["data"]["detail"],
                "text field is required and must be a non-empty string",
                "{method} {params:?}: {r}"
            );
        }
    }
    // A text is still a text.
    ws.send(Message::text(
        json!({"jsonrpc": "2.0", "method": "self.reply", "params": {"text": "x"}, "id": 99})
            .to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await["result"]["text_length"], 1);
}

#[tokio::test]
async fn logs_go_to_stderr_without_colours_and_admin_addr_moves_health() {
    let (port, admin) = (free_port(), free_port());
    let mut cmd = server(port);
    cmd.env("WS_LOG_LEVEL", "info")
        .env("WS_ADMIN_ADDR", format!("127.0.0.1:{admin}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut proc = Proc(cmd.spawn().unwrap());
    let drain = |r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut r = r;
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    use std::io::Read;
    let out = drain(Box::new(proc.0.stdout.take().unwrap()));
    let err = drain(Box::new(proc.0.stderr.take().unwrap()));
    wait_http(admin, "/health").await;
    let (status, body) = get(admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("nbio_ws_connected_clients 0"), "{body}");
    assert_eq!(get(port, "/health").await.0, 404);
    assert_eq!(get(port, "/metrics").await.0, 404);
    let mut ws = connect(port).await;
    ws.send(Message::text(
        json!({"jsonrpc": "2.0", "method": "self.reply", "params": {"text": "hi"}, "id": 1})
            .to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await["result"]["echo"], "hi");
    drop(ws);

    let pid = proc.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::task::spawn_blocking(move || proc.0.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert!(err.contains("listening"), "logs go to stderr: {err:?}");
    assert!(err.contains("admin listening"), "{err:?}");
    assert!(
        !err.contains('\u{1b}'),
        "no ANSI escapes off a terminal: {err:?}"
    );
    assert!(out.is_empty(), "nothing on stdout: {out:?}");
}
