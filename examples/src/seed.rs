//! The seed wire format's two methods, `self.reply` and `broadcast`, as
//! plain functions for the tests and benches (registered with
//! [`ServerBuilder::method`], see [`methods`], so that linking this library
//! registers nothing). The `server` example serves the same two methods,
//! defined there with `#[rpc_method]` and their OpenRPC descriptions.
//!
//! ```text
//! > {"jsonrpc":"2.0","method":"self.reply","params":{"text":"hi"},"id":1}
//! < {"jsonrpc":"2.0","result":{"echo":"hi","text_length":2},"id":1}
//! > {"jsonrpc":"2.0","method":"broadcast","params":{"text":"hello all"},"id":2}
//! < {"jsonrpc":"2.0","method":"broadcast","params":{"text":"hello all"}}     (to everyone)
//! < {"jsonrpc":"2.0","result":{"status":"broadcasted","text_length":9},"id":2}
//! ```

use nbio_ws::{FromRequest, Hub, RequestContext, RpcError, ServerBuilder};
use serde::{Deserialize, Serialize};

/// The `text` param of both methods: present and a non-empty string, or
/// -32602 with the seed's `data.detail` ([`TEXT_REQUIRED`]).
#[derive(Debug)]
pub struct Text(pub String);

/// What the seed answers (`data.detail` of a -32602) when `text` is
/// missing, empty or not a string.
pub const TEXT_REQUIRED: &str = "text field is required and must be a non-empty string";

impl FromRequest for Text {
    fn from_request(ctx: &RequestContext) -> Result<Self, RpcError> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default)]
            text: Option<serde_json::Value>,
        }
        let text = ctx
            .params()
            .and_then(|p| serde_json::from_str::<Raw>(p.get()).ok())
            .and_then(|raw| match raw.text {
                Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s),
                _ => None,
            });
        text.map(Text)
            .ok_or_else(|| RpcError::invalid_params(TEXT_REQUIRED))
    }
}

/// The params of both methods (what `Text` reads).
#[cfg(feature = "openrpc")]
#[derive(schemars::JsonSchema)]
#[allow(dead_code)]
pub struct TextParams {
    /// The text: a non-empty string.
    #[schemars(length(min = 1))]
    text: String,
}

#[cfg(feature = "openrpc")]
impl nbio_ws::openrpc::DescribeParams for Text {
    type Params = TextParams;
}

/// The result of `self.reply`.
#[derive(Debug, Serialize)]
pub struct Reply {
    /// The text, back.
    pub echo: String,
    /// Its length in bytes (UTF-8).
    pub text_length: usize,
}

/// The result of `broadcast`.
#[derive(Debug, Serialize)]
pub struct Broadcasted {
    /// Always `"broadcasted"`.
    pub status: &'static str,
    /// The text's length in bytes (UTF-8).
    pub text_length: usize,
}

/// The params of the `broadcast` notification every client gets.
#[derive(Debug, Serialize)]
pub struct BroadcastNotification<'a> {
    /// The text broadcast.
    pub text: &'a str,
}

/// `self.reply`: echoes the text back to the caller only.
pub async fn self_reply(Text(text): Text) -> Result<Reply, RpcError> {
    Ok(Reply {
        text_length: text.len(),
        echo: text,
    })
}

/// `broadcast`: sends the text to every connected client, the caller
/// included (on every instance, with a broker).
pub async fn broadcast(hub: Hub, Text(text): Text) -> Result<Broadcasted, RpcError> {
    // With a broker, a text too large for it is -32021, sent to nobody.
    hub.broadcast("broadcast", &BroadcastNotification { text: &text })?;
    Ok(Broadcasted {
        status: "broadcasted",
        text_length: text.len(),
    })
}

/// `builder` serving `self.reply` and `broadcast`.
///
/// ```
/// let server = nbio_ws_examples::seed::methods(nbio_ws::Server::builder())
///     .build()
///     .unwrap();
/// let names = server.method_names();
/// assert!(names.contains(&"self.reply") && names.contains(&"broadcast"));
/// ```
pub fn methods(builder: ServerBuilder) -> ServerBuilder {
    builder
        .method("self.reply", self_reply)
        .method("broadcast", broadcast)
}
