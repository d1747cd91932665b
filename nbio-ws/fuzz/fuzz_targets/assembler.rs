//! The fragment assembler on arbitrary frame sequences.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| nbio_ws::__fuzz::assembler(data));
