//! The cluster machinery: how a hub talks to the other instances through
//! a [`Broker`](crate::broker::Broker).
//!
//! - [`link`]: the ordered publish queue, the one publisher task that
//!   drains it, the receiver tasks (shared channel, presence, one per room
//!   with local members) and the presence task (heartbeats, expiry,
//!   snapshots);
//! - [`envelope`]: the compact binary codec of what travels between
//!   instances;
//! - [`presence`]: the replica of the other instances' room members.
//!
//! The cluster never reaches into the registry: what arrives from other
//! instances is handed to an [`Inbound`], which the hub implements. The
//! registry depends on the cluster (to publish), never the reverse.

pub(crate) mod envelope;
pub(crate) mod link;
pub(crate) mod presence;

use std::sync::Arc;

use bytes::Bytes;

pub(crate) use link::Link;

use crate::types::ClientId;
use envelope::{Presence, SnapshotMembers};
use presence::Reply;

/// Where a link delivers what other instances published, and where it
/// reads what this instance has. Implemented by the hub.
pub(crate) trait Inbound: Send + Sync + 'static {
    /// A broadcast for every local client.
    fn broadcast(&self, text: Bytes);
    /// A message for one client, if it is connected here.
    fn direct(&self, id: ClientId, text: Bytes);
    /// A message for the local members of a room.
    fn room(&self, room: &str, except: Option<ClientId>, text: &Bytes);
    /// A presence entry from instance `origin` (this instance is `me`).
    fn presence(&self, me: u64, origin: u64, entry: Presence) -> Reply;
    /// A hole in `origin`'s presence messages.
    fn presence_gap(&self, origin: u64);
    /// Drops the members of instances that went silent.
    fn expire_remote(&self);
    /// The highest presence version queued for the other instances (what
    /// a heartbeat carries).
    fn presence_version(&self) -> u64;
    /// Hands this instance's memberships to `part`, in parts of about
    /// `part_bytes` (`part(since, members, index, count)`), without
    /// holding up joins and leaves.
    fn snapshot(&self, part_bytes: usize, part: &mut dyn FnMut(u64, SnapshotMembers, u32, u32));
    /// Calls `f` for every room with local members, each while that room
    /// cannot lose its last member.
    fn local_rooms(&self, f: &mut dyn FnMut(&Arc<str>));
    /// A publication to a room with history.
    fn publication(self: Arc<Self>, room: &str, p: Publication);
    /// The broker confirmed the room's subscription again (after a
    /// reconnection): what it carried meanwhile may be lost.
    fn resync(self: Arc<Self>, room: &str);
}

/// A publication to a room with history, as it arrives from another
/// instance.
pub(crate) struct Publication {
    pub epoch: Arc<str>,
    pub offset: u64,
    pub prev: u64,
    pub except: Option<ClientId>,
    pub text: Bytes,
}
