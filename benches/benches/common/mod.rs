//! What the criterion benches share.

use std::time::Duration;

use criterion::Criterion;

/// Criterion with a short warm-up and measurement (1 s and 3 s): enough for
/// these in-process benches, short enough for a 2-core machine.
#[allow(dead_code)] // the rooms bench keeps criterion's defaults
pub fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

/// A current-thread tokio runtime, entered by the caller: the fixtures
/// spawn nothing, but clients and queues need a runtime to exist.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}
