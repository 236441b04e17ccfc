//! Test environment for driving the real `keyrot` binary: a private SoftHSM token
//! (own `SOFTHSM2_CONF` and token folder), a PIN file, a configuration, and the
//! ledger and audit paths, all in one temporary folder per test.
//!
//! A test file using it declares `mod common;` before `mod support;`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

use crate::common::{SOFTHSM_MODULE, TEST_TOKEN_LABEL, TEST_USER_PIN, TestToken};

pub const MODULE: &str = SOFTHSM_MODULE;
pub const TOKEN_LABEL: &str = TEST_TOKEN_LABEL;
/// The token's user PIN; distinctive enough that a substring search finds a leak.
pub const PIN: &str = TEST_USER_PIN;
/// Approver listed in the default `[access]` table; its key is `approver.key`.
pub const APPROVER: &str = "keyrot-test-approver";

pub struct Env {
    pub token: TestToken,
    pub dir: PathBuf,
    pub softhsm_conf: PathBuf,
    pub config: PathBuf,
}

/// One `[[domain]]` table of the configuration.
#[derive(Clone)]
pub struct DomainSpec {
    pub name: String,
    pub key_type: String,
    pub rotate_every: String,
    pub min_interval: String,
    pub max_per_day: u32,
    pub keep_deprecated: u32,
}

impl DomainSpec {
    pub fn new(name: &str, key_type: &str) -> DomainSpec {
        DomainSpec {
            name: name.into(),
            key_type: key_type.into(),
            rotate_every: "90d".into(),
            min_interval: "0s".into(),
            max_per_day: 50,
            keep_deprecated: 2,
        }
    }
}

/// Result of one run of the binary.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// The `KEYROT-RESULT` line.
    pub fn result_line(&self) -> &str {
        self.stdout
            .lines()
            .find(|l| l.starts_with("KEYROT-RESULT"))
            .unwrap_or_else(|| {
                panic!(
                    "no result line in stdout:\n{}\nstderr:\n{}",
                    self.stdout, self.stderr
                )
            })
    }

    /// Value of `name=` in the result line.
    pub fn field(&self, name: &str) -> Option<String> {
        let prefix = format!("{name}=");
        self.result_line()
            .split(' ')
            .find_map(|part| part.strip_prefix(&prefix).map(str::to_string))
    }

    /// Asserts the exit code, printing both streams when it differs.
    pub fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code, code,
            "unexpected exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn assert_no_pin(&self) {
        assert!(!self.stdout.contains(PIN), "PIN on stdout");
        assert!(!self.stderr.contains(PIN), "PIN on stderr");
    }
}

/// Everything a failing command must leave unchanged.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub ledger: String,
    pub audit: Vec<u8>,
    pub token: BTreeMap<String, String>,
}

impl Env {
    /// Creates a token and a configuration with the given domains.
    pub fn new(domains: &[DomainSpec]) -> Env {
        let token = TestToken::new();
        let dir = token.dir().to_path_buf();
        let softhsm_conf = token.conf_path().to_path_buf();
        let pin_file = dir.join("pin");
        std::fs::write(&pin_file, format!("{PIN}\n")).unwrap();
        std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600)).unwrap();

        let env = Env {
            config: dir.join("keyrot.toml"),
            token,
            dir,
            softhsm_conf,
        };
        env.write_approver();
        env.write_config(domains, "");
        env
    }

    /// Rewrites the configuration; `extra` is appended verbatim.
    ///
    /// Unless `extra` has its own `[access]` table, the account running the tests is
    /// listed as scheduler and emergency user, because an empty list admits nobody.
    pub fn write_config(&self, domains: &[DomainSpec], extra: &str) {
        let mut text = format!(
            "[hsm]\nmodule = \"{MODULE}\"\ntoken_label = \"{TOKEN_LABEL}\"\npin_file = \"pin\"\n\n\
             [storage]\nledger = \"ledger.db\"\naudit_log = \"audit.jsonl\"\nlock_dir = \"locks\"\n\n\
             [log]\ndir = \"logs\"\nlevel = \"debug\"\n\n"
        );
        for d in domains {
            text.push_str(&format!(
                "[[domain]]\nname = \"{}\"\nkey_type = \"{}\"\nrotate_every = \"{}\"\nmin_interval = \"{}\"\nmax_per_day = {}\nkeep_deprecated = {}\n\n",
                d.name, d.key_type, d.rotate_every, d.min_interval, d.max_per_day, d.keep_deprecated
            ));
        }
        if !extra.contains("[access]") {
            let user = current_user();
            text.push_str(&format!(
                "[access]\nscheduler_users = [\"{user}\"]\nemergency_users = [\"{user}\"]\n\
                 approvers = [{{ name = \"{APPROVER}\", public_key = \"approver.pub.pem\" }}]\n\n"
            ));
        }
        text.push_str(extra);
        std::fs::write(&self.config, text).unwrap();
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Signs an emergency revoke approval for `domain` v`version` with the default
    /// approver and returns its file name, relative to the folder commands run in.
    pub fn approve_revoke(&self, domain: &str, version: u32) -> String {
        let name = format!("approval-{domain}-v{version}.json");
        let _ = std::fs::remove_file(self.path(&name));
        let version = version.to_string();
        self.run(&[
            "approve",
            "--domain",
            domain,
            "--action",
            "revoke",
            "--version",
            &version,
            "--reason",
            "test emergency",
            "--expires-in",
            "1h",
            "--key",
            "approver.key",
            "--approver",
            APPROVER,
            "--out",
            &name,
        ])
        .expect_code(0);
        name
    }

    /// Writes the default approver's P-256 key pair, listed in the default `[access]`.
    fn write_approver(&self) {
        use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
        let secret = p256::SecretKey::from_slice(&[42; 32]).unwrap();
        let private = secret.to_pkcs8_pem(LineEnding::LF).unwrap();
        let public = secret
            .public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let key = self.path("approver.key");
        std::fs::write(&key, private.as_bytes()).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(self.path("approver.pub.pem"), public).unwrap();
    }

    pub fn ledger(&self) -> PathBuf {
        self.path("ledger.db")
    }

    pub fn audit(&self) -> PathBuf {
        self.path("audit.jsonl")
    }

    pub fn pubkey(&self) -> PathBuf {
        self.path("audit.pub.pem")
    }

    /// A `keyrot` command with this environment's configuration and token.
    /// Commands run in the environment's folder, so tests may name files there
    /// by relative path.
    pub fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_keyrot"));
        command
            .current_dir(&self.dir)
            .env("KEYROT_CONFIG", &self.config)
            .env("SOFTHSM2_CONF", &self.softhsm_conf)
            .env_remove("KEYROT_RUN_ID")
            .env_remove("KEYROT_FAILPOINT")
            .env_remove("KEYROT_TEST_NOW");
        command
    }

    /// Runs `keyrot ARGS` and checks that the PIN appears in neither stream.
    pub fn run(&self, args: &[&str]) -> Run {
        let run = Run::from(self.command().args(args).output().unwrap());
        run.assert_no_pin();
        run
    }

    /// Runs `keyrot ARGS` with extra environment variables.
    pub fn run_with(&self, args: &[&str], vars: &[(&str, &str)]) -> Run {
        let mut command = self.command();
        for (name, value) in vars {
            command.env(name, value);
        }
        let run = Run::from(command.args(args).output().unwrap());
        run.assert_no_pin();
        run
    }

    /// Runs `pkcs11-tool` against this token, logged in.
    pub fn pkcs11_tool(&self, args: &[&str]) -> String {
        let output = Command::new("pkcs11-tool")
            .args([
                "--module",
                MODULE,
                "--token-label",
                TOKEN_LABEL,
                "--login",
                "--pin",
                PIN,
            ])
            .args(args)
            .env("SOFTHSM2_CONF", &self.softhsm_conf)
            .output()
            .expect("pkcs11-tool must be installed (scripts/install-deps.sh)");
        assert!(output.status.success(), "pkcs11-tool failed: {output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Usage line that pkcs11-tool prints for the object with this label and class.
    pub fn usage_of(&self, label: &str, kind: &str) -> String {
        let listing = self.pkcs11_tool(&["--list-objects"]);
        let mut current_kind = String::new();
        let mut current_label = String::new();
        for line in listing.lines() {
            if !line.starts_with(' ') {
                current_kind = line.to_string();
                current_label.clear();
            } else if let Some(value) = line.trim().strip_prefix("label:") {
                current_label = value.trim().to_string();
            } else if let Some(value) = line.trim().strip_prefix("Usage:")
                && current_label == label
                && current_kind.starts_with(kind)
            {
                return value.trim().to_string();
            }
        }
        panic!("no {kind} object labelled {label} in:\n{listing}");
    }

    /// Number of token objects whose label is `label`.
    pub fn object_count(&self, label: &str) -> usize {
        self.pkcs11_tool(&["--list-objects"])
            .lines()
            .filter(|l| l.trim().strip_prefix("label:").map(str::trim) == Some(label))
            .count()
    }

    /// Hashes the ledger rows, the audit file and the token's object files.
    ///
    /// SoftHSM rewrites `token.object` on every login (its PIN counters), so that
    /// file is left out; key objects live in their own files.
    pub fn snapshot(&self) -> Snapshot {
        let ledger = if self.ledger().exists() {
            let output = Command::new("sqlite3")
                .arg(self.ledger())
                .arg(".dump")
                .output()
                .expect("sqlite3 must be installed (scripts/install-deps.sh)");
            String::from_utf8_lossy(&output.stdout).into_owned()
        } else {
            String::new()
        };
        let audit = std::fs::read(self.audit()).unwrap_or_default();
        let mut token = BTreeMap::new();
        for entry in walk(&self.path("tokens")) {
            let name = entry.file_name().unwrap().to_string_lossy().into_owned();
            if name == "token.object" || name.ends_with(".lock") {
                continue;
            }
            let bytes = std::fs::read(&entry).unwrap();
            token.insert(name, hex::encode(Sha256::digest(&bytes)));
        }
        Snapshot {
            ledger,
            audit,
            token,
        }
    }

    /// Asserts that the only change since `before` is one appended audit line with
    /// outcome `refused` and the ledger's audit head that follows it, and returns the
    /// line parsed.
    pub fn assert_only_refusal_appended(&self, before: &Snapshot) -> serde_json::Value {
        let after = self.snapshot();
        assert_eq!(after.token, before.token, "token objects changed");
        assert!(
            after.audit.starts_with(&before.audit),
            "audit file was rewritten, not appended to"
        );
        let appended = String::from_utf8(after.audit[before.audit.len()..].to_vec()).unwrap();
        assert_eq!(
            appended.lines().count(),
            1,
            "expected exactly one appended audit line:\n{appended}"
        );
        assert_eq!(
            without_audit_head(&after.ledger),
            without_audit_head(&before.ledger),
            "ledger changed beyond its audit head"
        );
        assert_ne!(
            after.ledger, before.ledger,
            "ledger audit head not advanced"
        );
        let line: serde_json::Value = serde_json::from_str(appended.trim_end()).unwrap();
        assert_eq!(line["outcome"], "refused", "{appended}");
        line
    }

    /// Runs `audit-verify` with the public key and the ledger and asserts it passes.
    pub fn assert_audit_valid(&self) {
        let run = self.run(&[
            "audit-verify",
            self.audit().to_str().unwrap(),
            "--pubkey",
            self.pubkey().to_str().unwrap(),
            "--ledger",
            self.ledger().to_str().unwrap(),
        ]);
        run.expect_code(0);
    }
}

/// Drops the `audit_head` row from a ledger dump.
fn without_audit_head(dump: &str) -> String {
    dump.lines()
        .filter(|l| !l.starts_with("INSERT INTO audit_head"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Account name of the real uid, as keyrot's access checks see it.
pub fn current_user() -> String {
    let uid = nix::unistd::getuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(user)) => user.name,
        _ => uid.as_raw().to_string(),
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files.sort();
    files
}

impl Env {
    /// Runs `sqlite3 ledger.db SQL` and returns its output; panics if it fails.
    pub fn sqlite(&self, sql: &str) -> String {
        let output = Command::new("sqlite3")
            .arg(self.ledger())
            .arg(sql)
            .output()
            .expect("sqlite3 must be installed (scripts/install-deps.sh)");
        assert!(
            output.status.success(),
            "sqlite3 {sql:?} failed: {output:?}"
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// `CKA_ID` in hex that the ledger records for a key version.
    pub fn key_id(&self, domain: &str, version: u32) -> String {
        self.sqlite(&format!(
            "SELECT key_id FROM keys WHERE domain = '{domain}' AND version = {version}"
        ))
    }

    /// Number of active keys of `domain` in the ledger.
    pub fn active_count(&self, domain: &str) -> usize {
        self.sqlite(&format!(
            "SELECT COUNT(*) FROM keys WHERE domain = '{domain}' AND state = 'active'"
        ))
        .parse()
        .unwrap()
    }

    /// Runs `keyrot --output json verify ARGS` and returns the run and its finding codes.
    pub fn verify(&self, args: &[&str]) -> (Run, Vec<String>) {
        let mut all = vec!["--output", "json", "verify"];
        all.extend_from_slice(args);
        let run = self.run(&all);
        let value: serde_json::Value =
            serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| {
                panic!(
                    "verify printed no JSON ({e}):\n{}\n{}",
                    run.stdout, run.stderr
                )
            });
        let codes = value["findings"]
            .as_array()
            .map(|findings| {
                findings
                    .iter()
                    .map(|f| f["code"].as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default();
        (run, codes)
    }

    /// Asserts that `keyrot verify` exits 0 with no error-level finding.
    pub fn assert_verify_clean(&self) {
        let (run, codes) = self.verify(&[]);
        assert_eq!(
            run.code, 0,
            "verify found {codes:?}\n{}\n{}",
            run.stdout, run.stderr
        );
    }

    /// Labels of the keyrot objects on the token, one entry per object.
    pub fn token_labels(&self) -> Vec<String> {
        self.pkcs11_tool(&["--list-objects"])
            .lines()
            .filter_map(|l| {
                l.trim()
                    .strip_prefix("label:")
                    .map(|v| v.trim().to_string())
            })
            .filter(|l| l.starts_with("keyrot/"))
            .collect()
    }

    /// Asserts that every keyrot object on the token, except the audit key, belongs to
    /// a key the ledger records as not destroyed, and that no domain has two active keys.
    pub fn assert_ledger_covers_token(&self, domain: &str) {
        assert!(
            self.active_count(domain) <= 1,
            "two active keys in {domain}"
        );
        let known = self.sqlite("SELECT label FROM keys WHERE state != 'destroyed'");
        let known: Vec<&str> = known.lines().collect();
        for label in self.token_labels() {
            if label == "keyrot/.audit/checkpoint" {
                continue;
            }
            assert!(
                known.contains(&label.as_str()),
                "token object {label} unknown to the ledger"
            );
        }
    }
}
