use nbio_ws::rpc_method;

struct Service;

impl Service {
    #[rpc_method("service.call")]
    fn call(&self) -> u32 {
        1
    }
}

fn main() {}
