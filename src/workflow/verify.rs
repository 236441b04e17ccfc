//! `keyrot verify`: read-only reconciliation of the ledger, the HSM and the audit head.
//!
//! Verify never writes: the ledger is opened read-only, the HSM session only lists
//! objects and reads their attributes, and the audit file is read by the streaming
//! verifier without recovering a torn tail. It takes no domain lock, so a run that is
//! rotating a domain at the same moment shows up as an unfinished run.

use serde::Serialize;
use serde_json::Value;

use crate::audit::{self, AuditHead, Code, VerifyOptions};
use crate::config::DomainSettings;
use crate::error::{Error, Result};
use crate::hsm::ObjectInfo;
use crate::ledger::{KeyRow, Ledger, RunRow};
use crate::model::{AUDIT_KEY_LABEL, KeyState, LABEL_PREFIX, key_label};

use super::session::{Mismatch, check_key, login, open_hsm, unknown_objects};
use super::{Context, Outcome, format_time_seconds};

/// Request of `keyrot verify`.
#[derive(Debug, Clone, Default)]
pub struct VerifyRequest {
    /// Domains to verify; empty means every configured domain.
    pub domains: Vec<String>,
    /// Whether an overdue domain counts as an inconsistency (exit 20).
    pub fail_on_overdue: bool,
}

/// Effect of a finding on the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Drift or tampering: exit 20.
    Error,
    /// Worth a look, exit 0: an overdue domain, audit lines the next run adopts.
    Warning,
}

/// One discrepancy, with a stable code that scripts can match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub code: &'static str,
    pub severity: Severity,
    pub domain: String,
    pub version: Option<u32>,
    pub label: Option<String>,
    pub expected: String,
    pub found: String,
}

impl Finding {
    fn error(code: &'static str, domain: &str, version: Option<u32>) -> Finding {
        Finding {
            code,
            severity: Severity::Error,
            domain: domain.to_string(),
            version,
            label: None,
            expected: String::new(),
            found: String::new(),
        }
    }

    fn values(mut self, expected: impl Into<String>, found: impl Into<String>) -> Finding {
        self.expected = expected.into();
        self.found = found.into();
        self
    }

    fn label(mut self, label: &str) -> Finding {
        self.label = Some(label.to_string());
        self
    }

    fn from_mismatch(mismatch: Mismatch) -> Finding {
        Finding {
            code: mismatch.code,
            severity: Severity::Error,
            domain: mismatch.domain,
            version: mismatch.version,
            label: Some(mismatch.label),
            expected: mismatch.expected,
            found: mismatch.found,
        }
    }

    /// Formats the finding as one line for people.
    pub fn to_line(&self) -> String {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let mut line = format!("{severity}: {}: domain {}", self.code, self.domain);
        if let Some(version) = self.version {
            line.push_str(&format!(" v{version}"));
        }
        if let Some(label) = &self.label {
            line.push_str(&format!(" ({label})"));
        }
        line.push_str(&format!(
            ": expected {}, found {}",
            self.expected, self.found
        ));
        line
    }
}

/// Verifies the requested domains and the audit head. Touches the HSM (read-only).
///
/// Returns the clean outcome (exit 0, warnings listed), or `Error::Findings` carrying
/// every finding when any of them is an error (exit 20).
pub fn verify(ctx: &Context, request: &VerifyRequest) -> Result<Outcome> {
    let mut selected: Vec<&DomainSettings> = Vec::new();
    for name in &request.domains {
        let settings = super::rotate::domain_settings(ctx, name)?;
        if !selected.iter().any(|s| s.name == settings.name) {
            selected.push(settings);
        }
    }
    let all_domains = selected.is_empty();
    if all_domains {
        selected = ctx.config.domains.iter().collect();
    }

    let ledger = Ledger::open_read_only(&ctx.config.storage.ledger)?;
    let keys = ledger.all_keys()?;
    let unfinished = ledger.all_unfinished_runs()?;
    let now = ctx.now();

    let (hsm, pin) = open_hsm(&ctx.config)?;
    let session = login(&hsm, &pin)?;
    let inventory = if all_domains {
        session.inventory()?
    } else {
        let mut objects = Vec::new();
        for settings in &selected {
            objects.extend(session.inventory_under(&format!("{LABEL_PREFIX}{}/", settings.name))?);
        }
        objects
    };

    let mut findings = Vec::new();
    for settings in &selected {
        let domain_keys: Vec<KeyRow> = keys
            .iter()
            .filter(|k| k.domain == settings.name)
            .cloned()
            .collect();
        let runs: Vec<&RunRow> = unfinished
            .iter()
            .filter(|r| r.domain == settings.name)
            .collect();
        findings.extend(ledger_findings(&settings.name, &domain_keys, &runs, now));
        findings.extend(hsm_findings(
            &inventory,
            &settings.name,
            &domain_keys,
            &runs,
        ));
        findings.extend(overdue_finding(settings, &domain_keys, now, request));
    }
    if all_domains {
        findings.extend(foreign_objects(&inventory, &selected, &keys));
    }
    findings.extend(audit_findings(ctx, &ledger)?);

    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let warnings = findings.len() - errors;
    let names: Vec<&str> = selected.iter().map(|s| s.name.as_str()).collect();
    let mut outcome = Outcome::new(if errors == 0 { "clean" } else { "inconsistent" })
        .field("domains", names.len())
        .field("findings", errors)
        .field("warnings", warnings)
        .field("run_id", &ctx.run_id);
    outcome.report = findings.iter().map(Finding::to_line).collect();
    outcome.report.push(format!(
        "verified {}: {errors} error(s), {warnings} warning(s)",
        names.join(", ")
    ));
    let serialised = serde_json::to_value(&findings).map_err(|e| Error::Software(e.to_string()))?;
    outcome.data.insert("findings".into(), serialised);
    outcome.data.insert(
        "domains_verified".into(),
        Value::Array(names.iter().map(|n| Value::from(*n)).collect()),
    );
    if errors == 0 {
        return Ok(outcome);
    }

    let mut codes: Vec<&str> = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .map(|f| f.code)
        .collect();
    codes.dedup();
    Err(Error::Findings {
        summary: format!(
            "verify found {errors} inconsistency(ies): {}\nhint: nothing was changed; resolve the drift by hand, then run `keyrot verify` again",
            codes.join(", ")
        ),
        outcome: Box::new(outcome),
    })
}

/// Checks what the ledger alone must satisfy for one domain.
pub fn ledger_findings(domain: &str, keys: &[KeyRow], runs: &[&RunRow], now: i64) -> Vec<Finding> {
    let mut findings = Vec::new();
    let active: Vec<u32> = keys
        .iter()
        .filter(|k| k.state == KeyState::Active)
        .map(|k| k.version)
        .collect();
    if active.len() > 1 {
        findings.push(
            Finding::error("LEDGER_MULTIPLE_ACTIVE", domain, None).values(
                "at most one active key",
                format!("active versions {active:?}"),
            ),
        );
    }
    let live = keys
        .iter()
        .any(|k| !matches!(k.state, KeyState::Destroyed | KeyState::Pending));
    if active.is_empty() && live {
        findings.push(
            Finding::error("LEDGER_NO_ACTIVE", domain, None)
                .values("one active key", "none among keys not destroyed"),
        );
    }
    for (index, key) in keys.iter().enumerate() {
        let expected = index as u32 + 1;
        if key.version != expected {
            findings.push(
                Finding::error("LEDGER_VERSION_GAP", domain, Some(key.version))
                    .values(format!("v{expected}"), format!("v{}", key.version)),
            );
            break;
        }
    }
    for key in keys {
        let label = key_label(domain, key.version);
        if key.label != label {
            findings.push(
                Finding::error("LEDGER_BAD_LABEL", domain, Some(key.version))
                    .values(label, key.label.clone()),
            );
        }
        if let Some(problem) = timestamp_problem(key, now) {
            findings.push(
                Finding::error("LEDGER_BAD_TIMESTAMPS", domain, Some(key.version))
                    .label(&key.label)
                    .values(
                        format!("timestamps consistent with state {}", key.state),
                        problem,
                    ),
            );
        }
        let in_run = runs.iter().any(|r| r.new_version == Some(key.version));
        if key.state == KeyState::Pending && !in_run {
            findings.push(
                Finding::error("LEDGER_STRAY_PENDING", domain, Some(key.version))
                    .label(&key.label)
                    .values(
                        "a pending key only inside an unfinished rotation",
                        "pending",
                    ),
            );
        }
    }
    for run in runs {
        findings.push(
            Finding::error(
                "LEDGER_UNFINISHED_RUN",
                domain,
                run.new_version.or(run.target_version),
            )
            .values(
                "no unfinished run",
                format!(
                    "{} run {} at step {} started {}",
                    run.kind,
                    run.run_id,
                    run.step.as_str(),
                    format_time_seconds(run.started_at)
                ),
            ),
        );
    }
    findings
}

/// Describes why a key's timestamps do not fit its state, if they do not: each
/// state reached has its time, no later state has one, times never decrease and
/// none lies in the future.
fn timestamp_problem(key: &KeyRow, now: i64) -> Option<String> {
    let stages = [
        ("created_at", Some(key.created_at)),
        ("activated_at", key.activated_at),
        ("deprecated_at", key.deprecated_at),
        ("revoked_at", key.revoked_at),
        ("destroyed_at", key.destroyed_at),
    ];
    // A key can skip stages (pending → destroyed, deprecated → revoked), so only the
    // stage of its own state is required, and none after it is allowed.
    let (required, last_allowed) = match key.state {
        KeyState::Pending => (0, 0),
        KeyState::Active => (1, 1),
        KeyState::Deprecated => (2, 2),
        KeyState::Revoked => (3, 3),
        KeyState::Destroyed => (4, 4),
    };
    if stages[required].1.is_none() {
        return Some(format!("{} missing", stages[required].0));
    }
    if let Some((name, _)) = stages[last_allowed + 1..].iter().find(|(_, t)| t.is_some()) {
        return Some(format!("{name} set"));
    }
    let mut previous: Option<(&str, i64)> = None;
    for (name, time) in stages {
        let Some(time) = time else { continue };
        if time > now {
            return Some(format!(
                "{name} {} in the future",
                format_time_seconds(time)
            ));
        }
        if let Some((before, earlier)) = previous
            && time < earlier
        {
            return Some(format!("{name} earlier than {before}"));
        }
        previous = Some((name, time));
    }
    None
}

/// Compares a domain's keys with the HSM objects under its label prefix.
///
/// The pending key of an unfinished rotation is not checked, because it may
/// legitimately have no objects yet; the unfinished run is its own finding.
fn hsm_findings(
    inventory: &[ObjectInfo],
    domain: &str,
    keys: &[KeyRow],
    runs: &[&RunRow],
) -> Vec<Finding> {
    let mut mismatches = Vec::new();
    for key in keys {
        let in_run = runs.iter().any(|r| r.new_version == Some(key.version));
        if key.state == KeyState::Pending && in_run {
            continue;
        }
        mismatches.extend(check_key(inventory, key));
    }
    mismatches.extend(unknown_objects(inventory, domain, keys));
    mismatches.into_iter().map(Finding::from_mismatch).collect()
}

/// Lists keyrot-labelled objects outside every configured domain that the ledger
/// does not know, except the audit checkpoint key.
fn foreign_objects(
    inventory: &[ObjectInfo],
    domains: &[&DomainSettings],
    keys: &[KeyRow],
) -> Vec<Finding> {
    inventory
        .iter()
        .filter(|o| o.label.starts_with(LABEL_PREFIX) && o.label != AUDIT_KEY_LABEL)
        .filter(|o| {
            !domains
                .iter()
                .any(|d| o.label.starts_with(&format!("{LABEL_PREFIX}{}/", d.name)))
        })
        .filter(|o| {
            !keys
                .iter()
                .any(|k| k.label == o.label && k.key_id.0[..] == o.id[..])
        })
        .map(|o| {
            let domain = o.label[LABEL_PREFIX.len()..]
                .split('/')
                .next()
                .unwrap_or_default();
            Finding::error("UNKNOWN_OBJECT", domain, None)
                .label(&o.label)
                .values(
                    "no object the ledger does not know",
                    format!("{:?} object with CKA_ID {}", o.class, hex::encode(&o.id)),
                )
        })
        .collect()
}

fn overdue_finding(
    settings: &DomainSettings,
    keys: &[KeyRow],
    now: i64,
    request: &VerifyRequest,
) -> Option<Finding> {
    let active = keys.iter().find(|k| k.state == KeyState::Active);
    let due = active
        .and_then(|k| k.activated_at)
        .map(|t| t.saturating_add(settings.rotate_every.micros()));
    let found = match due {
        Some(due) if due > now => return None,
        Some(due) => format!("due since {}", format_time_seconds(due)),
        None => "no active key".to_string(),
    };
    let severity = if request.fail_on_overdue {
        Severity::Error
    } else {
        Severity::Warning
    };
    Some(Finding {
        severity,
        ..Finding::error("DOMAIN_OVERDUE", &settings.name, active.map(|k| k.version)).values(
            format!("a rotation within rotate_every {}", settings.rotate_every),
            found,
        )
    })
}

/// Verifies the audit file against the ledger head, read-only. A torn tail is reported,
/// never recovered here; the next writing run recovers it.
fn audit_findings(ctx: &Context, ledger: &Ledger) -> Result<Vec<Finding>> {
    let path = &ctx.config.storage.audit_log;
    let finding = |code| Finding::error(code, "-", None).label(&path.display().to_string());
    let Some((head, _)) = ledger.audit_head()? else {
        return Ok(vec![finding("AUDIT_TAIL_MISMATCH").values(
            "an audit head in the ledger",
            "none (run `keyrot init`)",
        )]);
    };
    if !path.exists() {
        return Ok(vec![finding("AUDIT_TAIL_MISMATCH").values(
            format!("a file ending with seq {} at byte {}", head.seq, head.len),
            "no file",
        )]);
    }
    let pubkey_path = &ctx.config.storage.audit_pubkey;
    let pubkey = if pubkey_path.exists() {
        Some(audit::read_public_key_pem(pubkey_path)?)
    } else {
        None
    };
    let options = VerifyOptions {
        pubkey,
        ledger_head: Some(AuditHead {
            seq: head.seq,
            hash: head.hash.clone(),
            len: head.len,
        }),
        state: None,
    };
    let report = audit::verify(path, &options)?;
    if let Some(failure) = &report.failure {
        let code = match failure.code {
            Code::Truncated | Code::Fork => "AUDIT_TAIL_MISMATCH",
            _ => "AUDIT_INVALID",
        };
        return Ok(vec![
            finding(code).values(
                failure
                    .expected
                    .clone()
                    .unwrap_or_else(|| "a valid chain".into()),
                failure.to_string(),
            ),
        ]);
    }
    let mut findings = Vec::new();
    if let Some(file_head) = &report.head
        && file_head.seq > head.seq
    {
        findings.push(Finding {
            severity: Severity::Warning,
            ..finding("AUDIT_TAIL_AHEAD").values(
                format!("the file to end at the ledger head seq {}", head.seq),
                format!(
                    "{} line(s) after it, which the next run adopts",
                    file_head.seq - head.seq
                ),
            )
        });
    }
    Ok(findings)
}
