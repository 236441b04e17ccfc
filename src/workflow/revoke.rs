//! `keyrot revoke`: take a key version out of use, or destroy a revoked one.
//!
//! Three actions, each recorded as a run of kind `revoke` so that a rerun with the
//! same run id resumes or replays it:
//!
//! - revoke a deprecated key: intent → ledger `revoked` (with the run's step, in one
//!   transaction) → every HSM usage flag false → postconditions;
//! - revoke the active key (`--emergency`): the rotation steps first (intent with a
//!   pending key, generate, self-test, switch), then the same revoke steps, as one run;
//! - destroy a revoked key (`--destroy`): intent → HSM objects destroyed → ledger
//!   tombstone (`destroyed`, keeping id, label and check value) → postconditions.
//!
//! A run meeting an unfinished rotation of another run id settles it by the rotation's
//! abandon/adopt rule. A run meeting an unfinished revoke of another run id stops with
//! code 20 and names the run id to rerun, because only its own arguments can finish it.

use std::path::PathBuf;

use crate::audit::Outcome as AuditOutcome;
use crate::error::{Error, Result};
use crate::ledger::{KeyRow, Ledger, RotationStart, RunRow, Step};
use crate::model::{KeyId, KeyState, key_label};

use super::access::{self, Authorisation};
use super::journal::{Event, Journal};
use super::lock::DomainLock;
use super::rotate::{Rotation, check_invariants, domain_settings, replay};
use super::session::{check_domain, login, open_hsm};
use super::{Context, Outcome, failpoint, format_time_seconds};

/// Maximum length of `--reason`, in bytes.
const MAX_REASON_LEN: usize = 500;

/// Request of `keyrot revoke`.
#[derive(Debug, Clone, Default)]
pub struct RevokeRequest {
    pub domain: String,
    pub version: u32,
    pub reason: String,
    /// Required to revoke the active key, which rotates the domain first.
    pub emergency: bool,
    /// Destroy a revoked key instead of revoking one.
    pub destroy: bool,
    /// Approval document; accepted but not yet checked (see [`authorise_revoke`]).
    pub approval: Option<PathBuf>,
}

/// Workflow that a revoke run follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Revoke,
    EmergencyRevoke,
    Destroy,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Revoke => "revoke",
            Action::EmergencyRevoke => "revoke --emergency",
            Action::Destroy => "revoke --destroy",
        }
    }
}

/// Revokes or destroys one key version: takes the domain lock, checks the request
/// against the ledger before the HSM is opened, then runs or resumes the steps.
///
/// Invalid requests change nothing. An unknown domain or version, a missing
/// `--emergency` or a bad reason is `Error::Usage` (64). A transition that the state
/// model forbids is `Error::Inconsistent` (20).
pub fn revoke(ctx: &Context, request: &RevokeRequest) -> Result<Outcome> {
    let settings = domain_settings(ctx, &request.domain)?;
    check_reason(&request.reason)?;
    let access_action = access::Action::Revoke {
        domain: &settings.name,
        version: request.version,
        emergency: request.emergency,
    };
    let auth = access::authorise(ctx, &access_action, request.approval.as_deref())?;
    let _lock = DomainLock::acquire(
        &ctx.config.storage.lock_dir,
        &settings.name,
        &ctx.run_id,
        &format_time_seconds(ctx.now()),
    )?;
    let mut ledger = Ledger::open_existing(&ctx.config.storage.ledger)?;

    let own = ledger.run(&ctx.run_id, &settings.name)?;
    if let Some(run) = &own {
        check_same_request(run, request)?;
        if run.outcome.is_some() {
            return replay(ctx, &ledger, &settings.name)?
                .ok_or_else(|| Error::Software("finished run has no outcome".into()));
        }
    }
    let action = match &own {
        Some(run) => resumed_action(&ledger, run, request)?,
        None => {
            let key = find_key(&ledger, &settings.name, request.version)?;
            let action = plan(request, &key)?;
            require_emergency_flag(request, &key, action)?;
            action
        }
    };

    let (hsm, pin) = open_hsm(&ctx.config)?;
    let session = login(&hsm, &pin)?;
    let mut journal = Journal::new(ctx);
    let mut rotation = Rotation {
        ctx,
        settings,
        ledger: &mut ledger,
        session: &session,
        journal: &mut journal,
    };
    let result = Revocation {
        rotation: &mut rotation,
        request,
        action,
        auth: &auth,
    }
    .run(own);
    // A checkpoint seals whatever this run appended, also when it failed part way.
    let sealed = journal.seal(&mut ledger, &session);
    let outcome = result?;
    sealed?;
    Ok(outcome)
}

/// Requires `--emergency` for revoking the active key, so that a plain revoke can
/// never trigger a rotation. Identity, access lists and approvals were checked by
/// [`access::authorise`] before the lock.
fn require_emergency_flag(request: &RevokeRequest, key: &KeyRow, action: Action) -> Result<()> {
    if action == Action::EmergencyRevoke && !request.emergency {
        return Err(Error::Usage(format!(
            "key v{} of domain {} is active; revoking it rotates the domain to a new key first\nhint: rerun with --emergency and --approval FILE, a revoke approval for this version signed with `keyrot approve`",
            key.version, key.domain
        )));
    }
    Ok(())
}

fn check_reason(reason: &str) -> Result<()> {
    if reason.trim().is_empty()
        || reason.len() > MAX_REASON_LEN
        || reason.contains(char::is_control)
    {
        return Err(Error::Usage(format!(
            "invalid --reason: use 1 to {MAX_REASON_LEN} bytes of text without control characters"
        )));
    }
    Ok(())
}

fn find_key(ledger: &Ledger, domain: &str, version: u32) -> Result<KeyRow> {
    let keys = ledger.keys(domain)?;
    if let Some(key) = keys.iter().find(|k| k.version == version) {
        return Ok(key.clone());
    }
    let known: Vec<String> = keys.iter().map(|k| format!("v{}", k.version)).collect();
    Err(Error::Usage(format!(
        "domain {domain} has no key v{version}\nhint: known versions: {}",
        if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        }
    )))
}

/// Chooses the workflow for a new run from the key's state, or rejects a transition
/// the state model forbids.
fn plan(request: &RevokeRequest, key: &KeyRow) -> Result<Action> {
    let refuse = |why: String| {
        Err(Error::Inconsistent(format!(
            "cannot {} key v{} of domain {}: {why}; nothing was changed",
            if request.destroy { "destroy" } else { "revoke" },
            key.version,
            key.domain,
        )))
    };
    let state = key.state;
    match (request.destroy, state) {
        (true, KeyState::Revoked) => Ok(Action::Destroy),
        (true, KeyState::Destroyed) => refuse("it is already destroyed".into()),
        (true, _) => refuse(format!(
            "it is {state}, and only a revoked key can be destroyed (revoke it first)"
        )),
        (false, KeyState::Deprecated) => Ok(Action::Revoke),
        (false, KeyState::Active) => Ok(Action::EmergencyRevoke),
        (false, KeyState::Revoked) => refuse("it is already revoked".into()),
        (false, KeyState::Destroyed) => refuse("it is destroyed".into()),
        (false, KeyState::Pending) => refuse(
            "it is pending in an unfinished rotation, which the next rotation settles".into(),
        ),
    }
}

/// Rejects a rerun whose arguments differ from those the run recorded.
fn check_same_request(run: &RunRow, request: &RevokeRequest) -> Result<()> {
    let differs = |what: String| {
        Err(Error::Usage(format!(
            "run id {} of domain {} was recorded as {what}\nhint: rerun with the same arguments, or use a new --run-id",
            run.run_id, run.domain
        )))
    };
    if run.kind != "revoke" {
        return differs(format!("a {} run", run.kind));
    }
    if run.target_version != Some(request.version) {
        return differs(format!(
            "a revoke of v{}",
            run.target_version.unwrap_or_default()
        ));
    }
    if run.emergency != request.emergency {
        return differs(format!("a revoke with emergency={}", run.emergency));
    }
    Ok(())
}

/// Infers the action of an unfinished run of this run id from what it recorded. A run
/// with a new version is an emergency revoke. Otherwise a target that was already
/// revoked when the run started means destroy, because a plain revoke records its
/// `revoked` step in the same transaction as the key's new state.
fn resumed_action(ledger: &Ledger, run: &RunRow, request: &RevokeRequest) -> Result<Action> {
    let key = find_key(ledger, &run.domain, request.version)?;
    let action = if run.new_version.is_some() {
        Action::EmergencyRevoke
    } else if run.step == Step::Started
        && matches!(key.state, KeyState::Revoked | KeyState::Destroyed)
    {
        Action::Destroy
    } else {
        Action::Revoke
    };
    if (action == Action::Destroy) != request.destroy {
        return Err(Error::Usage(format!(
            "run id {} of domain {} is an unfinished {}\nhint: rerun it with the same arguments",
            run.run_id,
            run.domain,
            action.name()
        )));
    }
    Ok(action)
}

/// One revoke run with the resources it shares with the rotation steps.
struct Revocation<'r, 'a> {
    rotation: &'r mut Rotation<'a>,
    request: &'r RevokeRequest,
    action: Action,
    /// Clearance from [`access::authorise`]; its approval nonce is burned with the intent.
    auth: &'r Authorisation,
}

impl<'a> Revocation<'_, 'a> {
    fn domain(&self) -> &'a str {
        let settings: &'a crate::config::DomainSettings = self.rotation.settings;
        &settings.name
    }

    fn run(&mut self, own: Option<RunRow>) -> Result<Outcome> {
        let ctx = self.rotation.ctx;
        // Unfinished runs of other run ids: settle rotations, stop at revokes.
        for run in self.rotation.ledger.unfinished_runs(self.domain())? {
            if run.run_id != ctx.run_id {
                self.rotation.settle_foreign(&run)?;
            }
        }
        let run = match own {
            Some(run) => {
                self.rotation.note(
                    Event::new(self.domain(), "revocation.resumed")
                        .detail("step", run.step.as_str()),
                )?;
                run
            }
            None => self.start()?,
        };
        let result = self.steps(&run);
        if let Err(error) = &result {
            let outcome = match error {
                Error::Interrupted { .. } => AuditOutcome::Interrupted,
                _ => AuditOutcome::Failed,
            };
            let event = Event::new(self.domain(), "revocation.stopped")
                .outcome(outcome)
                .detail("error", error.kind_name())
                .detail("message", error.to_string().lines().next().unwrap_or(""));
            if let Err(audit_error) = self.rotation.note(event) {
                tracing::error!(error = %audit_error, "failed to record the stopped revocation");
            }
        }
        result
    }

    /// Checks the preconditions of a new run and records its intent.
    fn start(&mut self) -> Result<RunRow> {
        let ctx = self.rotation.ctx;
        let domain = self.domain().to_string();
        // Settling a foreign run may have moved the target, so plan again.
        let target = find_key(self.rotation.ledger, &domain, self.request.version)?;
        let action = plan(self.request, &target)?;
        if action != self.action {
            return Err(Error::Inconsistent(format!(
                "key v{} of domain {domain} changed state to {} while an unfinished rotation was settled; nothing else was changed\nhint: check `keyrot status --domain {domain}` and rerun",
                target.version, target.state
            )));
        }

        let keys = self.rotation.check_preconditions()?;

        // Intent: the run (and for an emergency the pending key) before the HSM acts.
        let new_version = keys.last().map(|k| k.version + 1).unwrap_or(1);
        let label = key_label(&domain, new_version);
        let emergency = self.action == Action::EmergencyRevoke;
        let start = RotationStart {
            run_id: &ctx.run_id,
            domain: &domain,
            kind: "revoke",
            new_version,
            old_version: Some(target.version),
            key_id: KeyId::random(),
            label: &label,
            key_type: self.rotation.settings.key_type,
            actor: &ctx.actor.user,
            emergency: self.request.emergency,
            now: ctx.now(),
            target_version: Some(target.version),
            reason: Some(&self.request.reason),
        };
        // NOTE: an emergency revoke is not counted against max_per_day, because
        // refusing to retire a compromised key over a rotation budget is worse than
        // the extra rotation.
        let rotation = &mut *self.rotation;
        if emergency {
            access::begin_rotation(ctx, rotation.ledger, rotation.journal, self.auth, &start)?;
        } else {
            access::begin_run(ctx, rotation.ledger, rotation.journal, self.auth, &start)?;
        }
        let intent = if self.action == Action::Destroy {
            "destroy.after_intent"
        } else {
            "revoke.after_intent"
        };
        failpoint(intent);
        let mut event = Event::new(
            &domain,
            if self.action == Action::Destroy {
                "destruction.started"
            } else {
                "revocation.started"
            },
        )
        .key(&target)
        .detail("reason", self.request.reason.as_str())
        .detail("emergency", self.request.emergency);
        if emergency {
            event = event.detail("new_version", new_version);
        }
        self.rotation.note(event)?;
        self.rotation
            .ledger
            .run(&ctx.run_id, &domain)?
            .ok_or_else(|| Error::Software("revoke run vanished after insert".into()))
    }

    fn steps(&mut self, run: &RunRow) -> Result<Outcome> {
        let target = self.request.version;
        let mut step = run.step;
        if self.action == Action::Destroy {
            return self.destroy(run, target);
        }

        // Emergency: the rotation steps make a new key active and the target deprecated.
        if self.action == Action::EmergencyRevoke && step < Step::Switched {
            step = self.rotation.advance_to_switched(run)?;
        }

        // Revoke: the ledger first, with the run's step in the same transaction.
        if step < Step::Revoked {
            self.rotation.ctx.check_stop(step.as_str())?;
            let now = self.rotation.ctx.now();
            self.rotation.ledger.revoke_key(
                &run.run_id,
                self.domain(),
                target,
                &self.request.reason,
                now,
            )?;
            failpoint("revoke.after_revoke");
            let key = self.rotation.key(target)?;
            self.rotation.note(
                Event::new(self.domain(), "key.revoked")
                    .key(&key)
                    .detail("reason", self.request.reason.as_str()),
            )?;
            step = Step::Revoked;
        }

        // Converge: every usage flag of the revoked key false in the HSM.
        if step < Step::Converged {
            self.rotation.ctx.check_stop(step.as_str())?;
            self.rotation.converge()?;
            failpoint("revoke.after_converge");
            self.rotation
                .ledger
                .set_step(&run.run_id, self.domain(), Step::Converged)?;
        }

        self.check_postconditions(target)?;
        let mut outcome = Outcome::new("revoked")
            .field("domain", self.domain())
            .field("version", target);
        if let Some(new_version) = run.new_version {
            outcome = outcome.field("active_version", new_version);
        }
        outcome = outcome.field("run_id", &run.run_id);
        let outcome = self.complete(run, "revocation.completed", target, outcome)?;
        failpoint("revoke.after_finish");
        Ok(outcome)
    }

    /// Destroys a revoked key: HSM objects first, then the ledger tombstone.
    fn destroy(&mut self, run: &RunRow, target: u32) -> Result<Outcome> {
        let key = self.rotation.key(target)?;
        if key.state != KeyState::Destroyed {
            self.rotation.ctx.check_stop(run.step.as_str())?;
            self.rotation.session.destroy(&key.key_id, &key.label)?;
            failpoint("destroy.after_hsm");
            self.rotation.ledger.set_key_state(
                self.domain(),
                target,
                KeyState::Destroyed,
                &run.run_id,
                self.rotation.ctx.now(),
                Some(&self.request.reason),
            )?;
            failpoint("destroy.after_ledger");
            let destroyed = self.rotation.key(target)?;
            let mut event = Event::new(self.domain(), "key.destroyed")
                .key(&destroyed)
                .detail("reason", self.request.reason.as_str());
            if let Some(check_value) = &destroyed.check_value {
                event = event.detail("check_value", check_value.as_str());
            }
            self.rotation.note(event)?;
        }
        self.check_postconditions(target)?;
        let outcome = Outcome::new("destroyed")
            .field("domain", self.domain())
            .field("version", target)
            .field("run_id", &run.run_id);
        let outcome = self.complete(run, "destruction.completed", target, outcome)?;
        failpoint("revoke.after_finish");
        Ok(outcome)
    }

    /// Re-reads every key of the domain from the HSM and compares it with the ledger.
    fn check_postconditions(&mut self, target: u32) -> Result<()> {
        let domain = self.domain().to_string();
        let keys = self.rotation.ledger.keys(&domain)?;
        check_invariants(&domain, &keys)?;
        let inventory = self.rotation.inventory()?;
        let mismatches = check_domain(&inventory, &domain, &keys);
        if !mismatches.is_empty() {
            let lines: Vec<String> = mismatches.iter().map(|m| format!("  {m}")).collect();
            return Err(Error::Inconsistent(format!(
                "domain {domain}: postcondition failed after {} of v{target}\n{}",
                self.action.name(),
                lines.join("\n")
            )));
        }
        Ok(())
    }

    /// Writes the completion audit line and records the outcome for replay.
    fn complete(
        &mut self,
        run: &RunRow,
        event: &str,
        target: u32,
        outcome: Outcome,
    ) -> Result<Outcome> {
        let key = self.rotation.key(target)?;
        self.rotation
            .note(Event::new(self.domain(), event).key(&key))?;
        let ctx = self.rotation.ctx;
        self.rotation.ledger.finish_run(
            &run.run_id,
            self.domain(),
            &outcome.outcome,
            &outcome.encode_fields(),
            ctx.now(),
        )?;
        Ok(outcome)
    }
}
