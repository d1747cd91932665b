//! Replays the fuzz seed corpora (`nbio-ws/fuzz/corpus/<target>/`) and
//! every input that ever made a fuzz target fail
//! (`nbio-ws/fuzz/regressions/<target>/`) through the same entry points
//! the cargo-fuzz targets use, so each crash found becomes a regression
//! test.

use std::path::Path;

use nbio_ws::__fuzz;

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_file() {
                out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
            }
        }
    }
    out
}

fn replay(target: &str, run: impl Fn(&[u8])) {
    let all = inputs(target);
    assert!(!all.is_empty(), "no seed corpus for {target}");
    for (name, data) in all {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&data)));
        assert!(outcome.is_ok(), "{target}: {name} fails");
    }
}

#[test]
fn jsonrpc_parse() {
    replay("jsonrpc_parse", __fuzz::jsonrpc_parse);
}

#[test]
fn dispatch() {
    let d = __fuzz::Dispatcher::new();
    replay("dispatch", |data| {
        let _ = d.dispatch(data);
    });
}

#[test]
fn assembler() {
    replay("assembler", __fuzz::assembler);
}

#[test]
fn close_frame() {
    replay("close_frame", __fuzz::close_frame);
}

#[test]
fn frames() {
    replay("frames", __fuzz::frames);
}

#[test]
fn envelope() {
    replay("envelope", __fuzz::envelope);
}
