//! Runs the verifier over the committed audit fixtures, which
//! `examples/gen_audit_fixtures.rs` generated, and checks the code and line number
//! that each damaged file is reported with.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use keyrot::audit::{
    AuditHead, Code, ErrorKind, Report, VerifyOptions, read_public_key_pem, verify,
};
use proptest::prelude::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/audit")
        .join(name)
}

fn ledger_head() -> AuditHead {
    let text = std::fs::read_to_string(fixture("valid.head.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Which optional inputs a verification gets.
#[derive(Clone, Copy)]
struct Anchors {
    pubkey: bool,
    head: bool,
    state: bool,
}

const NONE: Anchors = Anchors {
    pubkey: false,
    head: false,
    state: false,
};
const KEY: Anchors = Anchors {
    pubkey: true,
    ..NONE
};
const HEAD: Anchors = Anchors { head: true, ..NONE };
const STATE: Anchors = Anchors {
    state: true,
    ..NONE
};
const ALL: Anchors = Anchors {
    pubkey: true,
    head: true,
    state: true,
};

/// Fixture file, verifier inputs, and the expected failure code and line.
type Case = (&'static str, Anchors, Option<(Code, u64)>);

/// Verifies a fixture with a fresh copy of the valid chain's state file, so that a
/// successful pass cannot change the committed one.
fn run(name: &str, anchors: Anchors) -> Report {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    std::fs::copy(fixture("valid.state.json"), &state).unwrap();
    let opts = VerifyOptions {
        pubkey: anchors
            .pubkey
            .then(|| read_public_key_pem(&fixture("test-pubkey.pem")).unwrap()),
        ledger_head: anchors.head.then(ledger_head),
        state: anchors.state.then_some(state),
    };
    verify(&fixture(name), &opts).unwrap()
}

#[test]
fn fixtures_report_code_and_line() {
    let cases: &[Case] = &[
        ("valid.jsonl", ALL, None),
        ("byte-changed.jsonl", NONE, Some((Code::Hash, 6))),
        ("line-deleted.jsonl", NONE, Some((Code::Seq, 6))),
        ("lines-swapped.jsonl", NONE, Some((Code::Seq, 6))),
        ("line-inserted.jsonl", NONE, Some((Code::Seq, 7))),
        ("tail-cut.jsonl", HEAD, Some((Code::Truncated, 9))),
        ("tail-cut.jsonl", STATE, Some((Code::Rollback, 9))),
        // Without an anchor, a file cut at a line boundary is a valid shorter chain.
        ("tail-cut.jsonl", KEY, None),
        ("older-copy.jsonl", STATE, Some((Code::Rollback, 7))),
        ("forked.jsonl", STATE, Some((Code::Fork, 10))),
        ("forked.jsonl", HEAD, Some((Code::Fork, 12))),
        ("rewritten.jsonl", KEY, Some((Code::Sig, 10))),
        // Without the public key, a rewritten chain with recomputed hashes passes.
        ("rewritten.jsonl", NONE, None),
        ("checkpoint-other-key.jsonl", KEY, Some((Code::Sig, 5))),
        ("genesis-other-key.jsonl", KEY, Some((Code::Sig, 1))),
        ("torn-recovered.jsonl", KEY, None),
        ("torn-unrecovered.jsonl", KEY, Some((Code::Torn, 13))),
        ("duplicate-key.jsonl", NONE, Some((Code::Parse, 6))),
        ("duplicate-field.jsonl", NONE, Some((Code::Parse, 6))),
        ("unknown-field.jsonl", NONE, Some((Code::Parse, 6))),
        ("float.jsonl", NONE, Some((Code::Parse, 6))),
        ("empty.jsonl", NONE, Some((Code::Empty, 1))),
        ("not-json.jsonl", NONE, Some((Code::Parse, 1))),
    ];
    for (name, anchors, expected) in cases {
        let report = run(name, *anchors);
        let found = report.failure.as_ref().map(|f| (f.code, f.line));
        assert_eq!(found, *expected, "{name}: {}", report.to_text());
    }
}

#[test]
fn failure_counts_unverified_lines() {
    let report = run("byte-changed.jsonl", NONE);
    assert_eq!(report.total_lines, 12);
    assert_eq!(report.lines_verified, 5);
    assert_eq!(report.unverified_lines, 6);
}

#[test]
fn failure_text_names_file_line_and_seq() {
    let report = run("line-deleted.jsonl", NONE);
    let text = report.to_text();
    let first = text.lines().next().unwrap();
    assert!(
        first.ends_with(": seq=6: E_SEQ: sequence gap (expected 5, found 6)"),
        "{first}"
    );
    assert!(first.contains("line-deleted.jsonl:6:"), "{first}");
}

#[test]
fn report_serialises_code_names() {
    let report = run("float.jsonl", NONE);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["failure"]["code"], "E_PARSE");
    assert_eq!(json["failure"]["line"], 6);
}

#[test]
fn valid_chain_reports_checkpoints() {
    let report = run("valid.jsonl", KEY);
    assert_eq!(report.lines_verified, 12);
    assert_eq!(report.checkpoints, 2);
    assert_eq!(report.last_checkpoint_seq, Some(9));
    assert_eq!(report.unsealed_lines, 2);
    assert!(report.signatures_checked);
    assert_eq!(report.head, Some(ledger_head()));
}

#[test]
fn state_file_created_after_success() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let opts = VerifyOptions {
        state: Some(state.clone()),
        ..VerifyOptions::default()
    };
    let report = verify(&fixture("valid.jsonl"), &opts).unwrap();
    assert!(report.state_updated);
    let written = std::fs::read_to_string(&state).unwrap();
    let committed = std::fs::read_to_string(fixture("valid.state.json")).unwrap();
    assert_eq!(written, committed);
    let mode = std::fs::metadata(&state).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn state_file_kept_after_failure() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    std::fs::copy(fixture("valid.state.json"), &state).unwrap();
    let before = std::fs::read(&state).unwrap();
    let opts = VerifyOptions {
        state: Some(state.clone()),
        ..VerifyOptions::default()
    };
    let report = verify(&fixture("older-copy.jsonl"), &opts).unwrap();
    assert!(!report.state_updated);
    assert_eq!(std::fs::read(&state).unwrap(), before);
}

#[test]
fn missing_file_is_not_found() {
    let err = verify(&fixture("no-such-file.jsonl"), &VerifyOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[test]
fn invalid_state_file_is_error() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    std::fs::write(&state, "{\"format\":1}").unwrap();
    let opts = VerifyOptions {
        state: Some(state),
        ..VerifyOptions::default()
    };
    let err = verify(&fixture("valid.jsonl"), &opts).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Every single-byte change to a valid chain is reported, even with no anchors.
    #[test]
    fn single_byte_mutation_detected(
        position in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut bytes = std::fs::read(fixture("valid.jsonl")).unwrap();
        let at = position.index(bytes.len());
        prop_assume!(bytes[at] != byte);
        bytes[at] = byte;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mutated.jsonl");
        std::fs::write(&path, &bytes).unwrap();
        let report = verify(&path, &VerifyOptions::default()).unwrap();
        prop_assert!(report.failure.is_some(), "mutation at byte {} not detected", at);
    }
}
