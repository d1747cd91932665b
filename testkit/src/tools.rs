//! External tools a test needs (`redis-server`, `nats-server`, `nginx`,
//! `node`, Chromium, …): a test whose tool is missing fails, naming the
//! tool, so that a green run means the test ran.
//!
//! `scripts/test.sh` (or `scripts/install-test-deps.sh`) installs them all.
//! Where a tool cannot be had, set `NBIO_WS_SKIP_MISSING_TOOLS=1`: the
//! tests that need it then print `SKIP: <test> needs <tool>` and return
//! without checking anything.
//!
//! ```
//! // A #[test]:
//! fn against_a_real_redis() {
//!     if !nbio_ws_testkit::require_tool("redis-server") {
//!         return;
//!     }
//!     // … start redis-server, test against it …
//! }
//! ```

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The variable that turns a missing tool from a failure into a skip
/// (`NBIO_WS_SKIP_MISSING_TOOLS=1`).
pub const SKIP_MISSING_TOOLS: &str = "NBIO_WS_SKIP_MISSING_TOOLS";

/// Whether `tool` is there: true if it is; if not, fails the test with a
/// message naming the tool, or — with `NBIO_WS_SKIP_MISSING_TOOLS=1` —
/// prints `SKIP: <test> needs <tool>` and returns false (the test then
/// returns at once).
///
/// `tool` is a program looked up on `PATH` (`redis-server`, `node`), or
/// `chromium` (the browser at `$CHROMIUM`, by default `/usr/bin/chromium`),
/// or `python3:<module>` (a Python module that `python3` can import, such
/// as `python3:websockets`).
pub fn require_tool(tool: &str) -> bool {
    match find_tool(tool) {
        Ok(_) => true,
        Err(why) if skip_missing() => {
            // Straight to the file descriptor, past the test harness's
            // capture, so that the line shows in a plain `cargo test`.
            let _ = writeln!(
                std::io::stderr(),
                "SKIP: {} needs {tool} ({why})",
                current_test()
            );
            false
        }
        Err(why) => panic!("{}", missing(tool, &why)),
    }
}

/// [`require_tool`] for each of `tools`, in order; false at the first one
/// missing (when skipping is allowed).
pub fn require_tools(tools: &[&str]) -> bool {
    tools.iter().all(|t| require_tool(t))
}

/// Returns from the calling test (a function returning `()`) unless every
/// tool named is there; see [`require_tool`].
///
/// ```
/// // A #[test]:
/// fn page_in_a_browser() {
///     nbio_ws_testkit::require_tools!("node", "chromium");
///     // …
/// }
/// ```
#[macro_export]
macro_rules! require_tools {
    ($($tool:expr),+ $(,)?) => {
        if !$crate::tools::require_tools(&[$($tool),+]) {
            return;
        }
    };
}

/// Where `tool` is, or why it is not there.
pub fn find_tool(tool: &str) -> Result<PathBuf, String> {
    if tool == "chromium" {
        let path = chromium();
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(format!(
                "no Chromium at {} (set CHROMIUM to another path)",
                path.display()
            ))
        };
    }
    if let Some(module) = tool.strip_prefix("python3:") {
        let python = find_tool("python3")?;
        let ok = Command::new(&python)
            .args(["-c", &format!("import {module}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        return if ok {
            Ok(python)
        } else {
            Err(format!("python3 cannot import {module}"))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| is_executable(p))
        .ok_or_else(|| "not on PATH".to_owned())
}

/// The Chromium the browser tests drive: `$CHROMIUM`, by default Debian's
/// `/usr/bin/chromium`.
pub fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromium".into())
}

/// The message of a test that fails for want of `tool`.
pub fn missing(tool: &str, why: &str) -> String {
    format!(
        "{} needs {tool}, which is missing ({why}). Install what the tests need with \
         scripts/install-test-deps.sh (scripts/test.sh does it before running the tests), \
         or set {SKIP_MISSING_TOOLS}=1 to skip the tests whose tools are missing",
        current_test()
    )
}

fn skip_missing() -> bool {
    std::env::var(SKIP_MISSING_TOOLS).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The running test's name: the test harness names each test's thread
/// after it.
fn current_test() -> String {
    match std::thread::current().name() {
        Some(name) if name != "main" => name.to_owned(),
        _ => "this test".to_owned(),
    }
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_program_on_path() {
        assert!(find_tool("sh").is_ok());
        assert_eq!(
            find_tool("no-such-tool-nbio-ws").unwrap_err(),
            "not on PATH"
        );
    }

    #[test]
    fn the_failure_names_the_tool_and_the_way_out() {
        let m = missing("nginx", "not on PATH");
        assert!(m.contains("needs nginx"), "{m}");
        assert!(
            m.contains("the_failure_names_the_tool_and_the_way_out"),
            "{m}"
        );
        assert!(m.contains("scripts/install-test-deps.sh"), "{m}");
        assert!(m.contains("NBIO_WS_SKIP_MISSING_TOOLS=1"), "{m}");
    }
}
