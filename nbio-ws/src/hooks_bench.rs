//! Hooks for the criterion benches in `benches/`: drive the router and the
//! hub without sockets. Not a public API.

use crate::hub::{Client, OutRx, SendBuffer};
use crate::ws::conn::Mode;
use crate::{Hub, ServerBuilder};
use bytes::Bytes;
use futures_util::FutureExt;

/// A server's router with one fake client, to time parse + dispatch.
pub struct RpcFixture {
    server: crate::Server,
    client: Client,
    _rx: OutRx,
}

impl RpcFixture {
    /// Builds the server and a client that is not connected to anything.
    pub fn new(builder: ServerBuilder) -> Self {
        let server = builder.build().expect("bench server builds");
        let hub = server.hub().clone();
        let (client, rx) = Client::new(
            &hub,
            ([127, 0, 0, 1], 1).into(),
            None,
            SendBuffer::messages(1024),
        );
        RpcFixture {
            server,
            client,
            _rx: rx,
        }
    }

    /// Parses and dispatches one message; returns the response bytes.
    /// Handlers that wait are not supported (returns `None`).
    pub fn dispatch(&self, text: &str) -> Option<Bytes> {
        let shared = &self.server.endpoint_ref().shared;
        match &shared.mode {
            Mode::Rpc(router) => {
                let (_, fut) = router.dispatch(text, &self.client, &shared.hub);
                fut.now_or_never().flatten()
            }
            Mode::Raw(_) => None,
        }
    }
}

/// A hub with `n` registered clients whose queues are drained by hand.
pub struct HubFixture {
    /// The hub.
    pub hub: Hub,
    /// Its clients, in registration order.
    pub clients: Vec<Client>,
    rxs: Vec<OutRx>,
}

impl HubFixture {
    /// `n` clients with queues of `queue` messages.
    pub fn new(n: usize, queue: usize) -> Self {
        let hub = Hub::new();
        let mut rxs = Vec::with_capacity(n);
        let mut clients = Vec::with_capacity(n);
        for _ in 0..n {
            let (c, rx) = Client::new(
                &hub,
                ([127, 0, 0, 1], 1).into(),
                None,
                SendBuffer::messages(queue),
            );
            hub.register(c.clone());
            clients.push(c);
            rxs.push(rx);
        }
        HubFixture { hub, clients, rxs }
    }

    /// Empties every queue; returns how many messages were queued.
    pub fn drain(&mut self) -> usize {
        let mut n = 0;
        for rx in &mut self.rxs {
            while rx.try_recv().is_some() {
                n += 1;
            }
        }
        n
    }
}
