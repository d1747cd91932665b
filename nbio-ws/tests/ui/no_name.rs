use nbio_ws::rpc_method;

#[rpc_method]
fn no_parens() {}

#[rpc_method()]
fn empty_parens() {}

fn main() {}
