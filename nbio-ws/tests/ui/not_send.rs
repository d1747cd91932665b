use std::rc::Rc;

use nbio_ws::rpc_method;

async fn tick() {}

#[rpc_method("not.send")]
async fn not_send() -> usize {
    let shared = Rc::new(5);
    tick().await;
    *shared
}

fn main() {}
