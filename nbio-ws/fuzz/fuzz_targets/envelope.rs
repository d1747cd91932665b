//! Broker envelopes: decoding, re-encoding, and presence replication.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| nbio_ws::__fuzz::envelope(data));
