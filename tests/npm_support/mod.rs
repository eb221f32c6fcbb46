//! Runs one of the node scripts in tests/npm/ (the libraries come from the test command's
//! `npm ci`): JSON in on stdin, JSON out on stdout.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

pub fn run(script: &str, input: &serde_json::Value) -> serde_json::Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new("node")
        .arg(root.join("tests/npm").join(script))
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs (Node.js 18 or later; the test command installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "node {script} failed (did `npm ci` run?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
