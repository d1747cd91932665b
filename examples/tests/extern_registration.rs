//! `#[rpc_method]` handlers defined in another crate are registered when
//! that crate is linked, even if nothing calls them by name: the
//! `nbio-ws-extern-handlers` fixture (tests/extern-handlers) is only
//! linked here, never referred to, and its methods are served over a real
//! WebSocket.

// Links the crate; nothing in it is named below.
use nbio_ws_extern_handlers as _;

use nbio_ws_testkit::{TestServer, WsClient};
use serde_json::{json, Value};

#[test]
fn extern_methods_are_in_the_registry() {
    let registered: Vec<_> = nbio_ws::registered_methods()
        .map(|m| (m.name(), m.location()))
        .collect();
    for (name, location) in [
        ("extern.add", "nbio_ws_extern_handlers::add"),
        ("extern.whoami", "nbio_ws_extern_handlers::whoami"),
    ] {
        assert!(
            registered.contains(&(name, location)),
            "{name} ({location}) is not in {registered:?}"
        );
    }
}

async fn call(ws: &mut WsClient, request: Value) -> Value {
    ws.send_json(&request).await;
    ws.recv_json().await
}

#[tokio::test]
async fn extern_methods_are_served() {
    let server = nbio_ws::Server::builder().build().expect("server builds");
    let names = server.method_names();
    assert!(names.contains(&"extern.add"), "{names:?}");
    assert!(names.contains(&"extern.whoami"), "{names:?}");

    let mut s = TestServer::start(nbio_ws::Server::builder()).await;
    let hub = s.hub.clone();
    let mut ws = WsClient::connect(&s.url("/ws")).await;

    // Params by name and by position.
    let by_name = call(
        &mut ws,
        json!({"jsonrpc": "2.0", "id": 1, "method": "extern.add", "params": {"a": 2, "b": 40}}),
    )
    .await;
    assert_eq!(by_name, json!({"jsonrpc": "2.0", "result": 42, "id": 1}));
    let by_position = call(
        &mut ws,
        json!({"jsonrpc": "2.0", "id": 2, "method": "extern.add", "params": [-5, 3]}),
    )
    .await;
    assert_eq!(
        by_position,
        json!({"jsonrpc": "2.0", "result": -2, "id": 2})
    );

    // The handler's own error, and the extractor's.
    let overflow = call(
        &mut ws,
        json!({"jsonrpc": "2.0", "id": 3, "method": "extern.add", "params": [i64::MAX, 1]}),
    )
    .await;
    assert_eq!(overflow["error"]["code"], -32000, "{overflow}");
    let missing = call(
        &mut ws,
        json!({"jsonrpc": "2.0", "id": 4, "method": "extern.add", "params": {"a": 1}}),
    )
    .await;
    assert_eq!(missing["error"]["code"], -32602, "{missing}");

    // The `Client` extractor: the id the hub knows this connection by.
    let whoami = call(
        &mut ws,
        json!({"jsonrpc": "2.0", "id": 5, "method": "extern.whoami"}),
    )
    .await;
    let clients = hub.clients();
    assert_eq!(clients.len(), 1);
    assert_eq!(
        whoami["result"],
        json!(clients[0].id().to_string()),
        "{whoami}"
    );

    ws.close().await;
    s.shutdown().await.expect("served without error");
}
