//! Every accepted form of `#[rpc_method]`, registered and answering.

use nbio_ws::__bench::RpcFixture;
use nbio_ws::{rpc_method, Client, FromRequest, Hub, Params, RequestContext, RpcError, State};

#[rpc_method("pass.ping")]
fn ping() -> &'static str {
    "pong"
}

#[rpc_method("pass.unit")]
fn unit() {}

#[rpc_method("pass.unit.explicit")]
async fn unit_explicit() -> () {}

#[rpc_method("pass.add")]
async fn add(Params((a, b)): Params<(i64, i64)>) -> Result<i64, RpcError> {
    Ok(a + b)
}

#[rpc_method("pass.fail")]
fn fail() -> Result<u32, RpcError> {
    Err(RpcError::new(-32000, "refused"))
}

/// An alias of `Result` is still a `Result` (not serialized as `{"Ok":..}`).
type Answer<T> = Result<T, RpcError>;

#[rpc_method("pass.alias")]
fn alias() -> Answer<u8> {
    Ok(7)
}

/// Any error that converts into `RpcError`.
struct Denied;

impl From<Denied> for RpcError {
    fn from(_: Denied) -> Self {
        RpcError::new(-32001, "denied")
    }
}

#[rpc_method("pass.into.error")]
async fn into_error() -> Result<(), Denied> {
    Err(Denied)
}

/// Any pattern binds an argument.
#[rpc_method("pass.patterns")]
fn patterns(_: Hub, mut client: Client, Params([x, y]): Params<[u16; 2]>) -> u16 {
    client = client.clone();
    let _ = client.id();
    x * y
}

/// A custom extractor.
struct MethodName(String);

impl FromRequest for MethodName {
    fn from_request(ctx: &RequestContext) -> Result<Self, RpcError> {
        Ok(MethodName(ctx.method().to_owned()))
    }
}

#[rpc_method("pass.custom")]
fn custom(MethodName(m): MethodName) -> String {
    m
}

struct Counter(u32);

#[rpc_method("pass.state")]
fn state(State(counter): State<Counter>, Params([n]): Params<[u32; 1]>) -> u32 {
    counter.0 + n
}

#[rpc_method("pass.const")]
const fn const_fn() -> u8 {
    3
}

#[rpc_method("pass.opaque")]
fn opaque() -> impl serde::Serialize {
    [1, 2, 3]
}

#[rpc_method("pass.raw.ident")]
fn r#match() -> bool {
    true
}

#[rpc_method("pass.stacked.one")]
#[rpc_method("pass.stacked.two")]
fn stacked(_: Client) -> &'static str {
    "stacked"
}

mod renamed {
    pub use nbio_ws as inner;
}

#[rpc_method("pass.crate.string", crate = "crate::renamed::inner")]
fn crate_string() -> u8 {
    1
}

extern crate nbio_ws as my_nbio;

#[my_nbio::rpc_method("pass.crate.path", crate = my_nbio,)]
fn crate_path() -> u8 {
    2
}

mod nested {
    use nbio_ws::rpc_method;

    #[rpc_method("pass.nested")]
    pub(crate) async fn nested(nbio_ws::Params((s,)): nbio_ws::Params<(String,)>) -> usize {
        s.len()
    }
}

fn main() {
    // In a function body too.
    #[rpc_method("pass.local")]
    fn local() -> u8 {
        5
    }

    // The functions are still there, callable as written.
    assert_eq!(ping(), "pong");
    assert!(r#match());
    assert_eq!(const_fn(), 3);

    let names: Vec<&str> = nbio_ws::registered_methods().map(|m| m.name()).collect();
    for expected in [
        "pass.ping",
        "pass.unit",
        "pass.unit.explicit",
        "pass.add",
        "pass.fail",
        "pass.alias",
        "pass.into.error",
        "pass.patterns",
        "pass.custom",
        "pass.state",
        "pass.const",
        "pass.opaque",
        "pass.raw.ident",
        "pass.stacked.one",
        "pass.stacked.two",
        "pass.crate.string",
        "pass.crate.path",
        "pass.nested",
        "pass.local",
    ] {
        assert_eq!(
            names.iter().filter(|n| **n == expected).count(),
            1,
            "{expected} in {names:?}"
        );
    }
    let location = |name: &str| {
        nbio_ws::registered_methods()
            .find(|m| m.name() == name)
            .unwrap()
            .location()
    };
    let here = module_path!();
    assert_eq!(location("pass.ping"), format!("{here}::ping"));
    assert_eq!(location("pass.raw.ident"), format!("{here}::match"));
    assert_eq!(location("pass.nested"), format!("{here}::nested::nested"));

    let fx = RpcFixture::new(nbio_ws::Server::builder().state(Counter(40)));
    let call = |method: &str, params: &str| {
        let text = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{params}}}"#);
        let out = fx.dispatch(&text).expect("an answer");
        String::from_utf8(out.to_vec()).unwrap()
    };
    let ok = |result: &str| format!(r#"{{"jsonrpc":"2.0","result":{result},"id":1}}"#);

    assert_eq!(call("pass.ping", "[]"), ok(r#""pong""#));
    assert_eq!(call("pass.unit", "[]"), ok("null"));
    assert_eq!(call("pass.unit.explicit", "[]"), ok("null"));
    assert_eq!(call("pass.add", "[2, 3]"), ok("5"));
    assert!(call("pass.fail", "[]").contains(r#""code":-32000"#));
    assert_eq!(call("pass.alias", "[]"), ok("7"));
    assert!(call("pass.into.error", "[]").contains(r#""code":-32001"#));
    assert_eq!(call("pass.patterns", "[6, 7]"), ok("42"));
    assert_eq!(call("pass.custom", "[]"), ok(r#""pass.custom""#));
    assert_eq!(call("pass.state", "[2]"), ok("42"));
    assert_eq!(call("pass.const", "[]"), ok("3"));
    assert_eq!(call("pass.opaque", "[]"), ok("[1,2,3]"));
    assert_eq!(call("pass.raw.ident", "[]"), ok("true"));
    assert_eq!(call("pass.stacked.one", "[]"), ok(r#""stacked""#));
    assert_eq!(call("pass.stacked.two", "[]"), ok(r#""stacked""#));
    assert_eq!(call("pass.crate.string", "[]"), ok("1"));
    assert_eq!(call("pass.crate.path", "[]"), ok("2"));
    assert_eq!(call("pass.nested", r#"["four"]"#), ok("4"));
    assert_eq!(call("pass.local", "[]"), ok("5"));
    // A failing extractor answers its error; the function does not run.
    assert!(call("pass.add", r#"{"a": 1}"#).contains(r#""code":-32602"#));
}
