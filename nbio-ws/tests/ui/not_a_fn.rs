use nbio_ws::rpc_method;

#[rpc_method("a")]
struct NotAFunction {
    field: u32,
}

#[rpc_method("b")]
const NOT_A_FUNCTION_EITHER: u32 = 1;

fn main() {}
