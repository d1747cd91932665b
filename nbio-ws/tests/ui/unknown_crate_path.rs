use nbio_ws::rpc_method;

// `crate = ...` really replaces `::nbio_ws` in the generated code.
#[rpc_method("ping", crate = "no_such_crate")]
fn ping() -> &'static str {
    "pong"
}

fn main() {}
