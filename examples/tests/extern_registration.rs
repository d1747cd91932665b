//! `#[rpc_method]` handlers defined in another crate are registered when
//! that crate is linked, even if nothing calls them by name: the
//! `nbio-ws-extern-handlers` fixture (tests/extern-handlers) is only
//! linked here, never referred to, and its methods are served over a real
//! WebSocket.

// Links the crate; nothing in it is named below.
use nbio_ws_extern_handlers as _;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

const TIMEOUT: Duration = Duration::from_secs(10);

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

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn call(ws: &mut Ws, request: Value) -> Value {
    ws.send(Message::text(request.to_string())).await.unwrap();
    loop {
        let msg = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .expect("an answer in time")
            .expect("the connection is open")
            .expect("a frame");
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn extern_methods_are_served() {
    let server = nbio_ws::Server::builder().build().expect("server builds");
    let names = server.method_names();
    assert!(names.contains(&"extern.add"), "{names:?}");
    assert!(names.contains(&"extern.whoami"), "{names:?}");
    let hub = server.hub().clone();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve_listener(listener, async move {
        let _ = stopped.await;
    }));

    let (mut ws, _) = tokio::time::timeout(
        TIMEOUT,
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws")),
    )
    .await
    .expect("connected in time")
    .expect("connected");

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

    let _ = ws.close(None).await;
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("shut down in time")
        .expect("serve task")
        .expect("served without error");
}
