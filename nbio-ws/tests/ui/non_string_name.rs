use nbio_ws::rpc_method;

#[rpc_method(ping)]
fn ident_name() {}

#[rpc_method(42)]
fn number_name() {}

#[rpc_method(crate = "nbio_ws")]
fn option_first() {}

fn main() {}
