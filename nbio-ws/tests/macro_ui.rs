//! Compile-time behavior of `#[rpc_method]`: what it accepts, and the
//! errors it gives for what it refuses (message and span), checked with
//! trybuild against the `.stderr` files in `tests/ui/`.
//!
//! Regenerate the expected output after an intended change with
//! `TRYBUILD=overwrite cargo test -p nbio-ws --test macro_ui`, then read
//! the diff.

#[test]
fn rpc_method_ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/*.rs");
}
