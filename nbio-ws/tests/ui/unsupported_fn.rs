use nbio_ws::rpc_method;

#[rpc_method("unsafe")]
unsafe fn unsafe_fn() {}

#[rpc_method("extern")]
extern "C" fn extern_fn() {}

fn main() {}
