//! A chat server with a web page: nicknames, rooms, history, join and
//! leave notices, a member list. See `examples/chat/README.md`.
//!
//! ```text
//! cargo run -p nbio-ws-examples --bin chat      # then open http://127.0.0.1:8080/
//! ```
//!
//! Rooms keep history (the last 100 messages, for 10 minutes) in the
//! framework's history backend that matches `WS_PUBSUB_ADAPTER`: memory
//! without a broker, Redis with `redis`, JetStream with `nats`. A page
//! that reconnects rejoins with the last position it saw and recovers what
//! it missed.
//!
//! With `--features openrpc`, `rpc.discover` and `GET /openrpc.json`
//! answer its OpenRPC document: the four methods and the `chat.message`,
//! `chat.joined` and `chat.left` notifications.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nbio_ws::history::{Position, Publication, Recovery};
use nbio_ws::{rpc_method, Client, Hub, Params, PresenceEvent, RpcError, Server};
use serde::{Deserialize, Serialize};
use serde_json::json;

const MAX_TEXT: usize = 2000;
/// Messages each room keeps.
const HISTORY: usize = 100;
/// How long a message is kept.
const HISTORY_TTL: Duration = Duration::from_secs(600);

/// A chat message, as `chat.message` carries it (its position is the
/// notification's `position`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openrpc", derive(schemars::JsonSchema))]
struct ChatMessage {
    /// The room it was said in.
    room: String,
    /// The sender's nickname.
    nick: String,
    /// What was said (1-2000 characters).
    text: String,
    /// Milliseconds since the Unix epoch.
    ts: u64,
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
#[cfg_attr(feature = "openrpc", derive(schemars::JsonSchema))]
struct JoinParams {
    /// The room: 1-32 letters, digits, `-` or `_`.
    room: String,
    /// Your nickname in every room: 1-24 letters, digits, spaces, `-`,
    /// `_` or `.`.
    nick: String,
    /// The last position this client saw in the room, to recover from.
    #[serde(default)]
    since: Option<Position>,
}

/// What `chat.join` answers.
#[derive(Serialize)]
#[cfg_attr(feature = "openrpc", derive(schemars::JsonSchema))]
struct Joined {
    /// The room joined.
    room: String,
    /// The nicknames of its members, on every instance, sorted.
    members: Vec<String>,
    /// What was missed after `since` (or the latest messages), as
    /// publications `{method, params, position}`, oldest first.
    history: Vec<Publication>,
    /// The room's position live messages continue from.
    position: Position,
    /// `true` only when `history` is exactly everything after `since`.
    recovered: bool,
}

/// What `chat.joined` and `chat.left` carry.
#[cfg(feature = "openrpc")]
#[derive(Serialize, schemars::JsonSchema)]
struct Presence {
    /// The room.
    room: String,
    /// Who joined or left.
    nick: String,
}

/// Joins a room under a nickname, recovering what was missed.
///
/// Answers the room's members and its history after `since` (or the
/// latest messages). The others in the room get `chat.joined`; from then
/// on you get the room's `chat.message`, `chat.joined` and `chat.left`.
/// Joining a room you are in again answers the same and tells nobody. The
/// nickname is the same in every room: to change it, leave them all first.
#[rpc_method(
    "chat.join",
    errors(-32602 = "invalid room or nick, or a nick change while in other rooms"),
    example(name = "join the lobby", params = r#"{"room": "lobby", "nick": "ada"}"#),
    example(name = "join another room", params = r#"{"room": "random", "nick": "ada"}"#)
)]
async fn join(client: Client, hub: Hub, Params(p): Params<JoinParams>) -> Result<Joined, RpcError> {
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
    // `chat.joined` for the others.
    let fresh = !client.in_room(&p.room);
    // Joins (with the broker: once subscribed, so that every later message
    // from any instance reaches this client) and reads what was missed. A
    // join past a membership limit (100 rooms, by default) is the error
    // -32020, which the page shows.
    let recovery: Recovery = client
        .join_recover(&p.room, json!({ "nick": p.nick }), p.since)
        .await?;
    if fresh {
        // This instance's members hear of it now (other instances
        // announce it from their presence events: see `announce_presence`).
        let _ = hub
            .to(&p.room)
            .except(client.id())
            .local()
            .notify("chat.joined", &json!({ "room": p.room, "nick": p.nick }));
    }
    Ok(Joined {
        members: nicks(&hub.members(&p.room).await),
        history: recovery.publications,
        position: recovery.position,
        recovered: recovery.recovered,
        room: p.room,
    })
}

#[derive(Deserialize)]
#[cfg_attr(feature = "openrpc", derive(schemars::JsonSchema))]
struct SendParams {
    /// A room you joined.
    room: String,
    /// What to say: 1-2000 characters (trimmed).
    text: String,
}

/// What `chat.send` answers.
#[derive(Serialize)]
#[cfg_attr(feature = "openrpc", derive(schemars::JsonSchema))]
struct Sent {
    /// The message's time, in milliseconds since the Unix epoch.
    ts: u64,
    /// Its position in the room's history.
    position: Option<Position>,
}

/// Says something in a room you joined.
///
/// Everyone in the room, you included, gets `chat.message` with its
/// position. The message is stored in the room's history first: if the
/// history backend is down the send fails (-32003) and nobody gets it.
#[rpc_method(
    "chat.send",
    errors(
        -32602 = "invalid room, or a text that is empty or too long",
        -32010 = "not in that room",
        -32003 = "the history backend is unavailable"
    ),
    example(name = "say hello", params = r#"{"room": "lobby", "text": "hello"}"#)
)]
async fn send(client: Client, hub: Hub, Params(p): Params<SendParams>) -> Result<Sent, RpcError> {
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
    let position = hub.to(&p.room).publish("chat.message", &msg).await?;
    Ok(Sent {
        ts: msg.ts,
        position,
    })
}

#[derive(Deserialize)]
#[cfg_attr(feature = "openrpc", derive(schemars::JsonSchema))]
struct RoomParams {
    /// The room: 1-32 letters, digits, `-` or `_`.
    room: String,
}

/// What `chat.leave` answers.
#[derive(Serialize)]
#[cfg_attr(feature = "openrpc", derive(schemars::JsonSchema))]
struct Left {
    /// The room left.
    room: String,
}

/// What `chat.members` answers.
#[derive(Serialize)]
#[cfg_attr(feature = "openrpc", derive(schemars::JsonSchema))]
struct Members {
    /// The room.
    room: String,
    /// The nicknames of its members, on every instance, sorted.
    members: Vec<String>,
}

/// Leaves a room.
///
/// The others in it get `chat.left` (as they do when you disconnect).
#[rpc_method(
    "chat.leave",
    errors(-32602 = "invalid room", -32010 = "not in that room"),
    example(
        name = "leave a room",
        params = r#"{"room": "random"}"#,
        result = r#"{"room": "random"}"#
    )
)]
fn leave(client: Client, Params(p): Params<RoomParams>) -> Result<Left, RpcError> {
    check_room(&p.room)?;
    if !client.leave(&p.room) {
        return Err(RpcError::new(-32010, "not in that room"));
    }
    Ok(Left { room: p.room })
}

/// Lists the members of a room, whether you are in it or not.
#[rpc_method(
    "chat.members",
    errors(-32602 = "invalid room"),
    example(
        name = "who is in the lobby",
        params = r#"{"room": "lobby"}"#,
        result = r#"{"room": "lobby", "members": ["ada"]}"#
    )
)]
async fn members(hub: Hub, Params(p): Params<RoomParams>) -> Result<Members, RpcError> {
    check_room(&p.room)?;
    Ok(Members {
        members: nicks(&hub.members(&p.room).await),
        room: p.room,
    })
}

/// Turns presence events into `chat.joined` and `chat.left` for the
/// members of the room on this instance: every leave (`chat.leave`, a
/// disconnect, and, with a broker, those on other instances and the expiry
/// of a crashed instance's members) and the joins of other instances
/// (local joins are announced by `chat.join` itself).
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
            PresenceEvent::Joined {
                room,
                member,
                remote: true,
            } => ("chat.joined", room, member),
            PresenceEvent::Joined { remote: false, .. } => continue,
            PresenceEvent::Left { room, member, .. } => ("chat.left", room, member),
        };
        let nick = member.meta.get("nick").cloned().unwrap_or_default();
        // Every instance gets every presence event (its own members' and,
        // with a broker, the others'), so each tells only its own clients.
        let _ = hub
            .to(&room)
            .except(member.client)
            .local()
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
    let builder = Server::builder()
        .config(config)
        .history("*", HISTORY, HISTORY_TTL);
    #[cfg(feature = "openrpc")]
    let builder = builder
        .openrpc_info("nbio-ws chat", env!("CARGO_PKG_VERSION"))
        .openrpc_description(
            "Rooms with nicknames, history and member lists. Join a room with `chat.join`, \
             then say things with `chat.send`; what the others do arrives as notifications.",
        )
        .notification::<ChatMessage>(
            "chat.message",
            "A message said in a room you are in (yours included).\n\n\
             The notification also has a `position` member: where it is in the room's history.",
        )
        .notification::<Presence>("chat.joined", "Someone joined a room you are in.")
        .notification::<Presence>(
            "chat.left",
            "Someone left a room you are in, or disconnected.",
        );
    let server = builder
        .page(
            "/",
            "text/html; charset=utf-8",
            include_str!("../../../chat/static/index.html"),
        )
        .page(
            "/app.js",
            "text/javascript; charset=utf-8",
            include_str!("../../../chat/static/app.js"),
        )
        // The nbio-ws JavaScript client, which app.js imports.
        .page(
            "/nbio-ws.js",
            "text/javascript; charset=utf-8",
            include_str!("../../../../clients/js/nbio-ws.js"),
        )
        .page(
            "/style.css",
            "text/css; charset=utf-8",
            include_str!("../../../chat/static/style.css"),
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
