//! `require_tool` as a test sees it: run in a child process of this test
//! binary (so that the opt-out variable is set or not, whatever the
//! environment of this run).

use std::process::{Command, Output};

use nbio_ws_testkit::tools::SKIP_MISSING_TOOLS;

const MISSING: &str = "no-such-tool-nbio-ws";

/// Needs a tool that is nowhere: fails, or returns at once with the
/// opt-out. Run by the tests below.
#[test]
#[ignore = "run by the other tests of this file, in a child process"]
fn needs_a_missing_tool() {
    if !nbio_ws_testkit::require_tool(MISSING) {
        println!("returned early");
        return;
    }
    unreachable!("{MISSING} exists");
}

/// Runs `needs_a_missing_tool` in a child process with the opt-out
/// variable set to `skip` (or unset).
fn run_probe(skip: Option<&str>) -> Output {
    let mut cmd = Command::new(std::env::current_exe().expect("this test binary"));
    cmd.args([
        "--ignored",
        "--exact",
        "needs_a_missing_tool",
        "--nocapture",
    ])
    .env_remove(SKIP_MISSING_TOOLS);
    if let Some(v) = skip {
        cmd.env(SKIP_MISSING_TOOLS, v);
    }
    cmd.output().expect("run the test binary")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_missing_tool_fails_the_test_and_names_the_tool() {
    let out = run_probe(None);
    let text = text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "needs_a_missing_tool needs {MISSING}, which is missing"
        )),
        "{text}"
    );
    assert!(text.contains("NBIO_WS_SKIP_MISSING_TOOLS=1"), "{text}");
    assert!(!text.contains("returned early"), "{text}");

    // "0" and "" do not opt out.
    for v in ["0", ""] {
        let out = run_probe(Some(v));
        assert!(!out.status.success(), "{v:?}: {}", self::text(&out));
    }
}

#[test]
fn with_the_opt_out_it_says_skip_and_returns() {
    let out = run_probe(Some("1"));
    let text = text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("SKIP: needs_a_missing_tool needs {MISSING}")),
        "{text}"
    );
    assert!(text.contains("returned early"), "{text}");
}

#[test]
fn a_tool_that_is_there_passes() {
    assert!(nbio_ws_testkit::require_tool("sh"));
    assert!(nbio_ws_testkit::tools::require_tools(&["sh", "env"]));
}
