//! JSON-RPC 2.0 semantics over a real WebSocket connection.

use std::time::Duration;

use nbio_ws::{rpc_method, Client, Params, RpcError, Server, State};
use nbio_ws_testkit::{seed, TestServer, WsClient};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
struct TextParams {
    text: String,
}

/// `self.reply` with typed params (so serde's errors), answering as the
/// example server does.
#[rpc_method("self.reply")]
fn self_reply(Params(p): Params<TextParams>) -> seed::Reply {
    seed::Reply {
        text_length: p.text.len(),
        echo: p.text,
    }
}

#[derive(Deserialize)]
struct Pair {
    a: i64,
    b: i64,
}

#[rpc_method("add")]
async fn add(Params(p): Params<Pair>) -> Result<i64, RpcError> {
    p.a.checked_add(p.b)
        .ok_or_else(|| RpcError::new(-32000, "overflow"))
}

#[rpc_method("boom")]
fn boom() -> u32 {
    panic!("kaboom")
}

#[rpc_method("sleep")]
async fn sleep(Params(ms): Params<(u64,)>) -> u64 {
    tokio::time::sleep(Duration::from_millis(ms.0)).await;
    ms.0
}

#[rpc_method("whoami")]
fn whoami(client: Client) -> nbio_ws::ClientId {
    client.id()
}

struct Greeting(String);

#[rpc_method("greeting")]
fn greeting(State(g): State<Greeting>) -> String {
    g.0.clone()
}

#[rpc_method("fail.internal")]
fn fail_internal() -> Result<(), RpcError> {
    Err(RpcError::internal("database unavailable"))
}

#[rpc_method("notify.me")]
fn notify_me(client: Client) -> Result<&'static str, RpcError> {
    client
        .notify("poked", &json!({"n": 1}))
        .map_err(RpcError::internal)?;
    Ok("sent")
}

async fn server() -> TestServer {
    TestServer::start(Server::builder().state(Greeting("hello".into()))).await
}

async fn client(s: &TestServer) -> WsClient {
    WsClient::connect(&s.url("/ws")).await
}

#[tokio::test]
async fn self_reply_counts_utf8_bytes() {
    let s = server().await;
    let mut c = client(&s).await;
    let r = c
        .call("self.reply", json!({"text": "héllo"}), json!(1))
        .await;
    assert_eq!(
        r,
        json!({"jsonrpc": "2.0", "result": {"echo": "héllo", "text_length": 6}, "id": 1})
    );
}

#[tokio::test]
async fn params_by_name_and_by_position() {
    let s = server().await;
    let mut c = client(&s).await;
    assert_eq!(
        c.call("add", json!({"a": 2, "b": 3}), json!(1)).await["result"],
        5
    );
    assert_eq!(c.call("add", json!([4, 5]), json!(2)).await["result"], 9);
}

#[tokio::test]
async fn ids_are_echoed_exactly() {
    let s = server().await;
    let mut c = client(&s).await;
    for id in [
        "7",
        "\"abc\"",
        "null",
        "1.5",
        "-3",
        "\"\"",
        "12345678901234567890",
    ] {
        c.send_text(&format!(
            r#"{{"jsonrpc":"2.0","method":"add","params":[1,1],"id":{id}}}"#
        ))
        .await;
        let text = c.recv_text().await;
        assert!(
            text.ends_with(&format!(r#""id":{id}}}"#)),
            "id {id} not echoed verbatim in {text}"
        );
    }
}

#[tokio::test]
async fn notifications_are_never_answered() {
    let s = server().await;
    let mut c = client(&s).await;
    c.send_text(r#"{"jsonrpc":"2.0","method":"add","params":[1,2]}"#)
        .await;
    c.send_text(r#"{"jsonrpc":"2.0","method":"no.such.method"}"#)
        .await;
    c.send_text(r#"{"jsonrpc":"2.0","method":"add","params":{"a":"x"}}"#)
        .await;
    c.expect_silence(Duration::from_millis(300)).await;
    // The connection still works.
    assert_eq!(c.call("add", json!([1, 2]), json!(9)).await["result"], 3);
}

#[tokio::test]
async fn parse_error_has_null_id_and_connection_survives() {
    let s = server().await;
    let mut c = client(&s).await;
    c.send_text("{\"jsonrpc\": \"2.0\", \"method\": ").await;
    let r = c.recv_json().await;
    assert_eq!(r["error"]["code"], -32700);
    assert_eq!(r["id"], Value::Null);
    assert_eq!(c.call("add", json!([1, 2]), json!(2)).await["result"], 3);
}

#[tokio::test]
async fn invalid_requests() {
    let s = server().await;
    let mut c = client(&s).await;
    let cases = [
        (r#"{"jsonrpc":"1.0","method":"add","id":1}"#, json!(1)),
        (r#"{"method":"add","id":2}"#, json!(2)),
        (r#"{"jsonrpc":"2.0","method":5,"id":3}"#, json!(3)),
        (
            r#"{"jsonrpc":"2.0","method":"add","id":{"x":1}}"#,
            Value::Null,
        ),
        (
            r#"{"jsonrpc":"2.0","method":"add","params":"x","id":4}"#,
            json!(4),
        ),
        (r#""just a string""#, Value::Null),
        (
            r#"{"jsonrpc":"2.0","method":1,"params":"bar"}"#,
            Value::Null,
        ),
    ];
    for (text, id) in cases {
        c.send_text(text).await;
        let r = c.recv_json().await;
        assert_eq!(r["error"]["code"], -32600, "for {text}: {r}");
        assert_eq!(r["id"], id, "for {text}");
        assert!(r["error"]["data"]["detail"].is_string(), "{r}");
    }
}

#[tokio::test]
async fn unknown_method_has_the_request_id() {
    let s = server().await;
    let mut c = client(&s).await;
    let r = c.call("nope", json!({}), json!("req-1")).await;
    assert_eq!(r["error"]["code"], -32601);
    assert_eq!(r["id"], "req-1");
}

#[tokio::test]
async fn invalid_params_say_what_is_wrong() {
    let s = server().await;
    let mut c = client(&s).await;
    let r = c.call("add", json!({"a": 1}), json!(5)).await;
    assert_eq!(r["error"]["code"], -32602);
    assert_eq!(r["id"], 5);
    let detail = r["error"]["data"]["detail"].as_str().unwrap();
    assert!(detail.contains("missing field `b`"), "{detail}");

    let r = c.call("self.reply", json!({"text": 42}), json!(6)).await;
    assert!(
        r["error"]["data"]["detail"]
            .as_str()
            .unwrap()
            .contains("invalid type"),
        "{r}"
    );

    c.send_text(r#"{"jsonrpc":"2.0","method":"add","id":7}"#)
        .await;
    let r = c.recv_json().await;
    assert_eq!(r["error"]["code"], -32602);
    assert!(
        r["error"]["data"]["detail"]
            .as_str()
            .unwrap()
            .contains("missing params"),
        "{r}"
    );
}

#[tokio::test]
async fn panicking_handler_gives_internal_error_and_connection_lives() {
    let s = server().await;
    let mut c = client(&s).await;
    let mut other = client(&s).await;
    let r = c.call("boom", json!([]), json!(1)).await;
    assert_eq!(r["error"]["code"], -32603);
    assert_eq!(r["id"], 1);
    assert!(r["error"]["data"]["detail"]
        .as_str()
        .unwrap()
        .contains("kaboom"));
    assert_eq!(c.call("add", json!([1, 1]), json!(2)).await["result"], 2);
    assert_eq!(
        other.call("add", json!([2, 2]), json!(3)).await["result"],
        4
    );
    assert_eq!(s.hub.metrics().handler_panics(), 1);

    let r = c.call("fail.internal", json!([]), json!(4)).await;
    assert_eq!(r["error"]["code"], -32603);
}

#[tokio::test]
async fn application_errors_pass_through() {
    let s = server().await;
    let mut c = client(&s).await;
    let r = c.call("add", json!([i64::MAX, 1]), json!(1)).await;
    assert_eq!(r["error"], json!({"code": -32000, "message": "overflow"}));
}

#[tokio::test]
async fn batches() {
    let s = server().await;
    let mut c = client(&s).await;
    c.send_text(
        r#"[
        {"jsonrpc":"2.0","method":"add","params":[1,2],"id":"a"},
        {"jsonrpc":"2.0","method":"add","params":[1,2]},
        {"jsonrpc":"2.0","method":"nope","id":"b"},
        5,
        {"jsonrpc":"2.0","method":"add","params":{"a":1},"id":"c"}
    ]"#,
    )
    .await;
    let r = c.recv_json().await;
    let arr = r.as_array().expect("a batch answer is an array");
    assert_eq!(arr.len(), 4, "{r}");
    let by_id = |id: Value| arr.iter().find(|x| x["id"] == id).cloned().unwrap();
    assert_eq!(by_id(json!("a"))["result"], 3);
    assert_eq!(by_id(json!("b"))["error"]["code"], -32601);
    assert_eq!(by_id(json!("c"))["error"]["code"], -32602);
    assert_eq!(by_id(Value::Null)["error"]["code"], -32600);

    // An empty batch: one error object, not an array.
    c.send_text("[]").await;
    let r = c.recv_json().await;
    assert_eq!(r["error"]["code"], -32600);
    assert_eq!(r["id"], Value::Null);

    // A batch of notifications only: nothing at all.
    c.send_text(
        r#"[{"jsonrpc":"2.0","method":"add","params":[1,2]},{"jsonrpc":"2.0","method":"x"}]"#,
    )
    .await;
    c.expect_silence(Duration::from_millis(300)).await;

    // A batch that is not JSON.
    c.send_text(r#"[{"jsonrpc":"2.0","method":"add"},"#).await;
    assert_eq!(c.recv_json().await["error"]["code"], -32700);
}

#[tokio::test]
async fn binary_frames_get_a_clear_error() {
    use futures_util::SinkExt;
    let s = server().await;
    let mut c = client(&s).await;
    c.ws.send(tokio_tungstenite::tungstenite::Message::binary(
        b"{}".to_vec(),
    ))
    .await
    .unwrap();
    let r = c.recv_json().await;
    assert_eq!(r["error"]["code"], -32600);
    assert!(r["error"]["data"]["detail"]
        .as_str()
        .unwrap()
        .contains("text frames"));
    assert_eq!(c.call("add", json!([1, 1]), json!(1)).await["result"], 2);
}

#[tokio::test]
async fn requests_run_concurrently() {
    let s = server().await;
    let mut c = client(&s).await;
    c.send_text(r#"{"jsonrpc":"2.0","method":"sleep","params":[400],"id":"slow"}"#)
        .await;
    c.send_text(r#"{"jsonrpc":"2.0","method":"add","params":[1,1],"id":"fast"}"#)
        .await;
    assert_eq!(c.recv_json().await["id"], "fast");
    let slow = c.recv_json().await;
    assert_eq!(slow["id"], "slow");
    assert_eq!(slow["result"], 400);
}

#[tokio::test]
async fn extractors_client_and_state() {
    let s = server().await;
    let mut a = client(&s).await;
    let mut b = client(&s).await;
    let ida = a.call("whoami", json!([]), json!(1)).await["result"].clone();
    let idb = b.call("whoami", json!([]), json!(1)).await["result"].clone();
    assert_ne!(ida, idb);
    // Ids travel as their text form: 32 hex digits.
    let ida: nbio_ws::ClientId = serde_json::from_value(ida).expect("an id string");
    assert!(s.hub.get(ida).is_some());
    assert_eq!(
        a.call("greeting", json!([]), json!(2)).await["result"],
        "hello"
    );
    // A handler notifies its caller before answering.
    a.send_text(r#"{"jsonrpc":"2.0","method":"notify.me","id":3}"#)
        .await;
    assert_eq!(
        a.recv_json().await,
        json!({"jsonrpc": "2.0", "method": "poked", "params": {"n": 1}})
    );
    assert_eq!(a.recv_json().await["result"], "sent");
}

#[tokio::test]
async fn missing_state_is_an_internal_error() {
    let s = TestServer::start(Server::builder()).await;
    let mut c = client(&s).await;
    let r = c.call("greeting", json!([]), json!(1)).await;
    assert_eq!(r["error"]["code"], -32603);
}

#[tokio::test]
async fn explicit_methods_and_duplicates() {
    let s = TestServer::start(
        Server::builder()
            .registered_methods(false)
            .method("mul", |Params((a, b)): Params<(i64, i64)>| async move {
                Ok::<_, RpcError>(a * b)
            }),
    )
    .await;
    let mut c = client(&s).await;
    assert_eq!(c.call("mul", json!([6, 7]), json!(1)).await["result"], 42);
    // Registered methods are off for this server.
    assert_eq!(
        c.call("add", json!([1, 2]), json!(2)).await["error"]["code"],
        -32601
    );

    let err = Server::builder()
        .method("add", |Params((a, b)): Params<(i64, i64)>| async move {
            Ok::<_, RpcError>(a + b)
        })
        .build()
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("\"add\"") && text.contains("registered twice"),
        "{text}"
    );
}

#[tokio::test]
async fn registry_lists_annotated_functions() {
    let names: Vec<&str> = nbio_ws::registered_methods().map(|m| m.name()).collect();
    for n in ["self.reply", "add", "boom", "sleep", "whoami", "greeting"] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    let s = Server::builder().build().unwrap();
    assert!(s.method_names().contains(&"self.reply"));
}
