//! Crashes a writer process at each audit failpoint and checks that the next writer
//! recovers the file into a valid chain. Runs only with `--features failpoints`:
//! the test re-runs this test binary as a child with `KEYROT_FAILPOINT` set.
#![cfg(feature = "failpoints")]

use std::path::{Path, PathBuf};
use std::process::Command;

use keyrot::audit::{
    Actor, AuditHead, AuditWriter, Detail, Outcome, Record, VerifyOptions, create_genesis, verify,
};

const CHILD_PATH_ENV: &str = "KEYROT_TEST_AUDIT_PATH";
const CHILD_HEAD_ENV: &str = "KEYROT_TEST_AUDIT_HEAD";

fn record() -> Record {
    Record {
        run: "run-1".to_owned(),
        domain: "payments".to_owned(),
        event: "rotation.step".to_owned(),
        actor: Actor::current(),
        key: None,
        outcome: Outcome::Ok,
        detail: Detail::new().with("n", 1u64),
    }
}

/// Child side: appends one record and is expected to abort at the failpoint.
#[test]
#[ignore = "run by crash_recovers_at_each_failpoint as a child process"]
fn child_append() {
    let path = PathBuf::from(std::env::var(CHILD_PATH_ENV).unwrap());
    let head: AuditHead = serde_json::from_str(&std::env::var(CHILD_HEAD_ENV).unwrap()).unwrap();
    let mut writer = AuditWriter::open(&path, &head).unwrap();
    writer.append(&record()).unwrap();
}

fn crash_child(path: &Path, head: &AuditHead, failpoint: &str) {
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_append", "--ignored", "--nocapture"])
        .env("KEYROT_FAILPOINT", failpoint)
        .env(CHILD_PATH_ENV, path)
        .env(CHILD_HEAD_ENV, serde_json::to_string(head).unwrap())
        .status()
        .unwrap();
    assert!(!status.success(), "{failpoint}: child did not abort");
}

#[test]
fn crash_recovers_at_each_failpoint() {
    // (failpoint, lines adopted by the next open, whether a torn tail is recovered)
    let cases = [
        ("audit.partial_write", 0, true),
        ("audit.before_sync", 1, false),
        ("audit.after_write", 1, false),
    ];
    for (failpoint, adopted, torn) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let fingerprint = "ab".repeat(32);
        let head = create_genesis(&path, "log-1", &fingerprint, chrono::Utc::now()).unwrap();

        crash_child(&path, &head, failpoint);

        let mut writer = AuditWriter::open(&path, &head).unwrap();
        assert_eq!(writer.adopted(), adopted, "{failpoint}");
        assert_eq!(writer.recovered().is_some(), torn, "{failpoint}");
        writer.append(&record()).unwrap();
        drop(writer);

        let report = verify(&path, &VerifyOptions::default()).unwrap();
        assert_eq!(report.failure, None, "{failpoint}: {}", report.to_text());
        assert_eq!(report.torn_lines_recovered, u64::from(torn), "{failpoint}");
    }
}
