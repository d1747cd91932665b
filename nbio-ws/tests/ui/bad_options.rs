use nbio_ws::rpc_method;

#[rpc_method("a", name = "b")]
fn unknown_option() {}

#[rpc_method("b", crate = "nbio_ws", crate = "nbio_ws")]
fn duplicate_crate() {}

#[rpc_method("c" "d")]
fn missing_comma() {}

#[rpc_method("d", crate = "not a path")]
fn bad_crate_string() {}

fn main() {}
