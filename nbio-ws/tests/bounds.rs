//! What one client can cost, over real sockets: batch size, the
//! per-connection concurrency limit (and what still works at it), the
//! request timeout, handlers cancelled with their connection, bounded
//! replies and error echoes, metric cardinality, the admin listener, the
//! outbound queue's byte cap, the connect hook running beside the
//! connection, extensions used inside `with_extension`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nbio_ws::{Client, Config, Params, RpcError, Server, ServerBuilder, State};
use nbio_ws_testkit::{http_request, RawClient, TestServer, WsClient, TIMEOUT};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

/// Shared by the test's handlers.
struct Probe {
    /// Calls of `count` and `slow` that started.
    started: AtomicUsize,
    /// Calls of `slow` that ran past their wait.
    finished: AtomicUsize,
    /// `slow` calls running now, and the most seen at once.
    running: AtomicUsize,
    most_running: AtomicUsize,
    /// Set when a `slow` call's future is dropped before it finished.
    cancelled: AtomicBool,
    /// `slow` calls wait for a permit here; the test hands them out.
    gate: Semaphore,
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            started: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            most_running: AtomicUsize::new(0),
            cancelled: AtomicBool::new(false),
            gate: Semaphore::new(0),
        }
    }
}

/// Sets `Probe::cancelled` if dropped before `done`.
struct DropGuard(Arc<Probe>, bool);

impl Drop for DropGuard {
    fn drop(&mut self) {
        if !self.1 {
            self.0.cancelled.store(true, Ordering::SeqCst);
        }
    }
}

fn builder() -> (ServerBuilder, Arc<Probe>) {
    let probe = Arc::new(Probe::default());
    let b = Server::builder()
        .registered_methods(false)
        .state(Arc::clone(&probe))
        .method("count", |State(p): State<Arc<Probe>>| async move {
            p.started.fetch_add(1, Ordering::SeqCst);
            Ok::<_, RpcError>(1)
        })
        .method("echo", |Params(v): Params<Value>| async move {
            Ok::<_, RpcError>(v)
        })
        .method("typed", |Params((n,)): Params<(u32,)>| async move {
            Ok::<_, RpcError>(n)
        })
        .method("big", |Params((n,)): Params<(usize,)>| async move {
            Ok::<_, RpcError>("x".repeat(n))
        })
        .method("slow", |State(p): State<Arc<Probe>>| async move {
            p.started.fetch_add(1, Ordering::SeqCst);
            let now = p.running.fetch_add(1, Ordering::SeqCst) + 1;
            p.most_running.fetch_max(now, Ordering::SeqCst);
            let mut guard = DropGuard(Arc::clone(&p), false);
            let permit = p.gate.acquire().await;
            permit.expect("gate open").forget();
            guard.1 = true;
            p.running.fetch_sub(1, Ordering::SeqCst);
            p.finished.fetch_add(1, Ordering::SeqCst);
            Ok::<_, RpcError>("done")
        });
    (b, probe)
}

fn call(method: &str, params: Value, id: u64) -> Value {
    json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id})
}

/// Waits (bounded) until `cond` holds.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits (bounded) until `cond` yields true.
async fn eventually_async<F: std::future::Future<Output = bool>>(what: &str, cond: impl Fn() -> F) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until `n` calls of `count` or `slow` have started.
async fn started(probe: &Probe, n: usize) {
    eventually("the calls started", || {
        probe.started.load(Ordering::SeqCst) == n
    })
    .await;
}

/// Waits until a `slow` call was dropped before it finished.
async fn cancelled(probe: &Probe) {
    eventually("the handler was dropped", || {
        probe.cancelled.load(Ordering::SeqCst)
    })
    .await;
}

/// A server, and a client whose `slow` call (id 1) is running.
async fn slow_running(b: ServerBuilder, probe: &Probe) -> (TestServer, WsClient) {
    let s = TestServer::start(b).await;
    let mut c = WsClient::connect(&s.url("/ws")).await;
    c.send_json(&call("slow", json!([]), 1)).await;
    started(probe, 1).await;
    (s, c)
}

/// The same with a raw client.
async fn slow_running_raw(b: ServerBuilder, probe: &Probe) -> (TestServer, RawClient) {
    let s = TestServer::start(b).await;
    let mut c = RawClient::connect(s.addr, "/ws").await;
    c.send_frame(true, 1, call("slow", json!([]), 1).to_string().as_bytes())
        .await;
    started(probe, 1).await;
    (s, c)
}

#[tokio::test]
async fn a_batch_over_the_limit_gets_one_error_and_nothing_runs() {
    let (b, probe) = builder();
    let s = TestServer::start(b).await;
    let mut c = WsClient::connect(&s.url("/ws")).await;

    let batch: Vec<Value> = (0..101).map(|i| call("count", json!([]), i)).collect();
    c.send_json(&Value::Array(batch)).await;
    let r = c.recv_json().await;
    assert!(r.is_object(), "one error object, not an array: {r}");
    assert_eq!(r["error"]["code"], -32600, "{r}");
    assert_eq!(
        r["error"]["message"], "batch too large: at most 100 requests",
        "{r}"
    );
    assert_eq!(r["error"]["data"]["max_batch"], 100, "{r}");
    assert_eq!(r["id"], Value::Null);
    assert_eq!(probe.started.load(Ordering::SeqCst), 0, "nothing ran");

    // Counted while scanning: refused even though the rest is not JSON.
    let ones = format!("[{}1,", "1,".repeat(200));
    c.send_text(&ones).await;
    let r = c.recv_json().await;
    assert_eq!(r["error"]["code"], -32600, "{r}");

    // At the limit it runs.
    let batch: Vec<Value> = (0..100).map(|i| call("count", json!([]), i)).collect();
    c.send_json(&Value::Array(batch)).await;
    let r = c.recv_json().await;
    assert_eq!(r.as_array().map(Vec::len), Some(100), "{r}");
    assert_eq!(probe.started.load(Ordering::SeqCst), 100);
}

#[tokio::test]
async fn max_batch_is_configurable() {
    let (b, _) = builder();
    let s = TestServer::start(b.max_batch(2)).await;
    let mut c = WsClient::connect(&s.url("/ws")).await;
    let batch: Vec<Value> = (0..3).map(|i| call("count", json!([]), i)).collect();
    c.send_json(&Value::Array(batch)).await;
    let r = c.recv_json().await;
    assert_eq!(
        r["error"]["message"], "batch too large: at most 2 requests",
        "{r}"
    );
}

#[tokio::test]
async fn error_objects_echo_bounded_client_data() {
    let (b, _) = builder();
    let s = TestServer::start(b).await;
    let mut c = WsClient::connect(&s.url("/ws")).await;

    // An unknown method's name is cut to 128 bytes (at a char boundary).
    let name = "é".repeat(50_000);
    let r = c.call(&name, json!([]), json!(1)).await;
    assert_eq!(r["error"]["code"], -32601);
    let echoed = r["error"]["data"]["method"].as_str().unwrap();
    assert!(
        echoed.len() <= 128 && echoed.len() >= 126,
        "{}",
        echoed.len()
    );
    assert!(name.starts_with(echoed));
    assert_eq!(r["error"]["data"]["truncated"], true);
    // A short one is echoed whole, without the flag.
    let r = c.call("nope", json!([]), json!(2)).await;
    assert_eq!(r["error"]["data"], json!({"method": "nope"}));

    // serde quotes the value it could not use: the detail is cut.
    let r = c
        .call("typed", json!(["y".repeat(100_000)]), json!(3))
        .await;
    assert_eq!(r["error"]["code"], -32602);
    let detail = r["error"]["data"]["detail"].as_str().unwrap();
    assert!(detail.len() <= 256, "{}", detail.len());
    assert!(detail.ends_with('…'), "{detail}");
    assert!(r.to_string().len() < 1024, "{}", r.to_string().len());

    // Unknown fields and variants are quoted by serde too; unparsable JSON.
    let r = c
        .call("typed", json!({"z".repeat(50_000): 1}), json!(4))
        .await;
    assert!(r.to_string().len() < 1024, "{}", r.to_string().len());
    c.send_text(&format!(
        "{{\"jsonrpc\":\"2.0\",\"method\":\"{}",
        "q".repeat(100_000)
    ))
    .await;
    let r = c.recv_json().await;
    assert_eq!(r["error"]["code"], -32700);
    assert!(r.to_string().len() < 1024, "{}", r.to_string().len());
}

#[tokio::test]
async fn replies_are_bounded_in_bytes() {
    let (b, _) = builder();
    let s = TestServer::start(b.max_response_size(1000)).await;
    let mut c = WsClient::connect(&s.url("/ws")).await;

    let r = c.call("big", json!([900]), json!(1)).await;
    assert_eq!(r["result"].as_str().map(str::len), Some(900));
    let r = c.call("big", json!([2000]), json!(2)).await;
    assert_eq!(r["error"]["code"], -32603, "{r}");
    assert_eq!(r["error"]["message"], "Response too large");
    assert_eq!(r["error"]["data"]["max_bytes"], 1000);
    assert_eq!(r["id"], 2);

    // A batch's results share the bound: two of 400 fit, the third not.
    let batch: Vec<Value> = (1..=3).map(|i| call("big", json!([400]), i)).collect();
    c.send_json(&Value::Array(batch)).await;
    let text = c.recv_text().await;
    let r: Value = serde_json::from_str(&text).unwrap();
    let items = r.as_array().unwrap();
    assert_eq!(items.len(), 3);
    let ok = items.iter().filter(|i| i["result"].is_string()).count();
    let too_large = items
        .iter()
        .filter(|i| i["error"]["message"] == "Response too large")
        .count();
    assert_eq!((ok, too_large), (2, 1), "{r}");
    assert!(text.len() < 1000 + 200, "{}", text.len());
}

#[tokio::test]
async fn batch_elements_count_against_the_concurrency_limit() {
    let (b, probe) = builder();
    let s = TestServer::start(b.max_concurrent_requests(2)).await;
    let mut c = WsClient::connect(&s.url("/ws")).await;
    let batch: Vec<Value> = (0..5).map(|i| call("slow", json!([]), i)).collect();
    c.send_json(&Value::Array(batch)).await;
    started(&probe, 2).await;
    // The others wait for a slot: let them through one by one.
    for done in 1..=5 {
        probe.gate.add_permits(1);
        eventually("one more finished", || {
            probe.finished.load(Ordering::SeqCst) == done
        })
        .await;
    }
    let r = c.recv_json().await;
    assert_eq!(r.as_array().map(Vec::len), Some(5), "{r}");
    assert!(r.as_array().unwrap().iter().all(|i| i["result"] == "done"));
    assert_eq!(probe.most_running.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn at_the_concurrency_limit_the_connection_stops_reading_but_stays_alive() {
    let (b, probe) = builder();
    let (s, mut c) = slow_running_raw(b.max_concurrent_requests(1), &probe).await;
    // Not run while the slot is taken.
    c.send_frame(true, 1, call("count", json!([]), 2).to_string().as_bytes())
        .await;
    // Pings are answered meanwhile.
    c.send_frame(true, 9, b"are you there").await;
    let pong = loop {
        let f = c.read_frame().await.expect("a pong");
        if f.opcode != 9 {
            break f;
        }
    };
    assert_eq!(
        (pong.opcode, &pong.payload[..]),
        (10, &b"are you there"[..])
    );
    assert_eq!(probe.started.load(Ordering::SeqCst), 1, "not read yet");
    // The outbound queue is written meanwhile.
    s.hub.broadcast("news", &json!({"n": 1})).unwrap();
    let note: Value = serde_json::from_str(&c.read_text().await).unwrap();
    assert_eq!(note["method"], "news");

    // The slot frees: the held request runs, in order.
    probe.gate.add_permits(1);
    let r: Value = serde_json::from_str(&c.read_text().await).unwrap();
    assert_eq!(
        (r["id"].clone(), r["result"].clone()),
        (json!(1), json!("done"))
    );
    let r: Value = serde_json::from_str(&c.read_text().await).unwrap();
    assert_eq!((r["id"].clone(), r["result"].clone()), (json!(2), json!(1)));
}

#[tokio::test]
async fn at_the_concurrency_limit_close_is_honoured_and_handlers_are_cancelled() {
    let (b, probe) = builder();
    let (s, mut c) = slow_running_raw(b.max_concurrent_requests(1), &probe).await;
    c.send_frame(true, 1, call("count", json!([]), 2).to_string().as_bytes())
        .await;
    c.send_frame(true, 8, &1000u16.to_be_bytes()).await;
    assert_eq!(c.expect_close().await, Some(1000));
    eventually("the client left the hub", || s.hub.is_empty()).await;
    // The handler still waiting was cancelled with its connection; the
    // held request never ran.
    cancelled(&probe).await;
    probe.gate.add_permits(10);
    tokio::task::yield_now().await;
    assert_eq!(probe.finished.load(Ordering::SeqCst), 0);
    assert_eq!(probe.started.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn at_the_concurrency_limit_the_pong_timeout_still_applies() {
    let (b, probe) = builder();
    let b = b
        .max_concurrent_requests(1)
        .ping_interval(Duration::from_millis(100))
        .pong_timeout(Duration::from_millis(500));
    let (_s, mut c) = slow_running_raw(b, &probe).await;
    // A request that cannot start yet.
    c.send_frame(true, 1, call("slow", json!([]), 2).to_string().as_bytes())
        .await;
    // This client never answers the server's pings.
    assert_eq!(c.expect_close().await, Some(1001));
}

#[tokio::test]
async fn handlers_are_cancelled_when_their_connection_ends() {
    let (b, probe) = builder();
    let (_s, c) = slow_running(b, &probe).await;
    drop(c);
    cancelled(&probe).await;
    probe.gate.add_permits(10);
    tokio::task::yield_now().await;
    assert_eq!(probe.finished.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_request_timeout_answers_and_cancels() {
    let (b, probe) = builder();
    let s = TestServer::start(b.request_timeout(Duration::from_millis(200))).await;
    let mut c = WsClient::connect(&s.url("/ws")).await;
    let r = c.call("slow", json!([]), json!(7)).await;
    assert_eq!(r["error"]["code"], -32008, "{r}");
    assert_eq!(r["error"]["code"], RpcError::REQUEST_TIMEOUT);
    assert_eq!(r["error"]["message"], "Request timed out");
    assert_eq!(r["error"]["data"]["timeout_ms"], 200);
    assert_eq!(r["id"], 7);
    // Dropped before the answer was sent.
    assert!(probe.cancelled.load(Ordering::SeqCst));
    // Fast handlers are not affected, and the connection goes on.
    let r = c.call("count", json!([]), json!(8)).await;
    assert_eq!(r["result"], 1);
    let (_, _, metrics) = s.http_get("/metrics").await;
    assert!(
        metrics.contains("nbio_ws_request_timeouts_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains(r#"nbio_ws_errors_total{kind="request_timeout"} 1"#));
}

#[tokio::test]
async fn shutdown_waits_for_handlers_then_closes() {
    let (b, probe) = builder();
    let (mut s, mut c) = slow_running(b.shutdown_timeout(Duration::from_secs(10)), &probe).await;
    let addr = s.addr;
    let stopping = tokio::spawn(async move { s.shutdown().await });
    // Shutdown has begun (the listener is gone) while the handler still
    // waits: let it finish.
    eventually_async("the listener closed", || async move {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert_eq!(probe.finished.load(Ordering::SeqCst), 0);
    probe.gate.add_permits(1);
    let r = c.recv_json().await;
    assert_eq!(r["result"], "done", "the reply is written before the close");
    assert_eq!(c.expect_close().await, 1001);
    stopping.await.unwrap().unwrap();
    assert!(!probe.cancelled.load(Ordering::SeqCst));
}

#[tokio::test]
async fn shutdown_cancels_handlers_still_running_at_its_timeout() {
    let (b, probe) = builder();
    let (mut s, mut c) = slow_running(b.shutdown_timeout(Duration::from_millis(300)), &probe).await;
    let stopping = tokio::spawn(async move { s.shutdown().await });
    assert_eq!(c.expect_close().await, 1001);
    stopping.await.unwrap().unwrap();
    cancelled(&probe).await;
    assert_eq!(probe.finished.load(Ordering::SeqCst), 0);
}

/// The series of a `/metrics` text: every sample line without its value.
fn series(metrics: &str) -> Vec<String> {
    let mut v: Vec<String> = metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').map(|(name, _)| name.to_owned()))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn client_input_does_not_grow_metrics() {
    let (b, _) = builder();
    let s = TestServer::start(b).await;
    // Every kind of series there is, once.
    let mut c = WsClient::connect(&s.url("/ws")).await;
    c.call("nope", json!([]), json!(1)).await;
    c.call("count", json!([]), json!(2)).await;
    c.close().await;
    let mut c = RawClient::connect(s.addr, "/ws").await;
    c.send_frame(true, 8, &4000u16.to_be_bytes()).await;
    c.expect_close().await;
    let mut c = RawClient::connect(s.addr, "/ws").await;
    c.send_frame(true, 8, &3000u16.to_be_bytes()).await;
    c.expect_close().await;
    eventually("the clients left", || s.hub.is_empty()).await;
    let (_, _, before) = s.http_get("/metrics").await;

    // 10,000 distinct unknown methods, in batches of 100.
    let mut c = WsClient::connect(&s.url("/ws")).await;
    for b in 0..100 {
        let batch: Vec<Value> = (0..100)
            .map(|i| call(&format!("m{}", b * 100 + i), json!([]), i))
            .collect();
        c.send_json(&Value::Array(batch)).await;
        let r = c.recv_json().await;
        assert_eq!(r.as_array().map(Vec::len), Some(100));
    }
    c.close().await;
    // Distinct close codes from clients: every registered one and a
    // spread of the 3000-4999 ranges.
    let codes = (1000u16..=1003)
        .chain(1007..=1014)
        .chain((3000..5000).step_by(7));
    for code in codes {
        let mut c = RawClient::connect(s.addr, "/ws").await;
        c.send_frame(true, 8, &code.to_be_bytes()).await;
        assert_eq!(c.expect_close().await, Some(code));
    }
    eventually("the clients left", || s.hub.is_empty()).await;
    let (_, _, after) = s.http_get("/metrics").await;
    let (b, a) = (series(&before), series(&after));
    let new: Vec<&String> = a.iter().filter(|x| !b.contains(x)).collect();
    // Only the registered close codes may add a series each.
    assert!(
        new.iter()
            .all(|s| s.starts_with("nbio_ws_close_codes_total{code=\"10")),
        "{new:?}"
    );
    assert!(a.len() <= b.len() + 12, "{} -> {}", b.len(), a.len());
    assert!(!after.contains("m9999"));
    assert!(after.contains(r#"nbio_ws_close_codes_total{code="3xxx"}"#));
    assert!(after.contains(r#"nbio_ws_close_codes_total{code="4xxx"}"#));
    assert!(
        after.len() < before.len() + 2048,
        "{} -> {}",
        before.len(),
        after.len()
    );
}

#[tokio::test]
async fn the_admin_address_serves_health_and_metrics_instead_of_the_public_port() {
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (b, _) = builder();
    let s = TestServer::start(b.admin_addr(admin)).await;
    // The public port: WebSocket yes, health and metrics no.
    let mut c = WsClient::connect(&s.url("/ws")).await;
    assert_eq!(c.call("count", json!([]), json!(1)).await["result"], 1);
    assert_eq!(s.http_get("/health").await.0, 404);
    assert_eq!(s.http_get("/metrics").await.0, 404);
    // The admin listener (it is bound as serving starts).
    let mut health = None;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(admin).await.is_ok() {
            health = Some(http_request(admin, "GET", "/health").await);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, _, body) = health.expect("the admin listener is up");
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "healthy");
    assert_eq!(v["connected_clients"], 1);
    let (status, _, body) = http_request(admin, "GET", "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains(r#"nbio_ws_method_calls_total{method="count"} 1"#));
    assert_eq!(http_request(admin, "GET", "/ws").await.0, 404);
    assert_eq!(http_request(admin, "POST", "/health").await.0, 405);
}

// --- The outbound queue's byte cap.

/// A server whose `flood` method sends its caller `[count, size]`
/// messages of `size` bytes at once (inline in the connection's task, so
/// none is written meanwhile) and records how many were queued.
fn flooding() -> (ServerBuilder, Arc<AtomicUsize>) {
    let queued = Arc::new(AtomicUsize::new(0));
    let b = Server::builder()
        .registered_methods(false)
        .state(Arc::clone(&queued))
        .method(
            "flood",
            |c: Client,
             State(queued): State<Arc<AtomicUsize>>,
             Params((count, size)): Params<(usize, usize)>| async move {
                let text = bytes::Bytes::from("x".repeat(size));
                let n = (0..count)
                    .take_while(|_| c.send_text(text.clone()).is_ok())
                    .count();
                queued.store(n, Ordering::SeqCst);
                Ok::<_, RpcError>(n)
            },
        )
        .method("big", |Params((n,)): Params<(usize,)>| async move {
            Ok::<_, RpcError>("x".repeat(n))
        });
    (b, queued)
}

#[tokio::test]
async fn one_mib_messages_hit_the_byte_cap_long_before_the_message_cap() {
    let (b, queued) = flooding();
    let s = TestServer::start(b).await;
    let defaults = Config::default();
    assert_eq!(defaults.send_buffer, 256);
    assert_eq!(defaults.send_buffer_bytes, 8 << 20);

    // 1 MiB messages: the ninth would take the queue past 8 MiB.
    let mut c = WsClient::connect(&s.url("/ws")).await;
    c.send_json(&call("flood", json!([256, 1 << 20]), 1)).await;
    assert_eq!(c.expect_close().await, 1008);
    assert_eq!(queued.load(Ordering::SeqCst), 8);
    assert_eq!(s.hub.metrics().slow_consumer_disconnects(), 1);

    // 1 KiB messages: the message cap comes first.
    let mut c = WsClient::connect(&s.url("/ws")).await;
    c.send_json(&call("flood", json!([1000, 1024]), 1)).await;
    assert_eq!(c.expect_close().await, 1008);
    assert_eq!(queued.load(Ordering::SeqCst), 256);
    assert_eq!(s.hub.metrics().slow_consumer_disconnects(), 2);
}

#[tokio::test]
async fn the_byte_cap_is_configurable_and_one_larger_message_still_gets_through() {
    let (b, queued) = flooding();
    let s = TestServer::start(b.send_buffer_bytes(64 * 1024)).await;
    let mut c = WsClient::connect(&s.url("/ws")).await;
    // Alone in the queue, a reply larger than the cap is written.
    let r = c.ok("big", json!([100_000])).await;
    assert_eq!(r.as_str().map(str::len), Some(100_000));
    // Sixty-four 1 KiB messages fit, the sixty-fifth does not.
    c.send_json(&call("flood", json!([256, 1024]), 2)).await;
    assert_eq!(c.expect_close().await, 1008);
    assert_eq!(queued.load(Ordering::SeqCst), 64);
}

// --- The connect hook runs beside the connection.

/// What the hooks of a test did, in order.
type Log = Arc<std::sync::Mutex<Vec<&'static str>>>;

/// A server whose connect hook logs, greets, waits for a permit of `gate`
/// and marks the client ready; `ready` answers whether it is.
fn gated_connect(gate: &Arc<Semaphore>, log: &Log) -> ServerBuilder {
    #[derive(Clone)]
    struct Ready;
    let (gate, log, log2) = (Arc::clone(gate), Arc::clone(log), Arc::clone(log));
    Server::builder()
        .registered_methods(false)
        .send_buffer(8)
        .on_connect(move |c: Client| {
            let (gate, log) = (Arc::clone(&gate), Arc::clone(&log));
            async move {
                log.lock().unwrap().push("connect");
                c.notify("welcome", &json!({})).unwrap();
                gate.acquire().await.unwrap().forget();
                c.insert_extension(Ready);
                log.lock().unwrap().push("connected");
            }
        })
        .on_disconnect(move |_| {
            let log = Arc::clone(&log2);
            async move { log.lock().unwrap().push("disconnected") }
        })
        .method("ready", |c: Client| async move {
            Ok::<_, RpcError>(c.extension::<Ready>().is_some())
        })
}

/// That server, and a client its connect hook has greeted and is waiting
/// for a permit of the gate.
async fn greeted() -> (TestServer, WsClient, Arc<Semaphore>, Log) {
    let (gate, log) = (Arc::new(Semaphore::new(0)), Log::default());
    let s = TestServer::start(gated_connect(&gate, &log)).await;
    let mut c = WsClient::connect(&s.url("/ws")).await;
    assert_eq!(c.recv_json().await["method"], "welcome");
    (s, c, gate, log)
}

#[tokio::test]
async fn what_is_sent_while_on_connect_waits_is_written_and_requests_wait_for_it() {
    let (s, mut c, gate, log) = greeted().await;
    // A request sent now runs only once the hook has returned.
    c.send_json(&call("ready", json!([]), 1)).await;
    // Four queues' worth of broadcasts while the hook waits: each is
    // written as it comes (the queue holds 8).
    for n in 0..32 {
        assert_eq!(s.hub.broadcast("n", &json!({"n": n})).unwrap(), 1);
        let v = c.recv_json().await;
        assert_eq!(v["params"]["n"], n, "{v}");
    }
    assert_eq!(*log.lock().unwrap(), ["connect"]);
    gate.add_permits(1);
    let r = c.recv_json().await;
    assert_eq!((&r["id"], &r["result"]), (&json!(1), &json!(true)), "{r}");
    assert_eq!(s.hub.metrics().slow_consumer_disconnects(), 0);
    assert_eq!(*log.lock().unwrap(), ["connect", "connected"]);
}

#[tokio::test]
async fn a_close_while_on_connect_waits_is_honoured_and_on_disconnect_comes_after_it() {
    let (s, mut c, gate, log) = greeted().await;
    s.hub.close_all(4403, "not you");
    assert_eq!(c.expect_close().await, 4403);
    eventually("the client left the hub", || s.hub.is_empty()).await;
    assert_eq!(*log.lock().unwrap(), ["connect"]);
    gate.add_permits(1);
    eventually("the disconnect hook ran", || log.lock().unwrap().len() == 3).await;
    assert_eq!(
        *log.lock().unwrap(),
        ["connect", "connected", "disconnected"]
    );
}

// --- Extensions inside `with_extension`.

#[tokio::test]
async fn with_extension_closures_use_other_extensions_and_the_same_one_is_an_error() {
    let s = TestServer::start(
        Server::builder()
            .registered_methods(false)
            .method("nest", |c: Client| async move {
                c.insert_extension(String::from("ada"));
                let r = c.with_extension(|n: &mut u32| {
                    *n += 1;
                    let name = c.extension::<String>().unwrap_or_default();
                    c.with_extension(|seen: &mut Vec<u32>| seen.push(*n));
                    format!("{name} {n}")
                });
                Ok::<_, RpcError>(r)
            })
            .method("same", |c: Client| async move {
                let r = c.with_extension(|n: &mut u32| c.extension::<u32>().unwrap_or(*n));
                Ok::<_, RpcError>(r)
            }),
    )
    .await;
    let mut c = WsClient::connect(&s.url("/ws")).await;
    assert_eq!(c.ok("nest", json!([])).await, "ada 1");
    let e = c.err("same", json!([])).await;
    assert_eq!(e["code"], -32603, "{e}");
    // The connection and the extension are still there.
    assert_eq!(c.ok("nest", json!([])).await, "ada 2");
}
