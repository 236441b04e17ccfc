//! Access control through the real binary: user lists, pool ownership, rate limits,
//! the clock check and emergency approvals. After every refusal, only the refusal's
//! own audit line (and the ledger head that follows it) may have changed.
//!
//! Tests run as root, so root is put into or left out of the lists as each case needs.

mod common;
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use serde_json::Value;

use support::{Env, Run, current_user};

/// Start of the test clock; every run that records time passes KEYROT_TEST_NOW, so
/// the ledger never holds a time ahead of the next run's clock.
const T0: &str = "2030-01-01T00:00:00Z";

fn at(minutes: i64) -> String {
    let start = DateTime::parse_from_rfc3339(T0)
        .unwrap()
        .with_timezone(&Utc);
    (start + Duration::minutes(minutes)).to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A `[[domain]]` table; `extra` holds `key = value` lines that add to or replace
/// the defaults.
fn domain(name: &str, extra: &str) -> String {
    let mut text = format!("[[domain]]\nname = \"{name}\"\nkey_type = \"aes-256\"\n");
    for default in [
        "rotate_every = \"90d\"",
        "min_interval = \"0s\"",
        "max_per_day = 50",
    ] {
        let key = default.split(' ').next().unwrap();
        if !extra.lines().any(|l| l.starts_with(key)) {
            text.push_str(default);
            text.push('\n');
        }
    }
    text.push_str(extra);
    text.push_str("\n\n");
    text
}

/// An approver's key pair on disk: the private key (mode 0600) and the public key.
struct Approver {
    name: String,
    key: PathBuf,
    public: PathBuf,
}

/// Writes an approver key pair derived from `seed`. `sec1_with_params` writes the
/// private key the way `openssl ecparam -genkey` does, with an EC PARAMETERS block.
fn approver(env: &Env, name: &str, seed: u8, sec1_with_params: bool) -> Approver {
    let secret = p256::SecretKey::from_slice(&[seed; 32]).unwrap();
    let private_pem = if sec1_with_params {
        let sec1 = secret.to_sec1_pem(LineEnding::LF).unwrap();
        format!(
            "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n{}",
            sec1.as_str()
        )
    } else {
        secret.to_pkcs8_pem(LineEnding::LF).unwrap().to_string()
    };
    let public_pem = secret
        .public_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    let key = env.path(&format!("{name}.key"));
    let public = env.path(&format!("{name}.pub.pem"));
    std::fs::write(&key, private_pem).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&public, public_pem).unwrap();
    Approver {
        name: name.into(),
        key,
        public,
    }
}

fn list(users: &[&str]) -> String {
    let quoted: Vec<String> = users.iter().map(|u| format!("\"{u}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

/// Writes a configuration with these domains, user lists and approvers.
fn configure(
    env: &Env,
    domains: &str,
    schedulers: &[&str],
    emergency: &[&str],
    approvers: &[&Approver],
) {
    let entries: Vec<String> = approvers
        .iter()
        .map(|a| {
            format!(
                "{{ name = \"{}\", public_key = \"{}\" }}",
                a.name,
                a.public.display()
            )
        })
        .collect();
    let text = format!(
        "{domains}[access]\nscheduler_users = {}\nemergency_users = {}\napprovers = [{}]\n",
        list(schedulers),
        list(emergency),
        entries.join(", ")
    );
    env.write_config(&[], &text);
}

/// An environment with domains `payments` (min_interval 1d) and `signing`, the
/// current user in both lists, approver `sec-lead` listed, and `payments` rotated to
/// v1 at T0.
fn emergency_env() -> (Env, Approver) {
    let env = Env::new(&[]);
    let lead = approver(&env, "sec-lead", 7, false);
    let user = current_user();
    let domains = format!(
        "{}{}",
        domain("payments", "min_interval = \"1d\""),
        domain("signing", "")
    );
    configure(&env, &domains, &[&user], &[&user], &[&lead]);
    env.run_with(
        &["rotate", "--domain", "payments", "--run-id", "first"],
        &[("KEYROT_TEST_NOW", T0)],
    )
    .expect_code(0);
    (env, lead)
}

/// Runs `keyrot approve` at test time `now` and returns the approval file.
fn approve(env: &Env, signer: &Approver, name: &str, args: &[&str], now: &str) -> PathBuf {
    let out = env.path(&format!("{}.approval.json", name));
    let mut full = vec![
        "approve",
        "--key",
        signer.key.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    full.extend_from_slice(args);
    let run = env.run_with(&full, &[("KEYROT_TEST_NOW", now)]);
    run.expect_code(0);
    out
}

fn approval_for_payments(env: &Env, signer: &Approver, name: &str) -> PathBuf {
    approve(
        env,
        signer,
        name,
        &[
            "--domain",
            "payments",
            "--action",
            "rotate",
            "--reason",
            "key exposed in a log",
            "--expires-in",
            "1h",
            "--approver",
            &signer.name,
        ],
        &at(10),
    )
}

fn emergency_rotate(env: &Env, approval: &Path, run_id: &str, now: &str) -> Run {
    env.run_with(
        &[
            "rotate",
            "--domain",
            "payments",
            "--emergency",
            "--reason",
            "incident 42",
            "--approval",
            approval.to_str().unwrap(),
            "--run-id",
            run_id,
        ],
        &[("KEYROT_TEST_NOW", now)],
    )
}

fn audit_lines(env: &Env) -> Vec<Value> {
    std::fs::read_to_string(env.audit())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

// ---- identity ----

#[test]
fn unlisted_user_exits_77_and_is_recorded() {
    let env = Env::new(&[]);
    configure(
        &env,
        &domain("payments", ""),
        &["ctmagent"],
        &["oncall1"],
        &[],
    );
    env.run(&["init"]).expect_code(0);
    let before = env.snapshot();

    let run = env.run(&["rotate", "--domain", "payments", "--run-id", "intruder-1"]);
    run.expect_code(77);
    assert!(
        run.stderr.contains("access.scheduler_users"),
        "{}",
        run.stderr
    );
    assert_eq!(run.field("error").as_deref(), Some("noperm"));

    let line = env.assert_only_refusal_appended(&before);
    assert_eq!(line["event"], "access.refused");
    assert_eq!(line["run"], "intruder-1");
    assert_eq!(line["domain"], "payments");
    assert_eq!(line["actor"]["user"], current_user());
    assert_eq!(line["detail"]["check"], "identity");
    assert_eq!(line["detail"]["action"], "rotate");
    assert_eq!(line["detail"]["exit_code"], 77);
    env.assert_audit_valid();
}

#[test]
fn listed_scheduler_user_rotates() {
    let env = Env::new(&[]);
    let user = current_user();
    configure(
        &env,
        &domain("payments", ""),
        &["ctmagent", &user],
        &[],
        &[],
    );
    env.run(&["rotate", "--domain", "payments"]).expect_code(0);
}

#[test]
fn empty_access_refuses_everyone() {
    let env = Env::new(&[]);
    env.write_config(&[], &format!("{}[access]\n", domain("payments", "")));
    let run = env.run(&["rotate", "--domain", "payments"]);
    run.expect_code(77);
    assert!(run.stderr.contains("empty or missing"), "{}", run.stderr);
    // Refused before init: there is no trail to record in, and nothing is created.
    assert!(!env.ledger().exists());
    assert!(!env.audit().exists());
}

#[test]
fn scheduler_user_cannot_run_emergency() {
    let env = Env::new(&[]);
    let lead = approver(&env, "sec-lead", 7, false);
    let user = current_user();
    configure(
        &env,
        &domain("payments", ""),
        &[&user],
        &["oncall1"],
        &[&lead],
    );
    env.run_with(
        &["rotate", "--domain", "payments"],
        &[("KEYROT_TEST_NOW", T0)],
    )
    .expect_code(0);
    let approval = approval_for_payments(&env, &lead, "a");
    let before = env.snapshot();
    let run = emergency_rotate(&env, &approval, "e1", &at(20));
    run.expect_code(77);
    assert!(
        run.stderr.contains("access.emergency_users"),
        "{}",
        run.stderr
    );
    let line = env.assert_only_refusal_appended(&before);
    assert_eq!(line["detail"]["action"], "emergency-rotate");
}

// ---- pools ----

fn pool_config(env: &Env, names: &[&str], this: &str) {
    let user = current_user();
    let domains: String = names.iter().map(|n| domain(n, "")).collect();
    let text = format!(
        "{domains}[access]\nscheduler_users = [\"{user}\"]\n\n[pool]\nname = \"{this}\"\nmembers = [\"pool-a\", \"pool-b\"]\n"
    );
    env.write_config(&[], &text);
}

#[test]
fn two_pools_rotate_each_domain_once() {
    let names: Vec<String> = (0..8).map(|i| format!("d{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let a = Env::new(&[]);
    let b = Env::new(&[]);
    pool_config(&a, &names, "pool-a");
    pool_config(&b, &names, "pool-b");
    a.run(&["init"]).expect_code(0);
    b.run(&["init"]).expect_code(0);

    for name in &names {
        let mut rotated = 0;
        for env in [&a, &b] {
            let before = env.snapshot();
            let run = env.run(&["rotate", "--domain", name]);
            match run.code {
                0 => {
                    assert_eq!(run.field("outcome").as_deref(), Some("rotated"));
                    rotated += 1;
                }
                77 => {
                    assert!(run.stderr.contains("is owned by pool"), "{}", run.stderr);
                    let line = env.assert_only_refusal_appended(&before);
                    assert_eq!(line["detail"]["check"], "pool");
                }
                other => panic!("{name}: exit {other}: {}", run.stderr),
            }
        }
        assert_eq!(rotated, 1, "{name} must be rotated by exactly one pool");
    }
    // d2 and d6 hash to pool-a, the rest to pool-b (pinned in the unit tests too).
    let status = a.run(&["--output", "json", "status", "--pools"]);
    status.expect_code(0);
    let value: Value = serde_json::from_str(status.stdout.trim()).unwrap();
    assert_eq!(value["owned_here"], "2");
    let owned: Vec<&str> = value["pools"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["owned_here"] == true)
        .map(|r| r["domain"].as_str().unwrap())
        .collect();
    assert_eq!(owned, ["d2", "d6"]);
    a.assert_audit_valid();
    b.assert_audit_valid();
}

#[test]
fn status_pools_text_lists_owners() {
    let env = Env::new(&[]);
    pool_config(&env, &["payments", "tokens"], "pool-a");
    let run = env.run(&["status", "--pools"]);
    run.expect_code(0);
    let line = |name: &str| {
        run.stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no line for {name}: {}", run.stdout))
            .to_string()
    };
    assert!(line("payments").contains("owner=pool-b"), "{}", run.stdout);
    assert!(!line("payments").contains("this-host"), "{}", run.stdout);
    assert!(line("tokens").contains("owner=pool-a"), "{}", run.stdout);
    assert!(line("tokens").contains("this-host"), "{}", run.stdout);
    assert_eq!(run.field("pool").as_deref(), Some("pool-a"));
}

#[test]
fn no_pool_section_owns_everything() {
    let env = Env::new(&[]);
    env.write_config(&[], &domain("payments", ""));
    let run = env.run(&["status", "--pools"]);
    run.expect_code(0);
    assert_eq!(run.field("owned_here").as_deref(), Some("1"));
}

// ---- rate limits and clock ----

#[test]
fn max_per_day_names_next_allowed_time() {
    let env = Env::new(&[]);
    let user = current_user();
    configure(
        &env,
        &domain("payments", "max_per_day = 2"),
        &[&user],
        &[],
        &[],
    );
    for (run_id, minutes) in [("m1", 0), ("m2", 60)] {
        env.run_with(
            &[
                "rotate", "--domain", "payments", "--force", "--run-id", run_id,
            ],
            &[("KEYROT_TEST_NOW", &at(minutes))],
        )
        .expect_code(0);
    }
    let before = env.snapshot();
    let run = env.run_with(
        &[
            "rotate", "--domain", "payments", "--force", "--run-id", "m3",
        ],
        &[("KEYROT_TEST_NOW", &at(120))],
    );
    run.expect_code(11);
    assert!(run.stderr.contains("max_per_day 2"), "{}", run.stderr);
    // The window loses its oldest rotation (T0) 24 hours after that rotation started.
    assert!(run.stderr.contains(&at(24 * 60)), "{}", run.stderr);
    let line = env.assert_only_refusal_appended(&before);
    assert_eq!(line["event"], "rotation.refused");
    assert_eq!(line["detail"]["check"], "max_per_day");
    assert_eq!(line["run"], "m3");

    env.run_with(
        &[
            "rotate", "--domain", "payments", "--force", "--run-id", "m4",
        ],
        &[("KEYROT_TEST_NOW", &at(24 * 60))],
    )
    .expect_code(0);
    env.assert_audit_valid();
}

#[test]
fn alert_threshold_records_event() {
    let env = Env::new(&[]);
    let user = current_user();
    configure(
        &env,
        &domain("payments", "alert_per_day = 1"),
        &[&user],
        &[],
        &[],
    );
    let first = env.run_with(
        &["rotate", "--domain", "payments", "--run-id", "f1"],
        &[("KEYROT_TEST_NOW", T0)],
    );
    first.expect_code(0);
    assert_eq!(first.field("frequency_alert"), None);

    let second = env.run_with(
        &[
            "rotate", "--domain", "payments", "--force", "--run-id", "f2",
        ],
        &[("KEYROT_TEST_NOW", &at(5))],
    );
    second.expect_code(0);
    assert_eq!(second.field("outcome").as_deref(), Some("rotated"));
    assert_eq!(second.field("frequency_alert").as_deref(), Some("true"));
    assert_eq!(second.field("rotations_24h").as_deref(), Some("2"));
    assert!(second.stderr.contains("alert_per_day"), "{}", second.stderr);
    let alerts: Vec<Value> = audit_lines(&env)
        .into_iter()
        .filter(|l| l["event"] == "rotation.frequency_alert")
        .collect();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0]["run"], "f2");
    assert_eq!(alerts[0]["detail"]["rotations_24h"], 2);
    env.assert_audit_valid();
}

#[test]
fn clock_behind_ledger_exits_20() {
    let env = Env::new(&[]);
    let user = current_user();
    configure(&env, &domain("payments", ""), &[&user], &[], &[]);
    env.run_with(
        &["rotate", "--domain", "payments", "--run-id", "c1"],
        &[("KEYROT_TEST_NOW", &at(60))],
    )
    .expect_code(0);
    let before = env.snapshot();
    let run = env.run_with(
        &[
            "rotate", "--domain", "payments", "--force", "--run-id", "c2",
        ],
        &[("KEYROT_TEST_NOW", T0)],
    );
    run.expect_code(20);
    assert!(
        run.stderr.contains("fix the system clock"),
        "{}",
        run.stderr
    );
    let line = env.assert_only_refusal_appended(&before);
    assert_eq!(line["detail"]["check"], "clock");
}

// ---- emergency approvals ----

#[test]
fn valid_approval_rotates_once() {
    let (env, lead) = emergency_env();
    let approval = approval_for_payments(&env, &lead, "ok");
    let mode = std::fs::metadata(&approval).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "approval file mode");

    // Neither due nor past min_interval, yet the emergency proceeds.
    let run = emergency_rotate(&env, &approval, "e1", &at(20));
    run.expect_code(0);
    assert_eq!(run.field("outcome").as_deref(), Some("rotated"));
    assert_eq!(run.field("version").as_deref(), Some("2"));

    let used: Vec<Value> = audit_lines(&env)
        .into_iter()
        .filter(|l| l["event"] == "approval.used")
        .collect();
    assert_eq!(used.len(), 1);
    assert_eq!(used[0]["run"], "e1");
    assert_eq!(used[0]["actor"]["user"], current_user());
    assert_eq!(used[0]["detail"]["approver"], "sec-lead");
    env.assert_audit_valid();

    // The same approval a second time.
    let before = env.snapshot();
    let again = emergency_rotate(&env, &approval, "e2", &at(25));
    again.expect_code(12);
    assert!(
        again.stderr.contains("already used by run e1"),
        "{}",
        again.stderr
    );
    let line = env.assert_only_refusal_appended(&before);
    assert_eq!(line["detail"]["check"], "approval");
    assert_eq!(line["run"], "e2");
}

#[test]
fn openssl_style_key_signs_approvals() {
    let env = Env::new(&[]);
    let lead = approver(&env, "sec-lead", 9, true);
    let user = current_user();
    configure(&env, &domain("payments", ""), &[&user], &[&user], &[&lead]);
    let approval = approval_for_payments(&env, &lead, "sec1");
    emergency_rotate(&env, &approval, "e1", &at(20)).expect_code(0);
}

/// Expects exit 12 naming `expected`, and only the refusal line changed.
fn expect_rejected(env: &Env, approval: &Path, expected: &str) {
    let before = env.snapshot();
    let run = emergency_rotate(env, approval, "rejected", &at(20));
    run.expect_code(12);
    assert!(run.stderr.contains(expected), "{}", run.stderr);
    let line = env.assert_only_refusal_appended(&before);
    assert_eq!(line["detail"]["check"], "approval");
    assert_eq!(line["detail"]["action"], "emergency-rotate");
    assert_eq!(line["run"], "rejected");
}

#[test]
fn expired_approval_exits_12() {
    let (env, lead) = emergency_env();
    let approval = approve(
        &env,
        &lead,
        "expired",
        &[
            "--domain",
            "payments",
            "--action",
            "rotate",
            "--reason",
            "r",
            "--expires-in",
            "5m",
            "--approver",
            "sec-lead",
        ],
        &at(1),
    );
    expect_rejected(&env, &approval, "expired at");
}

#[test]
fn approval_for_other_domain_exits_12() {
    let (env, lead) = emergency_env();
    let approval = approve(
        &env,
        &lead,
        "other-domain",
        &[
            "--domain",
            "signing",
            "--action",
            "rotate",
            "--reason",
            "r",
            "--expires-in",
            "1h",
            "--approver",
            "sec-lead",
        ],
        &at(10),
    );
    expect_rejected(&env, &approval, "for domain signing");
}

#[test]
fn approval_for_other_action_exits_12() {
    let (env, lead) = emergency_env();
    let approval = approve(
        &env,
        &lead,
        "other-action",
        &[
            "--domain",
            "payments",
            "--action",
            "revoke",
            "--version",
            "1",
            "--reason",
            "r",
            "--expires-in",
            "1h",
            "--approver",
            "sec-lead",
        ],
        &at(10),
    );
    expect_rejected(&env, &approval, "for action revoke");
}

#[test]
fn approval_for_other_version_exits_12() {
    let (env, lead) = emergency_env();
    let approval = approve(
        &env,
        &lead,
        "other-version",
        &[
            "--domain",
            "payments",
            "--action",
            "rotate",
            "--version",
            "5",
            "--reason",
            "r",
            "--expires-in",
            "1h",
            "--approver",
            "sec-lead",
        ],
        &at(10),
    );
    expect_rejected(&env, &approval, "replacing v5");
}

#[test]
fn approval_signed_by_unknown_key_exits_12() {
    let (env, _lead) = emergency_env();
    // Claims to be sec-lead, signed with another key.
    let impostor = approver(&env, "impostor", 11, false);
    let forged = approve(
        &env,
        &impostor,
        "forged",
        &[
            "--domain",
            "payments",
            "--action",
            "rotate",
            "--reason",
            "r",
            "--expires-in",
            "1h",
            "--approver",
            "sec-lead",
        ],
        &at(10),
    );
    expect_rejected(&env, &forged, "does not verify");

    // Signed in the name of an approver the configuration does not list.
    let unlisted = approve(
        &env,
        &impostor,
        "unlisted",
        &[
            "--domain",
            "payments",
            "--action",
            "rotate",
            "--reason",
            "r",
            "--expires-in",
            "1h",
            "--approver",
            "impostor",
        ],
        &at(10),
    );
    expect_rejected(&env, &unlisted, "not listed in access.approvers");
}

#[test]
fn tampered_approval_exits_12() {
    let (env, lead) = emergency_env();
    let approval = approval_for_payments(&env, &lead, "tampered");
    let text = std::fs::read_to_string(&approval).unwrap();
    let edits = [
        ("key exposed in a log", "key exposed in a lag"),
        ("\"payments\"", "\"payments\" "),
    ];
    // Whitespace outside strings is not signed, so the second edit must still verify.
    let tampered = text.replace(edits[0].0, edits[0].1);
    std::fs::write(&approval, tampered).unwrap();
    expect_rejected(&env, &approval, "does not verify");

    std::fs::write(&approval, text.replace(edits[1].0, edits[1].1)).unwrap();
    emergency_rotate(&env, &approval, "reformatted", &at(20)).expect_code(0);
}

#[test]
fn self_approval_exits_12() {
    let env = Env::new(&[]);
    let user = current_user();
    let own = approver(&env, &user, 13, false);
    configure(&env, &domain("payments", ""), &[&user], &[&user], &[&own]);
    env.run_with(
        &["rotate", "--domain", "payments"],
        &[("KEYROT_TEST_NOW", T0)],
    )
    .expect_code(0);
    let approval = approve(
        &env,
        &own,
        "self",
        &[
            "--domain",
            "payments",
            "--action",
            "rotate",
            "--reason",
            "r",
            "--expires-in",
            "1h",
        ],
        &at(10),
    );
    let document: Value =
        serde_json::from_str(&std::fs::read_to_string(&approval).unwrap()).unwrap();
    assert_eq!(
        document["approver"],
        user.as_str(),
        "defaults to the account name"
    );
    expect_rejected(&env, &approval, "second person");
}

#[test]
fn approval_for_other_requester_exits_12() {
    let (env, lead) = emergency_env();
    let approval = approve(
        &env,
        &lead,
        "requester",
        &[
            "--domain",
            "payments",
            "--action",
            "rotate",
            "--reason",
            "r",
            "--expires-in",
            "1h",
            "--approver",
            "sec-lead",
            "--requester",
            "oncall9",
        ],
        &at(10),
    );
    expect_rejected(&env, &approval, "issued to oncall9");
}

#[test]
fn emergency_without_approval_exits_12() {
    let (env, _lead) = emergency_env();
    let before = env.snapshot();
    let run = env.run_with(
        &[
            "rotate",
            "--domain",
            "payments",
            "--emergency",
            "--reason",
            "r",
            "--run-id",
            "n1",
        ],
        &[("KEYROT_TEST_NOW", &at(20))],
    );
    run.expect_code(12);
    assert!(run.stderr.contains("keyrot approve"), "{}", run.stderr);
    env.assert_only_refusal_appended(&before);
}

#[test]
fn missing_approval_file_exits_66() {
    let (env, _lead) = emergency_env();
    let before = env.snapshot();
    let missing = env.path("absent.json");
    let run = emergency_rotate(&env, &missing, "n2", &at(20));
    run.expect_code(66);
    assert!(run.stderr.contains("absent.json"), "{}", run.stderr);
    env.assert_only_refusal_appended(&before);
}

#[test]
fn emergency_counts_against_max_per_day() {
    let env = Env::new(&[]);
    let lead = approver(&env, "sec-lead", 7, false);
    let user = current_user();
    configure(
        &env,
        &domain("payments", "max_per_day = 1\nmin_interval = \"1d\""),
        &[&user],
        &[&user],
        &[&lead],
    );
    env.run_with(
        &["rotate", "--domain", "payments"],
        &[("KEYROT_TEST_NOW", T0)],
    )
    .expect_code(0);
    let approval = approval_for_payments(&env, &lead, "budget");
    let before = env.snapshot();
    let run = emergency_rotate(&env, &approval, "e1", &at(20));
    run.expect_code(11);
    assert!(run.stderr.contains("max_per_day 1"), "{}", run.stderr);
    let line = env.assert_only_refusal_appended(&before);
    assert_eq!(line["detail"]["check"], "max_per_day");
    // The refused run did not burn the approval.
    let audit = std::fs::read_to_string(env.audit()).unwrap();
    assert!(!audit.contains("approval.used"), "{audit}");
}

#[test]
fn approve_checks_key_file() {
    let env = Env::new(&[]);
    let lead = approver(&env, "sec-lead", 7, false);
    env.write_config(&[], &domain("payments", ""));
    let run_approve = |key: &PathBuf, expires_in: &str| {
        env.run(&[
            "approve",
            "--domain",
            "payments",
            "--action",
            "rotate",
            "--reason",
            "r",
            "--expires-in",
            expires_in,
            "--key",
            key.to_str().unwrap(),
        ])
    };
    run_approve(&env.path("absent.key"), "1h").expect_code(66);

    std::fs::set_permissions(&lead.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = run_approve(&lead.key, "1h");
    run.expect_code(77);
    assert!(run.stderr.contains("chmod 600"), "{}", run.stderr);

    std::fs::set_permissions(&lead.key, std::fs::Permissions::from_mode(0o400)).unwrap();
    let run = run_approve(&lead.key, "1h");
    run.expect_code(0);
    // Printed to stdout: the document, then the result line; never the private key.
    assert!(
        run.stdout.contains("\"format\": \"keyrot.approval.v1\""),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("PRIVATE KEY"));
    assert!(!run.stderr.contains("PRIVATE KEY"));

    run_approve(&lead.key, "8d").expect_code(64);
}
