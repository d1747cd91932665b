//! The JSON-RPC decoder and encoders on arbitrary text.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| nbio_ws::__fuzz::jsonrpc_parse(data));
