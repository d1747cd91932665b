//! The example binaries, run as a user would run them: configured from
//! the environment, talked to with a real WebSocket client, stopped with
//! SIGTERM.

use std::process::{Command, Stdio};

use futures_util::{SinkExt, StreamExt};
use nbio_ws_testkit::process::{command, run_to_exit, ServerProcess};
use nbio_ws_testkit::{free_port, http_request, loopback, Proc, WsClient, TIMEOUT};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn seed_server_wire_format_and_sigterm() {
    let mut server = ServerProcess::start(env!("CARGO_BIN_EXE_server"), &[]).await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    // A connection joins the hub once its upgraded socket is handed over,
    // just after the client has seen the 101: wait until both are in, so
    // that the broadcast below is sent to both.
    for _ in 0..200 {
        let (_, _, body) = server.get("/health").await;
        if body.contains("\"connected_clients\":2") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    a.send_text(
        r#"{"jsonrpc":"2.0","method":"self.reply","params":{"text":"Reply only to me!"},"id":2}"#,
    )
    .await;
    assert_eq!(
        a.recv_text().await,
        r#"{"jsonrpc":"2.0","result":{"echo":"Reply only to me!","text_length":17},"id":2}"#
    );

    a.send_text(r#"{"jsonrpc":"2.0","method":"broadcast","params":{"text":"Message to everyone! ✓"},"id":1}"#)
        .await;
    let note =
        r#"{"jsonrpc":"2.0","method":"broadcast","params":{"text":"Message to everyone! ✓"}}"#;
    let result = r#"{"jsonrpc":"2.0","result":{"status":"broadcasted","text_length":24},"id":1}"#;
    let mut got = vec![a.recv_text().await, a.recv_text().await];
    got.sort();
    let mut want = vec![note.to_string(), result.to_string()];
    want.sort();
    assert_eq!(got, want);
    assert_eq!(b.recv_text().await, note);

    let (status, _, body) = server.get("/health").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"connected_clients\":2"), "{body}");

    // SIGTERM: clients get 1001, the process exits 0.
    server.proc.terminate();
    assert_eq!(a.expect_close().await, 1001);
    drop(a);
    drop(b);
    let status = tokio::task::spawn_blocking(move || server.proc.wait())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn bad_variables_stop_startup_with_a_message_naming_them() {
    for (var, value) in [
        ("WS_PORT", "eighty"),
        ("WS_PING_INTERVAL", "often"),
        ("WS_LOG_FORMAT", "xml"),
        ("WS_SEND_BUFFER_BYTES", "lots"),
    ] {
        let (code, err) = run_to_exit(env!("CARGO_BIN_EXE_server"), &[(var, value)]);
        assert_eq!(code, Some(2), "{var}={value}");
        assert!(err.contains(var) && err.contains(value), "{var}: {err}");
    }
}

#[tokio::test]
async fn echo_example_on_root_path() {
    let server = ServerProcess::start(env!("CARGO_BIN_EXE_echo"), &[]).await;
    let mut ws = WsClient::connect(&server.url("/")).await;
    ws.send_text("not json at all").await;
    assert_eq!(ws.recv_text().await, "not json at all");
    ws.ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    match tokio::time::timeout(TIMEOUT, ws.ws.next())
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
    let mut cmd = command(env!("CARGO_BIN_EXE_embed"), port);
    cmd.env("PORT", port.to_string());
    let server = ServerProcess::spawn(&mut cmd, port, "/").await;
    let (status, _, body) = server.get("/").await;
    assert_eq!(status, 200);
    assert!(body.contains("ordinary axum route"));
    let mut ws = server.client().await;
    ws.send_text(r#"{"jsonrpc":"2.0","method":"whoami","id":1}"#)
        .await;
    let v = ws.recv_json().await;
    assert!(
        v["result"]
            .as_str()
            .unwrap()
            .parse::<nbio_ws::ClientId>()
            .is_ok(),
        "{v}"
    );
    let (_, _, clients) = server.get("/clients").await;
    assert_eq!(clients.trim(), "1");
}

/// A raw upgrade request; returns the response head.
async fn upgrade_head(server: &ServerProcess, target: &str, extra: &str) -> String {
    nbio_ws_testkit::upgrade_request(server.addr(), target, extra)
        .await
        .1
}

#[tokio::test]
async fn seed_server_honours_the_security_variables() {
    let port = free_port();
    let mut cmd = command(env!("CARGO_BIN_EXE_server"), port);
    cmd.env("WS_LOG_LEVEL", "trace")
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
        .stderr(Stdio::piped());
    let mut proc = nbio_ws_testkit::Proc::spawn(&mut cmd);
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
    let out = drain(proc.child().stdout.take().map(|r| Box::new(r) as _));
    let err = drain(proc.child().stderr.take().map(|r| Box::new(r) as _));
    let mut server = ServerProcess::new(proc, port);
    server.wait_ready("/health").await;

    let head = upgrade_head(&server, "/ws", "").await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert!(head.contains("www-authenticate: Bearer"), "{head}");
    let head = upgrade_head(
        &server,
        "/ws?token=s3cret-example-token",
        "Origin: https://evil.example\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");

    let mut ws = WsClient::connect(&server.url("/ws?token=s3cret-example-token")).await;
    // One connection per address.
    let head = upgrade_head(&server, "/ws?token=s3cret-example-token", "").await;
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");

    // A burst of 2, then the rate limit, then 1008 after 3 in a row.
    let mut replies = Vec::new();
    for id in 1..=5 {
        ws.send_text(&format!(
            r#"{{"jsonrpc":"2.0","method":"self.reply","params":{{"text":"hi"}},"id":{id}}}"#
        ))
        .await;
        replies.push(ws.recv_json().await);
    }
    assert_eq!(replies[0]["result"]["echo"], "hi");
    assert_eq!(replies[1]["result"]["echo"], "hi");
    for (i, r) in replies[2..].iter().enumerate() {
        assert_eq!(r["error"]["code"], -32029, "{r}");
        assert_eq!(r["id"], i + 3, "{r}");
    }
    assert_eq!(ws.expect_close().await, 1008);

    // The token never reached the logs, even at trace level.
    drop(server);
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
        let (code, err) = run_to_exit(env!("CARGO_BIN_EXE_server"), vars);
        assert_eq!(code, Some(2), "{vars:?}");
        assert!(err.contains(named), "{vars:?}: {err}");
    }
}

// --- What one client can cost: huge batches and a client that never reads
// (memory measured from /proc), the seed's answers for a missing text, logs
// without colour codes, the admin listener from `WS_ADMIN_ADDR`.

/// The peak resident memory the example server may reach while 8 clients
/// each send a 1 MB batch of 520,000 elements at once (BENCHMARKS.md
/// records what was measured).
const PEAK_RSS_BOUND_KIB: u64 = 32 * 1024;

/// The example server on `port`, its stderr discarded.
fn server(port: u16) -> Command {
    let mut cmd = command(env!("CARGO_BIN_EXE_server"), port);
    cmd.stderr(Stdio::null());
    cmd
}

/// Spawns `cmd` (a server on `port`) and waits for its `/health`.
async fn spawn(cmd: &mut Command, port: u16) -> ServerProcess {
    ServerProcess::spawn(cmd, port, "/health").await
}

/// `VmHWM` (peak resident set) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmHWM:")
}

/// A `… kB` line of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`).
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

#[tokio::test]
async fn eight_clients_sending_1mb_batches_at_once_cost_little() {
    let port = free_port();
    let server = spawn(&mut server(port), port).await;
    let pid = server.proc.pid();
    let before = peak_rss_kib(pid);

    // A JSON array of 520,000 `1`s: 1,040,001 bytes, under the 1 MiB limit.
    let batch = format!("[{}1]", "1,".repeat(519_999));
    assert!(batch.len() > 1_000_000 && batch.len() < 1 << 20);
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(server.client().await);
    }
    let mut other = server.client().await;
    // All eight at once.
    futures_util::future::join_all(
        clients
            .iter_mut()
            .map(|c| c.ws.send(Message::text(batch.clone()))),
    )
    .await
    .into_iter()
    .for_each(|r| r.unwrap());
    // Another client is served meanwhile.
    other
        .send_json(
            &json!({"jsonrpc": "2.0", "method": "self.reply", "params": {"text": "still here"}, "id": 1}),
        )
        .await;
    assert_eq!(other.recv_json().await["result"]["echo"], "still here");
    // Each batch gets one small error and runs nothing.
    for ws in &mut clients {
        let r = ws.recv_json().await;
        assert_eq!(r["error"]["code"], -32600, "{r}");
        assert_eq!(
            r["error"]["message"], "batch too large: at most 100 requests",
            "{r}"
        );
        assert_eq!(r["id"], Value::Null);
    }
    // And the connections go on.
    for ws in &mut clients {
        ws.send_json(
            &json!({"jsonrpc": "2.0", "method": "self.reply", "params": {"text": "ok"}, "id": 2}),
        )
        .await;
        assert_eq!(ws.recv_json().await["result"]["echo"], "ok");
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
    let server = spawn(&mut server(port), port).await;
    let mut ws = server.client().await;
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
            ws.send_json(&req).await;
            let r = ws.recv_json().await;
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
    ws.send_json(
        &json!({"jsonrpc": "2.0", "method": "self.reply", "params": {"text": "x"}, "id": 99}),
    )
    .await;
    assert_eq!(ws.recv_json().await["result"]["text_length"], 1);
}

#[tokio::test]
async fn logs_go_to_stderr_without_colours_and_admin_addr_moves_health() {
    let (port, admin) = (free_port(), free_port());
    let mut cmd = server(port);
    cmd.env("WS_LOG_LEVEL", "info")
        .env("WS_ADMIN_ADDR", format!("127.0.0.1:{admin}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut proc = Proc::spawn(&mut cmd);
    let drain = |r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut r = r;
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    use std::io::Read;
    let out = drain(Box::new(proc.child().stdout.take().unwrap()));
    let err = drain(Box::new(proc.child().stderr.take().unwrap()));
    let mut admin_server = ServerProcess::new(proc, admin);
    admin_server.wait_ready("/health").await;
    let (status, _, body) = admin_server.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("nbio_ws_connected_clients 0"), "{body}");
    let public = loopback(port);
    assert_eq!(http_request(public, "GET", "/health").await.0, 404);
    assert_eq!(http_request(public, "GET", "/metrics").await.0, 404);
    let mut ws = WsClient::connect(&format!("ws://{public}/ws")).await;
    ws.send_json(
        &json!({"jsonrpc": "2.0", "method": "self.reply", "params": {"text": "hi"}, "id": 1}),
    )
    .await;
    assert_eq!(ws.recv_json().await["result"]["echo"], "hi");
    drop(ws);

    admin_server.proc.terminate();
    let status = tokio::task::spawn_blocking(move || admin_server.proc.wait())
        .await
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

/// How much the example server's peak resident memory may grow while a
/// client that never reads is sent 3,000 broadcasts of 1 KB (BENCHMARKS.md
/// records what was measured): its queue is bounded (256 messages, 8 MiB),
/// so it is closed with 1008 long before.
const SLOW_READER_GROWTH_BOUND_KIB: u64 = 16 * 1024;

/// Receives `total` broadcasts on `ws` (after those `request` kept), and
/// checks that each sender's arrive complete and in order.
async fn all_broadcasts(ws: &mut nbio_ws_testkit::WsClient, senders: usize, total: usize) {
    let mut next = vec![0usize; senders];
    for _ in 0..total {
        let (method, params) = ws.notification().await;
        assert_eq!(method, "broadcast");
        let text = params["text"].as_str().expect("a text");
        let mut parts = text.splitn(3, ':');
        let sender: usize = parts.next().unwrap().parse().unwrap();
        let n: usize = parts.next().unwrap().parse().unwrap();
        assert_eq!(n, next[sender], "sender {sender}: {n} out of order");
        next[sender] += 1;
    }
}

#[tokio::test]
async fn a_client_that_never_reads_is_closed_and_the_others_get_every_broadcast() {
    const SENDERS: usize = 2;
    // 3,000 broadcasts overflow the slow client's queue where the kernel
    // holds at most 4 MiB for a socket it writes to (Linux's default
    // `tcp_wmem` maximum: here about 2,650 of them fit in the socket); more
    // where it may hold more.
    let wmem_max: usize = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|v| v.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20);
    let each = 1_500 * wmem_max.div_ceil(4 << 20).max(1);
    let port = free_port();
    let server = spawn(&mut server(port), port).await;
    let pid = server.proc.pid();

    // It reads nothing, ever (with a small window, like a slow link): the
    // socket's buffers fill, then its queue.
    let mut slow = nbio_ws_testkit::RawClient::connect_small_window(server.addr(), "/ws").await;
    let mut readers = Vec::new();
    for _ in 0..2 {
        readers.push(server.client().await);
    }
    let mut senders = Vec::new();
    for _ in 0..SENDERS {
        senders.push(server.client().await);
    }
    server.wait_metric("nbio_ws_connected_clients", 5).await;
    let before = proc_status_kib(pid, "VmRSS:");

    let total = SENDERS * each;
    let readers: Vec<_> = readers
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                all_broadcasts(&mut ws, SENDERS, total).await;
                ws
            })
        })
        .collect();
    let senders: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(s, mut ws)| {
            tokio::spawn(async move {
                for n in 0..each {
                    // 1,000 bytes of text.
                    let head = format!("{s}:{n}:");
                    let text = format!("{head}{}", "x".repeat(1000 - head.len()));
                    let r = ws.request("broadcast", json!({ "text": text })).await;
                    assert_eq!(r["result"]["status"], "broadcasted", "{r}");
                }
                // Its own broadcasts and the others' reach it too.
                all_broadcasts(&mut ws, SENDERS, total).await;
                ws
            })
        })
        .collect();
    let mut everyone = Vec::new();
    for t in senders.into_iter().chain(readers) {
        everyone.push(t.await.expect("every reader got every broadcast"));
    }

    // The slow client was closed as a slow consumer (1008); the others are
    // still connected.
    server
        .wait_metric("nbio_ws_slow_consumer_disconnects_total", 1)
        .await;
    server.wait_metric("nbio_ws_connected_clients", 4).await;
    let (_, _, metrics) = server.get("/metrics").await;
    assert!(
        metrics.contains(r#"nbio_ws_close_codes_total{code="1008"} 1"#),
        "{metrics}"
    );
    // What reached its socket before that, then (if the socket had room
    // for it) the close frame, then the end.
    let mut frames = 0;
    while let Some(f) = slow.read_frame().await {
        if f.opcode == 8 {
            assert_eq!(f.close_code(), Some(1008));
            break;
        }
        frames += 1;
    }
    assert!(
        frames < total,
        "{frames} broadcasts reached the slow client"
    );
    for ws in &mut everyone {
        let r = ws
            .request("self.reply", json!({"text": "still here"}))
            .await;
        assert_eq!(r["result"]["echo"], "still here");
    }

    let peak = peak_rss_kib(pid);
    println!(
        "server RSS {before} KiB with 5 clients; peak {peak} KiB after {total} broadcasts of 1 KB \
         ({frames} reached the slow client before its 1008)"
    );
    assert!(
        peak.saturating_sub(before) < SLOW_READER_GROWTH_BOUND_KIB,
        "peak RSS grew by {} KiB, over the documented {SLOW_READER_GROWTH_BOUND_KIB} KiB",
        peak.saturating_sub(before)
    );
}
