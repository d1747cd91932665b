//! The example binaries, run as a user would run them: configured from
//! the environment, talked to with a real WebSocket client, stopped with
//! SIGTERM.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

mod common;

use common::{free_port, Proc};

async fn wait_http(port: u16, path: &str) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            let (status, _) = get(port, path).await;
            if status == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server on port {port} did not come up");
}

async fn get(port: u16, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Sends SIGTERM, as a service manager would.
fn sigterm(child: &Child) {
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
}

async fn next_text(
    ws: &mut (impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn seed_server_wire_format_and_sigterm() {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_server"))
        .env("WS_PORT", port.to_string())
        .env("WS_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut proc = Proc(child);
    wait_http(port, "/health").await;

    let url = format!("ws://127.0.0.1:{port}/ws");
    let (mut a, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let (mut b, _) = tokio_tungstenite::connect_async(&url).await.unwrap();

    a.send(Message::text(
        r#"{"jsonrpc":"2.0","method":"self.reply","params":{"text":"Reply only to me!"},"id":2}"#,
    ))
    .await
    .unwrap();
    assert_eq!(
        next_text(&mut a).await,
        r#"{"jsonrpc":"2.0","result":{"echo":"Reply only to me!","text_length":17},"id":2}"#
    );

    a.send(Message::text(r#"{"jsonrpc":"2.0","method":"broadcast","params":{"text":"Message to everyone! ✓"},"id":1}"#))
        .await
        .unwrap();
    let note =
        r#"{"jsonrpc":"2.0","method":"broadcast","params":{"text":"Message to everyone! ✓"}}"#;
    let result = r#"{"jsonrpc":"2.0","result":{"status":"broadcasted","text_length":24},"id":1}"#;
    let mut got = vec![next_text(&mut a).await, next_text(&mut a).await];
    got.sort();
    let mut want = vec![note.to_string(), result.to_string()];
    want.sort();
    assert_eq!(got, want);
    assert_eq!(next_text(&mut b).await, note);

    let (status, body) = get(port, "/health").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"connected_clients\":2"), "{body}");

    // SIGTERM: clients get 1001, the process exits 0.
    sigterm(&proc.0);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), a.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Close(Some(f)))) => {
                assert_eq!(u16::from(f.code), 1001);
                break;
            }
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
    drop(a);
    drop(b);
    let status = tokio::task::spawn_blocking(move || proc.0.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn bad_variables_stop_startup_with_a_message_naming_them() {
    for (var, value) in [
        ("WS_PORT", "eighty"),
        ("WS_PING_INTERVAL", "often"),
        ("WS_LOG_FORMAT", "xml"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_server"))
            .env(var, value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(var) && err.contains(value), "{var}: {err}");
    }
}

#[tokio::test]
async fn echo_example_on_root_path() {
    let port = free_port();
    let _proc = Proc(
        Command::new(env!("CARGO_BIN_EXE_echo"))
            .env("WS_PORT", port.to_string())
            .env("WS_LOG_LEVEL", "warn")
            .spawn()
            .unwrap(),
    );
    wait_http(port, "/health").await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/"))
        .await
        .unwrap();
    ws.send(Message::text("not json at all")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "not json at all");
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        Message::Binary(b) => assert_eq!(&b[..], &[1, 2, 3]),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn embed_example_serves_axum_routes_and_the_endpoint() {
    let port = free_port();
    let _proc = Proc(
        Command::new(env!("CARGO_BIN_EXE_embed"))
            .env("PORT", port.to_string())
            .env("WS_LOG_LEVEL", "warn")
            .spawn()
            .unwrap(),
    );
    wait_http(port, "/").await;
    let (status, body) = get(port, "/").await;
    assert_eq!(status, 200);
    assert!(body.contains("ordinary axum route"));
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws"))
        .await
        .unwrap();
    ws.send(Message::text(
        r#"{"jsonrpc":"2.0","method":"whoami","id":1}"#,
    ))
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    assert!(
        v["result"]
            .as_str()
            .unwrap()
            .parse::<nbio_ws::ClientId>()
            .is_ok(),
        "{v}"
    );
    let (_, clients) = get(port, "/clients").await;
    assert_eq!(clients.trim(), "1");
}

/// A raw upgrade request; returns the response head.
async fn upgrade_head(port: u16, target: &str, extra: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let req = format!(
        "GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).to_string()
}

#[tokio::test]
async fn seed_server_honours_the_security_variables() {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_server"))
        .env("WS_PORT", port.to_string())
        .env("WS_LOG_LEVEL", "trace")
        .env("WS_AUTH_ENABLED", "true")
        .env("WS_BEARER_TOKENS", "alice:s3cret-example-token")
        .env("WS_ALLOWED_ORIGINS", "http://localhost:3000")
        .env("WS_MAX_CONNECTIONS_PER_IP", "1")
        .env("WS_RATE_LIMIT_ENABLED", "true")
        .env("WS_RATE_LIMIT_RATE", "1")
        .env("WS_RATE_LIMIT_INTERVAL", "1m")
        .env("WS_RATE_LIMIT_BURST", "2")
        .env("WS_RATE_LIMIT_CLOSE_AFTER", "3")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut proc = Proc(child);
    // Drain the logs from the start: a full pipe would block the server.
    let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    use std::io::Read;
    let out = drain(proc.0.stdout.take().map(|r| Box::new(r) as _));
    let err = drain(proc.0.stderr.take().map(|r| Box::new(r) as _));
    wait_http(port, "/health").await;

    let head = upgrade_head(port, "/ws", "").await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert!(head.contains("www-authenticate: Bearer"), "{head}");
    let head = upgrade_head(
        port,
        "/ws?token=s3cret-example-token",
        "Origin: https://evil.example\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");

    let url = format!("ws://127.0.0.1:{port}/ws?token=s3cret-example-token");
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    // One connection per address.
    let head = upgrade_head(port, "/ws?token=s3cret-example-token", "").await;
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");

    // A burst of 2, then the rate limit, then 1008 after 3 in a row.
    let mut replies = Vec::new();
    for id in 1..=5 {
        ws.send(Message::text(format!(
            r#"{{"jsonrpc":"2.0","method":"self.reply","params":{{"text":"hi"}},"id":{id}}}"#
        )))
        .await
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
        replies.push(v);
    }
    assert_eq!(replies[0]["result"]["echo"], "hi");
    assert_eq!(replies[1]["result"]["echo"], "hi");
    for (i, r) in replies[2..].iter().enumerate() {
        assert_eq!(r["error"]["code"], -32029, "{r}");
        assert_eq!(r["id"], i + 3, "{r}");
    }
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Close(Some(f)))) => {
                assert_eq!(u16::from(f.code), 1008);
                break;
            }
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    // The token never reached the logs, even at trace level.
    drop(proc);
    let logs = format!("{}{}", out.join().unwrap(), err.join().unwrap());
    assert!(logs.contains("upgrade refused"), "{logs}");
    assert!(!logs.contains("s3cret"), "{logs}");
}

#[test]
fn bad_security_variables_stop_startup() {
    for (vars, named) in [
        (&[("WS_AUTH_ENABLED", "true")][..], "WS_AUTH_ENABLED"),
        (
            &[("WS_ALLOWED_ORIGINS", "example.com")][..],
            "WS_ALLOWED_ORIGINS",
        ),
        (
            &[("WS_TRUSTED_PROXIES", "10.0.0.0/99")][..],
            "WS_TRUSTED_PROXIES",
        ),
        (&[("WS_RATE_LIMIT_BURST", "0")][..], "WS_RATE_LIMIT_BURST"),
        (&[("WS_MAX_HEADER_SIZE", "100")][..], "WS_MAX_HEADER_SIZE"),
        (&[("WS_TLS_ENABLED", "true")][..], "WS_TLS_"),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_server"));
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{vars:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(named), "{vars:?}: {err}");
    }
}

// --- What one client can cost: huge batches (memory measured from /proc),
// the seed's answers for a missing text, logs without colour codes, the
// admin listener from `WS_ADMIN_ADDR`.

/// The peak resident memory the example server may reach while 8 clients
/// each send a 1 MB batch of 520,000 elements at once (BENCHMARKS.md
/// records what was measured).
const PEAK_RSS_BOUND_KIB: u64 = 32 * 1024;

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

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(port: u16) -> Ws {
    tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws"))
        .await
        .unwrap()
        .0
}

async fn next_json(ws: &mut Ws) -> Value {
    serde_json::from_str(&next_text(ws).await).unwrap()
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

    sigterm(&proc.0);
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
