//! `keyrot rotate`, `init` and `status` through the real binary on a real SoftHSM token.

mod common;
mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::{DomainSpec, Env};

fn payments() -> Vec<DomainSpec> {
    vec![
        DomainSpec::new("payments", "aes-256"),
        DomainSpec::new("signing", "ec-p256"),
    ]
}

#[test]
fn init_is_idempotent() {
    let env = Env::new(&payments());
    let first = env.run(&["init"]);
    first.expect_code(0);
    assert_eq!(first.field("outcome").as_deref(), Some("initialized"));
    let mode = std::fs::metadata(env.ledger())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "ledger mode");
    let mode = std::fs::metadata(env.audit()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "audit file mode");
    assert!(env.pubkey().exists(), "public key exported");

    let before = env.snapshot();
    let second = env.run(&["init"]);
    second.expect_code(0);
    assert_eq!(
        second.field("outcome").as_deref(),
        Some("already-initialized")
    );
    assert_eq!(env.snapshot(), before);
}

#[test]
fn first_rotation_then_forced_rotation() {
    let env = Env::new(&payments());
    let first = env.run(&["rotate", "--domain", "payments", "--run-id", "r1"]);
    first.expect_code(0);
    assert_eq!(first.field("outcome").as_deref(), Some("rotated"));
    assert_eq!(first.field("version").as_deref(), Some("1"));
    assert_eq!(first.field("run_id").as_deref(), Some("r1"));
    assert!(
        env.usage_of("keyrot/payments/v1", "Secret Key")
            .contains("encrypt")
    );
    env.assert_audit_valid();

    let second = env.run(&[
        "rotate", "--domain", "payments", "--run-id", "r2", "--force",
    ]);
    second.expect_code(0);
    assert_eq!(second.field("version").as_deref(), Some("2"));
    let old = env.usage_of("keyrot/payments/v1", "Secret Key");
    assert!(!old.contains("encrypt"), "v1 must lose CKA_ENCRYPT: {old}");
    assert!(old.contains("decrypt"), "v1 must keep CKA_DECRYPT: {old}");
    let new = env.usage_of("keyrot/payments/v2", "Secret Key");
    assert!(new.contains("encrypt"), "v2 must encrypt: {new}");
    env.assert_audit_valid();

    let status = env.run(&["status", "--domain", "payments"]);
    status.expect_code(0);
    assert!(status.stdout.contains("v1:deprecated"), "{}", status.stdout);
    assert!(status.stdout.contains("v2:active"), "{}", status.stdout);
}

#[test]
fn ec_key_rotation_demotes_signing() {
    let env = Env::new(&payments());
    env.run(&["rotate", "--domain", "signing", "--run-id", "s1"])
        .expect_code(0);
    env.run(&["rotate", "--domain", "signing", "--run-id", "s2", "--force"])
        .expect_code(0);
    let old = env.usage_of("keyrot/signing/v1", "Private Key");
    assert!(!old.contains("sign"), "v1 private key must not sign: {old}");
    let new = env.usage_of("keyrot/signing/v2", "Private Key");
    assert!(new.contains("sign"), "v2 private key must sign: {new}");
    env.assert_audit_valid();
}

#[test]
fn rsa_key_rotation_works() {
    let env = Env::new(&[DomainSpec::new("legacy", "rsa-3072")]);
    let run = env.run(&["rotate", "--domain", "legacy", "--run-id", "l1"]);
    run.expect_code(0);
    assert_eq!(run.field("version").as_deref(), Some("1"));
    env.assert_audit_valid();
}

#[test]
fn not_due_reports_next_date() {
    let env = Env::new(&payments());
    env.run(&["rotate", "--domain", "payments"]).expect_code(0);
    let before = env.snapshot();
    let run = env.run(&["rotate", "--domain", "payments"]);
    run.expect_code(0);
    assert_eq!(run.field("outcome").as_deref(), Some("not-due"));
    assert!(run.field("next_due").is_some(), "{}", run.stdout);
    assert_eq!(env.snapshot(), before, "not-due must change nothing");
}

#[test]
fn dry_run_changes_nothing() {
    let env = Env::new(&payments());
    env.run(&["rotate", "--domain", "payments"]).expect_code(0);
    let before = env.snapshot();
    let run = env.run(&["rotate", "--domain", "payments", "--force", "--dry-run"]);
    run.expect_code(0);
    assert_eq!(run.field("outcome").as_deref(), Some("would-rotate"));
    assert_eq!(run.field("version").as_deref(), Some("2"));
    assert_eq!(env.snapshot(), before);
}

#[test]
fn dry_run_before_init_creates_nothing() {
    let env = Env::new(&payments());
    let run = env.run(&["rotate", "--domain", "payments", "--dry-run"]);
    run.expect_code(0);
    assert!(!env.ledger().exists());
    assert!(!env.audit().exists());
}

#[test]
fn force_respects_min_interval() {
    let mut domain = DomainSpec::new("payments", "aes-256");
    domain.min_interval = "1d".into();
    let env = Env::new(&[domain]);
    env.run(&["rotate", "--domain", "payments"]).expect_code(0);
    let before = env.snapshot();
    let run = env.run(&["rotate", "--domain", "payments", "--force"]);
    run.expect_code(11);
    assert!(run.stderr.contains("min_interval"), "{}", run.stderr);
    let line = env.assert_only_refusal_appended(&before);
    assert_eq!(line["detail"]["check"], "min_interval");
}

#[test]
fn run_id_replay_creates_no_key() {
    let env = Env::new(&payments());
    env.run(&["rotate", "--domain", "payments", "--run-id", "order-7"])
        .expect_code(0);
    let before = env.snapshot();
    let again = env.run(&[
        "rotate", "--domain", "payments", "--run-id", "order-7", "--force",
    ]);
    again.expect_code(0);
    assert_eq!(again.field("outcome").as_deref(), Some("rotated"));
    assert_eq!(again.field("version").as_deref(), Some("1"));
    assert_eq!(again.field("replayed").as_deref(), Some("true"));
    assert_eq!(env.snapshot(), before);
    assert_eq!(env.object_count("keyrot/payments/v2"), 0);
}

#[test]
fn run_id_from_environment() {
    let env = Env::new(&payments());
    let run = env.run_with(
        &["rotate", "--domain", "payments"],
        &[("KEYROT_RUN_ID", "ctm-0042")],
    );
    run.expect_code(0);
    assert_eq!(run.field("run_id").as_deref(), Some("ctm-0042"));
}

#[test]
fn json_output_is_one_object() {
    let env = Env::new(&payments());
    let run = env.run(&[
        "--output", "json", "rotate", "--domain", "payments", "--run-id", "j1",
    ]);
    run.expect_code(0);
    let value: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(value["outcome"], "rotated");
    assert_eq!(value["version"], "1");
    assert_eq!(value["code"], 0);
}

#[test]
fn unknown_domain_is_usage_error() {
    let env = Env::new(&payments());
    let run = env.run(&["rotate", "--domain", "nosuch"]);
    run.expect_code(64);
    assert!(run.stderr.contains("payments, signing"), "{}", run.stderr);
    assert!(!env.ledger().exists());
}

#[test]
fn bad_command_line_exits_64() {
    let env = Env::new(&payments());
    env.run(&["rotate"]).expect_code(64);
    env.run(&["frobnicate"]).expect_code(64);
    env.run(&["rotate", "--domain", "payments", "--run-id", "bad id!"])
        .expect_code(64);
}

#[test]
fn bad_configs_exit_78() {
    let env = Env::new(&payments());
    env.run(&["rotate", "--domain", "payments"]).expect_code(0);
    let before = env.snapshot();
    let good = std::fs::read_to_string(&env.config).unwrap();
    let cases = [
        (
            "unknown key",
            good.replace("[storage]", "[storage]\nledgr = \"x\""),
            "ledgr",
        ),
        (
            "bad duration",
            good.replace("rotate_every = \"90d\"", "rotate_every = \"ninety\""),
            "invalid duration",
        ),
        (
            "unknown key type",
            good.replace("\"aes-256\"", "\"des-56\""),
            "des-56",
        ),
        ("not toml", "[hsm\nmodule=".to_string(), "TOML parse error"),
    ];
    for (name, text, expected) in cases {
        std::fs::write(&env.config, &text).unwrap();
        let run = env.run(&["rotate", "--domain", "payments", "--force"]);
        assert_eq!(run.code, 78, "{name}: {}", run.stderr);
        assert!(run.stderr.contains(expected), "{name}: {}", run.stderr);
        assert!(
            run.stderr.contains("keyrot.toml"),
            "{name}: file not named: {}",
            run.stderr
        );
        assert_eq!(env.snapshot(), before, "{name} changed state");
    }

    let missing = env.path("absent.toml");
    let run = env.run_with(
        &["rotate", "--domain", "payments"],
        &[("KEYROT_CONFIG", missing.to_str().unwrap())],
    );
    run.expect_code(78);
    assert!(run.stderr.contains("absent.toml"), "{}", run.stderr);
}

#[test]
fn missing_module_exits_69() {
    let env = Env::new(&payments());
    env.run(&["rotate", "--domain", "payments"]).expect_code(0);
    let before = env.snapshot();
    let good = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        good.replace(support::MODULE, "/nonexistent/libpkcs11.so"),
    )
    .unwrap();
    let run = env.run(&["rotate", "--domain", "payments", "--force"]);
    run.expect_code(69);
    assert!(
        run.stderr.contains("/nonexistent/libpkcs11.so"),
        "{}",
        run.stderr
    );
    assert_eq!(env.snapshot(), before);
}

#[test]
fn unknown_token_exits_69() {
    let env = Env::new(&payments());
    let good = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        good.replace("token_label = \"keyrot-test\"", "token_label = \"other\""),
    )
    .unwrap();
    let run = env.run(&["rotate", "--domain", "payments"]);
    run.expect_code(69);
    assert!(run.stderr.contains("other"), "{}", run.stderr);
}

#[test]
fn wrong_pin_exits_77_without_leak() {
    let env = Env::new(&payments());
    env.run(&["rotate", "--domain", "payments"]).expect_code(0);
    let before = env.snapshot();
    std::fs::write(env.path("pin"), "wrong-pin-31337\n").unwrap();
    let run = env.run(&["rotate", "--domain", "payments", "--force"]);
    run.expect_code(77);
    assert!(!run.stderr.contains("wrong-pin-31337"), "{}", run.stderr);
    assert!(!run.stdout.contains("wrong-pin-31337"), "{}", run.stdout);
    assert_eq!(env.snapshot(), before);
}

#[test]
fn loose_pin_file_exits_77() {
    let env = Env::new(&payments());
    env.run(&["rotate", "--domain", "payments"]).expect_code(0);
    let before = env.snapshot();
    for mode in [0o640, 0o604, 0o644] {
        std::fs::set_permissions(env.path("pin"), std::fs::Permissions::from_mode(mode)).unwrap();
        let run = env.run(&["rotate", "--domain", "payments", "--force"]);
        run.expect_code(77);
        assert!(run.stderr.contains("chmod 600"), "{}", run.stderr);
        assert_eq!(env.snapshot(), before);
    }
}

#[test]
fn loose_pin_file_checked_before_hsm() {
    let env = Env::new(&payments());
    // With the module missing too, the PIN check must win: it runs first.
    let good = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        good.replace(support::MODULE, "/nonexistent/libpkcs11.so"),
    )
    .unwrap();
    std::fs::set_permissions(env.path("pin"), std::fs::Permissions::from_mode(0o644)).unwrap();
    env.run(&["rotate", "--domain", "payments"]).expect_code(77);
}

#[test]
fn status_works_without_hsm() {
    let env = Env::new(&payments());
    env.run(&["rotate", "--domain", "payments"]).expect_code(0);
    let good = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        good.replace(support::MODULE, "/nonexistent/libpkcs11.so"),
    )
    .unwrap();
    let run = env.run(&["status"]);
    run.expect_code(0);
    assert!(run.stdout.contains("payments"), "{}", run.stdout);
    assert!(run.stdout.contains("v1:active"), "{}", run.stdout);
    let json = env.run(&["--output", "json", "status"]);
    let value: serde_json::Value = serde_json::from_str(json.stdout.trim()).unwrap();
    assert_eq!(value["domains_detail"][0]["active_version"], 1);
    assert_eq!(value["domains_detail"][1]["due"], true);
}

#[test]
fn status_without_ledger_exits_66() {
    let env = Env::new(&payments());
    let run = env.run(&["status"]);
    run.expect_code(66);
    assert!(run.stderr.contains("keyrot init"), "{}", run.stderr);
}

#[test]
fn audit_chain_grows_per_rotation() {
    let env = Env::new(&payments());
    for (index, run_id) in ["a1", "a2", "a3", "a4"].iter().enumerate() {
        let mut args = vec!["rotate", "--domain", "payments", "--run-id", run_id];
        if index > 0 {
            args.push("--force");
        }
        env.run(&args).expect_code(0);
        env.assert_audit_valid();
    }
    let audit = std::fs::read_to_string(env.audit()).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"event\":\"rotation.completed\""))
    );
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"event\":\"log.checkpoint\""))
    );
    assert!(!audit.contains(support::PIN));
    // keep_deprecated = 2: with v4 active, v3 and v2 stay deprecated and v1 is revoked.
    let status = env.run(&["status", "--domain", "payments"]);
    assert!(status.stdout.contains("v1:revoked"), "{}", status.stdout);
    assert!(status.stdout.contains("v2:deprecated"), "{}", status.stdout);
    let revoked = env.usage_of("keyrot/payments/v1", "Secret Key");
    assert!(
        !revoked.contains("decrypt"),
        "revoked key keeps no usage: {revoked}"
    );
}

#[test]
fn second_run_on_locked_domain_exits_10() {
    let env = Env::new(&payments());
    env.run(&["init"]).expect_code(0);
    let mut holder = env
        .command()
        .args(["rotate", "--domain", "payments", "--run-id", "holder-1"])
        .env("KEYROT_FAILPOINT", "rotate.after_intent=pause")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lock = env.path("locks/payments.lock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&lock)
        .unwrap_or_default()
        .contains("holder-1")
    {
        assert!(Instant::now() < deadline, "holder never took the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    let run = env.run(&["rotate", "--domain", "payments", "--run-id", "second"]);
    run.expect_code(10);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "must not wait for the lock"
    );
    assert!(run.stderr.contains("run_id=holder-1"), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!("pid={}", holder.id())),
        "{}",
        run.stderr
    );

    // Another domain proceeds while this one is held.
    env.run(&["rotate", "--domain", "signing"]).expect_code(0);
    holder.kill().unwrap();
    holder.wait().unwrap();
}

#[test]
fn parallel_domains_share_one_chain() {
    let names: Vec<String> = (0..8).map(|i| format!("d{i}")).collect();
    let domains: Vec<DomainSpec> = names
        .iter()
        .map(|n| DomainSpec::new(n, "aes-256"))
        .collect();
    let env = Env::new(&domains);
    env.run(&["init"]).expect_code(0);
    let children: Vec<_> = names
        .iter()
        .map(|name| {
            env.command()
                .args(["rotate", "--domain", name])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    env.assert_audit_valid();
    let status = env.run(&["status"]);
    assert_eq!(
        status.field("due").as_deref(),
        Some("0"),
        "{}",
        status.stdout
    );
}

#[test]
fn domain_named_like_lock_files_rotates() {
    // The PKCS#11 call lock lives in the same folder as the domain locks.
    let env = Env::new(&[DomainSpec::new("hsm", "aes-256")]);
    let run = env.run(&["rotate", "--domain", "hsm"]);
    run.expect_code(0);
    assert_eq!(run.field("version").as_deref(), Some("1"));
}

#[test]
fn refused_dry_run_changes_nothing() {
    let mut domain = DomainSpec::new("payments", "aes-256");
    domain.min_interval = "1d".into();
    let env = Env::new(&[domain]);
    env.run(&["rotate", "--domain", "payments"]).expect_code(0);
    let before = env.snapshot();
    let run = env.run(&["rotate", "--domain", "payments", "--force", "--dry-run"]);
    run.expect_code(11);
    assert_eq!(env.snapshot(), before, "a dry run records no refusal");
}

#[test]
fn clap_errors_have_one_prefix() {
    let env = Env::new(&payments());
    let run = env.run(&["rotate", "--domain"]);
    run.expect_code(64);
    assert!(!run.stderr.contains("error: error:"), "{}", run.stderr);
}

#[test]
fn init_reports_replaced_public_key() {
    let env = Env::new(&payments());
    env.run(&["init"]).expect_code(0);
    let genuine = std::fs::read_to_string(env.pubkey()).unwrap();
    std::fs::write(
        env.pubkey(),
        "-----BEGIN PUBLIC KEY-----\nforged\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let run = env.run(&["init"]);
    run.expect_code(0);
    assert_eq!(run.field("pubkey_replaced").as_deref(), Some("true"));
    assert!(
        run.stderr.contains("did not hold the HSM's checkpoint key"),
        "{}",
        run.stderr
    );
    assert_eq!(std::fs::read_to_string(env.pubkey()).unwrap(), genuine);
}
