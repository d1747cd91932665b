//! Raw client bytes through the frame reader, the assembler and close
//! parsing, as a connection runs them.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| nbio_ws::__fuzz::frames(data));
