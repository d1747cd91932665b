//! Close-frame payload parsing.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| nbio_ws::__fuzz::close_frame(data));
