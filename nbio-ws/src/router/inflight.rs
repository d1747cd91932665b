//! [`InFlight`]: the handler tasks of one connection and the limit on how
//! many of its requests run at once.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

/// The handler tasks of one connection, owned by its connection loop.
///
/// Every request that waits (each element of a batch counts as one) holds
/// one of `limit` permits while it runs; the connection reads no new
/// message while none is free. The tasks belong to the connection:
/// dropping this (when the connection ends) aborts those still running.
pub(crate) struct InFlight {
    tasks: JoinSet<()>,
    permits: Arc<Semaphore>,
}

impl InFlight {
    /// Room for `limit` requests at once (at least one).
    pub(crate) fn new(limit: usize) -> Self {
        InFlight {
            tasks: JoinSet::new(),
            permits: Arc::new(Semaphore::new(limit.max(1))),
        }
    }

    /// Whether another request may start now.
    pub(crate) fn has_room(&self) -> bool {
        self.permits.available_permits() > 0
    }

    /// Whether no handler task is running.
    pub(crate) fn is_idle(&self) -> bool {
        self.tasks.is_empty()
    }

    /// A permit for one request, if one is free.
    pub(crate) fn try_permit(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.permits).try_acquire_owned().ok()
    }

    /// The semaphore, for tasks that wait for a permit themselves (the
    /// elements of a batch that found none free).
    pub(crate) fn permits(&self) -> Arc<Semaphore> {
        Arc::clone(&self.permits)
    }

    /// Runs `task` as one of this connection's handler tasks.
    pub(crate) fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        // Forget the tasks that already ended first, so the set stays as
        // small as what runs.
        while self.tasks.try_join_next().is_some() {}
        self.tasks.spawn(task);
    }

    /// Resolves when a task ends (which is then forgotten) or, while none
    /// is free, when a permit is released. For the connection's `select!`
    /// while it is not idle.
    pub(crate) async fn progress(&mut self) {
        let full = !self.has_room();
        tokio::select! {
            biased;
            Some(_) = self.tasks.join_next() => {}
            // Taken and given back at once: this only says there is room.
            _ = self.permits.acquire(), if full => {}
            else => std::future::pending::<()>().await,
        }
    }
}
