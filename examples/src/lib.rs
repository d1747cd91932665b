//! What the workspace's tests and benches share with the examples.
//!
//! * [`seed`]: the seed wire format's two methods (`self.reply`,
//!   `broadcast`) as plain functions.

pub mod seed;
