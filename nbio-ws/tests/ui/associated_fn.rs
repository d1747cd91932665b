use nbio_ws::rpc_method;

struct Service;

// An associated function, even without `self`, is not a free function.
impl Service {
    #[rpc_method("service.create")]
    fn create() -> u32 {
        1
    }
}

fn main() {}
