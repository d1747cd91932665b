//! Close codes, and whether a client should come back after one.
//!
//! RFC 6455's codes say what went wrong; they do not say whether trying
//! again makes sense. nbio-ws uses them consistently, and the private range
//! 4000–4999 for what RFC 6455 has no code for, split in two halves:
//! **4000–4399: reconnect (and recover)**, **4400–4999: do not reconnect**.
//! The JavaScript client (`clients/js`) follows [`should_reconnect`].
//!
//! | code | sent when | client should |
//! |---|---|---|
//! | 1000 | the application closed the connection normally | not reconnect |
//! | 1001 | the server shuts down, or the client stopped answering pings | reconnect and recover |
//! | 1002, 1003, 1007 | the client broke the protocol (bad frame, binary where text is needed, invalid UTF-8) | not reconnect: it would do it again |
//! | 1008 | slow consumer (its outbound queue filled up), or rate limit exceeded repeatedly | reconnect and recover (after a backoff) |
//! | 1009 | a message over the size limit | not reconnect |
//! | 1011 | the server failed | reconnect |
//! | [`STREAM_GAP`] 4000 | a room's stream lost publications for this client (a gap the history could not fill, or its epoch changed) | reconnect and recover |
//! | [`CREDENTIALS_EXPIRED`] 4001 | its credentials expired: a JWT's `exp` passed (no leeway), or the expiry an authenticator gave with [`Authenticated::with_expiry`](crate::auth::Authenticated::with_expiry); reason `credentials expired` | refresh them, then reconnect |
//! | [`BAD_REQUEST`] 4400 | the application refuses what the client does | not reconnect |
//! | [`CREDENTIALS_REFUSED`] 4401 | its credentials are refused | not reconnect |
//! | [`FORBIDDEN`] 4403 | banned, or not allowed | not reconnect |
//! | [`REPLACED`] 4409 | a newer connection of the same user replaced it | not reconnect |
//!
//! ```
//! use nbio_ws::close;
//! assert!(close::should_reconnect(1001));
//! assert!(close::should_reconnect(close::STREAM_GAP));
//! assert!(!close::should_reconnect(close::FORBIDDEN));
//! ```

/// The server is going away (shutdown) or the peer went silent.
pub const GOING_AWAY: u16 = 1001;
/// Slow consumer or rate limit: policy violation, reconnect after a backoff.
pub const POLICY: u16 = 1008;
/// A room's stream has a gap for this client: reconnect and recover.
pub const STREAM_GAP: u16 = 4000;
/// The client's credentials expired: refresh them and reconnect.
pub const CREDENTIALS_EXPIRED: u16 = 4001;
/// The application refuses what the client does: do not reconnect.
pub const BAD_REQUEST: u16 = 4400;
/// The client's credentials are refused: do not reconnect.
pub const CREDENTIALS_REFUSED: u16 = 4401;
/// The client is banned or not allowed: do not reconnect.
pub const FORBIDDEN: u16 = 4403;
/// A newer connection replaced this one: do not reconnect.
pub const REPLACED: u16 = 4409;

/// Whether a client closed with `code` should reconnect (see the table
/// in the [module docs](self)). Codes not listed there count as
/// "reconnect".
pub fn should_reconnect(code: u16) -> bool {
    !matches!(code, 1000 | 1002 | 1003 | 1007 | 1009 | 1010 | 4400..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_of_the_private_range() {
        for c in [1001, 1006, 1008, 1011, 1012, 1013, 1014, 4000, 4001, 4399] {
            assert!(should_reconnect(c), "{c}");
        }
        for c in [
            1000, 1002, 1003, 1007, 1009, 1010, 4400, 4401, 4403, 4409, 4999,
        ] {
            assert!(!should_reconnect(c), "{c}");
        }
    }
}
