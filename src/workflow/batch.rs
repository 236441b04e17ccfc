//! `keyrot rotate --all-due`: rotate every due domain in one process.
//!
//! The batch loads the module, logs in and lists the token once. Each domain then
//! runs the same [`Rotation`] as `keyrot rotate --domain`, under its own lock, with
//! its own ledger records, audit lines and outcome, and the session's lookup cache
//! serves its HSM steps. One domain's failure does not stop the others. The batch
//! signs one audit checkpoint at the end.
//!
//! Freshness of the listing: the ledger is read before the token is listed, and a
//! domain's objects are listed again at its turn when its ledger rows changed since
//! or it had an unfinished run then. keyrot records a step's intent in the ledger
//! before it changes the HSM, so another keyrot process that changed a domain after
//! the listing changed its ledger rows too, or had an unfinished run before it.
//!
//! The exit code is the most severe domain outcome, in the order of [`SEVERITY`].

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::config::DomainSettings;
use crate::error::{Error, Result, code};
use crate::hsm::HsmSession;
use crate::ledger::{KeyRow, Ledger, RunRow};
use crate::model::LABEL_PREFIX;

use super::access;
use super::journal::Journal;
use super::lock::DomainLock;
use super::rotate::{RotateRequest, Rotation, replay};
use super::session::{login, open_hsm};
use super::{Context, Outcome, format_time_seconds, init};

/// Exit codes from most to least severe. The batch exits with the first one that
/// any domain reached. Integrity failures come first because they page someone.
/// Failures that need a person before a rerun follow. Then come those that a rerun
/// with the same run id settles: the HSM was unreachable, the run was interrupted,
/// the domain was locked. Success is last. A code missing here ranks after
/// `AUDIT_INVALID`.
pub const SEVERITY: [u8; 14] = [
    code::INCONSISTENT,
    code::AUDIT_INVALID,
    code::SOFTWARE,
    code::NOPERM,
    code::IOERR,
    code::CONFIG,
    code::NOINPUT,
    code::USAGE,
    code::APPROVAL_REQUIRED,
    code::RATE_LIMITED,
    code::UNAVAILABLE,
    code::TEMPFAIL,
    code::LOCKED,
    code::OK,
];

/// Rank of an exit code in [`SEVERITY`]; lower is more severe.
pub fn severity_rank(exit_code: u8) -> usize {
    SEVERITY.iter().position(|c| *c == exit_code).unwrap_or(2)
}

/// The outcome of one domain of a batch.
struct DomainResult {
    domain: String,
    outcome: Outcome,
    /// First line of the error, for a domain that failed.
    message: Option<String>,
}

/// Ledger rows of every domain, read before the token listing.
struct LedgerSnapshot {
    keys: HashMap<String, Vec<KeyRow>>,
    unfinished: HashMap<String, Vec<(String, &'static str)>>,
}

impl LedgerSnapshot {
    fn read(ledger: &Ledger) -> Result<LedgerSnapshot> {
        let mut keys: HashMap<String, Vec<KeyRow>> = HashMap::new();
        for key in ledger.all_keys()? {
            keys.entry(key.domain.clone()).or_default().push(key);
        }
        let mut unfinished: HashMap<String, Vec<(String, &'static str)>> = HashMap::new();
        for run in ledger.all_unfinished_runs()? {
            unfinished
                .entry(run.domain.clone())
                .or_default()
                .push(run_marker(&run));
        }
        Ok(LedgerSnapshot { keys, unfinished })
    }

    /// Reports whether the listing taken after this snapshot may miss changes to
    /// `domain`. Reads the ledger.
    fn is_stale(&self, ledger: &Ledger, domain: &str) -> Result<bool> {
        let before = self.unfinished.get(domain);
        if before.is_some() {
            return Ok(true);
        }
        if !ledger.unfinished_runs(domain)?.is_empty() {
            return Ok(true);
        }
        let keys = ledger.keys(domain)?;
        Ok(self
            .keys
            .get(domain)
            .map_or(!keys.is_empty(), |k| *k != keys))
    }
}

fn run_marker(run: &RunRow) -> (String, &'static str) {
    (run.run_id.clone(), run.step.as_str())
}

/// Rotates every configured domain that is due, with one HSM login and one token
/// listing. Writes the ledger, the audit trail and the HSM per domain as
/// `keyrot rotate --domain` does, and signs one checkpoint at the end.
///
/// Returns an error only when the batch cannot start (configuration, ledger, HSM
/// or login); each domain's failure becomes its entry in the summary.
pub fn rotate_all_due(ctx: &Context) -> Result<Outcome> {
    // Domains another pool owns are that pool's work, not refusals.
    let domains: Vec<&DomainSettings> = ctx
        .config
        .domains
        .iter()
        .filter(|d| owned_here(ctx, &d.name))
        .collect();

    let mut ledger = Ledger::open_or_create(&ctx.config.storage.ledger)?;
    let (hsm, pin) = open_hsm(&ctx.config)?;
    let session = login(&hsm, &pin)?;
    init::ensure_initialised(ctx, &mut ledger, &session)?;

    // The snapshot comes first: see the module documentation.
    let snapshot = LedgerSnapshot::read(&ledger)?;
    session.inventory()?;

    let mut journal = Journal::new(ctx);
    let mut results = Vec::with_capacity(domains.len());
    for settings in domains {
        let span = tracing::info_span!("domain", domain = %settings.name);
        let _entered = span.enter();
        let result = rotate_domain(
            ctx,
            settings,
            &snapshot,
            &mut ledger,
            &session,
            &mut journal,
        );
        results.push(domain_result(ctx, &settings.name, result));
    }

    // One checkpoint seals every domain's lines, also when some failed.
    let sealed = journal.seal(&mut ledger, &session);
    let mut summary = summarise(ctx, &results);
    if let Err(error) = sealed {
        tracing::error!(error = %first_line(&error), "failed to sign the batch checkpoint");
        summary = summary.field("checkpoint", "failed");
        raise_code(&mut summary, crate::error::exit_code(&error));
    }
    Ok(summary)
}

/// Runs one domain's rotation under its lock, as `keyrot rotate --domain` would.
fn rotate_domain(
    ctx: &Context,
    settings: &DomainSettings,
    snapshot: &LedgerSnapshot,
    ledger: &mut Ledger,
    session: &HsmSession<'_>,
    journal: &mut Journal,
) -> Result<Outcome> {
    ctx.check_stop("batch")?;
    let action = access::Action::Rotate {
        domain: &settings.name,
        emergency: false,
    };
    let auth = access::authorise(ctx, &action, None)?;
    let _lock = DomainLock::acquire(
        &ctx.config.storage.lock_dir,
        &settings.name,
        &ctx.run_id,
        &format_time_seconds(ctx.now()),
    )?;
    if let Some(outcome) = replay(ctx, ledger, &settings.name)? {
        return Ok(outcome);
    }
    if snapshot.is_stale(ledger, &settings.name)? {
        tracing::debug!("domain changed since the batch listed the token, listing it again");
        session.inventory_under(&format!("{LABEL_PREFIX}{}/", settings.name))?;
    }
    let request = RotateRequest {
        domain: settings.name.clone(),
        ..RotateRequest::default()
    };
    let mut rotation = Rotation {
        ctx,
        settings,
        ledger,
        session,
        journal,
    };
    rotation.run(&request, &auth)
}

/// Returns whether this host's pool owns `domain`; without a `[pool]` section it
/// owns every domain.
fn owned_here(ctx: &Context, domain: &str) -> bool {
    match &ctx.config.pool {
        None => true,
        Some(pool) => crate::pool::owner(&pool.members, domain) == Some(pool.name.as_str()),
    }
}

fn domain_result(ctx: &Context, domain: &str, result: Result<Outcome>) -> DomainResult {
    match result {
        Ok(outcome) => DomainResult {
            domain: domain.to_string(),
            outcome,
            message: None,
        },
        Err(error) => {
            let message = first_line(&error);
            if matches!(error, Error::Locked { .. }) {
                tracing::warn!(error = %message, "domain skipped");
            } else {
                tracing::error!(error = %message, "domain failed");
            }
            DomainResult {
                domain: domain.to_string(),
                outcome: Outcome::from_error(&error, Some(domain), Some(&ctx.run_id)),
                message: Some(message),
            }
        }
    }
}

fn first_line(error: &Error) -> String {
    error.to_string().lines().next().unwrap_or("").to_string()
}

/// Builds the batch outcome: one report line per domain, counts per outcome word,
/// and in JSON a `domains` array with each domain's fields and code.
fn summarise(ctx: &Context, results: &[DomainResult]) -> Outcome {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for result in results {
        match counts
            .iter_mut()
            .find(|(word, _)| *word == result.outcome.outcome)
        {
            Some((_, count)) => *count += 1,
            None => counts.push((result.outcome.outcome.clone(), 1)),
        }
    }
    let mut summary = Outcome::new("batch").field("total", results.len());
    for (word, count) in &counts {
        summary = summary.field(&word.replace('-', "_"), count);
    }
    summary = summary.field("run_id", &ctx.run_id);

    let mut entries = Vec::with_capacity(results.len());
    for result in results {
        summary.report.push(report_line(result));
        entries.push(Value::Object(domain_json(result)));
        raise_code(&mut summary, result.outcome.code);
    }
    summary.data.insert("domains".into(), Value::Array(entries));
    summary
}

/// Replaces the summary's exit code with `exit_code` if that is more severe.
fn raise_code(summary: &mut Outcome, exit_code: u8) {
    if severity_rank(exit_code) < severity_rank(summary.code) {
        summary.code = exit_code;
    }
}

/// Renders one domain's line, `KEYROT-DOMAIN outcome=… domain=… … code=N`.
fn report_line(result: &DomainResult) -> String {
    let mut outcome = Outcome::new(&result.outcome.outcome).field("domain", &result.domain);
    for (name, value) in &result.outcome.fields {
        if name != "domain" && name != "run_id" {
            outcome = outcome.field(name, value);
        }
    }
    if let Some(message) = &result.message {
        outcome = outcome.field("message", message);
    }
    outcome.code = result.outcome.code;
    let line = outcome.render(super::OutputFormat::Text);
    line.replacen("KEYROT-RESULT", "KEYROT-DOMAIN", 1)
}

fn domain_json(result: &DomainResult) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert("domain".into(), Value::String(result.domain.clone()));
    map.insert(
        "outcome".into(),
        Value::String(result.outcome.outcome.clone()),
    );
    for (name, value) in &result.outcome.fields {
        if name != "domain" && name != "run_id" {
            map.insert(name.clone(), Value::String(value.clone()));
        }
    }
    if let Some(message) = &result.message {
        map.insert("message".into(), Value::String(message.clone()));
    }
    map.insert("code".into(), Value::from(result.outcome.code));
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_lists_every_exit_code_once() {
        for (exit_code, name) in code::ALL {
            let listed = SEVERITY.iter().filter(|c| **c == exit_code).count();
            assert_eq!(listed, 1, "{name} ({exit_code}) listed {listed} times");
        }
    }

    #[test]
    fn inconsistent_outranks_locked_and_ok() {
        assert!(severity_rank(code::INCONSISTENT) < severity_rank(code::LOCKED));
        assert!(severity_rank(code::LOCKED) < severity_rank(code::OK));
        assert!(severity_rank(code::NOPERM) < severity_rank(code::RATE_LIMITED));
        assert!(severity_rank(code::UNAVAILABLE) < severity_rank(code::TEMPFAIL));
    }

    #[test]
    fn unknown_code_ranks_after_audit_invalid() {
        assert!(severity_rank(1) > severity_rank(code::AUDIT_INVALID));
        assert!(severity_rank(1) < severity_rank(code::NOPERM));
    }
}
