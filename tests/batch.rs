//! `keyrot rotate --all-due` through the real binary on a real SoftHSM token.

mod common;
mod support;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use support::{DomainSpec, Env, Run};

/// Domains of the mixed batch: two never rotated (due), one rotated recently (not
/// due), one held by another run, one whose key is deleted from the token.
fn mixed_domains() -> Vec<DomainSpec> {
    vec![
        DomainSpec::new("fresh-aes", "aes-256"),
        DomainSpec::new("fresh-ec", "ec-p256"),
        DomainSpec::new("recent", "aes-256"),
        DomainSpec::new("held", "aes-256"),
        DomainSpec::new("broken", "aes-256"),
    ]
}

/// Starts `keyrot rotate --domain DOMAIN --force` that pauses, holding the domain
/// lock, right after recording its intent, and waits until it holds the lock.
fn spawn_holder(env: &Env, domain: &str, run_id: &str) -> Child {
    let holder = env
        .command()
        .args(["rotate", "--domain", domain, "--run-id", run_id, "--force"])
        .env("KEYROT_FAILPOINT", "rotate.after_intent=pause")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lock = env.path(&format!("locks/{domain}.lock"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&lock)
        .unwrap_or_default()
        .contains(run_id)
    {
        assert!(Instant::now() < deadline, "holder never took the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    holder
}

/// The `KEYROT-DOMAIN` line of `domain`.
fn domain_line<'a>(run: &'a Run, domain: &str) -> &'a str {
    let needle = format!(" domain={domain} ");
    run.stdout
        .lines()
        .find(|l| l.starts_with("KEYROT-DOMAIN") && l.contains(&needle))
        .unwrap_or_else(|| panic!("no line for {domain} in:\n{}", run.stdout))
}

fn json_domain<'a>(value: &'a serde_json::Value, domain: &str) -> &'a serde_json::Value {
    value["domains"]
        .as_array()
        .expect("domains array")
        .iter()
        .find(|d| d["domain"] == domain)
        .unwrap_or_else(|| panic!("no entry for {domain} in {value}"))
}

#[test]
fn all_due_rotates_every_due_domain() {
    let env = Env::new(&[
        DomainSpec::new("payments", "aes-256"),
        DomainSpec::new("signing", "ec-p256"),
        DomainSpec::new("legacy", "rsa-3072"),
    ]);
    let run = env.run(&["rotate", "--all-due", "--run-id", "batch-1"]);
    run.expect_code(0);
    assert_eq!(run.field("outcome").as_deref(), Some("batch"));
    assert_eq!(run.field("total").as_deref(), Some("3"));
    assert_eq!(run.field("rotated").as_deref(), Some("3"));
    for domain in ["payments", "signing", "legacy"] {
        let line = domain_line(&run, domain);
        assert!(line.contains("outcome=rotated"), "{line}");
        assert!(line.contains("version=1"), "{line}");
    }
    env.assert_audit_valid();

    // One checkpoint seals the whole batch.
    let audit = std::fs::read_to_string(env.audit()).unwrap();
    let checkpoints = audit
        .lines()
        .filter(|l| l.contains("\"event\":\"log.checkpoint\""))
        .count();
    assert_eq!(checkpoints, 1);

    let again = env.run(&["rotate", "--all-due", "--run-id", "batch-2"]);
    again.expect_code(0);
    assert_eq!(again.field("not_due").as_deref(), Some("3"));
    let status = env.run(&["status"]);
    assert_eq!(
        status.field("due").as_deref(),
        Some("0"),
        "{}",
        status.stdout
    );
}

#[test]
fn all_due_reports_each_domain_and_worst_code() {
    let env = Env::new(&mixed_domains());
    env.run(&["init"]).expect_code(0);
    for domain in ["recent", "held", "broken"] {
        env.run(&["rotate", "--domain", domain]).expect_code(0);
    }
    env.pkcs11_tool(&[
        "--delete-object",
        "--type",
        "secrkey",
        "--label",
        "keyrot/broken/v1",
    ]);
    let mut holder = spawn_holder(&env, "held", "holder-1");

    let run = env.run(&["rotate", "--all-due", "--run-id", "batch-1"]);
    // INCONSISTENT (broken) outranks LOCKED (held) and OK (the rest).
    run.expect_code(20);
    assert_eq!(run.field("total").as_deref(), Some("5"));
    assert_eq!(run.field("rotated").as_deref(), Some("2"));
    assert_eq!(run.field("not_due").as_deref(), Some("1"));
    assert_eq!(run.field("error").as_deref(), Some("2"));

    let fresh = domain_line(&run, "fresh-aes");
    assert!(fresh.contains("outcome=rotated"), "{fresh}");
    assert!(fresh.ends_with("code=0"), "{fresh}");
    let fresh_ec = domain_line(&run, "fresh-ec");
    assert!(fresh_ec.contains("outcome=rotated"), "{fresh_ec}");
    let recent = domain_line(&run, "recent");
    assert!(recent.contains("outcome=not-due"), "{recent}");
    let held = domain_line(&run, "held");
    assert!(held.contains("error=locked"), "{held}");
    assert!(held.ends_with("code=10"), "{held}");
    let broken = domain_line(&run, "broken");
    assert!(broken.contains("error=inconsistent"), "{broken}");
    assert!(
        broken.contains("KEY_MISSING") || broken.contains("does not match"),
        "{broken}"
    );
    assert!(broken.ends_with("code=20"), "{broken}");
    assert!(run.stderr.contains("held"), "{}", run.stderr);
    assert!(run.stderr.contains("broken"), "{}", run.stderr);
    env.assert_audit_valid();

    holder.kill().unwrap();
    holder.wait().unwrap();

    // The same run id replays what finished and retries the rest.
    let rerun = env.run(&[
        "--output",
        "json",
        "rotate",
        "--all-due",
        "--run-id",
        "batch-1",
    ]);
    rerun.expect_code(20);
    let value: serde_json::Value = serde_json::from_str(rerun.stdout.trim()).unwrap();
    assert_eq!(value["code"], 20);
    assert_eq!(value["domains"].as_array().unwrap().len(), 5);
    let fresh = json_domain(&value, "fresh-aes");
    assert_eq!(fresh["outcome"], "rotated");
    assert_eq!(fresh["replayed"], "true");
    assert_eq!(fresh["version"], "1");
    // The holder's abandoned intent is settled, and the domain is not due.
    let held = json_domain(&value, "held");
    assert_eq!(held["outcome"], "not-due");
    assert_eq!(held["code"], 0);
    let broken = json_domain(&value, "broken");
    assert_eq!(broken["error"], "inconsistent");
    assert_eq!(broken["code"], 20);
    assert_eq!(env.object_count("keyrot/fresh-aes/v2"), 0, "no second key");
    env.assert_audit_valid();
}

#[test]
fn all_due_conflicts_with_domain() {
    let env = Env::new(&mixed_domains());
    env.run(&["rotate", "--all-due", "--domain", "recent"])
        .expect_code(64);
    env.run(&["rotate", "--all-due", "--force"]).expect_code(64);
    env.run(&["rotate"]).expect_code(64);
}
