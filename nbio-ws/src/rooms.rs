//! Rooms and presence: named groups of clients, fan-out to a room, and
//! who is in it.
//!
//! ```
//! # async fn demo(client: nbio_ws::Client, hub: nbio_ws::Hub) {
//! use serde_json::json;
//!
//! client.join_with("lobby", json!({"nick": "ada"}));
//! // Everyone in the lobby but the sender, serialized once:
//! hub.to("lobby").except(client.id()).notify("chat.message", &json!({"text": "hi"})).ok();
//! let members = hub.members("lobby").await;
//! assert!(members.iter().any(|m| m.client == client.id()));
//! client.leave("lobby");
//! # }
//! ```
//!
//! Membership lives on the instance the client is connected to and is
//! dropped when the client disconnects; every join and leave (including
//! those caused by a disconnect) is published as a [`PresenceEvent`] on
//! [`Hub::presence_events`]. Each member carries the JSON `meta` it joined
//! with (a nickname, a user id), which is what [`Hub::members`] reports.
//!
//! The registry is a sharded map from room name to members, plus, per
//! client, the list of its rooms (so a disconnect leaves them all without a
//! scan).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::client::{Client, ClientId, Outbound};
use crate::hub::Hub;
use crate::jsonrpc;

/// A member of a room, as [`Hub::members`] reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// The member's client id.
    pub client: ClientId,
    /// What the client joined with ([`Client::join_with`]); `null` for a
    /// plain [`Client::join`].
    pub meta: serde_json::Value,
}

/// A join or a leave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PresenceEvent {
    /// A client joined a room.
    Joined {
        /// The room.
        room: String,
        /// Who joined.
        member: Member,
    },
    /// A client left a room (or disconnected while in it).
    Left {
        /// The room.
        room: String,
        /// Who left.
        member: Member,
    },
}

struct Entry {
    client: Client,
    meta: serde_json::Value,
}

/// The room registry of one hub.
pub(crate) struct Rooms {
    rooms: DashMap<Arc<str>, HashMap<ClientId, Entry>>,
    by_client: DashMap<ClientId, Vec<Arc<str>>>,
    events: broadcast::Sender<PresenceEvent>,
}

impl Default for Rooms {
    fn default() -> Self {
        Rooms {
            rooms: DashMap::new(),
            by_client: DashMap::new(),
            events: broadcast::channel(1024).0,
        }
    }
}

impl Rooms {
    fn join(&self, client: &Client, room: &str, meta: serde_json::Value) -> bool {
        let name: Arc<str> = match self.rooms.get(room) {
            Some(e) => Arc::clone(e.key()),
            None => Arc::from(room),
        };
        let member = Member {
            client: client.id(),
            meta: meta.clone(),
        };
        let fresh = {
            let mut members = self.rooms.entry(Arc::clone(&name)).or_default();
            members
                .insert(
                    client.id(),
                    Entry {
                        client: client.clone(),
                        meta,
                    },
                )
                .is_none()
        };
        if fresh {
            self.by_client.entry(client.id()).or_default().push(name);
            // A repeated join only updates the member's data: no event.
            let _ = self.events.send(PresenceEvent::Joined {
                room: room.to_owned(),
                member,
            });
        }
        fresh
    }

    fn leave(&self, id: ClientId, room: &str) -> bool {
        let removed = self.remove_member(id, room);
        if removed {
            if let Some(mut rooms) = self.by_client.get_mut(&id) {
                rooms.retain(|r| &**r != room);
            }
            self.by_client.remove_if(&id, |_, rooms| rooms.is_empty());
        }
        removed
    }

    fn remove_member(&self, id: ClientId, room: &str) -> bool {
        let entry = match self.rooms.get_mut(room) {
            Some(mut members) => members.remove(&id),
            None => None,
        };
        self.rooms.remove_if(room, |_, members| members.is_empty());
        match entry {
            Some(e) => {
                let _ = self.events.send(PresenceEvent::Left {
                    room: room.to_owned(),
                    member: Member {
                        client: id,
                        meta: e.meta,
                    },
                });
                true
            }
            None => false,
        }
    }

    /// Drops every membership of a client (on disconnect).
    pub(crate) fn leave_all(&self, id: ClientId) {
        if let Some((_, rooms)) = self.by_client.remove(&id) {
            for room in rooms {
                self.remove_member(id, &room);
            }
        }
    }

    fn rooms_of(&self, id: ClientId) -> Vec<String> {
        self.by_client
            .get(&id)
            .map(|r| r.iter().map(|n| n.to_string()).collect())
            .unwrap_or_default()
    }

    fn members(&self, room: &str) -> Vec<Member> {
        let mut out: Vec<Member> = self
            .rooms
            .get(room)
            .map(|m| {
                m.iter()
                    .map(|(id, e)| Member {
                        client: *id,
                        meta: e.meta.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by_key(|m| m.client);
        out
    }

    fn send(&self, room: &str, except: Option<ClientId>, bytes: &Bytes) -> usize {
        let Some(members) = self.rooms.get(room) else {
            return 0;
        };
        members
            .iter()
            .filter(|(id, _)| Some(**id) != except)
            .filter(|(_, e)| e.client.send(Outbound::Text(bytes.clone())).is_ok())
            .count()
    }

    /// How many rooms have members (for tests and metrics).
    pub(crate) fn room_count(&self) -> usize {
        self.rooms.len()
    }
}

impl Client {
    /// Joins `room` (no presence data). Returns `false` if the client was
    /// already a member.
    pub fn join(&self, room: &str) -> bool {
        self.join_with(room, serde_json::Value::Null)
    }

    /// Joins `room` with presence data (`meta`, e.g. `{"nick": "ada"}`),
    /// which [`Hub::members`] reports. Joining again updates the data
    /// without a new [`PresenceEvent::Joined`].
    pub fn join_with(&self, room: &str, meta: serde_json::Value) -> bool {
        match self.hub() {
            Some(hub) => hub.0.rooms.join(self, room, meta),
            None => false,
        }
    }

    /// Leaves `room`. Returns `false` if the client was not a member.
    pub fn leave(&self, room: &str) -> bool {
        match self.hub() {
            Some(hub) => hub.0.rooms.leave(self.id(), room),
            None => false,
        }
    }

    /// The rooms this client is in.
    pub fn rooms(&self) -> Vec<String> {
        self.hub()
            .map(|hub| hub.0.rooms.rooms_of(self.id()))
            .unwrap_or_default()
    }

    /// Whether this client is in `room`.
    pub fn in_room(&self, room: &str) -> bool {
        self.hub().is_some_and(|hub| {
            hub.0
                .rooms
                .rooms
                .get(room)
                .is_some_and(|m| m.contains_key(&self.id()))
        })
    }
}

/// Sends to the members of one room; made by [`Hub::to`].
#[derive(Debug, Clone)]
pub struct RoomSender<'h> {
    hub: &'h Hub,
    room: String,
    except: Option<ClientId>,
}

impl RoomSender<'_> {
    /// Leaves one client out (typically the sender).
    pub fn except(mut self, id: ClientId) -> Self {
        self.except = Some(id);
        self
    }

    /// Sends the notification `method(params)`, serialized once, to every
    /// member. Returns how many clients it was queued for.
    pub fn notify<P: Serialize + ?Sized>(
        &self,
        method: &str,
        params: &P,
    ) -> Result<usize, serde_json::Error> {
        let bytes = jsonrpc::encode_notification(method, params)?;
        Ok(self.send_text(bytes))
    }

    /// Queues an encoded text message for every member.
    pub fn send_text(&self, bytes: Bytes) -> usize {
        self.hub.metrics().broadcast();
        self.hub.0.rooms.send(&self.room, self.except, &bytes)
    }
}

impl Hub {
    /// Addresses the members of `room`.
    pub fn to(&self, room: &str) -> RoomSender<'_> {
        RoomSender {
            hub: self,
            room: room.to_owned(),
            except: None,
        }
    }

    /// The members of `room`, sorted by client id.
    pub async fn members(&self, room: &str) -> Vec<Member> {
        self.0.rooms.members(room)
    }

    /// A stream of joins and leaves (including leaves caused by
    /// disconnects). A receiver that falls more than 1024 events behind
    /// gets `RecvError::Lagged` and skips ahead.
    pub fn presence_events(&self) -> broadcast::Receiver<PresenceEvent> {
        self.0.rooms.events.subscribe()
    }

    /// How many rooms have at least one member on this instance.
    pub fn room_count(&self) -> usize {
        self.0.rooms.room_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(hub: &Hub) -> Client {
        let (c, rx) = Client::new(hub, "127.0.0.1:1".parse().unwrap(), None, 16);
        std::mem::forget(rx);
        hub.register(c.clone());
        c
    }

    #[tokio::test]
    async fn join_leave_and_fan_out() {
        let hub = Hub::new();
        let mut events = hub.presence_events();
        let (a, b, c) = (client(&hub), client(&hub), client(&hub));
        assert!(a.join_with("r", serde_json::json!({"nick": "a"})));
        assert!(!a.join("r"));
        assert!(b.join("r"));
        assert!(c.join("other"));
        assert_eq!(hub.to("r").notify("m", &1).unwrap(), 2);
        assert_eq!(hub.to("r").except(a.id()).notify("m", &1).unwrap(), 1);
        assert_eq!(hub.members("r").await.len(), 2);
        assert_eq!(a.rooms(), vec!["r".to_string()]);
        assert!(a.in_room("r") && !a.in_room("other"));
        assert!(b.leave("r"));
        assert!(!b.leave("r"));
        assert_eq!(hub.members("r").await.len(), 1);
        hub.0.rooms.leave_all(a.id());
        assert!(hub.members("r").await.is_empty());
        assert_eq!(hub.room_count(), 1);
        let mut seen = Vec::new();
        while let Ok(e) = events.try_recv() {
            seen.push(match e {
                PresenceEvent::Joined { room, .. } => format!("+{room}"),
                PresenceEvent::Left { room, .. } => format!("-{room}"),
            });
        }
        assert_eq!(seen, ["+r", "+r", "+other", "-r", "-r"]);
    }
}
