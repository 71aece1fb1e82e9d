//! Durability: a writer process applies a burst of subscription changes to the
//! SQLite store and acknowledges each one (as the gateway would on the wire) only
//! after `Store::apply` returned. The test kills it with SIGKILL in the middle of
//! the burst, reopens the store, and checks that the state is exactly a prefix of
//! the change sequence that contains every acknowledged change.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use isthmus_core::roster::{Item, Persist, Sub};
use isthmus_host::store::Store;

const PAIRS: usize = 40;
const CHANGES: usize = 4000;

/// Change number `i`: which pair, and its new state.
fn change(i: usize) -> Persist {
    let subs = [Sub::None, Sub::Pending, Sub::Active];
    let n = i / PAIRS + 1;
    Persist {
        local: format!("user{}@sip.test", i % PAIRS),
        remote: "contact@xmpp.test".into(),
        item: Item {
            watch: subs[n % 3],
            watched_by: subs[(n / 3) % 3],
        },
    }
}

/// Run by the child process only (see `a_killed_writer_loses_nothing_acknowledged`).
#[test]
#[ignore = "the writer half of store_crash; run by the test itself in a child process"]
fn writer_child() {
    let path = PathBuf::from(std::env::var("ISTHMUS_CRASH_DB").expect("ISTHMUS_CRASH_DB"));
    let mut store = Store::open(&path).expect("open");
    let mut out = std::io::stdout().lock();
    for i in 0..CHANGES {
        store.apply(&change(i)).expect("apply");
        // The acknowledgement leaves only after the change is durable.
        writeln!(out, "ack {i}").expect("stdout");
        out.flush().expect("flush");
    }
}

#[test]
fn a_killed_writer_loses_nothing_acknowledged() {
    let dir = std::env::temp_dir().join(format!("isthmus-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let db = dir.join("state.sqlite");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--ignored",
            "--exact",
            "writer_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("ISTHMUS_CRASH_DB", &db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn writer");
    let stdout = child.stdout.take().expect("stdout");
    let mut last_ack: Option<usize> = None;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if let Some(n) = line
            .strip_prefix("ack ")
            .and_then(|n| n.trim().parse::<usize>().ok())
        {
            last_ack = Some(n);
            if n >= CHANGES / 4 {
                // Mid-burst: the writer is busy with the next changes.
                child.kill().expect("SIGKILL");
                break;
            }
        }
    }
    let _ = child.wait();
    let acked = last_ack.expect("the writer acknowledged changes before it was killed");
    assert!(
        acked < CHANGES - 1,
        "the writer must die mid-burst (acked {acked})"
    );

    let store = Store::open(&db).expect("reopen after the crash");
    assert!(store.integrity_ok().expect("integrity_check"));
    let stored: Vec<Item> = (0..PAIRS)
        .map(|p| {
            store
                .get(&format!("user{p}@sip.test"), "contact@xmpp.test")
                .expect("get")
        })
        .collect();
    // The state must equal "all changes up to M" for some M at or past the last ack.
    let state_after = |m: usize| -> Vec<Item> {
        let mut s = vec![Item::default(); PAIRS];
        for i in 0..=m {
            s[i % PAIRS] = change(i).item;
        }
        s
    };
    let prefix = (acked..CHANGES).find(|&m| state_after(m) == stored);
    assert!(
        prefix.is_some(),
        "after the kill the store holds no prefix that includes acknowledged change {acked}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
