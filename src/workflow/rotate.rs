//! `keyrot rotate`: replace a domain's active key with a new one, step by step.
//!
//! Every step records its intent in the ledger before it touches the HSM, so a run
//! killed anywhere leaves a record that the next run finishes. The steps are intent
//! (pending row), generate, self-test, switch (one transaction), retention, converge
//! the HSM usage flags to the ledger, postconditions and seal.
//!
//! An unfinished rotation left by another run id is settled by one rule. If it had
//! not yet switched keys, it is abandoned: its pending key is destroyed and an audit
//! line written. If it had switched, its remaining steps are completed (adopted).
//! The lock guarantees its owner is gone, because a live owner would still hold it.

use std::path::PathBuf;

use crate::audit::Outcome as AuditOutcome;
use crate::config::DomainSettings;
use crate::error::{Error, Result};
use crate::hsm::HsmSession;
use crate::ledger::{KeyRow, Ledger, RotationStart, RunRow, Step};
use crate::model::{KeyId, KeyState, LABEL_PREFIX, Usage, key_label};

use super::access::{self, Action, Authorisation};
use super::journal::{Event, Journal};
use super::lock::DomainLock;
use super::session::{check_domain, keys_to_converge, login, open_hsm};
use super::{Context, Outcome, failpoint, format_time, format_time_seconds, init};

const DAY_MICROS: i64 = 86_400 * 1_000_000;

/// Rotation request from the command line.
#[derive(Debug, Clone, Default)]
pub struct RotateRequest {
    pub domain: String,
    pub force: bool,
    pub dry_run: bool,
    pub emergency: bool,
    pub reason: Option<String>,
    /// Signed approval file; required when `emergency` is set.
    pub approval: Option<PathBuf>,
}

/// Rotates one domain: authorises the caller, takes the lock, opens the HSM and runs
/// the steps.
pub fn rotate(ctx: &Context, request: &RotateRequest) -> Result<Outcome> {
    let settings = domain_settings(ctx, &request.domain)?;
    let action = Action::Rotate {
        domain: &settings.name,
        emergency: request.emergency,
    };
    let auth = access::authorise(ctx, &action, request.approval.as_deref())?;
    let _lock = DomainLock::acquire(
        &ctx.config.storage.lock_dir,
        &settings.name,
        &ctx.run_id,
        &format_time_seconds(ctx.now()),
    )?;

    if request.dry_run && !ctx.config.storage.ledger.exists() {
        return Ok(Outcome::new("would-rotate")
            .field("domain", &settings.name)
            .field("version", 1)
            .field("note", "ledger not yet created")
            .field("run_id", &ctx.run_id));
    }
    let mut ledger = Ledger::open_or_create(&ctx.config.storage.ledger)?;
    if let Some(outcome) = replay(ctx, &ledger, &settings.name)? {
        return Ok(outcome);
    }

    let (hsm, pin) = open_hsm(&ctx.config)?;
    let session = login(&hsm, &pin)?;
    if !request.dry_run {
        init::ensure_initialised(ctx, &mut ledger, &session)?;
    }
    let mut journal = Journal::new(ctx);
    let mut rotation = Rotation {
        ctx,
        settings,
        ledger: &mut ledger,
        session: &session,
        journal: &mut journal,
    };
    let result = rotation.run(request, &auth);
    // A checkpoint seals whatever this run appended, also when it failed part way.
    let sealed = journal.seal(&mut ledger, &session);
    let outcome = result?;
    sealed?;
    Ok(outcome)
}

/// Returns the domain's settings or a usage error listing the known domains.
pub fn domain_settings<'a>(ctx: &'a Context, name: &str) -> Result<&'a DomainSettings> {
    ctx.config.domain(name).ok_or_else(|| {
        Error::Usage(format!(
            "unknown domain {name:?} in {}\nhint: configured domains: {}",
            ctx.config.path.display(),
            ctx.config.domain_names()
        ))
    })
}

/// Returns the recorded outcome when this run id already finished on this domain.
pub fn replay(ctx: &Context, ledger: &Ledger, domain: &str) -> Result<Option<Outcome>> {
    let Some(run) = ledger.run(&ctx.run_id, domain)? else {
        return Ok(None);
    };
    if run.outcome.is_none() {
        return Ok(None);
    }
    let recorded = run.result.as_deref().and_then(Outcome::decode_fields);
    let outcome = match recorded {
        Some(outcome) => outcome.field("replayed", "true"),
        None => Outcome::new(run.outcome.as_deref().unwrap_or("finished"))
            .field("domain", domain)
            .field("run_id", &ctx.run_id)
            .field("replayed", "true"),
    };
    Ok(Some(outcome))
}

/// One domain's rotation, with the resources its steps share.
pub struct Rotation<'a> {
    pub ctx: &'a Context,
    pub settings: &'a DomainSettings,
    pub ledger: &'a mut Ledger,
    pub session: &'a HsmSession<'a>,
    pub journal: &'a mut Journal,
}

impl<'a> Rotation<'a> {
    pub fn domain(&self) -> &'a str {
        &self.settings.name
    }

    /// Runs the workflow after [`access::authorise`] cleared the caller, the lock is
    /// held and the HSM is open.
    pub fn run(&mut self, request: &RotateRequest, auth: &Authorisation) -> Result<Outcome> {
        // Unfinished runs: resume ours, settle any other by the documented rule.
        let mut resume = None;
        for run in self.ledger.unfinished_runs(self.domain())? {
            if run.run_id == self.ctx.run_id {
                resume = Some(run);
            } else if request.dry_run {
                return Err(Error::Inconsistent(format!(
                    "domain {} has an unfinished {} run {} (step {}); a real run settles it",
                    self.domain(),
                    run.kind,
                    run.run_id,
                    run.step.as_str()
                )));
            } else {
                self.settle_foreign(&run)?;
            }
        }
        if let Some(run) = resume {
            if run.kind != "rotate" {
                return Err(Error::Usage(format!(
                    "run id {} belongs to an unfinished {} of domain {}\nhint: rerun that command with the same run id",
                    run.run_id,
                    run.kind,
                    self.domain()
                )));
            }
            self.note(
                Event::new(self.domain(), "rotation.resumed").detail("step", run.step.as_str()),
            )?;
            return self.continue_from(&run);
        }

        let keys = self.check_preconditions()?;

        // Due check and rate limits.
        let now = self.ctx.now();
        if let Err(error) = self.check_clock(now) {
            return Err(self.refuse(auth, request, "clock", error));
        }
        let active = keys.iter().find(|k| k.state == KeyState::Active);
        if let Err(error) = auth.check_active_version(active.map(|k| k.version)) {
            return Err(self.refuse(auth, request, "approval", error));
        }
        let due_at = active
            .and_then(|k| k.activated_at)
            .map(|t| t.saturating_add(self.settings.rotate_every.micros()));
        if let Some(due_at) = due_at
            && due_at > now
            && !request.force
            && !request.emergency
        {
            tracing::debug!(domain = self.domain(), due = %format_time(due_at), "not due");
            return Ok(Outcome::new("not-due")
                .field("domain", self.domain())
                .field("version", active.map(|k| k.version).unwrap_or(0))
                .field("next_due", format_time_seconds(due_at))
                .field("run_id", &self.ctx.run_id));
        }
        let activated_at = active.and_then(|k| k.activated_at);
        let recent = self.check_rate_limits(activated_at, now, request, auth)?;
        let alert = self
            .settings
            .alert_per_day
            .filter(|limit| recent + 1 > *limit);

        let new_version = keys.last().map(|k| k.version + 1).unwrap_or(1);
        if request.dry_run {
            return Ok(Outcome::new("would-rotate")
                .field("domain", self.domain())
                .field("version", new_version)
                .field("run_id", &self.ctx.run_id));
        }

        // Intent: the pending key and the run, in one transaction, before the HSM acts.
        let label = key_label(self.domain(), new_version);
        let start = RotationStart {
            run_id: &self.ctx.run_id,
            domain: &self.settings.name,
            kind: "rotate",
            new_version,
            old_version: active.map(|k| k.version),
            key_id: KeyId::random(),
            label: &label,
            key_type: self.settings.key_type,
            actor: &self.ctx.actor.user,
            emergency: request.emergency,
            now,
            target_version: None,
            reason: request.reason.as_deref(),
        };
        access::begin_rotation(self.ctx, self.ledger, self.journal, auth, &start)?;
        failpoint("rotate.after_intent");
        let run = self
            .ledger
            .run(&self.ctx.run_id, self.domain())?
            .ok_or_else(|| Error::Software("rotation run vanished after insert".into()))?;
        let pending = self.key(new_version)?;
        let mut event = Event::new(self.domain(), "rotation.started")
            .key(&pending)
            .detail("forced", request.force)
            .detail("emergency", request.emergency);
        if let Some(reason) = &request.reason {
            event = event.detail("reason", reason.as_str());
        }
        self.note(event)?;
        if let Some(limit) = alert {
            self.note_frequency_alert(&pending, recent + 1, limit)?;
        }
        let outcome = self.continue_from(&run)?;
        Ok(match alert {
            Some(_) => outcome
                .field("frequency_alert", "true")
                .field("rotations_24h", recent + 1),
            None => outcome,
        })
    }

    /// Records that this rotation takes the domain above `alert_per_day`.
    fn note_frequency_alert(&mut self, pending: &KeyRow, count: u32, limit: u32) -> Result<()> {
        tracing::warn!(
            domain = self.domain(),
            rotations_24h = count,
            alert_per_day = limit,
            "rotation frequency above alert_per_day"
        );
        self.note(
            Event::new(self.domain(), "rotation.frequency_alert")
                .key(pending)
                .detail("rotations_24h", count)
                .detail("alert_per_day", limit),
        )
    }

    /// Runs the remaining steps of `run` from the step it recorded.
    pub fn continue_from(&mut self, run: &RunRow) -> Result<Outcome> {
        let result = self.steps(run);
        if let Err(error) = &result {
            let outcome = match error {
                Error::Interrupted { .. } => AuditOutcome::Interrupted,
                _ => AuditOutcome::Failed,
            };
            let event = Event::new(self.domain(), "rotation.stopped")
                .outcome(outcome)
                .detail("error", error.kind_name())
                .detail("message", error.to_string().lines().next().unwrap_or(""));
            if let Err(audit_error) = self.note(event) {
                tracing::error!(error = %audit_error, "failed to record the stopped rotation");
            }
        }
        result
    }

    fn steps(&mut self, run: &RunRow) -> Result<Outcome> {
        let new_version = run.new_version.ok_or_else(|| {
            Error::Software(format!("rotation run {} has no new version", run.run_id))
        })?;
        let step = self.advance_to_switched(run)?;
        self.finish_rotation(run, new_version, step)
    }

    /// Runs the generate, self-test and switch steps that `run` has not yet recorded,
    /// and returns the step reached. Emergency revocation shares these steps.
    pub fn advance_to_switched(&mut self, run: &RunRow) -> Result<Step> {
        let new_version = run.new_version.ok_or_else(|| {
            Error::Software(format!("rotation run {} has no new version", run.run_id))
        })?;
        let mut step = run.step;

        if step < Step::Generated {
            self.ctx.check_stop(Step::Started.as_str())?;
            let key = self.key(new_version)?;
            // Generation needs no record of its own: a rerun adopts the objects already
            // created under this CKA_ID and label, so the pending row is the intent.
            self.session
                .generate(key.key_type, &key.key_id, &key.label)?;
            failpoint("rotate.after_generate");
            step = Step::Generated;
        }

        if step < Step::Tested {
            self.ctx.check_stop(Step::Generated.as_str())?;
            let key = self.key(new_version)?;
            self.session
                .self_test(key.key_type, &key.key_id, &key.label)?;
            let check_value = self
                .session
                .check_value(key.key_type, &key.key_id, &key.label)?;
            // The self-test result and check value are audited with the activation,
            // one line instead of two, since the key is unused until then.
            self.ledger
                .record_self_test(&run.run_id, self.domain(), new_version, &check_value)?;
            failpoint("rotate.after_self_test");
            step = Step::Tested;
        }

        if step < Step::Switched {
            self.ctx.check_stop(Step::Tested.as_str())?;
            let now = self.ctx.now();
            self.ledger.switch_active(
                &run.run_id,
                self.domain(),
                new_version,
                run.old_version,
                now,
            )?;
            failpoint("rotate.after_switch");
            let key = self.key(new_version)?;
            let mut event = Event::new(self.domain(), "key.activated")
                .key(&key)
                .detail("self_test", "passed")
                .detail("check_value", key.check_value.as_deref().unwrap_or(""));
            if let Some(old) = run.old_version {
                event = event.detail("deprecated_version", old);
            }
            self.note(event)?;
            self.apply_retention(&run.run_id)?;
            step = Step::Switched;
        }
        Ok(step)
    }

    /// Runs the rest of a rotation after the switch: converge, postconditions, finish.
    fn finish_rotation(&mut self, run: &RunRow, new_version: u32, step: Step) -> Result<Outcome> {
        if step < Step::Converged {
            self.ctx.check_stop(Step::Switched.as_str())?;
            // Converging is idempotent and the finish record follows, so the step is
            // not recorded on its own: a rerun converges again.
            self.converge()?;
            failpoint("rotate.after_converge");
        }

        // Postconditions: every key of the domain matches the ledger, and nothing extra exists.
        self.check_domain_matches(&format!(
            "postcondition failed after rotation to v{new_version}"
        ))?;

        let outcome = Outcome::new("rotated")
            .field("domain", self.domain())
            .field("version", new_version)
            .field("run_id", &run.run_id);
        let key = self.key(new_version)?;
        self.note(Event::new(self.domain(), "rotation.completed").key(&key))?;
        self.ledger.finish_run(
            &run.run_id,
            self.domain(),
            "rotated",
            &outcome.encode_fields(),
            self.ctx.now(),
        )?;
        failpoint("rotate.after_finish");
        Ok(outcome)
    }

    /// Revokes deprecated keys beyond `keep_deprecated`, newest kept, in the ledger first.
    fn apply_retention(&mut self, run_id: &str) -> Result<()> {
        let keys = self.ledger.keys(self.domain())?;
        let mut deprecated: Vec<&KeyRow> = keys
            .iter()
            .filter(|k| k.state == KeyState::Deprecated)
            .collect();
        deprecated.sort_by_key(|k| std::cmp::Reverse(k.version));
        let keep = self.settings.keep_deprecated as usize;
        for key in deprecated.into_iter().skip(keep) {
            self.ledger.set_key_state(
                self.domain(),
                key.version,
                KeyState::Revoked,
                run_id,
                self.ctx.now(),
                Some("retention: more than keep_deprecated deprecated keys"),
            )?;
            let revoked = self.key(key.version)?;
            self.note(
                Event::new(self.domain(), "key.revoked")
                    .key(&revoked)
                    .detail("reason", "retention"),
            )?;
        }
        Ok(())
    }

    /// Sets HSM usage flags to what each key's ledger state demands, where they differ.
    pub fn converge(&mut self) -> Result<()> {
        let keys = self.ledger.keys(self.domain())?;
        let inventory = self.inventory()?;
        for key in keys_to_converge(&inventory, &keys) {
            let Some(usage) = Usage::for_state(key.state) else {
                continue;
            };
            self.session
                .apply_usage(key.key_type, &key.key_id, &key.label, usage)?;
            if key.state == KeyState::Deprecated {
                self.note(Event::new(self.domain(), "key.demoted").key(key))?;
            }
        }
        Ok(())
    }

    /// Settles an unfinished run of another run id: abandon before switch, adopt after.
    pub fn settle_foreign(&mut self, run: &RunRow) -> Result<()> {
        if run.kind != "rotate" {
            return Err(Error::Inconsistent(format!(
                "domain {} has an unfinished {} run {} (step {})\nhint: rerun it with --run-id {}",
                self.domain(),
                run.kind,
                run.run_id,
                run.step.as_str(),
                run.run_id
            )));
        }
        if run.step >= Step::Switched {
            tracing::warn!(domain = self.domain(), run = %run.run_id, "adopting unfinished rotation");
            self.note(
                Event::new(self.domain(), "rotation.adopted")
                    .detail("adopted_run", run.run_id.as_str())
                    .detail("step", run.step.as_str()),
            )?;
            self.continue_from(run)?;
            return Ok(());
        }

        tracing::warn!(domain = self.domain(), run = %run.run_id, "abandoning unfinished rotation");
        let version = run.new_version.ok_or_else(|| {
            Error::Software(format!("rotation run {} has no new version", run.run_id))
        })?;
        let key = self.key(version)?;
        self.note(
            Event::new(self.domain(), "rotation.abandoned")
                .key(&key)
                .detail("abandoned_run", run.run_id.as_str())
                .detail("step", run.step.as_str()),
        )?;
        // Destroy first: a destroyed row with objects left is visible drift, while
        // objects without a row would be invisible to the state model.
        self.session.destroy(&key.key_id, &key.label)?;
        self.ledger.set_key_state(
            self.domain(),
            version,
            KeyState::Destroyed,
            &self.ctx.run_id,
            self.ctx.now(),
            Some("abandoned rotation"),
        )?;
        let destroyed = self.key(version)?;
        self.note(Event::new(self.domain(), "key.destroyed").key(&destroyed))?;
        let outcome = Outcome::new("abandoned")
            .field("domain", self.domain())
            .field("version", version)
            .field("run_id", &run.run_id);
        self.ledger.finish_run(
            &run.run_id,
            self.domain(),
            "abandoned",
            &outcome.encode_fields(),
            self.ctx.now(),
        )?;
        Ok(())
    }

    fn check_clock(&self, now: i64) -> Result<()> {
        if let Some(newest) = self.ledger.newest_timestamp()?
            && newest > now
        {
            return Err(Error::Inconsistent(format!(
                "the clock reads {} but the ledger has a record from {}; refusing to rotate\nhint: fix the system clock",
                format_time(now),
                format_time(newest)
            )));
        }
        Ok(())
    }

    /// Applies `min_interval` (non-emergency runs only) and `max_per_day` (every run),
    /// both from the ledger, and returns the rotations of the last 24 hours. A refusal
    /// is recorded in the audit trail and names the time the next rotation is allowed.
    /// Records a refusal in the audit trail and returns `error`; a dry run records
    /// nothing, because it promises to change nothing.
    fn refuse(
        &mut self,
        auth: &Authorisation,
        request: &RotateRequest,
        check: &'static str,
        error: Error,
    ) -> Error {
        if request.dry_run {
            return error;
        }
        auth.refuse(self.ctx, self.ledger, check, error)
    }

    fn check_rate_limits(
        &mut self,
        activated_at: Option<i64>,
        now: i64,
        request: &RotateRequest,
        auth: &Authorisation,
    ) -> Result<u32> {
        // The last activation is the last completed rotation of any kind, so an
        // emergency rotation also delays the next scheduled one.
        if !request.emergency
            && let Some(activated) = activated_at
        {
            let allowed = activated.saturating_add(self.settings.min_interval.micros());
            if allowed > now {
                let error = Error::RateLimited(format!(
                    "domain {}: last rotation at {}, min_interval {} allows the next at {}",
                    self.domain(),
                    format_time_seconds(activated),
                    self.settings.min_interval,
                    format_time_seconds(allowed)
                ));
                return Err(self.refuse(auth, request, "min_interval", error));
            }
        }
        let starts = self
            .ledger
            .rotation_starts_since(self.domain(), now - DAY_MICROS + 1)?;
        let recent = starts.len() as u32;
        let budget = self.settings.max_per_day as usize;
        if starts.len() >= budget {
            // The window must lose `len - budget + 1` rotations; the last of them to
            // leave is at index `len - budget`.
            let allowed = starts[starts.len() - budget].saturating_add(DAY_MICROS);
            let error = Error::RateLimited(format!(
                "domain {}: {recent} rotations in the last 24 hours reach max_per_day {}, which allows the next at {}",
                self.domain(),
                self.settings.max_per_day,
                format_time_seconds(allowed)
            ));
            return Err(self.refuse(auth, request, "max_per_day", error));
        }
        Ok(recent)
    }

    /// Checks what must hold before a run changes anything: the ledger invariants, the
    /// HSM matching the ledger, and the audit tail matching the ledger head. Returns
    /// the domain's keys.
    pub fn check_preconditions(&mut self) -> Result<Vec<KeyRow>> {
        let keys =
            self.check_domain_matches("the HSM does not match the ledger; nothing was changed")?;
        self.journal.check_tail(self.ledger)?;
        Ok(keys)
    }

    /// Checks the ledger invariants and every key of the domain against the HSM,
    /// returning the keys, or `Error::Inconsistent` that starts with `context` and
    /// lists each mismatch.
    fn check_domain_matches(&self, context: &str) -> Result<Vec<KeyRow>> {
        let keys = self.ledger.keys(self.domain())?;
        check_invariants(self.domain(), &keys)?;
        let inventory = self.inventory()?;
        let mismatches = check_domain(&inventory, self.domain(), &keys);
        if mismatches.is_empty() {
            return Ok(keys);
        }
        let lines: Vec<String> = mismatches.iter().map(|m| format!("  {m}")).collect();
        Err(Error::Inconsistent(format!(
            "domain {}: {context}\n{}\nhint: run `keyrot verify --domain {}` and resolve the drift by hand",
            self.domain(),
            lines.join("\n"),
            self.domain()
        )))
    }

    /// Lists this domain's objects only; other domains may be mid-rotation. The first
    /// listing of a session searches the token, and later ones read the attributes of
    /// the objects it found again, which the domain lock makes complete.
    pub fn inventory(&self) -> Result<Vec<crate::hsm::ObjectInfo>> {
        let prefix = format!("{LABEL_PREFIX}{}/", self.domain());
        Ok(self.session.relist_under(&prefix)?)
    }

    pub fn key(&self, version: u32) -> Result<KeyRow> {
        self.ledger
            .keys(self.domain())?
            .into_iter()
            .find(|k| k.version == version)
            .ok_or_else(|| {
                Error::Inconsistent(format!(
                    "domain {}: ledger has no key v{version}",
                    self.domain()
                ))
            })
    }

    pub fn note(&mut self, event: Event<'_>) -> Result<()> {
        self.journal.emit(self.ledger, event)
    }
}

/// Checks what the ledger alone must satisfy for a domain: at most one active key,
/// versions 1..=N without gaps, and no pending key outside an unfinished run.
pub fn check_invariants(domain: &str, keys: &[KeyRow]) -> Result<()> {
    let active = keys.iter().filter(|k| k.state == KeyState::Active).count();
    if active > 1 {
        return Err(Error::Inconsistent(format!(
            "domain {domain}: ledger has {active} active keys, expected at most one"
        )));
    }
    for (index, key) in keys.iter().enumerate() {
        let expected = index as u32 + 1;
        if key.version != expected {
            return Err(Error::Inconsistent(format!(
                "domain {domain}: ledger key versions have a gap (expected v{expected}, found v{})",
                key.version
            )));
        }
    }
    if let Some(pending) = keys.iter().find(|k| k.state == KeyState::Pending) {
        return Err(Error::Inconsistent(format!(
            "domain {domain}: key v{} is pending but no rotation is unfinished",
            pending.version
        )));
    }
    if !keys.is_empty() && active == 0 && keys.iter().any(|k| k.state != KeyState::Destroyed) {
        return Err(Error::Inconsistent(format!(
            "domain {domain}: ledger has keys but none is active"
        )));
    }
    Ok(())
}
