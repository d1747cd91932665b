//! The WebSocket layer: the frame codec ([`frame`]), whole messages and
//! close handling ([`message`]), and the connection loop ([`conn`]).
//! fastwebsockets performs the HTTP upgrade (and unmasking); frames are
//! read and written here (see [`frame`] for why).

pub(crate) mod conn;
pub(crate) mod frame;
pub(crate) mod message;

pub use message::RawMessage;
