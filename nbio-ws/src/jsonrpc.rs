//! JSON-RPC 2.0 wire types: parsing of single requests and batches, error
//! codes, and the encoders for responses and notifications.
//!
//! Parsing borrows from the incoming text frame wherever it can: the `id`
//! and `params` are kept as raw JSON slices, so an id is echoed back to the
//! client byte for byte, and params are only deserialized by the handler
//! that asks for them (through [`Params`](crate::Params)).
//!
//! Encoding writes the envelope by hand around a result serialized once, so
//! a response costs one allocation for the output buffer.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Invalid JSON was received (`-32700`).
pub const PARSE_ERROR: i64 = -32700;
/// The JSON sent is not a valid request object (`-32600`).
pub const INVALID_REQUEST: i64 = -32600;
/// The method does not exist (`-32601`).
pub const METHOD_NOT_FOUND: i64 = -32601;
/// Invalid method parameters (`-32602`).
pub const INVALID_PARAMS: i64 = -32602;
/// Internal error, including a handler that panicked (`-32603`).
pub const INTERNAL_ERROR: i64 = -32603;
/// The connection's rate limit refused the request (`-32029`, in the
/// server-error range); `data.retry_after_ms` says when to try again. See
/// [`limits`](crate::limits).
pub const RATE_LIMITED: i64 = -32029;
/// The handler did not finish within the request timeout
/// (`WS_REQUEST_TIMEOUT`) and was cancelled (`-32008`, in the server-error
/// range); `data.timeout_ms` gives the timeout.
pub const REQUEST_TIMEOUT: i64 = -32008;

/// The most bytes of a method name that a `-32601` error echoes in
/// `data.method`; a longer name is cut (at a character boundary) and the
/// error carries `data.truncated: true`.
pub const MAX_ECHOED_METHOD: usize = 128;
/// The most bytes of a `data.detail` text; a longer one is cut (at a
/// character boundary) and ends with `…`.
pub const MAX_DETAIL: usize = 256;

/// A room join was refused by a membership limit (`-32020`, in the
/// server-error range); `data.reason` says which (`too_many_rooms`,
/// `room_name_too_long`, `meta_too_large`, `disconnected`) and
/// `data.limit` gives it. See [`JoinError`](crate::JoinError).
pub const JOIN_REFUSED: i64 = -32020;

/// A message was too large to publish through the broker and was sent to
/// nobody (`-32021`, in the server-error range); `data.size` and
/// `data.limit` give its size and the most the broker takes, in bytes.
/// See [`BroadcastError`](crate::BroadcastError).
pub const MESSAGE_TOO_LARGE: i64 = -32021;

/// A JSON-RPC error object: what a handler returns to fail a request.
///
/// The constructors cover the codes of the specification; any code can be
/// built with [`RpcError::new`]. `data` is optional structured detail.
/// Those that take a detail text ([`parse_error`](RpcError::parse_error),
/// [`invalid_request`](RpcError::invalid_request),
/// [`invalid_params`](RpcError::invalid_params),
/// [`internal`](RpcError::internal)) cut it to 256 bytes (ending with
/// `…`), since details often quote what the client sent.
///
/// ```
/// use nbio_ws::RpcError;
///
/// let e = RpcError::invalid_params("text must not be empty");
/// assert_eq!(e.code, -32602);
/// assert_eq!(e.data.unwrap()["detail"], "text must not be empty");
///
/// let custom = RpcError::new(-32001, "room is full");
/// assert_eq!(custom.message, "room is full");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("JSON-RPC error {code}: {message}")]
pub struct RpcError {
    /// The error code (see the associated constants).
    pub code: i64,
    /// A short description of the error.
    pub message: String,
    /// Optional structured detail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl RpcError {
    /// Invalid JSON was received (`-32700`).
    pub const PARSE_ERROR: i64 = PARSE_ERROR;
    /// The JSON sent is not a valid request object (`-32600`).
    pub const INVALID_REQUEST: i64 = INVALID_REQUEST;
    /// The method does not exist (`-32601`).
    pub const METHOD_NOT_FOUND: i64 = METHOD_NOT_FOUND;
    /// Invalid method parameters (`-32602`).
    pub const INVALID_PARAMS: i64 = INVALID_PARAMS;
    /// Internal error, including a handler that panicked (`-32603`).
    pub const INTERNAL_ERROR: i64 = INTERNAL_ERROR;
    /// The connection's rate limit refused the request (`-32029`, in the
    /// server-error range); `data.retry_after_ms` says when to try again.
    /// See [`limits`](crate::limits).
    pub const RATE_LIMITED: i64 = RATE_LIMITED;
    /// The handler did not finish within the request timeout
    /// (`WS_REQUEST_TIMEOUT`) and was cancelled (`-32008`);
    /// `data.timeout_ms` gives the timeout.
    pub const REQUEST_TIMEOUT: i64 = REQUEST_TIMEOUT;
    /// A room join was refused by a membership limit (`-32020`, in the
    /// server-error range), with `data.reason`, `data.limit` and
    /// `data.detail`. See [`JoinError`](crate::JoinError).
    pub const JOIN_REFUSED: i64 = JOIN_REFUSED;
    /// A message was too large to publish through the broker and was sent
    /// to nobody (`-32021`, in the server-error range), with `data.size`,
    /// `data.limit` and `data.detail`. See
    /// [`BroadcastError`](crate::BroadcastError).
    pub const MESSAGE_TOO_LARGE: i64 = MESSAGE_TOO_LARGE;

    /// An error with the given code and message and no data.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// Attaches structured detail to the error.
    pub fn with_data(mut self, data: serde_json::Value) -> Self {
        self.data = Some(data);
        self
    }

    /// `-32021 Message too large`: a message of `size` bytes (as
    /// published) does not fit in one broker payload of at most `limit`.
    ///
    /// ```
    /// let e = nbio_ws::RpcError::message_too_large(70_000, 65_536);
    /// assert_eq!(e.code, nbio_ws::RpcError::MESSAGE_TOO_LARGE);
    /// assert_eq!(e.data.unwrap()["size"], 70_000);
    /// ```
    pub fn message_too_large(size: usize, limit: usize) -> Self {
        Self::new(MESSAGE_TOO_LARGE, "Message too large").with_data(serde_json::json!({
            "size": size,
            "limit": limit,
            "detail": format!(
                "the message is {size} bytes; at most {limit} can reach the other instances"
            ),
        }))
    }

    /// `-32700 Parse error`, with `data.detail`.
    pub fn parse_error(detail: impl fmt::Display) -> Self {
        Self::new(PARSE_ERROR, "Parse error").with_detail(detail)
    }

    /// `-32600 Invalid Request`, with `data.detail`.
    pub fn invalid_request(detail: impl fmt::Display) -> Self {
        Self::new(INVALID_REQUEST, "Invalid Request").with_detail(detail)
    }

    /// `-32601 Method not found`, naming the method in `data.method`. At
    /// most 128 bytes of the name are echoed; a longer one is cut (at a
    /// character boundary) and `data.truncated` is `true`.
    ///
    /// ```
    /// let e = nbio_ws::RpcError::method_not_found(&"x".repeat(10_000));
    /// let data = e.data.unwrap();
    /// assert_eq!(data["method"].as_str().unwrap().len(), 128);
    /// assert_eq!(data["truncated"], true);
    /// ```
    pub fn method_not_found(method: &str) -> Self {
        let echoed = cut(method, MAX_ECHOED_METHOD);
        let data = if echoed.len() < method.len() {
            serde_json::json!({ "method": echoed, "truncated": true })
        } else {
            serde_json::json!({ "method": method })
        };
        Self::new(METHOD_NOT_FOUND, "Method not found").with_data(data)
    }

    /// `-32602 Invalid params`, with `data.detail` saying what is wrong.
    pub fn invalid_params(detail: impl fmt::Display) -> Self {
        Self::new(INVALID_PARAMS, "Invalid params").with_detail(detail)
    }

    /// `-32603 Internal error`, with `data.detail`.
    pub fn internal(detail: impl fmt::Display) -> Self {
        Self::new(INTERNAL_ERROR, "Internal error").with_detail(detail)
    }

    /// `-32029 Rate limit exceeded`, with `data.retry_after_ms`: how long
    /// until the connection's rate limit admits a request again.
    ///
    /// ```
    /// let e = nbio_ws::RpcError::rate_limited(std::time::Duration::from_millis(1500));
    /// assert_eq!(e.code, nbio_ws::RpcError::RATE_LIMITED);
    /// assert_eq!(e.data.unwrap()["retry_after_ms"], 1500);
    /// ```
    pub fn rate_limited(retry_after: std::time::Duration) -> Self {
        let ms = u64::try_from(retry_after.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
        Self::new(RATE_LIMITED, "Rate limit exceeded")
            .with_data(serde_json::json!({ "retry_after_ms": ms }))
    }

    /// `-32008 Request timed out`, with `data.timeout_ms`: the handler ran
    /// longer than the request timeout and was cancelled.
    pub(crate) fn request_timeout(timeout: std::time::Duration) -> Self {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        Self::new(REQUEST_TIMEOUT, "Request timed out")
            .with_data(serde_json::json!({ "timeout_ms": ms }))
    }

    /// `-32600`, for a batch of more than `max` elements: none of it runs.
    pub(crate) fn batch_too_large(max: usize) -> Self {
        Self::new(
            INVALID_REQUEST,
            format!("batch too large: at most {max} requests"),
        )
        .with_data(serde_json::json!({ "max_batch": max }))
    }

    /// `-32603`, for a result whose reply would exceed `max` bytes.
    pub(crate) fn response_too_large(bytes: usize, max: usize) -> Self {
        Self::new(INTERNAL_ERROR, "Response too large")
            .with_data(serde_json::json!({ "bytes": bytes, "max_bytes": max }))
    }

    /// `data.detail`, cut to `MAX_DETAIL` (256) bytes: details often quote
    /// what the client sent (serde's messages do).
    fn with_detail(self, detail: impl fmt::Display) -> Self {
        let mut text = detail.to_string();
        if text.len() > MAX_DETAIL {
            let keep = cut(&text, MAX_DETAIL - '…'.len_utf8()).len();
            text.truncate(keep);
            text.push('…');
        }
        self.with_data(serde_json::json!({ "detail": text }))
    }

    /// A short label for the error class, used for the `errors_total`
    /// metric.
    pub fn kind(&self) -> &'static str {
        match self.code {
            PARSE_ERROR => "parse_error",
            INVALID_REQUEST => "invalid_request",
            METHOD_NOT_FOUND => "method_not_found",
            INVALID_PARAMS => "invalid_params",
            INTERNAL_ERROR => "internal_error",
            RATE_LIMITED => "rate_limited",
            REQUEST_TIMEOUT => "request_timeout",
            JOIN_REFUSED => "join_refused",
            MESSAGE_TOO_LARGE => "message_too_large",
            _ => "application",
        }
    }
}

/// A request id, kept as the raw JSON the client sent (a number, a string
/// or `null`), so that it is echoed back exactly.
#[derive(Debug, Clone)]
pub struct Id(Box<RawValue>);

impl PartialEq for Id {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Eq for Id {}

impl Id {
    /// The `null` id, used for errors that cannot be tied to a request.
    pub fn null() -> Self {
        Id(RawValue::from_string("null".to_owned()).expect("null is valid JSON"))
    }

    /// The id as raw JSON text.
    pub fn as_json(&self) -> &str {
        self.0.get()
    }

    fn from_raw(raw: &RawValue) -> Self {
        Id(raw.to_owned())
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.get())
    }
}

/// A request object that passed validation.
#[derive(Debug)]
pub struct Request<'a> {
    /// The method name.
    pub method: Cow<'a, str>,
    /// The raw `params` value, when present (always an object or an array).
    pub params: Option<&'a RawValue>,
    /// The id; `None` for a notification, which is never answered.
    pub id: Option<Id>,
}

/// One parsed element: a valid request, or the error response it earns.
#[derive(Debug)]
pub enum Parsed<'a> {
    /// A valid request or notification.
    Request(Request<'a>),
    /// An invalid request object: answered with this error and id.
    Invalid(Id, RpcError),
}

/// What a text message holds.
#[derive(Debug)]
pub enum Message<'a> {
    /// A single request object (or an invalid one).
    Single(Parsed<'a>),
    /// A non-empty batch.
    Batch(Vec<Parsed<'a>>),
    /// Unparsable JSON or an empty batch: a single error response with id
    /// `null`.
    Error(RpcError),
}

#[derive(Deserialize)]
struct RawRequest<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    jsonrpc: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    method: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    params: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
}

/// Deserializes a field that is present (even when it is `null`) as `Some`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue as Deserialize>::deserialize(d).map(Some)
}

/// Parses one text message into a request, a batch or an error.
pub fn parse(text: &str) -> Message<'_> {
    parse_limited(text, usize::MAX)
}

/// [`parse`], refusing a batch of more than `max_batch` elements with one
/// `-32600` error. The elements are counted while the array is scanned and
/// the scan stops at the first one too many, so an oversized batch costs
/// no more than `max_batch` elements (and is refused even when what
/// follows is not valid JSON).
pub fn parse_limited(text: &str, max_batch: usize) -> Message<'_> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let too_large = std::cell::Cell::new(false);
        let mut de = serde_json::Deserializer::from_str(text);
        let items = de::DeserializeSeed::deserialize(
            BoundedBatch {
                max: max_batch,
                too_large: &too_large,
            },
            &mut de,
        )
        .and_then(|items| de.end().map(|()| items));
        match items {
            _ if too_large.get() => Message::Error(RpcError::batch_too_large(max_batch)),
            Ok(items) if items.is_empty() => {
                Message::Error(RpcError::invalid_request("empty batch"))
            }
            Ok(items) => Message::Batch(items.into_iter().map(parse_element).collect()),
            Err(e) => Message::Error(RpcError::parse_error(e)),
        }
    } else {
        // The common case, a well-formed request object, in one pass;
        // anything else is classified by the slower path below, which
        // gives the same answers.
        if trimmed.starts_with('{') {
            if let Ok(req) = serde_json::from_str::<RawRequest<'_>>(text) {
                return Message::Single(check_request(req));
            }
        }
        parse_two_pass(text)
    }
}

/// Deserializes a JSON array into its raw elements, failing (and setting
/// `too_large`) at element `max + 1`.
struct BoundedBatch<'c> {
    max: usize,
    too_large: &'c std::cell::Cell<bool>,
}

impl<'de> de::DeserializeSeed<'de> for BoundedBatch<'_> {
    type Value = Vec<&'de RawValue>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> de::Visitor<'de> for BoundedBatch<'_> {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array of requests")
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<&'de RawValue>()? {
            if items.len() == self.max {
                self.too_large.set(true);
                return Err(de::Error::custom("batch too large"));
            }
            items.push(item);
        }
        Ok(items)
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a
/// character boundary.
pub(crate) fn cut(s: &str, max: usize) -> &str {
    let end = (0..=max.min(s.len()))
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    &s[..end]
}

/// [`parse`] without its one-pass shortcut for single requests: the whole
/// text as JSON first, then the request object. The fuzzer checks that both
/// always agree.
pub(crate) fn parse_two_pass(text: &str) -> Message<'_> {
    if text.trim_start().starts_with('[') {
        return parse(text);
    }
    match serde_json::from_str::<&RawValue>(text) {
        Ok(raw) => Message::Single(parse_element(raw)),
        Err(e) => Message::Error(RpcError::parse_error(e)),
    }
}

fn parse_element(raw: &RawValue) -> Parsed<'_> {
    let json = raw.get();
    if !json.starts_with('{') {
        return Parsed::Invalid(
            Id::null(),
            RpcError::invalid_request("a request must be a JSON object"),
        );
    }
    match serde_json::from_str(json) {
        Ok(req) => check_request(req),
        Err(e) => Parsed::Invalid(Id::null(), RpcError::invalid_request(e)),
    }
}

/// Checks the members of a request object.
fn check_request(req: RawRequest<'_>) -> Parsed<'_> {
    // The id decides whether we answer; validate it first.
    let id = match req.id {
        None => None,
        Some(raw) => match raw.get().as_bytes().first() {
            Some(b'"') => Some(Id::from_raw(raw)),
            // A number must also be one that JSON parsers can read back
            // (1e400 is valid syntax but out of range for a double).
            Some(b'-' | b'0'..=b'9') => {
                if serde_json::from_str::<serde_json::Number>(raw.get()).is_err() {
                    return Parsed::Invalid(
                        Id::null(),
                        RpcError::invalid_request("id is a number out of range"),
                    );
                }
                Some(Id::from_raw(raw))
            }
            Some(b'n') => Some(Id::from_raw(raw)),
            _ => {
                return Parsed::Invalid(
                    Id::null(),
                    RpcError::invalid_request("id must be a string, a number or null"),
                )
            }
        },
    };
    let reply_id = || id.clone().unwrap_or_else(Id::null);
    match req.jsonrpc.map(RawValue::get) {
        Some("\"2.0\"") => {}
        Some(_) => {
            return Parsed::Invalid(
                reply_id(),
                RpcError::invalid_request("jsonrpc must be exactly \"2.0\""),
            )
        }
        None => {
            return Parsed::Invalid(
                reply_id(),
                RpcError::invalid_request("missing member \"jsonrpc\": \"2.0\""),
            )
        }
    }
    let method = match req.method {
        None => return Parsed::Invalid(reply_id(), RpcError::invalid_request("missing method")),
        Some(raw) => match string_of(raw) {
            Some(m) => m,
            None => {
                return Parsed::Invalid(
                    reply_id(),
                    RpcError::invalid_request("method must be a string"),
                )
            }
        },
    };
    if let Some(p) = req.params {
        if !matches!(p.get().as_bytes().first(), Some(b'{' | b'[')) {
            return Parsed::Invalid(
                reply_id(),
                RpcError::invalid_request("params must be an object or an array"),
            );
        }
    }
    Parsed::Request(Request {
        method,
        params: req.params,
        id,
    })
}

fn string_of(raw: &RawValue) -> Option<Cow<'_, str>> {
    if !raw.get().starts_with('"') {
        return None;
    }
    if let Ok(s) = serde_json::from_str::<&str>(raw.get()) {
        return Some(Cow::Borrowed(s));
    }
    serde_json::from_str::<String>(raw.get())
        .ok()
        .map(Cow::Owned)
}

/// Encodes a success response: `{"jsonrpc":"2.0","result":...,"id":...}`.
pub fn encode_result(id: &Id, result: &RawValue) -> Bytes {
    let r = result.get();
    let i = id.as_json();
    let mut out = Vec::with_capacity(36 + r.len() + i.len());
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"result\":");
    out.extend_from_slice(r.as_bytes());
    out.extend_from_slice(b",\"id\":");
    out.extend_from_slice(i.as_bytes());
    out.push(b'}');
    Bytes::from(out)
}

/// Encodes an error response: `{"jsonrpc":"2.0","error":{...},"id":...}`.
pub fn encode_error(id: &Id, error: &RpcError) -> Bytes {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"error\":");
    // Serializing a struct of a string, an integer and a Value cannot fail.
    if serde_json::to_writer(&mut out, error).is_err() {
        out.extend_from_slice(br#"{"code":-32603,"message":"Internal error"}"#);
    }
    out.extend_from_slice(b",\"id\":");
    out.extend_from_slice(id.as_json().as_bytes());
    out.push(b'}');
    Bytes::from(out)
}

/// Joins encoded responses into a batch response array.
pub fn encode_batch(parts: &[Bytes]) -> Bytes {
    let len = parts.iter().map(Bytes::len).sum::<usize>() + parts.len() + 1;
    let mut out = Vec::with_capacity(len);
    out.push(b'[');
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(p);
    }
    out.push(b']');
    Bytes::from(out)
}

/// Encodes a notification: `{"jsonrpc":"2.0","method":...,"params":...}`.
pub fn encode_notification<P: Serialize + ?Sized>(
    method: &str,
    params: &P,
) -> Result<Bytes, serde_json::Error> {
    #[derive(Serialize)]
    struct Notification<'a, P: ?Sized> {
        jsonrpc: &'static str,
        method: &'a str,
        params: &'a P,
    }
    serde_json::to_vec(&Notification {
        jsonrpc: "2.0",
        method,
        params,
    })
    .map(Bytes::from)
}

/// Deserializes params into `T`, reporting a -32602 error on failure.
///
/// Structs accept params by name (an object) and by position (an array).
/// Missing params are treated as `null`, which suits `Option<T>` and `()`.
pub fn deserialize_params<T: de::DeserializeOwned>(
    params: Option<&RawValue>,
) -> Result<T, RpcError> {
    let text = params.map(RawValue::get).unwrap_or("null");
    serde_json::from_str(text).map_err(|e| {
        if params.is_none() {
            RpcError::invalid_params(format!("missing params: {e}"))
        } else {
            RpcError::invalid_params(e)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_single_request() {
        let msg = parse(r#"{"jsonrpc":"2.0","method":"self.reply","params":{"text":"hi"},"id":7}"#);
        match msg {
            Message::Single(Parsed::Request(req)) => {
                assert_eq!(req.method, "self.reply");
                assert_eq!(req.id.unwrap().as_json(), "7");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn encodes_a_notification() {
        let bytes = encode_notification("broadcast", &serde_json::json!({"text": "hi"})).unwrap();
        assert_eq!(
            &bytes[..],
            br#"{"jsonrpc":"2.0","method":"broadcast","params":{"text":"hi"}}"#
        );
    }

    fn single(text: &str) -> Parsed<'_> {
        match parse(text) {
            Message::Single(p) => p,
            other => panic!("expected single, got {other:?}"),
        }
    }

    fn invalid(text: &str) -> (String, i64) {
        match single(text) {
            Parsed::Invalid(id, e) => (id.as_json().to_owned(), e.code),
            Parsed::Request(r) => panic!("expected invalid, got {r:?}"),
        }
    }

    #[test]
    fn ids_are_kept_verbatim() {
        for id in ["1", "\"abc\"", "null", "1.5e3", "-7", "\"\\u00e9\""] {
            let text = format!(r#"{{"jsonrpc":"2.0","method":"m","id":{id}}}"#);
            match single(&text) {
                Parsed::Request(r) => assert_eq!(r.id.unwrap().as_json(), id),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn notification_has_no_id() {
        match single(r#"{"jsonrpc":"2.0","method":"m"}"#) {
            Parsed::Request(r) => assert!(r.id.is_none()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn invalid_requests() {
        assert_eq!(
            invalid(r#"{"jsonrpc":"1.0","method":"m","id":3}"#),
            ("3".into(), -32600)
        );
        assert_eq!(invalid(r#"{"method":"m","id":3}"#), ("3".into(), -32600));
        assert_eq!(
            invalid(r#"{"jsonrpc":"2.0","method":1,"id":"a"}"#),
            ("\"a\"".into(), -32600)
        );
        assert_eq!(
            invalid(r#"{"jsonrpc":"2.0","method":"m","id":{}}"#),
            ("null".into(), -32600)
        );
        assert_eq!(
            invalid(r#"{"jsonrpc":"2.0","method":"m","id":[1]}"#),
            ("null".into(), -32600)
        );
        assert_eq!(
            invalid(r#"{"jsonrpc":"2.0","method":"m","id":true}"#),
            ("null".into(), -32600)
        );
        assert_eq!(
            invalid(r#"{"jsonrpc":"2.0","method":"m","params":"x","id":1}"#),
            ("1".into(), -32600)
        );
        assert_eq!(invalid(r#"1"#), ("null".into(), -32600));
        // Found by fuzzing: a number id out of f64 range would be echoed as
        // JSON that parsers reject.
        assert_eq!(
            invalid(r#"{"jsonrpc":"2.0","method":"m","id":1.5e403}"#),
            ("null".into(), -32600)
        );
        assert_eq!(
            invalid(r#"{"metho|d":"8y","id":1.5e403}"#),
            ("null".into(), -32600)
        );
        assert_eq!(invalid(r#""x""#), ("null".into(), -32600));
    }

    #[test]
    fn parse_errors_and_batches() {
        assert!(matches!(parse("{"), Message::Error(e) if e.code == PARSE_ERROR));
        assert!(matches!(parse("[1,"), Message::Error(e) if e.code == PARSE_ERROR));
        assert!(matches!(parse("[]"), Message::Error(e) if e.code == INVALID_REQUEST));
        match parse(r#"[{"jsonrpc":"2.0","method":"a","id":1}, 5]"#) {
            Message::Batch(items) => {
                assert_eq!(items.len(), 2);
                assert!(matches!(items[0], Parsed::Request(_)));
                assert!(matches!(items[1], Parsed::Invalid(..)));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn escaped_method_names() {
        match single(r#"{"jsonrpc":"2.0","method":"self\u002ereply","id":1}"#) {
            Parsed::Request(r) => assert_eq!(r.method, "self.reply"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn encoders() {
        let id = Id::from_raw(&RawValue::from_string("\"x\"".into()).unwrap());
        let result = RawValue::from_string("{\"a\":1}".into()).unwrap();
        assert_eq!(
            &encode_result(&id, &result)[..],
            br#"{"jsonrpc":"2.0","result":{"a":1},"id":"x"}"#
        );
        let err = encode_error(&Id::null(), &RpcError::new(-1, "m"));
        assert_eq!(
            &err[..],
            br#"{"jsonrpc":"2.0","error":{"code":-1,"message":"m"},"id":null}"#
        );
        let batch = encode_batch(&[Bytes::from_static(b"1"), Bytes::from_static(b"2")]);
        assert_eq!(&batch[..], b"[1,2]");
    }
}
