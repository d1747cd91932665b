//! Parse + dispatch through a router (with a rate limiter refusing some
//! requests), on arbitrary text.
#![no_main]
use std::sync::OnceLock;

static DISPATCHER: OnceLock<nbio_ws::__fuzz::Dispatcher> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let d = DISPATCHER.get_or_init(nbio_ws::__fuzz::Dispatcher::new);
    let _ = d.dispatch(data);
});
