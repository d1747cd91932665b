//! Vocabulary types shared across the crate: client ids, room members
//! and presence events. A leaf: it depends on nothing else in the crate.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

/// The identifier of a connected client: unique within one server
/// instance and, with overwhelming probability, across instances and
/// restarts (it embeds nothing secret).
///
/// An id is 128 bits: the high 64 are the issuing instance's random id
/// ([`Hub::instance_id`](crate::Hub::instance_id)), the low 64 a counter
/// that starts at 1 on every instance and only grows (it would take
/// centuries of a billion connections a second to wrap). Two instances
/// clash only if they draw the same 64-bit instance id.
///
/// **Text form**: 32 lowercase hexadecimal digits, the instance id then
/// the counter (`"9f3a5c0e1d2b4a67000000000000002a"`). That is what
/// [`Display`](fmt::Display) writes, [`FromStr`](std::str::FromStr) reads
/// (upper case accepted too) and serde uses: in JSON a client id is a
/// **string**, never a number (JavaScript numbers hold 53 bits).
///
/// ```
/// use nbio_ws::ClientId;
///
/// let id = ClientId::from_parts(0x9f3a_5c0e_1d2b_4a67, 42);
/// assert_eq!(id.to_string(), "9f3a5c0e1d2b4a67000000000000002a");
/// assert_eq!("9f3a5c0e1d2b4a67000000000000002a".parse::<ClientId>(), Ok(id));
/// assert_eq!(serde_json::to_string(&id).unwrap(), r#""9f3a5c0e1d2b4a67000000000000002a""#);
/// assert_eq!((id.instance(), id.counter()), (0x9f3a_5c0e_1d2b_4a67, 42));
/// assert!("42".parse::<ClientId>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(u128);

impl ClientId {
    /// The id of the `counter`-th client of instance `instance`.
    pub const fn from_parts(instance: u64, counter: u64) -> ClientId {
        ClientId(((instance as u128) << 64) | counter as u128)
    }

    /// The id with these 128 bits (instance id in the high half).
    pub const fn from_u128(bits: u128) -> ClientId {
        ClientId(bits)
    }

    /// The id's 128 bits.
    pub const fn as_u128(self) -> u128 {
        self.0
    }

    /// The random id of the instance that issued this id.
    pub const fn instance(self) -> u64 {
        (self.0 >> 64) as u64
    }

    /// The issuing instance's counter.
    pub const fn counter(self) -> u64 {
        self.0 as u64
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// A string that is not the text form of a [`ClientId`] (32 hexadecimal
/// digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a client id is 32 hexadecimal digits")]
pub struct ParseClientIdError;

impl std::str::FromStr for ClientId {
    type Err = ParseClientIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ParseClientIdError);
        }
        u128::from_str_radix(s, 16)
            .map(ClientId)
            .map_err(|_| ParseClientIdError)
    }
}

impl Serialize for ClientId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ClientId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ClientId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a client id: a string of 32 hexadecimal digits")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ClientId, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// A member of a room, as [`Hub::members`](crate::Hub::members) reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// The member's client id.
    pub client: ClientId,
    /// What the client joined with ([`Client::join_with`](crate::Client::join_with)); `null` for a
    /// plain [`Client::join`](crate::Client::join).
    pub meta: serde_json::Value,
}

/// A join or a leave.
///
/// Events of this instance's own clients (`remote: false`) are sent while
/// the membership changes, in order; with a broker, those of other
/// instances' clients (`remote: true`) follow as they are replicated here
/// — including the `Left` of every member of an instance that went silent
/// for the presence TTL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PresenceEvent {
    /// A client joined a room.
    Joined {
        /// The room.
        room: String,
        /// Who joined.
        member: Member,
        /// Whether the client is connected to another instance.
        remote: bool,
    },
    /// A client left a room (or disconnected while in it).
    Left {
        /// The room.
        room: String,
        /// Who left.
        member: Member,
        /// Whether the client is (or was) connected to another instance.
        remote: bool,
    },
}

impl PresenceEvent {
    /// The room.
    pub fn room(&self) -> &str {
        match self {
            PresenceEvent::Joined { room, .. } | PresenceEvent::Left { room, .. } => room,
        }
    }

    /// Who joined or left.
    pub fn member(&self) -> &Member {
        match self {
            PresenceEvent::Joined { member, .. } | PresenceEvent::Left { member, .. } => member,
        }
    }

    /// Whether the member is on another instance.
    pub fn is_remote(&self) -> bool {
        match self {
            PresenceEvent::Joined { remote, .. } | PresenceEvent::Left { remote, .. } => *remote,
        }
    }
}

/// A boxed, sendable future, as [`Broker`](crate::broker::Broker) and
/// [`HistoryStore`](crate::history::HistoryStore) methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why [`Client::join`](crate::Client::join) or [`Client::join_with`](crate::Client::join_with) refused a join. The
/// client's memberships are unchanged.
///
/// Converts into the JSON-RPC error `-32020`
/// ([`RpcError::JOIN_REFUSED`](crate::RpcError::JOIN_REFUSED)), whose `data` names the reason and the
/// limit, so a handler can return it with `?`:
///
/// ```
/// use nbio_ws::{JoinError, RpcError};
///
/// let e = RpcError::from(JoinError::TooManyRooms { limit: 100 });
/// assert_eq!(e.code, RpcError::JOIN_REFUSED);
/// assert_eq!(e.message, "Join refused");
/// assert_eq!(e.data.as_ref().unwrap()["reason"], "too_many_rooms");
/// assert_eq!(e.data.as_ref().unwrap()["limit"], 100);
/// assert_eq!(
///     e.data.unwrap()["detail"],
///     "a client may be in at most 100 rooms: leave one first"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// The client is already in the most rooms it may be in
    /// (`WS_MAX_ROOMS_PER_CLIENT`, default 100).
    #[error("a client may be in at most {limit} rooms: leave one first")]
    TooManyRooms {
        /// The limit.
        limit: usize,
    },
    /// The room name is longer than [`Client::MAX_ROOM_NAME_BYTES`](crate::Client::MAX_ROOM_NAME_BYTES).
    #[error("a room name is at most {max} bytes")]
    RoomNameTooLong {
        /// The limit, in bytes of UTF-8.
        max: usize,
    },
    /// The presence data, serialized as JSON, is larger than
    /// [`Client::MAX_META_BYTES`](crate::Client::MAX_META_BYTES).
    #[error("presence data is at most {max} bytes of JSON")]
    MetaTooLarge {
        /// The limit, in bytes.
        max: usize,
    },
    /// The client is disconnected (or its server is gone).
    #[error("the client is disconnected")]
    Disconnected,
}

/// Why [`Hub::broadcast`](crate::Hub::broadcast) or a room's
/// [`notify`](crate::RoomSender::notify) sent nothing.
///
/// Converts into a JSON-RPC error, so a handler can return it with `?`:
/// [`TooLarge`](BroadcastError::TooLarge) becomes `-32021`
/// ([`RpcError::MESSAGE_TOO_LARGE`](crate::RpcError::MESSAGE_TOO_LARGE))
/// with `data.size` and `data.limit`, [`Serialize`](BroadcastError::Serialize)
/// `-32603`.
///
/// ```
/// use nbio_ws::{BroadcastError, RpcError};
///
/// let e = RpcError::from(BroadcastError::TooLarge { size: 2_000_000, limit: 1_048_576 });
/// assert_eq!(e.code, RpcError::MESSAGE_TOO_LARGE);
/// assert_eq!(e.data.as_ref().unwrap()["limit"], 1_048_576);
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BroadcastError {
    /// The params could not be serialized.
    #[error("cannot serialize the message: {0}")]
    Serialize(#[from] serde_json::Error),
    /// The message is larger than one broker payload may be, so it could
    /// not reach the other instances: it was sent to nobody, here or
    /// elsewhere (never a partial delivery). Counted in
    /// `nbio_ws_broker_messages_too_large_total`.
    #[error("the message is {size} bytes as published; the broker accepts at most {limit}")]
    TooLarge {
        /// The bytes it would take in one broker payload.
        size: usize,
        /// The most one payload may take: the broker's limit (NATS's
        /// `max_payload`), or the publish queue's (`WS_PUBSUB_QUEUE_BYTES`)
        /// if smaller.
        limit: usize,
    },
}

impl JoinError {
    /// The `data.reason` of the JSON-RPC error.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            JoinError::TooManyRooms { .. } => "too_many_rooms",
            JoinError::RoomNameTooLong { .. } => "room_name_too_long",
            JoinError::MetaTooLarge { .. } => "meta_too_large",
            JoinError::Disconnected => "disconnected",
        }
    }

    /// The limit that refused the join, if one did.
    pub(crate) fn limit(&self) -> Option<usize> {
        match self {
            JoinError::TooManyRooms { limit } => Some(*limit),
            JoinError::RoomNameTooLong { max } | JoinError::MetaTooLarge { max } => Some(*max),
            JoinError::Disconnected => None,
        }
    }
}
