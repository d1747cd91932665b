use nbio_ws::{rpc_method, RpcError};

struct Opaque {
    value: u32,
}

#[rpc_method("plain")]
fn plain() -> Opaque {
    Opaque { value: 1 }
}

#[rpc_method("in.result")]
async fn in_result() -> Result<Opaque, RpcError> {
    Ok(Opaque { value: 1 })
}

struct MyError;

#[rpc_method("bad.error")]
fn bad_error() -> Result<u32, MyError> {
    Err(MyError)
}

// A `Result` is never serialized as a plain value (`{"Ok": ..}`), even
// when both of its sides could be, or when it is behind an alias.
#[rpc_method("string.error")]
fn string_error() -> Result<u32, String> {
    Ok(1)
}

type Loose<T> = Result<T, String>;

#[rpc_method("alias.string.error")]
fn alias_string_error() -> Loose<u32> {
    Ok(1)
}

fn main() {
    let _ = (plain().value, MyError);
}
