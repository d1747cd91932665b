//! A chat server with a web page: nicknames, rooms, history, join and
//! leave notices, a member list. See `examples/chat/README.md`.
//!
//! ```text
//! cargo run -p nbio-ws-examples --bin chat      # then open http://127.0.0.1:8080/
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use nbio_ws::{rpc_method, Client, Hub, Params, PresenceEvent, RpcError, Server, State};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Messages kept per room and sent to whoever joins.
const HISTORY: usize = 50;
const MAX_TEXT: usize = 2000;

/// A chat message, as sent in `chat.message` and kept in history.
#[derive(Debug, Clone, Serialize)]
struct ChatMessage {
    room: String,
    nick: String,
    text: String,
    /// Milliseconds since the Unix epoch.
    ts: u64,
}

/// The last messages of each room.
#[derive(Default)]
struct History(Mutex<HashMap<String, VecDeque<ChatMessage>>>);

impl History {
    fn push(&self, msg: ChatMessage) {
        let mut rooms = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let q = rooms.entry(msg.room.clone()).or_default();
        if q.len() == HISTORY {
            q.pop_front();
        }
        q.push_back(msg);
    }

    fn of(&self, room: &str) -> Vec<ChatMessage> {
        let rooms = self.0.lock().unwrap_or_else(|p| p.into_inner());
        rooms
            .get(room)
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// The client's nickname, set by its first `chat.join`.
#[derive(Clone)]
struct Nick(String);

fn check_room(room: &str) -> Result<(), RpcError> {
    let ok = (1..=32).contains(&room.len())
        && room
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(RpcError::invalid_params(
            "room must be 1-32 characters: letters, digits, '-' or '_'",
        ))
    }
}

fn check_nick(nick: &str) -> Result<(), RpcError> {
    let n = nick.chars().count();
    let ok = (1..=24).contains(&n)
        && nick.trim() == nick
        && nick
            .chars()
            .all(|c| c.is_alphanumeric() || " -_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(RpcError::invalid_params(
            "nick must be 1-24 characters: letters, digits, spaces, '-', '_' or '.', without leading or trailing spaces",
        ))
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

fn nicks(members: &[nbio_ws::Member]) -> Vec<String> {
    let mut out: Vec<String> = members
        .iter()
        .filter_map(|m| {
            m.meta
                .get("nick")
                .and_then(|n| n.as_str())
                .map(str::to_owned)
        })
        .collect();
    out.sort();
    out
}

#[derive(Deserialize)]
struct JoinParams {
    room: String,
    nick: String,
}

/// `chat.join {room, nick}` → `{room, members, history}`.
#[rpc_method("chat.join")]
async fn join(
    client: Client,
    hub: Hub,
    State(history): State<History>,
    Params(p): Params<JoinParams>,
) -> Result<serde_json::Value, RpcError> {
    check_room(&p.room)?;
    check_nick(&p.nick)?;
    if let Some(Nick(current)) = client.extension::<Nick>() {
        if current != p.nick && !client.rooms().is_empty() {
            return Err(RpcError::invalid_params(format!(
                "you are {current:?} in other rooms; leave them to change your nick"
            )));
        }
    }
    client.insert_extension(Nick(p.nick.clone()));
    // Joining a room again is harmless: the same reply, and no second
    // `chat.joined` for the others (the hub announces every join_with).
    if !client.in_room(&p.room) {
        client.join_with(&p.room, json!({ "nick": p.nick }));
    }
    Ok(json!({
        "room": p.room,
        "members": nicks(&hub.members(&p.room).await),
        "history": history.of(&p.room),
    }))
}

#[derive(Deserialize)]
struct SendParams {
    room: String,
    text: String,
}

/// `chat.send {room, text}` → `{ts}`; everyone in the room, the sender
/// included, gets `chat.message`.
#[rpc_method("chat.send")]
fn send(
    client: Client,
    hub: Hub,
    State(history): State<History>,
    Params(p): Params<SendParams>,
) -> Result<serde_json::Value, RpcError> {
    check_room(&p.room)?;
    if !client.in_room(&p.room) {
        return Err(RpcError::new(-32010, "not in that room")
            .with_data(json!({"detail": "call chat.join first"})));
    }
    let text = p.text.trim();
    if text.is_empty() || text.chars().count() > MAX_TEXT {
        return Err(RpcError::invalid_params(format!(
            "text must be 1-{MAX_TEXT} characters"
        )));
    }
    let nick = client.extension::<Nick>().map(|n| n.0).unwrap_or_default();
    let msg = ChatMessage {
        room: p.room.clone(),
        nick,
        text: text.to_owned(),
        ts: now_ms(),
    };
    hub.to(&p.room)
        .notify("chat.message", &msg)
        .map_err(RpcError::internal)?;
    let ts = msg.ts;
    history.push(msg);
    Ok(json!({ "ts": ts }))
}

#[derive(Deserialize)]
struct RoomParams {
    room: String,
}

/// `chat.leave {room}` → `{room}`.
#[rpc_method("chat.leave")]
fn leave(client: Client, Params(p): Params<RoomParams>) -> Result<serde_json::Value, RpcError> {
    check_room(&p.room)?;
    if !client.leave(&p.room) {
        return Err(RpcError::new(-32010, "not in that room"));
    }
    Ok(json!({ "room": p.room }))
}

/// `chat.members {room}` → `{room, members}`.
#[rpc_method("chat.members")]
async fn members(hub: Hub, Params(p): Params<RoomParams>) -> Result<serde_json::Value, RpcError> {
    check_room(&p.room)?;
    Ok(json!({ "room": p.room, "members": nicks(&hub.members(&p.room).await) }))
}

/// Turns joins and leaves (disconnects included) into `chat.joined` and
/// `chat.left` for the other members of the room.
async fn announce_presence(hub: Hub) {
    let mut events = hub.presence_events();
    loop {
        let event = match events.recv().await {
            Ok(e) => e,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(skipped = n, "presence events lagged");
                continue;
            }
            Err(_) => return,
        };
        let (method, room, member) = match event {
            PresenceEvent::Joined { room, member } => ("chat.joined", room, member),
            PresenceEvent::Left { room, member } => ("chat.left", room, member),
        };
        let nick = member.meta.get("nick").cloned().unwrap_or_default();
        let _ = hub
            .to(&room)
            .except(member.client)
            .notify(method, &json!({ "room": room, "nick": nick }));
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = match nbio_ws::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    nbio_ws::init_logging(&config);
    let server = Server::builder()
        .config(config)
        .state(History::default())
        .page(
            "/",
            "text/html; charset=utf-8",
            include_str!("../../chat/static/index.html"),
        )
        .page(
            "/app.js",
            "text/javascript; charset=utf-8",
            include_str!("../../chat/static/app.js"),
        )
        .page(
            "/style.css",
            "text/css; charset=utf-8",
            include_str!("../../chat/static/style.css"),
        )
        .build();
    let server = match server {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    tokio::spawn(announce_presence(server.hub().clone()));
    let cfg = server.config();
    tracing::info!("chat on http://{}:{}/", cfg.host, cfg.port);
    match server.serve().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
