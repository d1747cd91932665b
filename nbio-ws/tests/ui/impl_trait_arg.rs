use nbio_ws::{rpc_method, FromRequest, Params};

#[rpc_method("impl.arg")]
fn impl_arg(_x: impl FromRequest) {}

#[rpc_method("impl.nested")]
fn impl_nested(Params(p): Params<Vec<Box<dyn Fn() -> u8>>>, _y: Option<impl FromRequest>) -> usize {
    p.len()
}

fn main() {}
