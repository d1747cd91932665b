//! The protocol half of the `bare` baseline server (`src/bin/bare.rs`):
//! JSON-RPC handling of `self.reply` / `broadcast` and the registry of
//! per-connection queues, written without the framework.
//!
//! It lives in the library so that the criterion benches can time the
//! baseline's per-message and per-broadcast work next to the framework's;
//! the socket half (hyper, upgrade, reader/writer tasks) is in the binary.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

/// Outbound queue capacity per connection.
pub const QUEUE: usize = 256;

/// A frame queued for a connection's writer task.
#[derive(Debug, Clone)]
pub enum Out {
    /// A text message (a response or a shared broadcast buffer).
    Text(Bytes),
    /// A pong owed for a ping.
    Pong(Bytes),
    /// A close frame (payload = code + reason); the writer stops after it.
    Close(Bytes),
}

/// Registry of connected clients' outbound queues: a plain
/// `RwLock<HashMap>`, read-locked while a broadcast iterates.
#[derive(Default)]
pub struct Registry {
    next_id: AtomicU64,
    clients: RwLock<HashMap<u64, mpsc::Sender<Out>>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a client's queue; returns its id.
    pub fn register(&self, tx: mpsc::Sender<Out>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.clients.write().expect("registry lock").insert(id, tx);
        id
    }

    /// Removes a client.
    pub fn unregister(&self, id: u64) {
        self.clients.write().expect("registry lock").remove(&id);
    }

    /// Number of connected clients.
    pub fn len(&self) -> usize {
        self.clients.read().expect("registry lock").len()
    }

    /// Whether no client is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues `msg` (shared, not copied) on every client. A full or closed
    /// queue skips that client, so a slow reader never stalls the others.
    /// Returns the number of clients reached.
    pub fn broadcast(&self, msg: Bytes) -> usize {
        let clients = self.clients.read().expect("registry lock");
        clients
            .values()
            .filter(|tx| tx.try_send(Out::Text(msg.clone())).is_ok())
            .count()
    }
}

#[derive(Deserialize)]
struct RpcRequest<'a> {
    #[serde(borrow)]
    jsonrpc: Cow<'a, str>,
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(default, borrow)]
    params: Option<&'a RawValue>,
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
}

#[derive(Deserialize, Serialize)]
struct TextParams<'a> {
    #[serde(borrow)]
    text: Cow<'a, str>,
}

#[derive(Serialize)]
struct Echo<'a> {
    echo: &'a str,
    text_length: usize,
}

#[derive(Serialize)]
struct Broadcasted {
    status: &'static str,
    text_length: usize,
}

#[derive(Serialize)]
struct RpcResponse<'a, T: Serialize> {
    jsonrpc: &'static str,
    result: T,
    id: &'a RawValue,
}

#[derive(Serialize)]
struct RpcErrorObj<'a> {
    code: i32,
    message: &'a str,
}

#[derive(Serialize)]
struct RpcErrorResponse<'a> {
    jsonrpc: &'static str,
    error: RpcErrorObj<'a>,
    id: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct Notification<'a> {
    jsonrpc: &'static str,
    method: &'static str,
    params: TextParams<'a>,
}

/// Serializes the `broadcast` notification for `text` (once per broadcast).
pub fn encode_broadcast(text: &str) -> Bytes {
    serde_json::to_vec(&Notification {
        jsonrpc: "2.0",
        method: "broadcast",
        params: TextParams {
            text: Cow::Borrowed(text),
        },
    })
    .expect("notification serializes")
    .into()
}

fn result_bytes<T: Serialize>(result: T, id: &RawValue) -> Bytes {
    serde_json::to_vec(&RpcResponse {
        jsonrpc: "2.0",
        result,
        id,
    })
    .expect("response serializes")
    .into()
}

/// Encodes a JSON-RPC error response (`id` `None` → `null`).
pub fn error_bytes(code: i32, message: &str, id: Option<&RawValue>) -> Bytes {
    serde_json::to_vec(&RpcErrorResponse {
        jsonrpc: "2.0",
        error: RpcErrorObj { code, message },
        id,
    })
    .expect("error serializes")
    .into()
}

/// Handles one text message; returns the response to send, if any.
/// `broadcast` serializes the notification once and hands it to
/// `registry`.
///
/// ```
/// use nbio_ws_benches::baseline::{handle_message, Registry};
/// let reg = Registry::new();
/// let r = handle_message(&reg, br#"{"jsonrpc":"2.0","method":"self.reply","params":{"text":"hi"},"id":1}"#);
/// assert_eq!(&r.unwrap()[..], br#"{"jsonrpc":"2.0","result":{"echo":"hi","text_length":2},"id":1}"#);
/// ```
pub fn handle_message(registry: &Registry, payload: &[u8]) -> Option<Bytes> {
    let req: RpcRequest = match serde_json::from_slice(payload) {
        Ok(r) => r,
        Err(e) if e.is_syntax() || e.is_eof() => {
            return Some(error_bytes(-32700, "Parse error", None))
        }
        Err(_) => return Some(error_bytes(-32600, "Invalid Request", None)),
    };
    if req.jsonrpc != "2.0" {
        return Some(error_bytes(-32600, "Invalid Request", req.id));
    }
    let text = || -> Result<TextParams, Bytes> {
        req.params
            .and_then(|p| serde_json::from_str::<TextParams>(p.get()).ok())
            .ok_or_else(|| {
                error_bytes(
                    -32602,
                    "Invalid params: expected {\"text\": string}",
                    req.id,
                )
            })
    };
    let response = match req.method.as_ref() {
        "self.reply" => match text() {
            Ok(p) => req.id.map(|id| {
                result_bytes(
                    Echo {
                        echo: &p.text,
                        text_length: p.text.len(),
                    },
                    id,
                )
            }),
            Err(e) => Some(e),
        },
        "broadcast" => match text() {
            Ok(p) => {
                registry.broadcast(encode_broadcast(&p.text));
                req.id.map(|id| {
                    result_bytes(
                        Broadcasted {
                            status: "broadcasted",
                            text_length: p.text.len(),
                        },
                        id,
                    )
                })
            }
            Err(e) => Some(e),
        },
        _ => Some(error_bytes(-32601, "Method not found", req.id)),
    };
    // Notifications (no id) are never answered, errors included.
    req.id.and(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_reaches_everyone_including_sender() {
        let reg = Registry::new();
        let mut rxs: Vec<_> = (0..3)
            .map(|_| {
                let (tx, rx) = mpsc::channel(4);
                reg.register(tx);
                rx
            })
            .collect();
        let ack = handle_message(
            &reg,
            br#"{"jsonrpc":"2.0","method":"broadcast","params":{"text":"h\u00e9"},"id":"a"}"#,
        )
        .unwrap();
        assert_eq!(
            &ack[..],
            br#"{"jsonrpc":"2.0","result":{"status":"broadcasted","text_length":3},"id":"a"}"#
        );
        for rx in &mut rxs {
            match rx.try_recv().unwrap() {
                Out::Text(b) => assert_eq!(
                    std::str::from_utf8(&b).unwrap(),
                    r#"{"jsonrpc":"2.0","method":"broadcast","params":{"text":"hé"}}"#
                ),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn errors() {
        let reg = Registry::new();
        let e = |m: &[u8]| String::from_utf8(handle_message(&reg, m).unwrap().to_vec()).unwrap();
        assert!(e(b"{nope").contains("-32700"));
        assert!(e(br#"{"jsonrpc":"2.0","method":"x","id":1}"#).contains("-32601"));
        assert!(
            e(br#"{"jsonrpc":"2.0","method":"self.reply","params":{},"id":1}"#).contains("-32602")
        );
        assert!(e(br#"{"jsonrpc":"1.0","method":"self.reply","id":1}"#).contains("-32600"));
        // A notification is never answered.
        assert!(handle_message(&reg, br#"{"jsonrpc":"2.0","method":"x"}"#).is_none());
    }
}
