//! History: what a publication to a room with history costs beside a plain
//! `notify`, how long a recovery of 100 missed publications takes beside a
//! plain join, and how much memory stored publications take. One run, every
//! backend: memory (the embedded default), Redis and JetStream (a
//! `redis-server` / `nats-server -js` of the bench's own on a free loopback
//! port, started through the test kit). Real sockets: one in-process
//! instance, its members are tokio-tungstenite clients over loopback.
//!
//! Every publication's params are 100 bytes of JSON (`{"t":"…"}`).
//!
//! * **publish cost**: a room of 10 members; `hub.to(room).notify(..)` and
//!   `hub.to(room).publish(..).await` one at a time (each waits until the
//!   first member has it), in alternating blocks of 250, 1,000 of each:
//!   the call's own time (what a handler waits), the time until the first
//!   member has it, and CPU per operation (this process: the server and
//!   its 10 clients; and the broker process). Then 2,000 of each from 8
//!   tasks at once: operations per second until all 10 members have all.
//! * **recovery of 100 missed**: a client leaves the room, 100 publications
//!   go to it, it reconnects (not timed) and calls a join with its last
//!   position: the time from sending the join to having its reply (with
//!   the 100), 30 times; beside, in the same iterations, a join with
//!   nothing missed and a plain `join` of a room without history.
//! * **memory per 1,000 stored**: 100,000 publications to 100 rooms that
//!   keep 1,000 each, on an instance with no members: the heap this
//!   process holds afterwards (a counting allocator) and its RSS, per
//!   1,000; beside, 100,000 `notify`s to the same rooms. For Redis and
//!   JetStream (20,000 publications to 20 rooms): the server's
//!   `used_memory` (Redis `INFO memory`) or the stream's bytes (NATS
//!   `/jsz`), per 1,000.
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-benches cargo bench -p nbio-ws-benches --bench history
//! ```
//!
//! Bounded: about 100,000 + 2 × 20,000 stores and 3 × 8,000 room sends,
//! every wait at most 30 s; loopback only.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use nbio_ws::broker::PubSubConfig;
use nbio_ws::history::Position;
use nbio_ws::{Client, Hub, Params, RpcError, Server, ServerBuilder};
use nbio_ws_benches::proc::{cpu_seconds, machine_busy_seconds, self_cpu_seconds, vm_rss_kib};
use nbio_ws_benches::stats::{new_histogram, record, LatencySummary};
use nbio_ws_testkit::broker::{Nats, Redis};
use nbio_ws_testkit::{TestServer, WsClient};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// Counts the bytes this process holds on the heap.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; only a counter
// is updated beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's layout, passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as the caller guarantees for `realloc`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size, Ordering::Relaxed);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const ROOM: &str = "bench-room";
const MEMBERS: usize = 10;
const BLOCK: usize = 250;
const BLOCKS: usize = 4;
const TASKS: usize = 8;
const PER_TASK: usize = 250;
const RECOVERIES: usize = 30;
const MISSED: usize = 100;
const WAIT: Duration = Duration::from_secs(30);

/// A broker of the bench's own, or none.
enum Backend {
    Memory,
    Redis(Redis),
    JetStream(Nats),
}

impl Backend {
    fn name(&self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Redis(_) => "redis",
            Backend::JetStream(_) => "jetstream",
        }
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Backend::Memory => None,
            Backend::Redis(r) => r.pid(),
            Backend::JetStream(n) => n.pid(),
        }
    }

    fn cpu(&self) -> f64 {
        self.pid().and_then(cpu_seconds).unwrap_or(0.0)
    }

    /// An instance on this backend: `bench*` rooms keep 1,000 for 10 min;
    /// `join` joins with recovery, `plain` without.
    fn builder(&self) -> ServerBuilder {
        #[derive(Deserialize)]
        struct Join {
            room: String,
            since: Option<Position>,
        }
        let b = Server::builder()
            .registered_methods(false)
            .send_buffer(16 * 1024)
            .history("bench*", 1000, Duration::from_secs(600))
            .method("join", |c: Client, Params(p): Params<Join>| async move {
                c.join_recover(&p.room, Value::Null, p.since)
                    .await
                    .map_err(RpcError::from)
            })
            .method("plain", |c: Client, Params(p): Params<Join>| async move {
                c.join(&p.room).map_err(RpcError::from)
            });
        match self {
            Backend::Memory => b,
            Backend::Redis(r) => b.pubsub(PubSubConfig::redis(r.url()).channel("bench")),
            Backend::JetStream(n) => b.pubsub(PubSubConfig::nats(n.url()).channel("bench")),
        }
    }
}

/// 100 bytes of JSON.
fn params(i: usize) -> Value {
    let mut t = format!("{i:08}");
    while t.len() < 100 - r#"{"t":""}"#.len() {
        t.push('x');
    }
    let v = json!({ "t": t });
    debug_assert_eq!(v.to_string().len(), 100);
    v
}

/// The members of the room: each counts what it receives; the first also
/// reports when each message arrived.
struct Members {
    counts: Vec<Arc<AtomicU64>>,
    first: mpsc::UnboundedReceiver<Instant>,
}

impl Members {
    async fn join(server: &TestServer) -> Members {
        let (tx, first) = mpsc::unbounded_channel();
        let mut counts = Vec::new();
        for i in 0..MEMBERS {
            let mut c = WsClient::connect(&server.url("/ws")).await;
            let r = c.call("join", json!({ "room": ROOM }), json!(1)).await;
            assert!(r["error"].is_null(), "{r}");
            let count = Arc::new(AtomicU64::new(0));
            counts.push(Arc::clone(&count));
            let tx = (i == 0).then(|| tx.clone());
            tokio::spawn(async move {
                while let Some(Ok(m)) = c.ws.next().await {
                    if let Message::Text(_) = m {
                        count.fetch_add(1, Ordering::Relaxed);
                        if let Some(tx) = &tx {
                            let _ = tx.send(Instant::now());
                        }
                    }
                }
            });
        }
        Members { counts, first }
    }

    /// Waits until every member has received `n` in all.
    async fn wait_all(&self, n: u64) {
        let deadline = Instant::now() + WAIT;
        while self.counts.iter().any(|c| c.load(Ordering::Relaxed) < n) {
            assert!(Instant::now() < deadline, "deliveries stalled");
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }

    fn received(&self) -> u64 {
        self.counts[0].load(Ordering::Relaxed)
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Notify,
    Publish,
}

async fn send(hub: &Hub, op: Op, room: &str, i: usize) {
    match op {
        Op::Notify => {
            hub.to(room).notify("m", &params(i)).expect("notify");
        }
        Op::Publish => {
            hub.to(room)
                .publish("m", &params(i))
                .await
                .expect("publish")
                .expect("a position");
        }
    }
}

/// What one kind of operation measured.
struct Cost {
    call: Histogram<u64>,
    delivered: Histogram<u64>,
    self_cpu: f64,
    broker_cpu: f64,
    ops: u64,
    per_sec: f64,
}

impl Cost {
    fn new() -> Cost {
        Cost {
            call: new_histogram(),
            delivered: new_histogram(),
            self_cpu: 0.0,
            broker_cpu: 0.0,
            ops: 0,
            per_sec: 0.0,
        }
    }
}

/// One at a time, alternating blocks; then concurrent.
async fn publish_cost(backend: &Backend, server: &TestServer, members: &mut Members) -> [Cost; 2] {
    let hub = &server.hub;
    let mut costs = [Cost::new(), Cost::new()];
    let ops = [Op::Notify, Op::Publish];
    // Warm-up: connections to the broker, the room's stream.
    for (k, op) in ops.iter().enumerate() {
        for i in 0..50 {
            send(hub, *op, ROOM, i + k * 50).await;
            members.first.recv().await.expect("delivered");
        }
    }
    for block in 0..BLOCKS * 2 {
        let (k, op) = (block % 2, ops[block % 2]);
        let c = &mut costs[k];
        let (s0, b0) = (self_cpu_seconds(), backend.cpu());
        for i in 0..BLOCK {
            let t0 = Instant::now();
            send(hub, op, ROOM, i).await;
            record(&mut c.call, t0.elapsed().as_nanos() as u64);
            let at = tokio::time::timeout(WAIT, members.first.recv())
                .await
                .expect("delivered in time")
                .expect("delivered");
            record(&mut c.delivered, (at - t0).as_nanos() as u64);
        }
        c.self_cpu += self_cpu_seconds() - s0;
        c.broker_cpu += backend.cpu() - b0;
        c.ops += BLOCK as u64;
    }
    // Concurrent: TASKS tasks at once, until every member has everything.
    for (k, op) in ops.iter().enumerate() {
        let start = members.received();
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let hub = hub.clone();
            let op = *op;
            tasks.push(tokio::spawn(async move {
                for i in 0..PER_TASK {
                    send(&hub, op, ROOM, t * PER_TASK + i).await;
                    if op == Op::Notify && i % 16 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            }));
        }
        for t in tasks {
            t.await.expect("a sender");
        }
        members.wait_all(start + (TASKS * PER_TASK) as u64).await;
        costs[k].per_sec = (TASKS * PER_TASK) as f64 / t0.elapsed().as_secs_f64();
        while members.first.try_recv().is_ok() {}
    }
    costs
}

/// Sends `method(params)` and waits for its reply: how long that took, and
/// the result.
async fn timed(c: &mut WsClient, method: &str, params: Value) -> (u64, Value) {
    let req = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": "j"});
    let t0 = Instant::now();
    c.send_json(&req).await;
    loop {
        let v = c.recv_json().await;
        if v["id"] == "j" {
            let took = t0.elapsed().as_nanos() as u64;
            assert!(v["error"].is_null(), "{v}");
            return (took, v["result"].clone());
        }
    }
}

/// Join timings: plain, with nothing missed, with `MISSED` missed.
async fn recovery(server: &TestServer) -> [Histogram<u64>; 3] {
    let url = server.url("/ws");
    let mut h = [new_histogram(), new_histogram(), new_histogram()];
    for n in 0..RECOVERIES {
        let room = format!("bench-rec{n}");
        let mut c = WsClient::connect(&url).await;
        let (t, _) = timed(&mut c, "plain", json!({ "room": format!("plain{n}") })).await;
        record(&mut h[0], t);
        let (_, first) = timed(&mut c, "join", json!({ "room": room })).await;
        let since = first["position"].clone();
        let (t, r) = timed(&mut c, "join", json!({ "room": room, "since": since })).await;
        assert_eq!(r["recovered"], true);
        record(&mut h[1], t);
        c.close().await;
        drop(c);
        for i in 0..MISSED {
            send(&server.hub, Op::Publish, &room, i).await;
        }
        let mut c = WsClient::connect(&url).await;
        let (t, r) = timed(&mut c, "join", json!({ "room": room, "since": since })).await;
        assert_eq!(r["recovered"], true, "{}", r["position"]);
        assert_eq!(r["publications"].as_array().map(Vec::len), Some(MISSED));
        record(&mut h[2], t);
        c.close().await;
    }
    h
}

/// Heap and RSS held after `n` operations over `rooms` rooms, per 1,000.
async fn memory_per_1000(hub: &Hub, op: Op, rooms: usize, n: usize) -> (f64, f64) {
    let heap0 = LIVE.load(Ordering::Relaxed);
    let rss0 = vm_rss_kib(std::process::id()).unwrap_or(0);
    for i in 0..n {
        send(hub, op, &format!("bench-mem{}", i % rooms), i).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let heap = LIVE.load(Ordering::Relaxed) as f64 - heap0 as f64;
    let rss = (vm_rss_kib(std::process::id()).unwrap_or(0) as f64 - rss0 as f64) * 1024.0;
    let per = n as f64 / 1000.0;
    (heap / per, rss / per)
}

/// The broker's own memory for `n` stored publications, per 1,000.
async fn broker_memory_per_1000(backend: &Backend, hub: &Hub, n: usize) -> Option<f64> {
    let measure = || async {
        match backend {
            Backend::Memory => None,
            Backend::Redis(r) => {
                let info = r.cmd(&["INFO", "memory"]).await;
                info.lines()
                    .find_map(|l| l.strip_prefix("used_memory:"))
                    .and_then(|v| v.trim().parse::<f64>().ok())
            }
            Backend::JetStream(nats) => {
                let addr = nbio_ws_testkit::loopback(nats.monitor());
                let (_, _, body) =
                    nbio_ws_testkit::http_request(addr, "GET", "/jsz?streams=true").await;
                let json = &body[body.find('{')?..=body.rfind('}')?];
                let v: Value = serde_json::from_str(json).ok()?;
                v["bytes"].as_f64()
            }
        }
    };
    let before = measure().await?;
    for i in 0..n {
        send(hub, Op::Publish, &format!("bench-bmem{}", i % 20), i).await;
    }
    let after = measure().await?;
    Some((after - before) / (n as f64 / 1000.0))
}

fn us(h: &Histogram<u64>) -> LatencySummary {
    LatencySummary::from_histogram(h)
}

async fn run(backend: Backend) {
    let name = backend.name();
    let server = TestServer::start(backend.builder()).await;
    let mut members = Members::join(&server).await;
    let machine0 = machine_busy_seconds();
    let (self0, broker0, t0) = (self_cpu_seconds(), backend.cpu(), Instant::now());

    let [notify, publish] = publish_cost(&backend, &server, &mut members).await;
    for (label, c) in [("notify", &notify), ("publish", &publish)] {
        let (call, del) = (us(&c.call), us(&c.delivered));
        println!(
            "{name:9} {label:7} call p50 {:8.1} µs p99 {:8.1} µs | delivered p50 {:8.1} µs p99 {:8.1} µs | \
             CPU/op self {:6.1} µs broker {:6.1} µs | {:>8.0} ops/s with {TASKS} tasks (to {MEMBERS} members)",
            call.p50_us,
            call.p99_us,
            del.p50_us,
            del.p99_us,
            c.self_cpu * 1e6 / c.ops as f64,
            c.broker_cpu * 1e6 / c.ops as f64,
            c.per_sec,
        );
    }

    let [plain, nothing, missed] = recovery(&server).await;
    for (label, h) in [
        ("plain join (no history)", &plain),
        ("join, nothing missed", &nothing),
        ("join, 100 missed", &missed),
    ] {
        let s = us(h);
        println!(
            "{name:9} {label:24} p50 {:8.1} µs p99 {:8.1} µs mean {:8.1} µs (n={})",
            s.p50_us, s.p99_us, s.mean_us, s.count
        );
    }
    if let Some(bytes) = broker_memory_per_1000(&backend, &server.hub, 20_000).await {
        println!(
            "{name:9} broker memory per 1,000 stored: {:.0} KiB",
            bytes / 1024.0
        );
    }
    let window = t0.elapsed().as_secs_f64();
    let own = (self_cpu_seconds() - self0 + backend.cpu() - broker0) / window;
    if let (Some(a), Some(b)) = (machine0, machine_busy_seconds()) {
        println!(
            "{name:9} machine: {:.2} busy cores over {window:.1} s, of which this bench and its broker {own:.2}, others {:.2}",
            (b - a) / window,
            ((b - a) / window - own).max(0.0)
        );
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let redis = nbio_ws_testkit::tools::find_tool("redis-server").is_ok();
        let nats = nbio_ws_testkit::tools::find_tool("nats-server").is_ok();
        run(Backend::Memory).await;
        if redis {
            run(Backend::Redis(Redis::start().await)).await;
        } else {
            println!("redis: SKIP (no redis-server)");
        }
        if nats {
            run(Backend::JetStream(Nats::start_jetstream().await)).await;
        } else {
            println!("jetstream: SKIP (no nats-server)");
        }

        // Memory per 1,000 stored, memory backend, no members.
        let server = TestServer::start(Backend::Memory.builder()).await;
        let (heap, rss) = memory_per_1000(&server.hub, Op::Notify, 100, 100_000).await;
        println!("memory    notify  heap held per 1,000: {heap:8.0} B, RSS {rss:8.0} B");
        let (heap, rss) = memory_per_1000(&server.hub, Op::Publish, 100, 100_000).await;
        println!("memory    publish heap held per 1,000: {heap:8.0} B, RSS {rss:8.0} B");
    });
}
