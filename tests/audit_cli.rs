//! `keyrot audit-verify` on trails written by real rotations.

mod common;
mod support;

use support::{DomainSpec, Env};

fn rotated_env() -> Env {
    let env = Env::new(&[
        DomainSpec::new("payments", "aes-256"),
        DomainSpec::new("signing", "ec-p256"),
    ]);
    env.run(&["rotate", "--domain", "payments", "--run-id", "p1"])
        .expect_code(0);
    env.run(&["rotate", "--domain", "signing", "--run-id", "s1"])
        .expect_code(0);
    env
}

fn verify_args<'a>(env: &'a Env, state: &'a str, extra: &[&'a str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "audit-verify".into(),
        env.audit().display().to_string(),
        "--pubkey".into(),
        env.pubkey().display().to_string(),
        "--ledger".into(),
        env.ledger().display().to_string(),
        "--state".into(),
        state.into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn run_verify(env: &Env, args: &[String]) -> support::Run {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    env.run(&refs)
}

#[test]
fn real_trail_verifies_with_every_anchor() {
    let env = rotated_env();
    let state = env.path("verify.state");
    let state = state.to_str().unwrap();
    let before = env.snapshot();

    let run = run_verify(&env, &verify_args(&env, state, &[]));
    run.expect_code(0);
    assert_eq!(run.field("outcome").as_deref(), Some("valid"));
    assert_eq!(run.field("signatures").as_deref(), Some("checked"));
    assert_eq!(run.field("unsealed").as_deref(), Some("0"));
    assert!(std::path::Path::new(state).exists(), "state file written");
    assert_eq!(
        env.snapshot(),
        before,
        "audit-verify must not write ledger or audit"
    );

    // A later rotation extends the chain; the state file accepts the extension.
    env.run(&[
        "rotate", "--domain", "payments", "--run-id", "p2", "--force",
    ])
    .expect_code(0);
    run_verify(&env, &verify_args(&env, state, &[])).expect_code(0);
}

#[test]
fn cut_trail_is_caught_by_ledger_and_state() {
    let env = rotated_env();
    let state = env.path("verify.state");
    let state = state.to_str().unwrap();
    run_verify(&env, &verify_args(&env, state, &[])).expect_code(0);

    let text = std::fs::read_to_string(env.audit()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let kept = lines[..lines.len() - 3].join("\n") + "\n";
    std::fs::write(env.audit(), kept).unwrap();

    let with_ledger = env.run(&[
        "audit-verify",
        env.audit().to_str().unwrap(),
        "--ledger",
        env.ledger().to_str().unwrap(),
    ]);
    with_ledger.expect_code(21);
    assert_eq!(with_ledger.field("check").as_deref(), Some("E_TRUNCATED"));

    let with_state = env.run(&[
        "audit-verify",
        env.audit().to_str().unwrap(),
        "--state",
        state,
    ]);
    with_state.expect_code(21);
    assert_eq!(with_state.field("check").as_deref(), Some("E_ROLLBACK"));

    // Writing commands refuse to append to a trail that lost its tail.
    let rotate = env.run(&["rotate", "--domain", "payments", "--force"]);
    rotate.expect_code(20);
    assert!(
        rotate.stderr.contains("shorter than the ledger head"),
        "{}",
        rotate.stderr
    );
}

#[test]
fn older_copy_is_caught_by_state() {
    let env = rotated_env();
    let state = env.path("verify.state");
    let state = state.to_str().unwrap();
    let old = std::fs::read(env.audit()).unwrap();
    env.run(&[
        "rotate", "--domain", "payments", "--run-id", "p2", "--force",
    ])
    .expect_code(0);
    run_verify(&env, &verify_args(&env, state, &[])).expect_code(0);

    std::fs::write(env.audit(), old).unwrap();
    let run = env.run(&[
        "audit-verify",
        env.audit().to_str().unwrap(),
        "--pubkey",
        env.pubkey().to_str().unwrap(),
        "--state",
        state,
    ]);
    run.expect_code(21);
    assert_eq!(run.field("check").as_deref(), Some("E_ROLLBACK"));
}

#[test]
fn tampered_line_reports_line_and_json() {
    let env = rotated_env();
    let text = std::fs::read_to_string(env.audit()).unwrap();
    std::fs::write(
        env.audit(),
        text.replacen("\"payments\"", "\"paymentz\"", 1),
    )
    .unwrap();
    let run = env.run(&[
        "--output",
        "json",
        "audit-verify",
        env.audit().to_str().unwrap(),
        "--pubkey",
        env.pubkey().to_str().unwrap(),
    ]);
    run.expect_code(21);
    let value: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(value["check"], "E_HASH");
    assert_eq!(value["line"], "2");
    assert_eq!(value["report"]["failure"]["seq"], 1);
    assert!(run.stderr.contains(":2: seq=1: E_HASH:"), "{}", run.stderr);
}

#[test]
fn missing_inputs_exit_66() {
    let env = rotated_env();
    let missing_audit = env.run(&["audit-verify", env.path("none.jsonl").to_str().unwrap()]);
    missing_audit.expect_code(66);
    let missing_key = env.run(&[
        "audit-verify",
        env.audit().to_str().unwrap(),
        "--pubkey",
        env.path("none.pem").to_str().unwrap(),
    ]);
    missing_key.expect_code(66);
    let missing_ledger = env.run(&[
        "audit-verify",
        env.audit().to_str().unwrap(),
        "--ledger",
        env.path("none.db").to_str().unwrap(),
    ]);
    missing_ledger.expect_code(66);
    assert!(
        !env.path("none.db").exists(),
        "a missing ledger must not be created"
    );
}

#[test]
fn verify_without_config_needs_path() {
    let env = rotated_env();
    let run = env.run_with(
        &["audit-verify", env.audit().to_str().unwrap()],
        &[("KEYROT_CONFIG", "/nonexistent/keyrot.toml")],
    );
    run.expect_code(0);
    let no_path = env.run_with(
        &["audit-verify"],
        &[("KEYROT_CONFIG", "/nonexistent/keyrot.toml")],
    );
    no_path.expect_code(78);
}

#[cfg(feature = "failpoints")]
#[test]
fn torn_append_recovers_on_next_run() {
    for point in [
        "audit.partial_write",
        "audit.before_sync",
        "audit.after_write",
    ] {
        let env = rotated_env();
        let crashed = env.run_with(
            &[
                "rotate", "--domain", "payments", "--run-id", "c1", "--force",
            ],
            &[("KEYROT_FAILPOINT", point)],
        );
        assert_ne!(crashed.code, 0, "{point}: the failpoint must stop the run");

        let resumed = env.run(&[
            "rotate", "--domain", "payments", "--run-id", "c1", "--force",
        ]);
        resumed.expect_code(0);
        assert_eq!(resumed.field("version").as_deref(), Some("2"), "{point}");
        env.assert_audit_valid();
        let audit = std::fs::read_to_string(env.audit()).unwrap();
        if point == "audit.partial_write" {
            assert!(
                audit.contains("\"event\":\"log.recovered\""),
                "{point}: torn line must be recorded"
            );
        }
    }
}
