//! A short self-contained run against the debug isthmus-std: every message of a
//! fixed count arrives exactly once, both ways. No timing assertions.

use std::path::Path;
use std::process::Command;

#[test]
fn a_short_self_contained_run_delivers_every_message_once() {
    let tool = env!("CARGO_BIN_EXE_isthmus-load");
    // `cargo test --workspace` builds isthmus-std next to the tool (for its own tests).
    let gateway = Path::new(tool).with_file_name("isthmus-std");
    if !gateway.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{} is missing; CI runs cargo test --workspace",
            gateway.display()
        );
        eprintln!("SKIPPED: build isthmus-std first (cargo build -p isthmus-runtime-std)");
        return;
    }
    let out = Command::new(tool)
        .arg("--gateway")
        .arg(&gateway)
        .args(["--streams", "2", "--sip-peers", "2", "--count", "200"])
        .args(["--rate", "400", "--duration", "60", "--drain", "60"])
        .output()
        .expect("run isthmus-load");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    for dir in ["XMPP -> SIP", "SIP -> XMPP"] {
        assert!(
            text.contains(&format!(
                "{dir}: sent 100, delivered 100, lost 0, duplicates 0, refused 0"
            )),
            "{text}"
        );
    }
    assert!(text.contains("gateway CPU"), "{text}");
    assert!(text.contains("gateway RSS"), "{text}");
}
