//! The chat example over real sockets: the `chat` binary, configured from
//! the environment, talked to with tokio-tungstenite.

use std::collections::VecDeque;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const TIMEOUT: Duration = Duration::from_secs(10);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The chat binary on a free loopback port; killed on drop.
struct ChatServer {
    child: Child,
    port: u16,
}

impl Drop for ChatServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ChatServer {
    async fn start() -> ChatServer {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_chat"))
            .env("WS_HOST", "127.0.0.1")
            .env("WS_PORT", port.to_string())
            .env("WS_LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let server = ChatServer { child, port };
        for _ in 0..200 {
            if let Ok((200, _, _)) = server.try_get("/health").await {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("chat server on port {port} did not come up");
    }

    async fn try_get(&self, path: &str) -> std::io::Result<(u16, String, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        tokio::time::timeout(TIMEOUT, s.read_to_end(&mut buf))
            .await
            .map_err(|_| std::io::Error::other("timed out"))??;
        let text = String::from_utf8_lossy(&buf).to_string();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0);
        Ok((status, head.to_string(), body.to_string()))
    }

    async fn client(&self) -> Chat {
        let url = format!("ws://127.0.0.1:{}/ws", self.port);
        let (ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("connect");
        Chat {
            ws,
            next_id: 1,
            inbox: VecDeque::new(),
        }
    }
}

/// A chat client: calls methods and keeps the notifications that arrive
/// meanwhile, in order.
struct Chat {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
    inbox: VecDeque<Value>,
}

impl Chat {
    async fn recv(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .expect("a message in time")
                .expect("stream open")
                .expect("no error");
            match msg {
                Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected text, got {other:?}"),
            }
        }
    }

    /// The whole response to a call (`result` or `error`).
    async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let req = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id});
        self.ws.send(Message::text(req.to_string())).await.unwrap();
        loop {
            let v = self.recv().await;
            if v.get("id") == Some(&json!(id)) {
                return v;
            }
            assert!(
                v.get("method").is_some(),
                "neither ours nor a notification: {v}"
            );
            self.inbox.push_back(v);
        }
    }

    /// The `result` of a call that must succeed.
    async fn ok(&mut self, method: &str, params: Value) -> Value {
        let v = self.call(method, params.clone()).await;
        match v.get("result") {
            Some(r) => r.clone(),
            None => panic!("{method} {params} failed: {v}"),
        }
    }

    /// The `error` of a call that must fail.
    async fn err(&mut self, method: &str, params: Value) -> Value {
        let v = self.call(method, params.clone()).await;
        match v.get("error") {
            Some(e) => e.clone(),
            None => panic!("{method} {params} should have failed: {v}"),
        }
    }

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

    /// The next notification (method and params), waiting if needed.
    async fn notification(&mut self) -> (String, Value) {
        let v = match self.inbox.pop_front() {
            Some(v) => v,
            None => self.recv().await,
        };
        let method = v["method"]
            .as_str()
            .unwrap_or_else(|| panic!("expected a notification, got {v}"))
            .to_owned();
        assert!(v.get("id").is_none(), "notifications have no id: {v}");
        (method, v["params"].clone())
    }

    /// Asserts nothing is waiting: a round trip to the server first, so
    /// anything already sent to this client has arrived.
    async fn expect_nothing(&mut self) {
        self.ok("chat.members", json!({"room": "sync"})).await;
        assert!(self.inbox.is_empty(), "unexpected: {:?}", self.inbox);
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
    let server = ChatServer::start().await;
    for (path, content_type, needle) in [
        ("/", "text/html", "/app.js"),
        ("/app.js", "text/javascript", "chat.join"),
        ("/style.css", "text/css", ".messages"),
    ] {
        let (status, head, body) = server.try_get(path).await.unwrap();
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
    let server = ChatServer::start().await;
    let mut alice = server.client().await;
    let mut bob = server.client().await;

    let r = alice.join("lobby", "alice").await;
    assert_eq!(
        r,
        json!({"room": "lobby", "members": ["alice"], "history": []})
    );

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
            {"room": "lobby", "nick": "alice", "text": "first", "ts": ts1},
            {"room": "lobby", "nick": "alice", "text": "second, trimmed", "ts": ts2},
        ])
    );
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
    let server = ChatServer::start().await;
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
    let server = ChatServer::start().await;
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
    let server = ChatServer::start().await;
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
    let server = ChatServer::start().await;
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
    let server = ChatServer::start().await;
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
