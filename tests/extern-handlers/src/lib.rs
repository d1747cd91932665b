//! Test fixture: JSON-RPC methods defined in a library crate of their own.
//!
//! Nothing here is called by name. A binary that links this crate serves
//! both methods, because `#[rpc_method]` registers them at link time; see
//! `examples/tests/extern_registration.rs`.

use nbio_ws::{rpc_method, Client, Params, RpcError};
use serde::Deserialize;

/// The params of `extern.add`, by name (`{"a": 1, "b": 2}`) or by position
/// (`[1, 2]`).
#[derive(Debug, Deserialize)]
pub struct AddParams {
    /// Left operand.
    pub a: i64,
    /// Right operand.
    pub b: i64,
}

/// The method names this crate registers.
pub const METHODS: [&str; 2] = ["extern.add", "extern.whoami"];

/// `extern.add`: `a + b`, or `-32000` on overflow.
#[rpc_method("extern.add")]
pub async fn add(Params(p): Params<AddParams>) -> Result<i64, RpcError> {
    p.a.checked_add(p.b)
        .ok_or_else(|| RpcError::new(-32000, "overflow"))
}

/// `extern.whoami`: the caller's client id, as a string.
#[rpc_method("extern.whoami")]
pub fn whoami(client: Client) -> String {
    client.id().to_string()
}
