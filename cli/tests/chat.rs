//! `kiln chat` end to end on the real model: two turns from stdin, greedy,
//! on the CPU executor; the second turn sees the first (history kept), and
//! end of input leaves cleanly.

use std::io::Write;
use std::process::{Command, Stdio};

#[test]
fn two_turns_then_end_of_input() {
    let Some(model) = kiln_loaders::paths::test_model("kiln chat") else {
        return;
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["chat", "--device", "cpu", "--temp", "0", "-n", "12", "-m"])
        .arg(&model)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln starts");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(b"What is the capital of France?\n\nAnd of Italy?\n")
        .expect("writes");
    let out = child.wait_with_output().expect("kiln finishes");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kiln chat failed: {stderr}");
    // Three prompts: two answered turns, then the one end of input closes.
    assert_eq!(stdout.matches("> ").count(), 4, "{stdout}");
    assert!(stdout.contains("Paris"), "first reply: {stdout}");
    assert!(!stderr.contains("error"), "{stderr}");
}
