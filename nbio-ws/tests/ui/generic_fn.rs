use nbio_ws::{rpc_method, FromRequest, Params};

#[rpc_method("generic.type")]
fn with_type_param<T: FromRequest>(_t: T) {}

#[rpc_method("generic.const")]
fn with_const_param<const N: usize>(Params(p): Params<[u8; N]>) -> usize {
    p.len()
}

#[rpc_method("generic.lifetime")]
fn with_lifetime<'a>() -> &'a str {
    "x"
}

#[rpc_method("generic.where")]
fn with_where_clause() -> u32
where
    u32: Copy,
{
    1
}

fn main() {}
