//! `keyrot status`: versions, states, last and next rotation, from the ledger alone.
//!
//! Status never loads the HSM module, so it works while the HSM is down and costs
//! one SQLite read.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::ledger::{KeyRow, Ledger};
use crate::model::KeyState;

use super::{Context, Outcome, format_time_seconds};

/// Summarises every configured domain, or only `domain`.
pub fn status(ctx: &Context, domain: Option<&str>) -> Result<Outcome> {
    if let Some(name) = domain {
        super::rotate::domain_settings(ctx, name)?;
    }
    // Read-only: status sets no pragma and never migrates, so it writes nothing.
    let ledger = Ledger::open_read_only(&ctx.config.storage.ledger)?;
    let keys = ledger.all_keys()?;
    let unfinished = ledger.all_unfinished_runs()?;
    let now = ctx.now();

    // Grouped once, so that the loop below stays linear in the number of domains.
    let mut keys_by_domain: HashMap<&str, Vec<&KeyRow>> = HashMap::new();
    for key in &keys {
        keys_by_domain.entry(&key.domain).or_default().push(key);
    }
    let mut runs_by_domain: HashMap<&str, Vec<&str>> = HashMap::new();
    for run in &unfinished {
        runs_by_domain
            .entry(&run.domain)
            .or_default()
            .push(&run.run_id);
    }

    let mut report = Vec::new();
    let mut domains = Vec::new();
    let mut overdue = 0;
    for settings in &ctx.config.domains {
        if domain.is_some_and(|d| d != settings.name) {
            continue;
        }
        let domain_keys = keys_by_domain
            .remove(settings.name.as_str())
            .unwrap_or_default();
        let active = domain_keys.iter().find(|k| k.state == KeyState::Active);
        let last = active.and_then(|k| k.activated_at);
        let next = last.map(|t| t.saturating_add(settings.rotate_every.micros()));
        let is_overdue = next.is_none_or(|t| t <= now);
        if is_overdue {
            overdue += 1;
        }
        let runs = runs_by_domain
            .remove(settings.name.as_str())
            .unwrap_or_default();

        let versions: Vec<String> = domain_keys
            .iter()
            .map(|k| format!("v{}:{}", k.version, k.state))
            .collect();
        report.push(format!(
            "{:<20} {:<9} active={:<5} last={:<20} next={:<20}{}{}",
            settings.name,
            settings.key_type,
            active
                .map(|k| format!("v{}", k.version))
                .unwrap_or_else(|| "none".into()),
            last.map(format_time_seconds)
                .unwrap_or_else(|| "never".into()),
            next.map(format_time_seconds)
                .unwrap_or_else(|| "now".into()),
            if is_overdue { " DUE" } else { "" },
            if runs.is_empty() {
                String::new()
            } else {
                format!(" unfinished={}", runs.join(","))
            }
        ));
        if !versions.is_empty() {
            report.push(format!("{:<20} {}", "", versions.join(" ")));
        }
        domains.push(json!({
            "domain": settings.name,
            "key_type": settings.key_type.as_str(),
            "active_version": active.map(|k| k.version),
            "last_rotation": last.map(format_time_seconds),
            "next_rotation": next.map(format_time_seconds),
            "due": is_overdue,
            "unfinished_runs": runs,
            "keys": domain_keys.iter().map(|k| json!({
                "version": k.version,
                "state": k.state.as_str(),
                "label": k.label,
                "key_id": k.key_id.to_hex(),
            })).collect::<Vec<Value>>(),
        }));
    }
    if domains.is_empty() && domain.is_none() {
        return Err(Error::Usage(format!(
            "no domains are configured in {}",
            ctx.config.path.display()
        )));
    }

    let mut outcome = Outcome::new("status")
        .field("domains", domains.len())
        .field("due", overdue)
        .field("run_id", &ctx.run_id);
    outcome.report = report;
    outcome
        .data
        .insert("domains_detail".into(), Value::Array(domains));
    Ok(outcome)
}
