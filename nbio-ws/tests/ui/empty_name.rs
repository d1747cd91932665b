use nbio_ws::rpc_method;

#[rpc_method("")]
fn empty() {}

fn main() {}
