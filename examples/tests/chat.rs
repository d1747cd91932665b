//! The chat example over real sockets: the `chat` binary, configured from
//! the environment, talked to with tokio-tungstenite.

use nbio_ws_testkit::process::ServerProcess;
use nbio_ws_testkit::WsClient;
use serde_json::{json, Value};

/// The chat binary on a free loopback port; killed on drop.
type ChatServer = ServerProcess;

/// Starts the chat binary with these environment variables too.
async fn chat_server(env: &[(&str, String)]) -> ChatServer {
    ServerProcess::start(env!("CARGO_BIN_EXE_chat"), env).await
}

/// A chat client: the kit's client, which keeps the notifications that
/// arrive while it waits for a response, in order.
type Chat = WsClient;

/// The chat's methods, as a client calls them.
trait ChatClient {
    async fn join(&mut self, room: &str, nick: &str) -> Value;
    async fn say(&mut self, room: &str, text: &str) -> u64;
    async fn expect_nothing(&mut self);
}

impl ChatClient for Chat {
    async fn join(&mut self, room: &str, nick: &str) -> Value {
        self.ok("chat.join", json!({"room": room, "nick": nick}))
            .await
    }

    async fn say(&mut self, room: &str, text: &str) -> u64 {
        let r = self
            .ok("chat.send", json!({"room": room, "text": text}))
            .await;
        r["ts"].as_u64().expect("ts is a number")
    }

    /// Asserts nothing is waiting: a round trip to the server first, so
    /// anything already sent to this client has arrived.
    async fn expect_nothing(&mut self) {
        self.ok("chat.members", json!({"room": "sync"})).await;
        assert!(self.inbox().is_empty(), "unexpected: {:?}", self.inbox());
    }
}

fn assert_invalid_params(err: &Value, mentions: &str) {
    assert_eq!(err["code"], -32602, "{err}");
    let detail = err["data"]["detail"]
        .as_str()
        .unwrap_or_else(|| panic!("data.detail missing: {err}"));
    assert!(
        detail.contains(mentions),
        "detail {detail:?} should mention {mentions:?}"
    );
}

#[tokio::test]
async fn serves_the_page_and_its_assets() {
    let server = chat_server(&[]).await;
    for (path, content_type, needle) in [
        ("/", "text/html", "/app.js"),
        ("/app.js", "text/javascript", "chat.join"),
        ("/style.css", "text/css", ".messages"),
    ] {
        let (status, head, body) = server.get(path).await;
        assert_eq!(status, 200, "{path}");
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("content-type: {content_type}")),
            "{path}: {head}"
        );
        assert!(body.contains(needle), "{path} should contain {needle:?}");
    }
}

#[tokio::test]
async fn join_reply_has_members_and_history() {
    let server = chat_server(&[]).await;
    let mut alice = server.client().await;
    let mut bob = server.client().await;

    let r = alice.join("lobby", "alice").await;
    assert_eq!(r["room"], "lobby");
    assert_eq!(r["members"], json!(["alice"]));
    assert_eq!(r["history"], json!([]));
    assert_eq!(r["recovered"], false);
    assert_eq!(r["position"]["offset"], 0);
    let epoch = r["position"]["epoch"].clone();

    let ts1 = alice.say("lobby", "first").await;
    let ts2 = alice.say("lobby", "  second, trimmed  ").await;
    assert!(ts2 >= ts1);
    // The sender gets its own messages too.
    for (text, ts) in [("first", ts1), ("second, trimmed", ts2)] {
        assert_eq!(
            alice.notification().await,
            (
                "chat.message".to_owned(),
                json!({"room": "lobby", "nick": "alice", "text": text, "ts": ts})
            )
        );
    }

    let r = bob.join("lobby", "bob").await;
    assert_eq!(r["room"], "lobby");
    assert_eq!(r["members"], json!(["alice", "bob"]));
    assert_eq!(
        r["history"],
        json!([
            {"method": "chat.message",
             "params": {"room": "lobby", "nick": "alice", "text": "first", "ts": ts1},
             "position": {"room": "lobby", "epoch": epoch, "offset": 1}},
            {"method": "chat.message",
             "params": {"room": "lobby", "nick": "alice", "text": "second, trimmed", "ts": ts2},
             "position": {"room": "lobby", "epoch": epoch, "offset": 2}},
        ])
    );
    assert_eq!(r["position"], json!({"epoch": epoch, "offset": 2}));
    assert_eq!(
        alice.notification().await,
        (
            "chat.joined".to_owned(),
            json!({"room": "lobby", "nick": "bob"})
        )
    );
    // Joiners are not told about themselves.
    bob.expect_nothing().await;

    // Joining again gives the same reply and tells nobody.
    let again = bob.join("lobby", "bob").await;
    assert_eq!(again, r);
    alice.expect_nothing().await;

    let m = bob.ok("chat.members", json!({"room": "lobby"})).await;
    assert_eq!(m, json!({"room": "lobby", "members": ["alice", "bob"]}));
    let m = bob.ok("chat.members", json!({"room": "empty-room"})).await;
    assert_eq!(m, json!({"room": "empty-room", "members": []}));
}

#[tokio::test]
async fn messages_reach_only_their_room() {
    let server = chat_server(&[]).await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    let mut c = server.client().await;
    a.join("red", "ann").await;
    b.join("red", "ben").await;
    c.join("blue", "cat").await;
    assert_eq!(a.notification().await.0, "chat.joined");

    let ts = a.say("red", "to red").await;
    let want = (
        "chat.message".to_owned(),
        json!({"room": "red", "nick": "ann", "text": "to red", "ts": ts}),
    );
    assert_eq!(a.notification().await, want);
    assert_eq!(b.notification().await, want);
    c.expect_nothing().await;

    let ts = c.say("blue", "to blue").await;
    assert_eq!(
        c.notification().await,
        (
            "chat.message".to_owned(),
            json!({"room": "blue", "nick": "cat", "text": "to blue", "ts": ts})
        )
    );
    a.expect_nothing().await;
    b.expect_nothing().await;

    // One client in two rooms gets each room's messages, tagged by room.
    b.join("blue", "ben").await;
    assert_eq!(
        c.notification().await,
        (
            "chat.joined".to_owned(),
            json!({"room": "blue", "nick": "ben"})
        )
    );
    c.say("blue", "blue again").await;
    a.say("red", "red again").await;
    let mut got = Vec::new();
    for _ in 0..2 {
        let (method, p) = b.notification().await;
        assert_eq!(method, "chat.message");
        got.push((p["room"].clone(), p["text"].clone()));
    }
    got.sort_by_key(|(r, _)| r.to_string());
    assert_eq!(
        got,
        vec![
            (json!("blue"), json!("blue again")),
            (json!("red"), json!("red again"))
        ]
    );
}

#[tokio::test]
async fn leave_and_disconnect_tell_the_others() {
    let server = chat_server(&[]).await;
    let mut alice = server.client().await;
    let mut bob = server.client().await;
    let mut carol = server.client().await;
    alice.join("lobby", "alice").await;
    bob.join("lobby", "bob").await;
    carol.join("lobby", "carol").await;
    for _ in 0..2 {
        assert_eq!(alice.notification().await.0, "chat.joined");
    }
    assert_eq!(bob.notification().await.0, "chat.joined");

    // An explicit leave.
    let r = carol.ok("chat.leave", json!({"room": "lobby"})).await;
    assert_eq!(r, json!({"room": "lobby"}));
    let left = (
        "chat.left".to_owned(),
        json!({"room": "lobby", "nick": "carol"}),
    );
    assert_eq!(alice.notification().await, left);
    assert_eq!(bob.notification().await, left);
    carol.expect_nothing().await;
    let e = carol.err("chat.leave", json!({"room": "lobby"})).await;
    assert_eq!(e["code"], -32010, "{e}");
    assert_eq!(e["message"], "not in that room");

    // A disconnect, with no leave.
    bob.ws.close(None).await.unwrap();
    drop(bob);
    assert_eq!(
        alice.notification().await,
        (
            "chat.left".to_owned(),
            json!({"room": "lobby", "nick": "bob"})
        )
    );
    let m = alice.ok("chat.members", json!({"room": "lobby"})).await;
    assert_eq!(m, json!({"room": "lobby", "members": ["alice"]}));

    // A dropped TCP connection (no close frame) counts too.
    let mut dave = server.client().await;
    dave.join("lobby", "dave").await;
    assert_eq!(alice.notification().await.0, "chat.joined");
    drop(dave);
    assert_eq!(
        alice.notification().await,
        (
            "chat.left".to_owned(),
            json!({"room": "lobby", "nick": "dave"})
        )
    );
    let m = alice.ok("chat.members", json!({"room": "lobby"})).await;
    assert_eq!(m["members"], json!(["alice"]));
}

#[tokio::test]
async fn validation_errors_say_what_is_wrong() {
    let server = chat_server(&[]).await;
    let mut c = server.client().await;

    for nick in [
        "",
        "a<b>",
        " padded",
        "padded ",
        "emoji🙂",
        "twenty-five-characters-x",
    ] {
        let nick = if nick.starts_with("twenty") {
            "x".repeat(25)
        } else {
            nick.to_owned()
        };
        let e = c
            .err("chat.join", json!({"room": "lobby", "nick": nick}))
            .await;
        assert_invalid_params(&e, "nick");
    }
    for room in ["", "has space", "ünicode", "a/b", &"r".repeat(33)] {
        let e = c
            .err("chat.join", json!({"room": room, "nick": "ok"}))
            .await;
        assert_invalid_params(&e, "room");
    }
    // Missing or mistyped params are invalid params too.
    let e = c.err("chat.join", json!({"room": "lobby"})).await;
    assert_eq!(e["code"], -32602, "{e}");
    let e = c
        .err("chat.send", json!({"room": "lobby", "text": 5}))
        .await;
    assert_eq!(e["code"], -32602, "{e}");

    // The limits themselves are fine.
    let long_nick = "Ünïcödé nick_with-dots.x";
    assert_eq!(long_nick.chars().count(), 24);
    let room = "R".repeat(32);
    let r = c.join(&room, long_nick).await;
    assert_eq!(r["members"], json!([long_nick]));

    for text in ["", "   \n\t ", &"x".repeat(2001)] {
        let e = c
            .err("chat.send", json!({"room": room, "text": text}))
            .await;
        assert_invalid_params(&e, "text");
    }
    let max = "é".repeat(2000);
    let ts = c.say(&room, &max).await;
    let (method, p) = c.notification().await;
    assert_eq!(method, "chat.message");
    assert_eq!(p["text"], max.as_str());
    assert_eq!(p["ts"], ts);

    // Bad room on the other methods too.
    for method in ["chat.send", "chat.leave", "chat.members"] {
        let e = c
            .err(method, json!({"room": "no spaces", "text": "hi"}))
            .await;
        assert_invalid_params(&e, "room");
    }

    // A different nick while in a room is refused.
    let e = c
        .err("chat.join", json!({"room": "other", "nick": "someone"}))
        .await;
    assert_invalid_params(&e, "nick");
}

#[tokio::test]
async fn sending_to_a_room_not_joined_is_refused() {
    let server = chat_server(&[]).await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    b.join("lobby", "bob").await;

    let e = a
        .err("chat.send", json!({"room": "lobby", "text": "hi"}))
        .await;
    assert_eq!(e["code"], -32010, "{e}");
    assert_eq!(e["message"], "not in that room");
    assert!(e["data"]["detail"].is_string(), "{e}");
    // Nobody in the room heard it.
    b.expect_nothing().await;

    // Joined one room, not the other.
    a.join("side", "ann").await;
    let e = a
        .err("chat.send", json!({"room": "lobby", "text": "hi"}))
        .await;
    assert_eq!(e["code"], -32010, "{e}");
    // After leaving, sending there is refused again.
    a.say("side", "still here").await;
    assert_eq!(a.notification().await.0, "chat.message");
    a.ok("chat.leave", json!({"room": "side"})).await;
    let e = a
        .err("chat.send", json!({"room": "side", "text": "hi"}))
        .await;
    assert_eq!(e["code"], -32010, "{e}");
    b.expect_nothing().await;
}

#[tokio::test]
async fn params_by_position_work_too() {
    let server = chat_server(&[]).await;
    let mut c = server.client().await;
    let r = c.ok("chat.join", json!(["lobby", "ada"])).await;
    assert_eq!(r["members"], json!(["ada"]));
    let ts = c
        .ok("chat.send", json!(["lobby", "positional"]))
        .await
        .get("ts")
        .and_then(Value::as_u64)
        .unwrap();
    assert_eq!(
        c.notification().await,
        (
            "chat.message".to_owned(),
            json!({"room": "lobby", "nick": "ada", "text": "positional", "ts": ts})
        )
    );
    let r = c.ok("chat.members", json!(["lobby"])).await;
    assert_eq!(r["members"], json!(["ada"]));
}

/// A page that reconnects rejoins with the last position it saw and gets
/// exactly the messages it missed, in order, with `recovered: true`.
#[tokio::test]
async fn a_rejoin_with_since_recovers_what_was_missed() {
    let server = chat_server(&[]).await;
    let mut alice = server.client().await;
    let mut bob = server.client().await;
    alice.join("lobby", "alice").await;
    bob.join("lobby", "bob").await;
    for i in 1..=3 {
        bob.say("lobby", &format!("before {i}")).await;
    }
    let mut last = Value::Null;
    while last["offset"] != 3 {
        let v = alice.next_message().await;
        if v["method"] == "chat.message" {
            last = v["position"].clone();
        }
    }
    drop(alice);
    for i in 1..=20 {
        bob.say("lobby", &format!("missed {i}")).await;
    }
    let mut alice = server.client().await;
    let since = json!({"epoch": last["epoch"], "offset": last["offset"]});
    let r = alice
        .ok(
            "chat.join",
            json!({"room": "lobby", "nick": "alice", "since": since}),
        )
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    let want: Vec<String> = (1..=20).map(|i| format!("missed {i}")).collect();
    assert_eq!(texts(&r["history"]), want);
    assert_eq!(r["position"]["offset"], 23);
    // A position the history does not know: the latest messages instead.
    let stale = json!({"epoch": "another", "offset": 1});
    let r = alice
        .ok(
            "chat.join",
            json!({"room": "lobby", "nick": "alice", "since": stale}),
        )
        .await;
    assert_eq!(r["recovered"], false);
    assert_eq!(texts(&r["history"]).len(), 23);
}

/// The `text` of each message of a `history`, in order.
fn texts(history: &Value) -> Vec<String> {
    history
        .as_array()
        .unwrap_or_else(|| panic!("history is an array: {history}"))
        .iter()
        .map(|m| {
            m["params"]["text"]
                .as_str()
                .unwrap_or_else(|| panic!("a message has a text: {m}"))
                .to_owned()
        })
        .collect()
}

/// Without a broker (and so also in a build with the `redis` feature) the
/// history is in memory: the last 100, oldest first, per instance, gone
/// with the instance.
#[tokio::test]
async fn memory_history_is_per_instance() {
    let a = ServerPair::memory().await;
    let mut alice = a.0.client().await;
    alice.join("lobby", "alice").await;
    for i in 1..=105 {
        alice.say("lobby", &format!("message {i}")).await;
    }
    let mut bob = a.0.client().await;
    let h = texts(&bob.join("lobby", "bob").await["history"]);
    let want: Vec<String> = (6..=105).map(|i| format!("message {i}")).collect();
    assert_eq!(h, want);

    // Another instance has its own (empty) history.
    let mut carol = a.1.client().await;
    assert_eq!(carol.join("lobby", "carol").await["history"], json!([]));

    // A restarted instance has forgotten it.
    drop(a);
    let again = chat_server(&[]).await;
    let mut dave = again.client().await;
    assert_eq!(dave.join("lobby", "dave").await["history"], json!([]));
}

/// Two chat instances.
struct ServerPair(ChatServer, ChatServer);

impl ServerPair {
    async fn memory() -> ServerPair {
        ServerPair(chat_server(&[]).await, chat_server(&[]).await)
    }
}

/// History in Redis: `--features redis` and the redis pub/sub adapter.
#[cfg(feature = "redis")]
mod redis_history {
    use nbio_ws_testkit::broker::Redis;

    #[tokio::test]
    async fn chat_across_three_instances_with_redis() {
        nbio_ws_testkit::require_tools!("redis-server");
        let redis = Redis::start().await;
        super::across_instances::chat_across_three_instances(redis.env()).await;
    }
}

/// Three chat instances sharing a broker: rooms, presence, notices, and a
/// crashed instance's members leaving after the presence TTL.
#[cfg(any(feature = "redis", feature = "nats"))]
mod across_instances {
    use std::time::Duration;

    use nbio_ws_testkit::free_port;

    use super::*;

    /// Polls `chat.members` until it lists `want`.
    async fn members_become(chat: &mut Chat, room: &str, want: &[&str]) {
        let mut last = Value::Null;
        for _ in 0..300 {
            last = chat.ok("chat.members", json!({ "room": room })).await["members"].clone();
            if last == json!(want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("members of {room}: {last}, expected {want:?}");
    }

    /// The next notification, which must be `method` for `nick`.
    async fn expect_notice(chat: &mut Chat, method: &str, nick: &str) {
        let (m, p) = chat.notification().await;
        assert_eq!(
            (m.as_str(), &p),
            (method, &json!({"room": "lobby", "nick": nick})),
            "expected {method} of {nick}"
        );
    }

    pub(super) async fn chat_across_three_instances(mut env: Vec<(&'static str, String)>) {
        env.push(("WS_PRESENCE_TTL", "1s".to_owned()));
        env.push(("WS_PUBSUB_CHANNEL", format!("chat{}", free_port())));
        let s1 = chat_server(&env).await;
        let s2 = chat_server(&env).await;
        let mut s3 = chat_server(&env).await;
        // Each instance hears the others' heartbeats: their presence
        // channels are live.
        for s in [&s1, &s2, &s3] {
            s.wait_metric("nbio_ws_presence_remote_instances", 2).await;
        }
        let mut ada = s1.client().await;
        let mut grace = s2.client().await;
        let mut linus = s3.client().await;

        // Each joins once the others' instances know who is there: the
        // join reply lists the members of every instance, and those
        // already in hear of the new one exactly once.
        assert_eq!(ada.join("lobby", "ada").await["members"], json!(["ada"]));
        members_become(&mut grace, "lobby", &["ada"]).await;
        let r = grace.join("lobby", "grace").await;
        assert_eq!(r["members"], json!(["ada", "grace"]), "{r}");
        expect_notice(&mut ada, "chat.joined", "grace").await;
        members_become(&mut linus, "lobby", &["ada", "grace"]).await;
        let r = linus.join("lobby", "linus").await;
        assert_eq!(r["members"], json!(["ada", "grace", "linus"]), "{r}");
        expect_notice(&mut ada, "chat.joined", "linus").await;
        expect_notice(&mut grace, "chat.joined", "linus").await;
        for chat in [&mut ada, &mut grace] {
            members_become(chat, "lobby", &["ada", "grace", "linus"]).await;
        }

        // Messages cross instances, once, with one timestamp.
        let ts = ada.say("lobby", "hi all").await;
        let want = (
            "chat.message".to_owned(),
            json!({"room": "lobby", "nick": "ada", "text": "hi all", "ts": ts}),
        );
        for chat in [&mut ada, &mut grace, &mut linus] {
            assert_eq!(chat.notification().await, want);
        }
        let ts = linus.say("lobby", "hello from 3").await;
        for chat in [&mut ada, &mut grace, &mut linus] {
            let (m, p) = chat.notification().await;
            assert_eq!(
                (m.as_str(), &p["text"], &p["ts"]),
                ("chat.message", &json!("hello from 3"), &json!(ts))
            );
        }

        // Instance 3 crashes (SIGKILL): its member leaves everyone's list
        // after the presence TTL, with a notice.
        s3.proc.kill();
        expect_notice(&mut ada, "chat.left", "linus").await;
        expect_notice(&mut grace, "chat.left", "linus").await;
        members_become(&mut ada, "lobby", &["ada", "grace"]).await;
        members_become(&mut grace, "lobby", &["ada", "grace"]).await;

        // A disconnect on instance 2 is a leave on instance 1.
        let _ = grace.ws.close(None).await;
        drop(grace);
        expect_notice(&mut ada, "chat.left", "grace").await;
        members_become(&mut ada, "lobby", &["ada"]).await;
        ada.expect_nothing().await; // no duplicate notices
    }
}

#[cfg(feature = "nats")]
mod nats_instances {
    #[tokio::test]
    async fn chat_across_three_instances_with_nats() {
        nbio_ws_testkit::require_tools!("nats-server");
        // JetStream on: with the nats adapter the chat's history is there.
        let nats = nbio_ws_testkit::broker::Nats::start_jetstream().await;
        super::across_instances::chat_across_three_instances(nats.env()).await;
    }
}
