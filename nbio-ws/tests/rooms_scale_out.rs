//! Rooms and presence across instances: three in-process servers sharing a
//! broker (in-process, or a real `redis-server` / `nats-server` started on
//! a free loopback port), clients on each, and the same body for every
//! backend:
//!
//! 1. presence: `Hub::members` on every instance lists the members of
//!    every instance;
//! 2. room messages reach the members on other instances (in order, once),
//!    `except` works across instances, non-members get nothing;
//! 3. an instance subscribes to a room's channel only while it has local
//!    members in it (checked on the broker itself: Redis `PUBSUB NUMSUB`,
//!    NATS's subscription list);
//! 4. a disconnect and a leave reach the other instances' presence, as
//!    members and as `PresenceEvent::Left`;
//! 5. a crashed instance (its runtime dropped: no goodbye, no more
//!    heartbeats) disappears from everyone's presence after the TTL;
//! 6. with the broker down, remote members expire; when it is back,
//!    presence converges again without restarting anything.
//!
//! And the membership limits with a broker: 5,000 joins from one
//! connection are refused past the rooms limit with the typed error
//! (`-32020`), the connection goes on working, and the instance holds one
//! room subscription per room its member is in — no more.

use std::time::Duration;

use nbio_ws::{Client, Hub, Params, PresenceEvent, RpcError, Server, ServerBuilder};
use nbio_ws_testkit::broker::{Backend, Kind};
use nbio_ws_testkit::server::Crashable;
use nbio_ws_testkit::{eventually, free_port};
use nbio_ws_testkit::{TestServer, WsClient};
use serde::Deserialize;
use serde_json::{json, Value};

const TTL: Duration = Duration::from_millis(900);
const WAIT: Duration = Duration::from_secs(15);

#[derive(Deserialize)]
struct Join {
    room: String,
    nick: String,
}

#[derive(Deserialize)]
struct Say {
    room: String,
    text: String,
    #[serde(default)]
    except_me: bool,
}

#[derive(Deserialize)]
struct Room {
    room: String,
}

fn app() -> ServerBuilder {
    Server::builder()
        .registered_methods(false)
        .send_buffer(4096)
        .method(
            "join",
            |c: Client, hub: Hub, Params(p): Params<Join>| async move {
                c.join_with(&p.room, json!({ "nick": p.nick }))?;
                hub.room_ready(&p.room).await;
                Ok::<_, RpcError>(true)
            },
        )
        .method("leave", |c: Client, Params(p): Params<Room>| async move {
            Ok::<_, RpcError>(c.leave(&p.room))
        })
        .method(
            "say",
            |c: Client, hub: Hub, Params(p): Params<Say>| async move {
                let to = hub.to(&p.room);
                let to = if p.except_me { to.except(c.id()) } else { to };
                to.notify("said", &json!({ "room": p.room, "text": p.text }))
                    .map_err(RpcError::internal)
            },
        )
}

/// A client that keeps the `said` notifications it receives.
struct Peer {
    ws: WsClient,
    said: Vec<String>,
    next_id: u64,
}

impl Peer {
    async fn connect(server: &TestServer) -> Peer {
        Peer {
            ws: WsClient::connect(&server.url("/ws")).await,
            said: Vec::new(),
            next_id: 1,
        }
    }

    async fn read(&mut self, deadline: tokio::time::Instant) -> Option<Value> {
        let v = self.ws.json_before(deadline).await?;
        if v["method"] == "said" {
            self.said
                .push(v["params"]["text"].as_str().unwrap_or_default().into());
        }
        Some(v)
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let req = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id});
        self.ws.send_json(&req).await;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let v = self
                .read(deadline)
                .await
                .unwrap_or_else(|| panic!("no answer to {method}"));
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    async fn join(&mut self, room: &str, nick: &str) {
        self.call("join", json!({ "room": room, "nick": nick }))
            .await;
    }

    /// Reads until `n` `said` texts arrived in all.
    async fn expect_said(&mut self, n: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.said.len() < n {
            assert!(
                self.read(deadline).await.is_some(),
                "only {:?} arrived, {n} expected",
                self.said
            );
        }
    }

    /// Reads for `wait`; returns how many `said` arrived meanwhile.
    async fn drain(&mut self, wait: Duration) -> usize {
        let before = self.said.len();
        let deadline = tokio::time::Instant::now() + wait;
        while self.read(deadline).await.is_some() {}
        self.said.len() - before
    }
}

async fn nicks(hub: &Hub, room: &str) -> Vec<String> {
    let mut out: Vec<String> = hub
        .members(room)
        .await
        .into_iter()
        .map(|m| m.meta["nick"].as_str().unwrap_or_default().to_owned())
        .collect();
    out.sort();
    out
}

/// Waits until every hub lists exactly `want` in `room`.
async fn converge(hubs: &[&Hub], room: &str, want: &[&str]) {
    for (i, hub) in hubs.iter().enumerate() {
        eventually(|| async move {
            let have = nicks(hub, room).await;
            match have == want {
                true => Ok(()),
                false => Err(format!(
                    "instance {i}: members of {room} are {have:?}, expected {want:?}"
                )),
            }
        })
        .await;
    }
}

/// Waits until the broker has `want` subscriptions on a room's channel
/// (nothing to check on the in-process broker).
async fn room_subscribers(backend: &Backend, channel: &str, room: &str, want: usize) {
    let name = &format!("{channel}.room.{room}");
    eventually(|| async move {
        match backend.subscribers(name).await {
            Some(n) if n != want => Err(format!("{name}: {n} subscribers, expected {want}")),
            _ => Ok(()),
        }
    })
    .await
}

async fn metric(server: &TestServer, name: &str) -> u64 {
    server
        .metric(name)
        .await
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// Waits for a `Left` of `nick` from `room` on `events`.
async fn expect_left(
    events: &mut tokio::sync::broadcast::Receiver<PresenceEvent>,
    room: &str,
    nick: &str,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => panic!("no Left of {nick} from {room}"),
            Ok(Ok(PresenceEvent::Left {
                room: r, member, ..
            })) if r == room && member.meta["nick"] == nick => return,
            Ok(_) => continue,
        }
    }
}

async fn rooms_across_instances(kind: Kind) {
    let mut backend = Backend::start(kind).await;
    let channel = format!("rooms{}", free_port());
    let pubsub = backend.pubsub(&channel).presence_ttl(TTL);
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(TestServer::start(backend.builder_with(app(), pubsub.clone())).await);
    }
    let hubs: Vec<Hub> = servers.iter().map(|s| s.hub.clone()).collect();
    let all: Vec<&Hub> = hubs.iter().collect();
    let mut events = hubs[2].presence_events();

    // 1. Presence across instances.
    let mut a1 = Peer::connect(&servers[0]).await;
    let mut a2 = Peer::connect(&servers[0]).await;
    let mut b1 = Peer::connect(&servers[1]).await;
    let mut c1 = Peer::connect(&servers[2]).await;
    a1.join("lobby", "a1").await;
    b1.join("lobby", "b1").await;
    c1.join("kitchen", "c1").await;
    converge(&all, "lobby", &["a1", "b1"]).await;
    converge(&all, "kitchen", &["c1"]).await;

    // 3. Per-room subscriptions: instance 2 has no lobby member.
    room_subscribers(&backend, &channel, "lobby", 2).await;
    room_subscribers(&backend, &channel, "kitchen", 1).await;
    assert_eq!(
        metric(&servers[2], "nbio_ws_broker_room_subscriptions").await,
        1
    );
    assert_eq!(
        metric(&servers[0], "nbio_ws_presence_remote_members").await,
        2
    );

    // 2. Fan-out across instances, `except`, non-members.
    a1.call("say", json!({"room": "lobby", "text": "hello"}))
        .await;
    b1.call(
        "say",
        json!({"room": "lobby", "text": "hi a1", "except_me": true}),
    )
    .await;
    a1.expect_said(2).await;
    b1.expect_said(1).await;
    assert_eq!(a1.said, ["hello", "hi a1"]);
    assert_eq!(b1.said, ["hello"]);
    for n in 0..50 {
        a1.call("say", json!({"room": "lobby", "text": format!("n{n:02}")}))
            .await;
    }
    b1.expect_said(51).await;
    let expected: Vec<String> = (0..50).map(|n| format!("n{n:02}")).collect();
    assert_eq!(b1.said[1..], expected[..], "in order, once");
    assert_eq!(
        b1.drain(Duration::from_millis(300)).await,
        0,
        "no duplicates"
    );
    assert_eq!(
        a2.drain(Duration::from_millis(100)).await,
        0,
        "not in the room"
    );
    assert_eq!(
        c1.drain(Duration::from_millis(100)).await,
        0,
        "not in the room"
    );

    // 4. A disconnect and a leave reach the others.
    b1.ws.close().await;
    drop(b1);
    converge(&all, "lobby", &["a1"]).await;
    room_subscribers(&backend, &channel, "lobby", 1).await;
    expect_left(&mut events, "lobby", "b1").await;
    assert_eq!(a1.call("leave", json!({"room": "lobby"})).await, true);
    converge(&all, "lobby", &[]).await;
    room_subscribers(&backend, &channel, "lobby", 0).await;

    // 5. A crashed instance's members expire.
    let mut crashable = Crashable::start(backend.builder_with(app(), pubsub.clone()));
    let mut d1 = Peer {
        ws: WsClient::connect(&format!("ws://{}/ws", crashable.addr)).await,
        said: Vec::new(),
        next_id: 1,
    };
    d1.join("kitchen", "d1").await;
    converge(&all, "kitchen", &["c1", "d1"]).await;
    crashable.crash();
    converge(&all, "kitchen", &["c1"]).await;
    expect_left(&mut events, "kitchen", "d1").await; // the expiry is an event

    // 6. Broker outage: remote members expire, then come back.
    backend.down();
    converge(&all[..2], "kitchen", &[]).await;
    converge(&all[2..], "kitchen", &["c1"]).await; // its own member stays
    backend.up().await;
    converge(&all, "kitchen", &["c1"]).await;
    // And room messages flow again.
    let mut a3 = Peer::connect(&servers[0]).await;
    a3.join("kitchen", "a3").await;
    converge(&all, "kitchen", &["a3", "c1"]).await;
    c1.call("say", json!({"room": "kitchen", "text": "back"}))
        .await;
    a3.expect_said(1).await;
    assert_eq!(a3.said, ["back"]);

    for mut peer in [a1, a2, a3, c1] {
        peer.ws.close().await;
    }
    for mut s in servers {
        s.shutdown().await.expect("clean shutdown");
    }
}

nbio_ws_testkit::per_broker! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    rooms_across_instances: rooms_across_instances_local, rooms_across_instances_redis,
        rooms_across_instances_nats
}

/// 5,000 joins from one connection over a broker.
async fn join_limits(kind: Kind) {
    const JOINS: usize = 5_000;
    const LIMIT: usize = 100;
    const WINDOW: usize = 100;
    let backend = Backend::start(kind).await;
    let channel = format!("limits{}", free_port());
    let server = TestServer::start(backend.builder(app(), &channel)).await;
    let mut other = TestServer::start(backend.builder(app(), &channel)).await;
    let mut peer = Peer::connect(&server).await;
    let mut far = Peer::connect(&other).await;
    far.join("r0", "far").await;

    // Pipelined in windows (the replies of a window fit any queue).
    let (mut joined, mut refused) = (0, 0);
    for window in 0..JOINS / WINDOW {
        for i in 0..WINDOW {
            let n = window * WINDOW + i;
            let req = json!({"jsonrpc": "2.0", "method": "join", "id": n,
                "params": {"room": format!("r{n}"), "nick": "many"}});
            peer.ws.send_json(&req).await;
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut answered = 0;
        while answered < WINDOW {
            let v = peer.read(deadline).await.expect("an answer in time");
            if v.get("id").is_none() {
                continue;
            }
            answered += 1;
            let n = v["id"].as_u64().expect("id") as usize;
            if v["result"] == true {
                assert!(n < LIMIT, "join {n} accepted: {v}");
                joined += 1;
            } else {
                assert!(n >= LIMIT, "join {n} refused: {v}");
                let e = &v["error"];
                assert_eq!(e["code"], -32020, "{v}");
                assert_eq!(e["message"], "Join refused", "{v}");
                assert_eq!(e["data"]["reason"], "too_many_rooms", "{v}");
                assert_eq!(e["data"]["limit"], LIMIT, "{v}");
                refused += 1;
            }
        }
    }
    assert_eq!((joined, refused), (LIMIT, JOINS - LIMIT));

    // Too long a name, too much presence data: refused the same way.
    peer.ws
        .send_json(&json!({"jsonrpc": "2.0", "method": "leave", "id": "l",
            "params": {"room": "r99"}}))
        .await;
    for (id, room, nick) in [
        ("long", "x".repeat(257), "n".to_owned()),
        ("meta", "ok".to_owned(), "m".repeat(5000)),
    ] {
        peer.ws
            .send_json(&json!({"jsonrpc": "2.0", "method": "join", "id": id,
                "params": {"room": room, "nick": nick}}))
            .await;
    }
    let mut reasons = std::collections::BTreeMap::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while reasons.len() < 3 {
        let v = peer.read(deadline).await.expect("answers in time");
        if let Some(id) = v["id"].as_str() {
            let reason = v["error"]["data"]["reason"]
                .as_str()
                .unwrap_or("ok")
                .to_owned();
            reasons.insert(id.to_owned(), (reason, v["error"]["data"]["limit"].clone()));
        }
    }
    assert_eq!(reasons["l"].0, "ok");
    assert_eq!(reasons["long"], ("room_name_too_long".into(), json!(256)));
    assert_eq!(reasons["meta"], ("meta_too_large".into(), json!(4096)));

    // The connection still works, and so do its rooms, across instances.
    assert_eq!(
        peer.call("join", json!({"room": "r99", "nick": "many"}))
            .await,
        true
    );
    assert_eq!(server.hub.room_count(), LIMIT);
    far.call("say", json!({"room": "r0", "text": "hello"}))
        .await;
    peer.expect_said(1).await;
    assert_eq!(peer.said, ["hello"]);

    // One subscription per room with a member here: the refused joins
    // left none behind.
    assert_eq!(
        metric(&server, "nbio_ws_broker_room_subscriptions").await,
        LIMIT as u64
    );
    room_subscribers(&backend, &channel, "r0", 2).await;
    room_subscribers(&backend, &channel, "r99", 1).await;
    room_subscribers(&backend, &channel, "r100", 0).await;
    room_subscribers(&backend, &channel, "r4999", 0).await;
    other.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn join_limits_local() {
    join_limits(Kind::Local).await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn join_limits_redis() {
    join_limits(Kind::Redis).await;
}

#[cfg(feature = "nats")]
#[tokio::test]
async fn join_limits_nats() {
    join_limits(Kind::Nats).await;
}

/// A room subscription the broker refuses is tried again, with backoff,
/// instead of leaving the room deaf: a NATS server that at first denies
/// this instance's user the room subjects (`-ERR 'Permissions Violation
/// for Subscription …'`), then, its configuration reloaded, allows them.
/// Once allowed, the room's messages from the other instance arrive.
#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_room_subscription_is_retried_nats() {
    nbio_ws_testkit::require_tools!("nats-server");
    let channel = format!("nbio-test-retry.{}", free_port());
    let users = |permissions: &str| {
        format!(
            "authorization {{\n  users = [ {{ user: \"ws\", password: \"pw\"{permissions} }} ]\n}}\n"
        )
    };
    let deny = format!(", permissions: {{ subscribe: {{ deny: [\"{channel}.room.>\"] }} }}");
    let mut nats = nbio_ws_testkit::broker::Nats::start_with_config(&users(&deny)).await;
    let url = format!("nats://ws:pw@127.0.0.1:{}", nats.port());
    let pubsub = nbio_ws::broker::PubSubConfig::nats(url).channel(&channel);
    let a = TestServer::start(app().pubsub(pubsub.clone())).await;
    let b = TestServer::start(app().pubsub(pubsub)).await;
    let (ha, hb) = (a.hub.clone(), b.hub.clone());
    eventually(|| {
        let (ha, hb) = (ha.clone(), hb.clone());
        async move {
            match (ha.broker_health(), hb.broker_health()) {
                (Some(x), Some(y)) if x.connected && y.connected => Ok(()),
                other => Err(format!("not connected: {other:?}")),
            }
        }
    })
    .await;
    let mut ann = Peer::connect(&a).await;
    let mut bob = Peer::connect(&b).await;
    // Each join returns once its SUB was flushed: the server has refused
    // it by then.
    ann.join("lobby", "ann").await;
    bob.join("lobby", "bob").await;
    converge(&[&a.hub, &b.hub], "lobby", &["ann", "bob"]).await;

    nats.reload(&users(""));
    let mut sent = 0;
    while !ann.said.iter().any(|t| t.starts_with("after-")) {
        assert!(sent < 200, "the room stayed deaf: {:?}", ann.said);
        bob.call(
            "say",
            json!({ "room": "lobby", "text": format!("after-{sent}") }),
        )
        .await;
        sent += 1;
        ann.drain(Duration::from_millis(100)).await;
    }
    for s in [a, b] {
        s.stop().await;
    }
}
