//! The OpenRPC documents of the `server` and `chat` binaries (feature
//! `openrpc`), checked by independent tools and by real requests:
//!
//! - each document, fetched with `GET /openrpc.json` and with `rpc.discover`
//!   over a WebSocket (the two must be the same), is validated against the
//!   official OpenRPC meta-schema (`@open-rpc/meta-schema`) with ajv, and
//!   every schema in it is compiled as JSON Schema draft 7
//!   (`examples/openrpc-check/validate.mjs`);
//! - every example of every method, in the document's order, is sent as a
//!   real request on one WebSocket connection: none may be answered with an
//!   error (so no -32602), each result must be the example's result when it
//!   gives one, and ajv validates the params sent, each result and each
//!   notification received against the document's schemas (a notification
//!   the document does not list fails the test).
//!
//! Needs node and the validator's packages (`npm ci` in
//! `examples/openrpc-check`, done here when they are missing): the test
//! fails naming them, unless `NBIO_WS_SKIP_MISSING_TOOLS=1` is set (then it
//! prints a SKIP line).

use std::path::{Path, PathBuf};
use std::process::Command;

use nbio_ws_testkit::process::{npm_ci, ServerProcess};
use serde_json::{json, Value};

/// The checker's directory, its packages installed.
fn checker() -> Option<PathBuf> {
    if !nbio_ws_testkit::tools::require_tools(&["node", "npm"]) {
        return None;
    }
    let dir: PathBuf = [env!("CARGO_MANIFEST_DIR"), "openrpc-check"]
        .iter()
        .collect();
    npm_ci(
        &dir,
        &[
            "ajv",
            "ajv-formats",
            "@open-rpc/meta-schema",
            "@json-schema-tools/meta-schema",
        ],
    );
    Some(dir)
}

/// Runs `node validate.mjs ARGS`; panics with its output unless it passes.
fn validate(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("node")
        .arg("validate.mjs")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run node");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "node validate.mjs {args:?} failed:\n{text}"
    );
    text
}

/// A schema for the whole `params` of a method or notification, from its
/// content descriptors.
fn params_schema(m: &Value) -> Value {
    if let Some(whole) = m.get("x-params-schema") {
        return whole.clone();
    }
    let params = m["params"].as_array().unwrap();
    match m["paramStructure"].as_str() {
        Some("by-position") => json!({
            "type": "array",
            "items": params.iter().map(|p| p["schema"].clone()).collect::<Vec<_>>(),
            "minItems": params.iter().filter(|p| p["required"] == true).count(),
            "maxItems": params.len(),
        }),
        _ => json!({
            "type": "object",
            "properties": params.iter().map(|p| (p["name"].as_str().unwrap().to_owned(), p["schema"].clone())).collect::<serde_json::Map<_, _>>(),
            "required": params.iter().filter(|p| p["required"] == true).map(|p| p["name"].clone()).collect::<Vec<_>>(),
        }),
    }
}

/// The `params` a client sends for an example pairing.
fn wire_params(m: &Value, pairing: &Value) -> Option<Value> {
    let values = pairing["params"].as_array().unwrap();
    if m.get("x-params-schema").is_some() || values.iter().any(|v| v["name"] == "params") {
        return values.first().map(|v| v["value"].clone());
    }
    match m["paramStructure"].as_str() {
        Some("by-position") => Some(values.iter().map(|v| v["value"].clone()).collect()),
        Some("by-name") => Some(Value::Object(
            values
                .iter()
                .map(|v| (v["name"].as_str().unwrap().to_owned(), v["value"].clone()))
                .collect(),
        )),
        _ => None,
    }
}

/// Checks one example binary's document; returns its size in bytes.
async fn check(bin: &str, name: &str, dir: &Path) -> usize {
    let server = ServerProcess::start(bin, &[]).await;
    let (status, _, body) = server.get("/openrpc.json").await;
    assert_eq!(status, 200, "{body}");
    let doc: Value = serde_json::from_str(&body).expect("the document is JSON");

    let mut ws = server.client().await;
    ws.send_text(r#"{"jsonrpc":"2.0","method":"rpc.discover","id":0}"#)
        .await;
    let discovered = ws.recv_json().await;
    assert_eq!(
        discovered["result"], doc,
        "rpc.discover and GET /openrpc.json differ"
    );
    assert_eq!(doc["servers"][0]["url"], server.url("/ws"));

    let tmp = std::env::temp_dir().join(format!("nbio-ws-openrpc-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let doc_path = tmp.join("openrpc.json");
    std::fs::write(&doc_path, &body).unwrap();
    let doc_file = doc_path.to_str().unwrap();
    let out = validate(dir, &["document", doc_file]);
    println!("{name}: {}", out.trim());

    // Every example, as a real request.
    let notifications: std::collections::HashMap<&str, &Value> = doc["x-notifications"]
        .as_array()
        .map(|l| l.iter().map(|n| (n["name"].as_str().unwrap(), n)).collect())
        .unwrap_or_default();
    let mut cases: Vec<Value> = Vec::new();
    let mut id = 0u64;
    let mut examples = 0;
    for m in doc["methods"].as_array().unwrap() {
        let method = m["name"].as_str().unwrap();
        let pairings = m["examples"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert!(
            !pairings.is_empty(),
            "{name}: method {method} has no example"
        );
        for pairing in pairings {
            examples += 1;
            id += 1;
            let label = format!("{name} {method} {:?}", pairing["name"]);
            let mut request = json!({"jsonrpc": "2.0", "method": method, "id": id});
            if let Some(p) = wire_params(m, pairing) {
                cases.push(json!({"label": format!("{label} params"), "schema": params_schema(m), "value": p}));
                request["params"] = p;
            }
            ws.send_json(&request).await;
            let answer = loop {
                let msg = ws.recv_json().await;
                if msg.get("id").is_some() {
                    break msg;
                }
                let n = msg["method"].as_str().expect("a notification");
                let doc_n = notifications.get(n).unwrap_or_else(|| {
                    panic!("{name}: notification {n} is not in x-notifications: {msg}")
                });
                cases.push(json!({
                    "label": format!("{name} notification {n} (after {method})"),
                    "schema": params_schema(doc_n),
                    "value": msg["params"],
                }));
            };
            assert_eq!(answer["id"], id, "{answer}");
            assert!(
                answer.get("error").is_none(),
                "{label}: {request} answered {answer}"
            );
            let schema = &m["result"]["schema"];
            cases.push(json!({"label": format!("{label} result"), "schema": schema, "value": answer["result"]}));
            if let Some(expected) = pairing.get("result") {
                assert_eq!(
                    answer["result"], expected["value"],
                    "{label}: the example's result"
                );
                cases.push(json!({"label": format!("{label} example result"), "schema": schema, "value": expected["value"]}));
            }
        }
    }
    assert!(
        cases
            .iter()
            .any(|c| c["label"].as_str().unwrap().contains(" notification ")),
        "{name}: no notification was received and checked"
    );
    let cases_path = tmp.join("cases.json");
    std::fs::write(&cases_path, Value::Array(cases).to_string()).unwrap();
    let out = validate(dir, &["values", doc_file, cases_path.to_str().unwrap()]);
    println!(
        "{name}: {examples} example requests answered; {}",
        out.lines().last().unwrap_or_default()
    );
    let _ = std::fs::remove_dir_all(&tmp);
    body.len()
}

#[tokio::test]
async fn example_documents_are_valid_openrpc_and_their_examples_work() {
    let Some(dir) = checker() else { return };
    let server = check(env!("CARGO_BIN_EXE_server"), "server", &dir).await;
    let chat = check(env!("CARGO_BIN_EXE_chat"), "chat", &dir).await;
    println!("document sizes: server {server} bytes, chat {chat} bytes");
    // Built once and small: bounded by what the code declares.
    assert!(server < 16 * 1024 && chat < 32 * 1024, "{server} {chat}");
}
