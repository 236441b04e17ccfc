use std::os::unix::fs::PermissionsExt;

use super::*;

fn temp_ledger() -> (tempfile::TempDir, Ledger) {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open_or_create(&dir.path().join("ledger.db")).unwrap();
    (dir, ledger)
}

fn start<'a>(run_id: &'a str, version: u32, key_id: KeyId, now: i64) -> RotationStart<'a> {
    RotationStart {
        run_id,
        domain: "payments",
        kind: "rotate",
        new_version: version,
        old_version: version.checked_sub(1).filter(|v| *v > 0),
        key_id,
        label: "keyrot/payments/v1",
        key_type: KeyType::Aes256,
        actor: "tester",
        emergency: false,
        now,
        target_version: None,
        reason: None,
    }
}

#[test]
fn create_sets_schema_mode_and_wal() {
    let (dir, ledger) = temp_ledger();
    let mode = std::fs::metadata(dir.path().join("ledger.db"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let version: i64 = ledger
        .conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap();
    assert_eq!(version, schema::SCHEMA_VERSION);
    let journal: String = ledger
        .conn
        .pragma_query_value(None, "journal_mode", |row| row.get(0))
        .unwrap();
    assert_eq!(journal, "wal");
    let synchronous: i64 = ledger
        .conn
        .pragma_query_value(None, "synchronous", |row| row.get(0))
        .unwrap();
    assert_eq!(synchronous, 2, "synchronous must be FULL");
}

#[test]
fn reopen_keeps_data() {
    let (dir, mut ledger) = temp_ledger();
    ledger
        .start_rotation(&start("run-1", 1, KeyId::random(), 10))
        .unwrap();
    drop(ledger);
    let ledger = Ledger::open_or_create(&dir.path().join("ledger.db")).unwrap();
    assert_eq!(ledger.keys("payments").unwrap().len(), 1);
}

#[test]
fn open_existing_rejects_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.db");
    assert!(matches!(
        Ledger::open_existing(&path),
        Err(LedgerError::Missing { .. })
    ));
    assert!(!path.exists());
}

#[test]
fn newer_schema_is_rejected() {
    let (dir, ledger) = temp_ledger();
    ledger.conn.pragma_update(None, "user_version", 99).unwrap();
    drop(ledger);
    let result = Ledger::open_or_create(&dir.path().join("ledger.db"));
    assert!(matches!(result, Err(LedgerError::TooNew { found: 99, .. })));
}

#[test]
fn rotation_switch_records_history() {
    let (_dir, mut ledger) = temp_ledger();
    ledger
        .start_rotation(&start("run-1", 1, KeyId::random(), 10))
        .unwrap();
    ledger
        .switch_active("run-1", "payments", 1, None, 20)
        .unwrap();
    ledger
        .start_rotation(&start("run-2", 2, KeyId::random(), 30))
        .unwrap();
    ledger
        .switch_active("run-2", "payments", 2, Some(1), 40)
        .unwrap();

    let keys = ledger.keys("payments").unwrap();
    assert_eq!(keys[0].state, KeyState::Deprecated);
    assert_eq!(keys[0].deprecated_at, Some(40));
    assert_eq!(keys[1].state, KeyState::Active);
    assert_eq!(keys[1].activated_at, Some(40));
    assert_eq!(
        ledger.run("run-2", "payments").unwrap().unwrap().step,
        Step::Switched
    );
    let transitions: i64 = ledger
        .conn
        .query_row("SELECT COUNT(*) FROM key_history", [], |row| row.get(0))
        .unwrap();
    assert_eq!(transitions, 5);
}

#[test]
fn second_active_key_is_rejected() {
    let (_dir, mut ledger) = temp_ledger();
    ledger
        .start_rotation(&start("run-1", 1, KeyId::random(), 10))
        .unwrap();
    ledger
        .switch_active("run-1", "payments", 1, None, 20)
        .unwrap();
    ledger
        .start_rotation(&start("run-2", 2, KeyId::random(), 30))
        .unwrap();
    let result = ledger.switch_active("run-2", "payments", 2, None, 40);
    assert!(result.is_err());
    let keys = ledger.keys("payments").unwrap();
    assert_eq!(
        keys[1].state,
        KeyState::Pending,
        "failed switch must roll back"
    );
}

#[test]
fn finished_run_is_replayable() {
    let (_dir, mut ledger) = temp_ledger();
    ledger
        .start_rotation(&start("run-1", 1, KeyId::random(), 10))
        .unwrap();
    assert_eq!(ledger.unfinished_runs("payments").unwrap().len(), 1);
    ledger
        .finish_run("run-1", "payments", "rotated", "version=1", 50)
        .unwrap();
    let run = ledger.run("run-1", "payments").unwrap().unwrap();
    assert_eq!(run.outcome.as_deref(), Some("rotated"));
    assert_eq!(run.result.as_deref(), Some("version=1"));
    assert!(ledger.unfinished_runs("payments").unwrap().is_empty());
}

#[test]
fn rotations_since_counts_window() {
    let (_dir, mut ledger) = temp_ledger();
    ledger
        .start_rotation(&start("run-1", 1, KeyId::random(), 10))
        .unwrap();
    ledger
        .switch_active("run-1", "payments", 1, None, 10)
        .unwrap();
    ledger
        .start_rotation(&start("run-2", 2, KeyId::random(), 100))
        .unwrap();
    assert_eq!(ledger.rotations_since("payments", 0).unwrap(), 2);
    assert_eq!(ledger.rotations_since("payments", 50).unwrap(), 1);
    ledger
        .finish_run("run-2", "payments", "abandoned", "", 110)
        .unwrap();
    assert_eq!(ledger.rotations_since("payments", 50).unwrap(), 0);
}

#[test]
fn nonce_burns_once() {
    let (_dir, mut ledger) = temp_ledger();
    assert!(
        ledger
            .burn_nonce("n1", "payments", "rotate", "lead", "run-1", 5)
            .unwrap()
    );
    assert!(
        !ledger
            .burn_nonce("n1", "payments", "rotate", "lead", "run-2", 6)
            .unwrap()
    );
    assert_eq!(ledger.nonce_user("n1").unwrap().as_deref(), Some("run-1"));
}

#[test]
fn audit_head_round_trip() {
    let (_dir, mut ledger) = temp_ledger();
    assert!(ledger.audit_head().unwrap().is_none());
    let head = HeadRow {
        seq: 0,
        hash: "ab".repeat(32),
        len: 300,
    };
    ledger.init_audit_head(&head, "log-1", "fp").unwrap();
    assert!(ledger.init_audit_head(&head, "log-1", "fp").is_err());
    let next = HeadRow {
        seq: 1,
        hash: "cd".repeat(32),
        len: 600,
    };
    ledger.set_audit_head(&next).unwrap();
    assert_eq!(ledger.audit_head().unwrap().unwrap().0, next);
}

#[test]
fn approved_start_burns_nonce_once() {
    let (_dir, mut ledger) = temp_ledger();
    let approval = ApprovalUse {
        nonce: "00112233445566778899aabbccddeeff",
        approver: "sec-lead",
        action: "rotate",
    };
    let first = ledger
        .start_rotation_approved(&start("run-1", 1, KeyId::random(), 10), Some(&approval))
        .unwrap();
    assert_eq!(first, StartResult::Started);
    assert_eq!(
        ledger.nonce_user(approval.nonce).unwrap().as_deref(),
        Some("run-1")
    );

    let second = ledger
        .start_rotation_approved(&start("run-2", 2, KeyId::random(), 20), Some(&approval))
        .unwrap();
    assert_eq!(
        second,
        StartResult::NonceUsed {
            run_id: "run-1".into()
        }
    );
    assert!(
        ledger.run("run-2", "payments").unwrap().is_none(),
        "a refused start records no run"
    );
    assert_eq!(ledger.keys("payments").unwrap().len(), 1);
}

#[test]
fn rotation_start_times_are_oldest_first() {
    let (_dir, mut ledger) = temp_ledger();
    for (index, now) in [100, 200, 300].into_iter().enumerate() {
        let run_id = format!("run-{index}");
        let version = index as u32 + 1;
        ledger
            .start_rotation(&start(&run_id, version, KeyId::random(), now))
            .unwrap();
    }
    assert_eq!(
        ledger.rotation_starts_since("payments", 150).unwrap(),
        vec![200, 300]
    );
    assert_eq!(ledger.rotations_since("payments", 150).unwrap(), 2);
}

#[test]
fn deferred_head_rides_on_next_write() {
    let (_dir, mut ledger) = temp_ledger();
    let genesis = HeadRow {
        seq: 0,
        hash: "ab".repeat(32),
        len: 300,
    };
    ledger.init_audit_head(&genesis, "log-1", "fp").unwrap();
    let next = HeadRow {
        seq: 1,
        hash: "cd".repeat(32),
        len: 600,
    };
    ledger.defer_audit_head(&next);
    assert_eq!(ledger.audit_head().unwrap().unwrap().0, next);
    assert_eq!(ledger.stored_audit_head().unwrap().unwrap().0, genesis);

    ledger.flush_audit_head().unwrap();
    assert_eq!(ledger.stored_audit_head().unwrap().unwrap().0, next);
}

#[test]
fn stored_head_never_moves_back() {
    let (_dir, mut ledger) = temp_ledger();
    let heads: Vec<HeadRow> = (0..3)
        .map(|seq| HeadRow {
            seq,
            hash: format!("{seq:02x}").repeat(32),
            len: 100 * (seq + 1),
        })
        .collect();
    ledger.init_audit_head(&heads[0], "log-1", "fp").unwrap();
    ledger.set_audit_head(&heads[2]).unwrap();
    ledger.set_audit_head(&heads[1]).unwrap();
    assert_eq!(ledger.audit_head().unwrap().unwrap().0, heads[2]);
}
