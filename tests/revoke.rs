//! `keyrot revoke` through the real binary on a real SoftHSM token: revoking a
//! deprecated key, the emergency revoke of the active key, destroying a revoked key,
//! retention, and requests that must be rejected without changing anything.

mod common;
mod support;

use support::{DomainSpec, Env};

fn domains() -> Vec<DomainSpec> {
    vec![
        DomainSpec::new("payments", "aes-256"),
        DomainSpec::new("signing", "ec-p256"),
    ]
}

/// Creates payments with v1 deprecated and v2 active.
fn two_versions() -> Env {
    let env = Env::new(&domains());
    env.run(&["rotate", "--domain", "payments", "--run-id", "p1"])
        .expect_code(0);
    env.run(&[
        "rotate", "--domain", "payments", "--run-id", "p2", "--force",
    ])
    .expect_code(0);
    env
}

fn state(env: &Env, domain: &str, version: u32) -> String {
    env.sqlite(&format!(
        "SELECT state FROM keys WHERE domain = '{domain}' AND version = {version}"
    ))
}

fn audit_events(env: &Env) -> Vec<String> {
    std::fs::read_to_string(env.audit())
        .unwrap()
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            value["event"].as_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn deprecated_key_loses_every_flag() {
    let env = two_versions();
    let run = env.run(&[
        "revoke",
        "--domain",
        "payments",
        "--version",
        "1",
        "--reason",
        "retired early",
        "--run-id",
        "rv1",
    ]);
    run.expect_code(0);
    assert_eq!(run.field("outcome").as_deref(), Some("revoked"));
    assert_eq!(run.field("version").as_deref(), Some("1"));
    assert_eq!(state(&env, "payments", 1), "revoked");
    assert_eq!(
        env.sqlite("SELECT reason FROM keys WHERE domain = 'payments' AND version = 1"),
        "retired early"
    );
    let usage = env.usage_of("keyrot/payments/v1", "Secret Key");
    assert!(!usage.contains("decrypt"), "revoked key decrypts: {usage}");
    assert!(!usage.contains("encrypt"), "revoked key encrypts: {usage}");
    assert_eq!(
        env.sqlite("SELECT kind || ':' || outcome FROM runs WHERE run_id = 'rv1'"),
        "revoke:revoked"
    );
    let audit = std::fs::read_to_string(env.audit()).unwrap();
    assert!(audit.contains("\"event\":\"key.revoked\""));
    assert!(audit.contains("retired early"));
    env.assert_verify_clean();
    env.assert_audit_valid();

    // The same run id replays the recorded result and changes nothing.
    let before = env.snapshot();
    let again = env.run(&[
        "revoke",
        "--domain",
        "payments",
        "--version",
        "1",
        "--reason",
        "retired early",
        "--run-id",
        "rv1",
    ]);
    again.expect_code(0);
    assert_eq!(again.field("replayed").as_deref(), Some("true"));
    assert_eq!(env.snapshot(), before);
}

#[test]
fn active_key_needs_emergency() {
    let env = two_versions();
    let before = env.snapshot();
    let run = env.run(&[
        "revoke",
        "--domain",
        "payments",
        "--version",
        "2",
        "--reason",
        "leaked",
    ]);
    run.expect_code(64);
    assert!(run.stderr.contains("--emergency"), "{}", run.stderr);
    assert_eq!(env.snapshot(), before);

    let approval = env.approve_revoke("payments", 2);
    let run = env.run(&[
        "revoke",
        "--domain",
        "payments",
        "--version",
        "2",
        "--reason",
        "leaked",
        "--emergency",
        "--approval",
        &approval,
        "--run-id",
        "e1",
    ]);
    run.expect_code(0);
    assert_eq!(run.field("outcome").as_deref(), Some("revoked"));
    assert_eq!(run.field("active_version").as_deref(), Some("3"));
    assert_eq!(state(&env, "payments", 2), "revoked");
    assert_eq!(state(&env, "payments", 3), "active");
    assert_eq!(state(&env, "payments", 1), "deprecated");
    assert!(
        env.usage_of("keyrot/payments/v3", "Secret Key")
            .contains("encrypt")
    );
    let old = env.usage_of("keyrot/payments/v2", "Secret Key");
    assert!(!old.contains("decrypt"), "{old}");
    let events = audit_events(&env);
    let started = events
        .iter()
        .position(|e| e == "revocation.started")
        .unwrap();
    let activated = events.iter().rposition(|e| e == "key.activated").unwrap();
    let revoked = events.iter().rposition(|e| e == "key.revoked").unwrap();
    assert!(started < activated, "{events:?}");
    assert!(activated < revoked, "{events:?}");
    env.assert_verify_clean();
    env.assert_audit_valid();
}

#[test]
fn emergency_on_signing_key_revokes_pair() {
    let env = Env::new(&domains());
    env.run(&["rotate", "--domain", "signing"]).expect_code(0);
    let approval = env.approve_revoke("signing", 1);
    env.run(&[
        "revoke",
        "--domain",
        "signing",
        "--version",
        "1",
        "--reason",
        "compromised",
        "--emergency",
        "--approval",
        &approval,
    ])
    .expect_code(0);
    let private = env.usage_of("keyrot/signing/v1", "Private Key");
    assert!(!private.contains("sign"), "{private}");
    let public = env.usage_of("keyrot/signing/v1", "Public Key");
    assert!(!public.contains("verify"), "{public}");
    assert!(
        env.usage_of("keyrot/signing/v2", "Private Key")
            .contains("sign")
    );
    env.assert_verify_clean();
}

#[test]
fn destroy_keeps_tombstone() {
    let env = two_versions();
    let check_value =
        env.sqlite("SELECT check_value FROM keys WHERE domain = 'payments' AND version = 1");
    assert_eq!(check_value.len(), 6);
    env.run(&[
        "revoke",
        "--domain",
        "payments",
        "--version",
        "1",
        "--reason",
        "retired",
    ])
    .expect_code(0);
    let run = env.run(&[
        "revoke",
        "--domain",
        "payments",
        "--version",
        "1",
        "--reason",
        "end of life",
        "--destroy",
    ]);
    run.expect_code(0);
    assert_eq!(run.field("outcome").as_deref(), Some("destroyed"));
    assert_eq!(env.object_count("keyrot/payments/v1"), 0);
    let row = env.sqlite(
        "SELECT state, label, length(key_id), check_value, destroyed_at IS NOT NULL
         FROM keys WHERE domain = 'payments' AND version = 1",
    );
    assert_eq!(
        row,
        format!("destroyed|keyrot/payments/v1|32|{check_value}|1")
    );
    assert!(audit_events(&env).contains(&"key.destroyed".to_string()));
    env.assert_verify_clean();
    env.assert_audit_valid();
}

#[test]
fn invalid_requests_change_nothing() {
    let env = two_versions();
    env.run(&[
        "revoke",
        "--domain",
        "payments",
        "--version",
        "1",
        "--reason",
        "retired",
    ])
    .expect_code(0);
    let before = env.snapshot();
    // (arguments, exit code, text the message must contain)
    let cases: [(&[&str], i32, &str); 9] = [
        (
            &["--domain", "nosuch", "--version", "1", "--reason", "x"],
            64,
            "unknown domain",
        ),
        (
            &["--domain", "payments", "--version", "7", "--reason", "x"],
            64,
            "no key v7",
        ),
        (
            &["--domain", "payments", "--version", "1", "--reason", "x"],
            20,
            "already revoked",
        ),
        (
            &[
                "--domain",
                "payments",
                "--version",
                "2",
                "--reason",
                "x",
                "--destroy",
            ],
            20,
            "only a revoked key",
        ),
        (
            &["--domain", "payments", "--version", "2", "--reason", " "],
            64,
            "invalid --reason",
        ),
        (&["--domain", "payments", "--version", "2"], 64, "--reason"),
        (
            &["--domain", "payments", "--version", "x", "--reason", "x"],
            64,
            "invalid value",
        ),
        (
            &[
                "--domain",
                "payments",
                "--version",
                "2",
                "--reason",
                "x",
                "--run-id",
                "p2",
            ],
            64,
            "rotate run",
        ),
        (
            &["--domain", "payments", "--version", "2", "--reason", "x"],
            64,
            "--emergency",
        ),
    ];
    for (args, code, message) in cases {
        let mut all = vec!["revoke"];
        all.extend_from_slice(args);
        let run = env.run(&all);
        assert_eq!(run.code, code, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(message), "{args:?}: {}", run.stderr);
        assert_eq!(env.snapshot(), before, "{args:?} changed state");
    }

    env.run(&[
        "revoke",
        "--domain",
        "payments",
        "--version",
        "1",
        "--reason",
        "x",
        "--destroy",
    ])
    .expect_code(0);
    let before = env.snapshot();
    for destroy in [false, true] {
        let mut args = vec![
            "revoke",
            "--domain",
            "payments",
            "--version",
            "1",
            "--reason",
            "x",
        ];
        if destroy {
            args.push("--destroy");
        }
        let run = env.run(&args);
        run.expect_code(20);
        assert!(run.stderr.contains("destroyed"), "{}", run.stderr);
        assert_eq!(env.snapshot(), before);
    }
}

#[test]
fn retention_revokes_beyond_keep_deprecated() {
    let mut spec = DomainSpec::new("payments", "aes-256");
    spec.keep_deprecated = 1;
    let env = Env::new(&[spec]);
    env.run(&["rotate", "--domain", "payments"]).expect_code(0);
    for _ in 0..3 {
        env.run(&["rotate", "--domain", "payments", "--force"])
            .expect_code(0);
    }
    assert_eq!(state(&env, "payments", 1), "revoked");
    assert_eq!(state(&env, "payments", 2), "revoked");
    assert_eq!(state(&env, "payments", 3), "deprecated");
    assert_eq!(state(&env, "payments", 4), "active");
    for version in [1, 2] {
        let usage = env.usage_of(&format!("keyrot/payments/v{version}"), "Secret Key");
        assert!(!usage.contains("decrypt"), "v{version}: {usage}");
    }
    let deprecated = env.usage_of("keyrot/payments/v3", "Secret Key");
    assert!(deprecated.contains("decrypt"), "{deprecated}");
    env.assert_verify_clean();
}

#[test]
fn abandoned_pending_key_is_destroyed() {
    let env = two_versions();
    let killed = env.run_with(
        &[
            "rotate", "--domain", "payments", "--run-id", "dead", "--force",
        ],
        &[("KEYROT_FAILPOINT", "rotate.after_self_test")],
    );
    assert_eq!(killed.code, -1, "killed by SIGKILL");
    assert_eq!(state(&env, "payments", 3), "pending");
    assert_eq!(env.object_count("keyrot/payments/v3"), 1);

    let run = env.run(&[
        "rotate", "--domain", "payments", "--run-id", "next", "--force",
    ]);
    run.expect_code(0);
    assert_eq!(run.field("version").as_deref(), Some("4"));
    assert_eq!(state(&env, "payments", 3), "destroyed");
    assert_eq!(env.object_count("keyrot/payments/v3"), 0);
    assert_eq!(
        env.sqlite("SELECT outcome FROM runs WHERE run_id = 'dead'"),
        "abandoned"
    );
    let events = audit_events(&env);
    assert!(
        events.contains(&"rotation.abandoned".to_string()),
        "{events:?}"
    );
    assert!(events.contains(&"key.destroyed".to_string()), "{events:?}");
    env.assert_verify_clean();
    env.assert_audit_valid();
}

#[test]
fn emergency_revoke_checks_approval() {
    let env = two_versions();
    let other_version = env.approve_revoke("payments", 1);
    let before = env.snapshot();
    let base = [
        "revoke",
        "--domain",
        "payments",
        "--version",
        "2",
        "--reason",
        "leaked",
        "--emergency",
    ];

    let missing = env.run(&base);
    missing.expect_code(12);
    assert!(missing.stderr.contains("approval"), "{}", missing.stderr);
    env.assert_only_refusal_appended(&before);

    let before = env.snapshot();
    let mut wrong = base.to_vec();
    wrong.extend(["--approval", &other_version]);
    env.run(&wrong).expect_code(12);
    env.assert_only_refusal_appended(&before);

    let approval = env.approve_revoke("payments", 2);
    let mut good = base.to_vec();
    good.extend(["--approval", &approval, "--run-id", "e-ok"]);
    env.run(&good).expect_code(0);
    // The same approval under another run id is a replay of a used nonce.
    let mut again = base.to_vec();
    again.extend(["--approval", &approval, "--run-id", "e-again"]);
    env.run(&again).expect_code(12);
}

#[test]
fn revoke_requires_emergency_user() {
    let env = two_versions();
    let user = support::current_user();
    let domains: Vec<DomainSpec> = domains();
    env.write_config(
        &domains,
        &format!("[access]\nscheduler_users = [\"{user}\"]\nemergency_users = []\n"),
    );
    let before = env.snapshot();
    let run = env.run(&[
        "revoke",
        "--domain",
        "payments",
        "--version",
        "1",
        "--reason",
        "old",
    ]);
    run.expect_code(77);
    env.assert_only_refusal_appended(&before);
}
