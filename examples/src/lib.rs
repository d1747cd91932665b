//! What the examples' binaries use beside `nbio-ws`, and what the
//! workspace's tests and benches share with them.
//!
//! * [`seed`]: the seed wire format's two methods (`self.reply`,
//!   `broadcast`) as plain functions.
//! * [`static_dir`]: a folder of files served as pages (the `server`
//!   example's `--static DIR`).

pub mod seed;
pub mod static_dir;
