//! Security controls over real loopback sockets: authentication, origins,
//! rate limits, connection caps, trusted proxies, handshake limits, and
//! that connect/disconnect churn leaves no per-client state behind.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use futures_util::{SinkExt, StreamExt};
use nbio_ws::auth::{self, AuthRejection, Authenticated};
use nbio_ws::{Client, Server, ServerBuilder};
use nbio_ws_testkit::{TestServer, WsClient, TIMEOUT};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Who the caller is, as the server sees it.
fn me(client: Client) -> Value {
    json!({"identity": client.identity(), "remote": client.remote_addr().to_string()})
}

fn base() -> ServerBuilder {
    Server::builder()
        .registered_methods(false)
        .method("me", |c: Client| async move {
            Ok::<_, nbio_ws::RpcError>(me(c))
        })
        .method("echo", |nbio_ws::Params(v): nbio_ws::Params<Value>| async move {
            Ok::<_, nbio_ws::RpcError>(v)
        })
}

/// A raw upgrade request with extra header lines; returns the status, the
/// head (lower case) and the body of the answer.
async fn handshake(addr: SocketAddr, target: &str, extra: &str) -> (u16, String, String) {
    let (status, head, body) = nbio_ws_testkit::upgrade_request(addr, target, extra).await;
    (status, head.to_ascii_lowercase(), body)
}

/// The answer on a socket (head in lower case).
async fn read_response(s: &mut TcpStream) -> (u16, String, String) {
    let (status, head, body) = nbio_ws_testkit::http::read_response(s).await;
    (status, head.to_ascii_lowercase(), body)
}

async fn metric(addr: SocketAddr, name: &str) -> u64 {
    let (_, _, body) = nbio_ws_testkit::http_request(addr, "GET", "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn bearer_tokens_from_header_subprotocol_and_query() {
    let s = TestServer::start(base().bearer_tokens(["alice:tok-alice", "tok-second"])).await;

    // No token: 401 with a Bearer challenge, and no upgrade.
    let (status, head, body) = handshake(s.addr, "/ws", "").await;
    assert_eq!(status, 401, "{head}");
    assert!(
        head.contains("www-authenticate: bearer realm=\"nbio-ws\""),
        "{head}"
    );
    assert!(!head.contains("upgrade: websocket"), "{head}");
    assert_eq!(body, "authentication required\n");

    // A wrong token, from each source: 401 invalid_token.
    for (target, extra) in [
        ("/ws", "Authorization: Bearer nope\r\n"),
        ("/ws?token=nope", ""),
        ("/ws", "Sec-WebSocket-Protocol: bearer, nope\r\n"),
        // A right token under the wrong name is still wrong.
        ("/ws?tok=tok-alice", "Authorization: Bearer tok-alice-x\r\n"),
    ] {
        let (status, head, body) = handshake(s.addr, target, extra).await;
        assert_eq!(status, 401, "{target} {extra}: {head}");
        assert!(head.contains("error=\"invalid_token\""), "{head}");
        assert_eq!(body, "invalid token\n");
    }

    // The header.
    let (mut a, _) =
        WsClient::connect_with(&s.url("/ws"), &[("authorization", "Bearer tok-alice")]).await;
    assert_eq!(
        a.call("me", json!([]), json!(1)).await["result"]["identity"],
        "alice"
    );

    // The query string (seed compatibility).
    let mut b = WsClient::connect(&format!("{}?token=tok-second", s.url("/ws"))).await;
    assert_eq!(
        b.call("me", json!([]), json!(1)).await["result"]["identity"],
        "token-2"
    );

    // The browser form: the client offers `bearer, <token>`; the server
    // must select `bearer` (tungstenite, like a browser, fails the
    // connection when none of the offered subprotocols is selected).
    let (mut c, head) = WsClient::connect_with(
        &s.url("/ws"),
        &[("sec-websocket-protocol", "bearer, tok-alice")],
    )
    .await;
    assert_eq!(head["sec-websocket-protocol"], "bearer");
    assert_eq!(
        c.call("me", json!([]), json!(1)).await["result"]["identity"],
        "alice"
    );

    assert_eq!(metric(s.addr, "nbio_ws_auth_failures_total").await, 5);
    s.wait_connections(3).await;
    drop((a, b, c));
    s.wait_connections(0).await;
    s.stop().await;
}

#[tokio::test]
async fn custom_authenticator_sees_the_request() {
    let authenticator = auth::from_fn(|req: &auth::AuthRequest| {
        let seen = json!({
            "method": req.method().as_str(),
            "path": req.path(),
            "room": req.query_param("room"),
            "peer_is_loopback": req.peer_addr().ip().is_loopback(),
            "user": req.header("x-user"),
        });
        async move {
            // An authenticator may wait (a database, a remote service...).
            tokio::time::sleep(Duration::from_millis(5)).await;
            match seen["user"].as_str() {
                None => Err(AuthRejection::unauthorized("who are you?")),
                Some("mallory") => Err(AuthRejection::forbidden("not you")),
                Some(u) => Ok(Authenticated::identity(format!("{u}|{seen}"))),
            }
        }
    });
    let s = TestServer::start(base().authenticator(authenticator)).await;

    let (status, head, body) = handshake(s.addr, "/ws", "X-User: mallory\r\n").await;
    assert_eq!(status, 403, "{head}");
    assert_eq!(body, "not you\n");
    let (status, head, _) = handshake(s.addr, "/ws", "").await;
    assert_eq!(status, 401);
    assert!(head.contains("www-authenticate: bearer"), "{head}");

    let (mut c, _) = WsClient::connect_with(
        &format!("{}?room=r%201", s.url("/ws")),
        &[("x-user", "ada")],
    )
    .await;
    let id = c.call("me", json!([]), json!(1)).await["result"]["identity"]
        .as_str()
        .unwrap()
        .to_owned();
    let (user, seen) = id.split_once('|').unwrap();
    assert_eq!(user, "ada");
    let seen: Value = serde_json::from_str(seen).unwrap();
    assert_eq!(
        seen,
        json!({"method": "GET", "path": "/ws", "room": "r 1", "peer_is_loopback": true, "user": "ada"})
    );
    s.stop().await;
}

#[tokio::test]
async fn an_authenticator_s_expiry_closes_with_4001() {
    let until = SystemTime::now() + Duration::from_millis(1500);
    let authenticator = auth::from_fn(move |req: &auth::AuthRequest| {
        let user = req.header("x-user").map(str::to_owned);
        async move {
            match user.as_deref() {
                Some("brief") => Ok(Authenticated::identity("brief").with_expiry(until)),
                Some(u) => Ok(Authenticated::identity(u)),
                None => Err(AuthRejection::unauthorized("who are you?")),
            }
        }
    });
    let s = TestServer::start(base().authenticator(authenticator)).await;
    let (mut brief, _) = WsClient::connect_with(&s.url("/ws"), &[("x-user", "brief")]).await;
    let (mut other, _) = WsClient::connect_with(&s.url("/ws"), &[("x-user", "ada")]).await;
    assert_eq!(
        brief.request("me", json!([])).await["result"]["identity"],
        "brief"
    );
    assert_eq!(
        brief.expect_close_frame().await,
        (4001, "credentials expired".to_owned())
    );
    assert!(SystemTime::now() >= until, "closed before its expiry");
    s.wait_connections(1).await;
    assert_eq!(
        other.request("me", json!([])).await["result"]["identity"],
        "ada"
    );
    s.stop().await;
}

#[tokio::test]
async fn origin_allow_list() {
    let s = TestServer::start(
        base().allowed_origins(["https://app.example.com", "http://localhost:3000"]),
    )
    .await;
    for (origin, want) in [
        ("https://app.example.com", 101),
        ("https://app.example.com:443", 101),
        ("http://localhost:3000", 101),
        ("http://localhost:3001", 403),
        ("http://app.example.com", 403),
        ("https://evil.example", 403),
        ("null", 403),
    ] {
        let (status, head, body) = handshake(s.addr, "/ws", &format!("Origin: {origin}\r\n")).await;
        assert_eq!(status, want, "{origin}: {head}");
        if want == 403 {
            assert_eq!(body, "origin not allowed\n");
        }
    }
    // Non-browser clients send no Origin: allowed.
    assert_eq!(handshake(s.addr, "/ws", "").await.0, 101);
    s.stop().await;

    // The default is `*`.
    let open = TestServer::start(base()).await;
    let (status, _, _) = handshake(open.addr, "/ws", "Origin: https://anywhere.example\r\n").await;
    assert_eq!(status, 101);
    open.stop().await;

    // A list that does not parse fails the build.
    let err = base().allowed_origins(["example.com"]).build().unwrap_err();
    assert!(err.to_string().contains("example.com"), "{err}");
}

fn req(id: Value) -> Value {
    json!({"jsonrpc": "2.0", "method": "echo", "params": [1], "id": id})
}

#[tokio::test]
async fn rate_limit_answers_each_request_and_closes_abusers() {
    // Three requests back to back, then one a minute; close after 5
    // limited requests in a row.
    let s = TestServer::start(
        base()
            .rate_limit(1, Duration::from_secs(60), 3)
            .rate_limit_close_after(5),
    )
    .await;
    let mut c = WsClient::connect(&s.url("/ws")).await;
    for i in 0..3 {
        assert_eq!(
            c.call("echo", json!([i]), json!(i)).await["result"],
            json!([i])
        );
    }
    // Limited: its own id, a server-error code, a message that says so,
    // and when to retry.
    let r = c.call("echo", json!([3]), json!("x4")).await;
    assert_eq!(r["id"], "x4", "{r}");
    assert_eq!(r["error"]["code"], -32029, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Rate limit"),
        "{r}"
    );
    let retry = r["error"]["data"]["retry_after_ms"].as_u64().unwrap();
    assert!(retry > 59_000 && retry <= 60_000, "{r}");

    // Each batch element counts, and is answered with its own id.
    c.send_json(&json!([req(json!(10)), req(json!("b"))])).await;
    let batch = c.recv_json().await;
    let ids: Vec<&Value> = batch.as_array().unwrap().iter().map(|r| &r["id"]).collect();
    assert_eq!(ids, [&json!(10), &json!("b")]);
    assert!(batch
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["error"]["code"] == -32029));

    // A limited notification gets no answer (strike 4)...
    c.send_json(&json!({"jsonrpc": "2.0", "method": "echo", "params": [1]}))
        .await;
    // ...and the fifth limited request in a row is answered, then the
    // connection is closed with 1008.
    let r = c.call("echo", json!([5]), json!(5)).await;
    assert_eq!(r["id"], 5);
    assert_eq!(r["error"]["code"], -32029);
    assert_eq!(c.expect_close().await, 1008);
    s.wait_connections(0).await;
    assert_eq!(s.endpoint.security_stats().rate_limiters, 0);
    assert_eq!(
        metric(s.addr, "nbio_ws_rate_limited_requests_total").await,
        5
    );
    assert_eq!(
        metric(s.addr, "nbio_ws_rate_limit_disconnects_total").await,
        1
    );

    // A batch larger than the bucket: the first three run.
    let mut d = WsClient::connect(&s.url("/ws")).await;
    d.send_json(&json!((0..5).map(|i| req(json!(i))).collect::<Vec<_>>()))
        .await;
    let batch = d.recv_json().await;
    let codes: Vec<Option<i64>> = batch
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["error"]["code"].as_i64())
        .collect();
    assert_eq!(codes, [None, None, None, Some(-32029), Some(-32029)]);
    // Another connection has a bucket of its own.
    let mut e = WsClient::connect(&s.url("/ws")).await;
    assert!(e
        .call("echo", json!([1]), json!(1))
        .await
        .get("result")
        .is_some());
    s.stop().await;
}

#[tokio::test]
async fn connection_caps_refuse_before_the_upgrade() {
    let s = TestServer::start(base().max_connections(2)).await;
    let a = WsClient::connect(&s.url("/ws")).await;
    let b = WsClient::connect(&s.url("/ws")).await;
    let (status, head, body) = handshake(s.addr, "/ws", "").await;
    assert_eq!(status, 503, "{head}");
    assert!(head.contains("retry-after: 5"), "{head}");
    assert_eq!(body, "server is at its connection limit; try again later\n");
    // Plain HTTP is not counted.
    assert_eq!(
        nbio_ws_testkit::http_request(s.addr, "GET", "/health")
            .await
            .0,
        200
    );
    drop(a);
    s.wait_connections(1).await;
    let _c = WsClient::connect(&s.url("/ws")).await;
    drop(b);
    s.stop().await;

    let s = TestServer::start(base().max_connections_per_ip(1)).await;
    let a = WsClient::connect(&s.url("/ws")).await;
    let (status, head, body) = handshake(s.addr, "/ws", "").await;
    assert_eq!(status, 429, "{head}");
    assert_eq!(body, "too many connections from your address\n");
    // A forwarded address from an untrusted peer changes nothing.
    let (status, _, _) = handshake(s.addr, "/ws", "X-Forwarded-For: 198.51.100.7\r\n").await;
    assert_eq!(status, 429);
    drop(a);
    s.wait_connections(0).await;
    assert_eq!(s.endpoint.security_stats().tracked_addresses, 0);
    let _b = WsClient::connect(&s.url("/ws")).await;
    s.stop().await;
}

#[tokio::test]
async fn forwarded_addresses_from_trusted_proxies_only() {
    // 203.0.113.0/24 and 198.51.100.0/24 are documentation addresses: they
    // only ever appear in headers here.
    let s = TestServer::start(
        base()
            .trusted_proxies(["127.0.0.1"])
            .max_connections_per_ip(1),
    )
    .await;
    let (mut a, _) =
        WsClient::connect_with(&s.url("/ws"), &[("x-forwarded-for", "203.0.113.7")]).await;
    assert_eq!(
        a.call("me", json!([]), json!(1)).await["result"]["remote"],
        "203.0.113.7:0"
    );
    // Per-address limits apply to the forwarded address.
    let (status, _, _) = handshake(s.addr, "/ws", "X-Forwarded-For: 203.0.113.7\r\n").await;
    assert_eq!(status, 429);
    // A client cannot choose its address by prepending one: the right-most
    // entry (added by the trusted proxy) counts.
    let (status, _, _) = handshake(
        s.addr,
        "/ws",
        "X-Forwarded-For: 198.51.100.1, 203.0.113.7\r\n",
    )
    .await;
    assert_eq!(status, 429);
    let (mut b, _) =
        WsClient::connect_with(&s.url("/ws"), &[("x-forwarded-for", "198.51.100.1")]).await;
    assert_eq!(
        b.call("me", json!([]), json!(1)).await["result"]["remote"],
        "198.51.100.1:0"
    );
    s.stop().await;

    // Not a trusted proxy: the header is ignored.
    let s = TestServer::start(base().trusted_proxies(["10.0.0.0/8"])).await;
    let (mut c, _) =
        WsClient::connect_with(&s.url("/ws"), &[("x-forwarded-for", "203.0.113.7")]).await;
    let remote = c.call("me", json!([]), json!(1)).await["result"]["remote"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(remote.starts_with("127.0.0.1:"), "{remote}");
    s.stop().await;

    let err = base().trusted_proxies(["10.0.0.0/99"]).build().unwrap_err();
    assert!(err.to_string().contains("10.0.0.0/99"), "{err}");
}

#[tokio::test]
async fn handshake_limits() {
    let s = TestServer::start(
        base()
            .handshake_timeout(Duration::from_millis(300))
            .max_header_size(8192)
            .max_pending_handshakes(2),
    )
    .await;

    // Headers over the limit: 431.
    let big = format!("X-Big: {}\r\n", "a".repeat(10_000));
    let (status, head, _) = handshake(s.addr, "/ws", &big).await;
    assert_eq!(status, 431, "{head}");

    // A client that never finishes its headers is disconnected after the
    // handshake timeout.
    let mut slow = TcpStream::connect(s.addr).await.unwrap();
    slow.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, slow.read_to_end(&mut rest))
        .await
        .expect("closed in time");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    drop(slow);
    s.wait_connections(0).await;
    for _ in 0..200 {
        if s.endpoint.security_stats().pending_handshakes == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Two connections that say nothing take both handshake slots; a third
    // is refused with 503 at once.
    let idle1 = TcpStream::connect(s.addr).await.unwrap();
    let idle2 = TcpStream::connect(s.addr).await.unwrap();
    for _ in 0..200 {
        if s.endpoint.security_stats().pending_handshakes == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut third = TcpStream::connect(s.addr).await.unwrap();
    let (status, head, body) = read_response(&mut third).await;
    assert_eq!(status, 503, "{head}");
    assert_eq!(body, "too many handshakes in progress\n");
    // Once they time out, the slots are free again; upgraded connections
    // do not hold one.
    drop((idle1, idle2));
    for _ in 0..200 {
        if s.endpoint.security_stats().pending_handshakes == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _a = WsClient::connect(&s.url("/ws")).await;
    let _b = WsClient::connect(&s.url("/ws")).await;
    let mut c = WsClient::connect(&s.url("/ws")).await;
    assert!(c
        .call("echo", json!([1]), json!(1))
        .await
        .get("result")
        .is_some());
    s.stop().await;

    let err = base().max_header_size(4096).build().unwrap_err();
    assert!(err.to_string().contains("8192"), "{err}");
}

/// Connects and disconnects `n` clients, `concurrency` at a time, through
/// every security layer, then checks that nothing per client is left.
async fn churn(n: usize, concurrency: usize) {
    let s = TestServer::start(
        base()
            .bearer_tokens(["tok"])
            .allowed_origins(["http://localhost:3000"])
            .rate_limit(100, Duration::from_secs(60), 10)
            .max_connections(10_000)
            .max_connections_per_ip(concurrency + 1),
    )
    .await;
    let url = format!("{}?token=tok", s.url("/ws"));
    let started = std::time::Instant::now();
    let per_task = n / concurrency;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_task {
                let (mut ws, _) = tokio_tungstenite::connect_async(&url)
                    .await
                    .expect("connect");
                if i % 10 == 0 {
                    // Some of them use their rate limiter.
                    ws.send(Message::text(req(json!(i)).to_string()))
                        .await
                        .unwrap();
                    let _ = ws.next().await;
                }
                if i % 2 == 0 {
                    let _ = ws.close(None).await;
                    while let Some(Ok(_)) = ws.next().await {}
                }
                // The others just vanish (TCP close without a close frame).
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(300), t)
            .await
            .expect("churn in time")
            .unwrap();
    }
    s.wait_connections(0).await;
    let stats = s.endpoint.security_stats();
    assert_eq!(stats.connections, 0, "{stats:?}");
    assert_eq!(stats.tracked_addresses, 0, "{stats:?}");
    assert_eq!(stats.rate_limiters, 0, "{stats:?}");
    assert!(s.endpoint.hub().is_empty());
    let total = metric(s.addr, "nbio_ws_connections_total").await;
    assert_eq!(total, (per_task * concurrency) as u64);
    eprintln!(
        "{total} connect/disconnect cycles in {:?}",
        started.elapsed()
    );
    s.stop().await;
}

/// 10k cycles: about 5 s in a debug build on 2 cores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_10k_leaves_no_state_behind() {
    churn(10_000, 16).await;
}
