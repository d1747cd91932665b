//! Vocabulary types shared across the crate: client ids, room members
//! and presence events. A leaf: it depends on nothing else in the crate.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The identifier of a connected client, unique within one server
/// instance and, with a broker, across instances (it embeds nothing
/// secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClientId(pub u64);

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
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
