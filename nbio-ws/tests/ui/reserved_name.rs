use nbio_ws::rpc_method;

// JSON-RPC 2.0 reserves names that begin with `rpc.` for the protocol.
#[rpc_method("rpc.discover")]
fn discover() {}

fn main() {}
