//! The OpenRPC document (feature `openrpc`): what `#[rpc_method]` and the
//! builder record, and `rpc.discover` / `GET /openrpc.json` on a real
//! server.

use std::collections::HashMap;

use nbio_ws::openrpc::MethodDoc;
use nbio_ws::{rpc_method, BuildError, Client, Hub, Params, RpcError, Server};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use nbio_ws_testkit::{TestServer, WsClient};

#[derive(Deserialize, JsonSchema)]
struct Say {
    /// What to say.
    text: String,
    /// Who to say it to; everyone when absent.
    to: Option<String>,
    #[serde(default)]
    loud: bool,
}

#[derive(Serialize, Deserialize, JsonSchema)]
struct Said {
    text: String,
    length: usize,
}

/// Says something.
/// Still the summary.
///
/// The description: everything
/// after the first paragraph.
///
/// - with Markdown.
#[rpc_method(
    "t.say",
    errors(-32602 = "text is empty", 4001 = "nobody listens"),
    example(name = "hello", params = r#"{"text": "hi", "to": "ada"}"#, result = r#"{"text": "hi", "length": 2}"#),
    example(params = r#"["hi"]"#),
)]
fn say(Params(p): Params<Say>, _: Client) -> Result<Said, RpcError> {
    let _ = (p.to, p.loud);
    Ok(Said {
        length: p.text.len(),
        text: p.text,
    })
}

/// Adds two numbers.
#[rpc_method("t.add")]
async fn add(_: Hub, Params((left, _right)): Params<(i64, i64)>) -> i64 {
    left
}

#[rpc_method("t.pair")]
fn pair(Params([x, _]): Params<[u8; 2]>) -> u8 {
    x
}

#[rpc_method("t.none")]
fn none() {}

#[rpc_method("t.maybe")]
fn maybe(Params(p): Params<Option<Say>>) -> Option<Said> {
    p.map(|s| Said {
        length: 0,
        text: s.text,
    })
}

#[rpc_method("t.sum")]
fn sum(Params(v): Params<Vec<i64>>) -> i64 {
    v.iter().sum()
}

/// No `JsonSchema`: described as anything.
#[derive(Deserialize, Serialize)]
struct Opaque {
    n: u8,
}

#[rpc_method("t.opaque")]
fn opaque(Params(o): Params<Opaque>) -> Opaque {
    o
}

#[rpc_method("t.impl")]
fn impl_result() -> impl Serialize {
    [1, 2]
}

type Answer<T> = Result<T, RpcError>;

#[rpc_method("t.alias")]
fn alias(Params(s): Params<Said>) -> Answer<Said> {
    Ok(s)
}

/// Deserialized with a default, always serialized: two schemas.
#[derive(Serialize, Deserialize, JsonSchema)]
struct Settings {
    #[serde(default)]
    level: u8,
}

#[rpc_method("t.settings")]
fn settings(Params(s): Params<Settings>) -> Settings {
    s
}

#[derive(Serialize, JsonSchema)]
struct Broadcast {
    /// The text broadcast.
    text: String,
}

fn builder() -> nbio_ws::ServerBuilder {
    Server::builder()
        .openrpc_info("test API", "1.2.3")
        .openrpc_description("For the tests.")
        .method("x.sum", |Params(v): Params<Vec<u32>>| async move {
            Ok::<_, RpcError>(v.iter().sum::<u32>())
        })
        .method_doc(
            "x.sum",
            MethodDoc::new()
                .doc("Adds numbers.\n\nAny count of them.")
                .params::<Vec<u32>>()
                .result::<u32>()
                .error(-32602, "not numbers")
                .example("three", json!([1, 2]), Some(json!(3))),
        )
        .method("x.bare", |_: Client| async move { Ok::<_, RpcError>(1) })
        .notification::<Broadcast>(
            "broadcast",
            "Something said to everyone.\n\nSent to all clients.",
        )
}

fn document(b: nbio_ws::ServerBuilder) -> Value {
    let server = b.build().expect("builds");
    serde_json::from_str(server.openrpc_document().expect("a document")).expect("JSON")
}

fn methods(doc: &Value) -> HashMap<String, Value> {
    doc["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap().to_owned(), m.clone()))
        .collect()
}

/// The `name` of each element of an array.
fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect()
}

/// A `$ref` into the components, followed.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r
                .strip_prefix("#/components/schemas/")
                .expect("a component ref");
            &doc["components"]["schemas"][name]
        }
        None => schema,
    }
}

#[test]
fn info_servers_and_order() {
    let doc = document(
        builder()
            .bind("127.0.0.1:9123".parse().unwrap())
            .path("/socket"),
    );
    assert_eq!(doc["openrpc"], "1.3.2");
    assert_eq!(
        doc["info"],
        json!({"title": "test API", "version": "1.2.3", "description": "For the tests."})
    );
    assert_eq!(
        doc["servers"],
        json!([{"name": "test API", "url": "ws://127.0.0.1:9123/socket"}])
    );
    let names = names(&doc["methods"]);
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted, "methods by name");
    assert!(names.contains(&"t.say") && names.contains(&"x.sum"));
    assert!(
        !names.contains(&"rpc.discover"),
        "rpc.discover is not listed"
    );

    // A wildcard address: localhost. Port 0: no servers. A given URL wins.
    let doc = document(builder().bind("0.0.0.0:9124".parse().unwrap()));
    assert_eq!(doc["servers"][0]["url"], "ws://localhost:9124/ws");
    let doc = document(builder().bind("127.0.0.1:0".parse().unwrap()));
    assert!(doc.get("servers").is_none(), "{}", doc["servers"]);
    let doc = document(builder().openrpc_server_url("wss://chat.example.com/ws"));
    assert_eq!(doc["servers"][0]["url"], "wss://chat.example.com/ws");
}

#[test]
fn doc_comment_errors_and_examples() {
    let doc = document(builder());
    let m = &methods(&doc)["t.say"];
    assert_eq!(m["summary"], "Says something. Still the summary.");
    assert_eq!(
        m["description"],
        "The description: everything\nafter the first paragraph.\n\n- with Markdown."
    );
    assert_eq!(
        m["errors"],
        json!([{"code": -32602, "message": "text is empty"}, {"code": 4001, "message": "nobody listens"}])
    );
    assert_eq!(
        m["examples"],
        json!([
            {
                "name": "hello",
                "params": [{"name": "text", "value": "hi"}, {"name": "to", "value": "ada"}],
                "result": {"name": "result", "value": {"text": "hi", "length": 2}},
            },
            // Positional params for a by-name method: the value as sent.
            {"name": "t.say example 2", "params": [{"name": "params", "value": ["hi"]}]},
        ])
    );
    // Only the first paragraph, no description.
    let add = &methods(&doc)["t.add"];
    assert_eq!(add["summary"], "Adds two numbers.");
    assert!(add.get("description").is_none());
    assert!(methods(&doc)["t.none"].get("summary").is_none());
}

#[test]
fn params_by_name_with_required_as_the_type_says() {
    let doc = document(builder());
    let m = &methods(&doc)["t.say"];
    assert_eq!(m["paramStructure"], "by-name");
    let params = m["params"].as_array().unwrap();
    let by_name: HashMap<&str, &Value> = params
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p))
        .collect();
    assert_eq!(by_name.len(), 3);
    assert_eq!(by_name["text"]["required"], true);
    assert_eq!(by_name["text"]["description"], "What to say.");
    assert_eq!(by_name["text"]["schema"]["type"], "string");
    assert_eq!(by_name["to"]["required"], false);
    assert_eq!(by_name["loud"]["required"], false, "#[serde(default)]");

    // `Params<Option<T>>`: every parameter optional.
    let m = &methods(&doc)["t.maybe"];
    assert_eq!(m["paramStructure"], "by-name");
    assert!(m["params"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["required"] == false));
    assert_eq!(m["params"].as_array().unwrap().len(), 3);
}

#[test]
fn params_by_position_named_after_the_pattern() {
    let doc = document(builder());
    let m = &methods(&doc)["t.add"];
    assert_eq!(m["paramStructure"], "by-position");
    assert_eq!(
        m["params"],
        json!([
            {"name": "left", "required": true, "schema": {"type": "integer", "format": "int64"}},
            {"name": "right", "required": true, "schema": {"type": "integer", "format": "int64"}},
        ])
    );
    // A fixed-size array; `_` gets a numbered name.
    let m = &methods(&doc)["t.pair"];
    assert_eq!(m["paramStructure"], "by-position");
    let names = names(&m["params"]);
    assert_eq!(names, ["x", "arg1"]);
}

#[test]
fn no_params_whole_params_and_unknown_types() {
    let doc = document(builder());
    let all = methods(&doc);
    let none = &all["t.none"];
    assert_eq!(none["params"], json!([]));
    assert!(none.get("paramStructure").is_none() && none.get("x-params-schema").is_none());
    assert_eq!(
        none["result"],
        json!({"name": "result", "schema": {"type": "null"}})
    );

    // Not a list of parameters: the whole schema in `x-params-schema`.
    let sum = &all["t.sum"];
    assert_eq!(sum["params"], json!([]));
    assert_eq!(sum["x-params-schema"]["type"], "array");
    assert_eq!(sum["x-params-schema"]["items"]["type"], "integer");

    // Types without `JsonSchema`, an `impl Trait` result, a method
    // nothing describes: `{}`.
    assert_eq!(all["t.opaque"]["x-params-schema"], json!({}));
    assert_eq!(all["t.opaque"]["result"]["schema"], json!({}));
    assert_eq!(all["t.impl"]["result"]["schema"], json!({}));
    assert_eq!(all["x.bare"]["x-params-schema"], json!({}));
    assert_eq!(all["x.bare"]["result"]["schema"], json!({}));
}

#[test]
fn results_and_shared_components() {
    let doc = document(builder());
    let all = methods(&doc);
    // The Ok type of a Result, through an alias too; a named type is a
    // component, shared by params and results that describe it alike.
    for name in ["t.say", "t.alias"] {
        assert_eq!(
            all[name]["result"]["schema"],
            json!({"$ref": "#/components/schemas/Said"}),
            "{name}"
        );
    }
    let said = &doc["components"]["schemas"]["Said"];
    assert_eq!(said["type"], "object");
    assert_eq!(said["required"], json!(["text", "length"]));
    assert_eq!(all["t.alias"]["params"].as_array().unwrap().len(), 2);
    // `Option<T>` result: T or null.
    let maybe = &all["t.maybe"]["result"]["schema"];
    assert!(
        maybe.to_string().contains("#/components/schemas/Said")
            && maybe.to_string().contains("null"),
        "{maybe}"
    );

    // Described differently when serialized: a second component.
    let de = &doc["components"]["schemas"]["Settings"];
    let ser = &doc["components"]["schemas"]["SettingsOutput"];
    assert!(de.get("required").is_none(), "{de}");
    assert_eq!(ser["required"], json!(["level"]));
    assert_eq!(
        all["t.settings"]["result"]["schema"],
        json!({"$ref": "#/components/schemas/SettingsOutput"})
    );
    assert_eq!(resolve(&doc, &all["t.settings"]["result"]["schema"]), ser);
}

#[test]
fn explicit_methods_and_notifications() {
    let doc = document(builder());
    let sum = &methods(&doc)["x.sum"];
    assert_eq!(sum["summary"], "Adds numbers.");
    assert_eq!(sum["description"], "Any count of them.");
    assert_eq!(sum["result"]["schema"]["type"], "integer");
    assert_eq!(
        sum["errors"],
        json!([{"code": -32602, "message": "not numbers"}])
    );
    assert_eq!(
        sum["examples"],
        json!([{"name": "three", "params": [{"name": "params", "value": [1, 2]}], "result": {"name": "result", "value": 3}}])
    );

    let n = &doc["x-notifications"];
    assert_eq!(n.as_array().unwrap().len(), 1);
    assert_eq!(n[0]["name"], "broadcast");
    assert_eq!(n[0]["summary"], "Something said to everyone.");
    assert_eq!(n[0]["description"], "Sent to all clients.");
    assert_eq!(n[0]["paramStructure"], "by-name");
    assert_eq!(
        n[0]["params"],
        json!([{"name": "text", "required": true, "description": "The text broadcast.", "schema": {"type": "string", "description": "The text broadcast."}}])
    );

    // A description replaces the one `#[rpc_method]` recorded.
    let doc = document(builder().method_doc("t.none", MethodDoc::new().summary("Nothing.")));
    assert_eq!(methods(&doc)["t.none"]["summary"], "Nothing.");
    assert!(methods(&doc)["t.none"].get("result").is_some());

    // A description of a method that is not there fails the build.
    match builder().method_doc("x.typo", MethodDoc::new()).build() {
        Err(BuildError::UnknownMethodDoc(name)) => assert_eq!(name, "x.typo"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    // The registry off: only explicit methods.
    let doc = document(builder().registered_methods(false));
    let names = names(&doc["methods"]);
    assert_eq!(names, ["x.bare", "x.sum"]);
}

#[test]
fn raw_mode_has_no_document_and_discover_is_reserved() {
    let server = Server::builder()
        .raw(|_: Client, _: nbio_ws::RawMessage| async {})
        .build()
        .unwrap();
    assert!(server.openrpc_document().is_none());

    // A method of your own named rpc.discover: a duplicate, unless
    // discovery is off.
    let own = || {
        Server::builder().method(
            "rpc.discover",
            |_: Client| async move { Ok::<_, RpcError>(0) },
        )
    };
    assert!(
        matches!(own().build(), Err(BuildError::DuplicateMethod { name, .. }) if name == "rpc.discover")
    );
    let server = own().rpc_discover(false).build().unwrap();
    assert!(server.method_names().contains(&"rpc.discover"));
}

#[tokio::test]
async fn served_by_rpc_discover_and_http() {
    let built = builder().build().unwrap();
    let expected: Value = serde_json::from_str(built.openrpc_document().unwrap()).unwrap();
    assert!(built.method_names().contains(&"rpc.discover"));
    drop(built);

    let mut server = TestServer::start(builder()).await;
    let mut ws = WsClient::connect(&server.url("/ws")).await;
    let answer = ws.call("rpc.discover", json!([]), json!(1)).await;
    assert_eq!(answer["result"], expected, "{answer}");
    // Without params too.
    ws.send_json(&json!({"jsonrpc": "2.0", "id": 2, "method": "rpc.discover"}))
        .await;
    assert_eq!(ws.recv_json().await["result"], expected);

    let (status, headers, body) = server.http_get("/openrpc.json").await;
    assert_eq!(status, 200);
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{headers}"
    );
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), expected);
    ws.close().await;
    server.shutdown().await.unwrap();

    // Both can be turned off.
    let mut server = TestServer::start(builder().rpc_discover(false).openrpc_http(false)).await;
    let mut ws = WsClient::connect(&server.url("/ws")).await;
    let answer = ws.call("rpc.discover", json!([]), json!(1)).await;
    assert_eq!(answer["error"]["code"], -32601, "{answer}");
    assert_eq!(server.http_get("/openrpc.json").await.0, 404);
    ws.close().await;
    server.shutdown().await.unwrap();
}
