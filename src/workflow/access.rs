//! Step one of every command that changes keys: who runs it, whether this host's pool
//! owns the domain, and whether an emergency carries a valid, unused approval.
//!
//! Rules, all decided from the configuration and the ledger:
//!
//! - The caller is the account name of the real uid (`getuid`, not the effective uid),
//!   so a setuid wrapper cannot lend its identity. Root has no exemption.
//! - A scheduled `rotate` needs the caller in `access.scheduler_users`; an emergency
//!   `rotate` and every `revoke` need the caller in `access.emergency_users`. A
//!   missing or empty list admits nobody.
//! - With a `[pool]` section, the domain's owner is computed by [`crate::pool::owner`]
//!   and must be this host's pool. Without one, this host owns every domain.
//! - An approval must be signed by an approver listed in `access.approvers`, match
//!   the domain, action and version, be unexpired, name no other requester, not be
//!   signed in the caller's own name, and carry a nonce the ledger has not burned.
//!   The approver's `name` is compared with the caller's account name, so approvers
//!   are listed under their account names.
//!
//! Every refusal appends one `access.refused` or `rotation.refused` audit line with
//! the caller, the run id, the domain and the check that failed. Refusals are not
//! sealed at once, because signing a checkpoint needs an HSM login that a refused
//! caller must not get. The next run's checkpoint seals them, and until then
//! `audit-verify` counts them as unsealed lines. A refusal cannot be recorded before
//! `keyrot init` has created the ledger and the audit trail, or when the caller cannot
//! write them; it is then only logged, and the command still fails with its code.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::approval::{self, ApprovalAction, ReadError, SignedApproval};
use crate::audit::Outcome as AuditOutcome;
use crate::config::ConfigError;
use crate::error::{Error, Result, exit_code};
use crate::ledger::{ApprovalUse, Ledger, RotationStart, StartResult};
use crate::pool;

use super::journal::{Event, Journal};
use super::{Context, Outcome};

/// Largest amount by which an approval's `issued_at` may lie ahead of this host's
/// clock, to allow for clock differences between the approver's machine and this one.
const ISSUE_SKEW_SECONDS: i64 = 300;

/// Action a caller requests on a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    Rotate {
        domain: &'a str,
        emergency: bool,
    },
    Revoke {
        domain: &'a str,
        version: u32,
        emergency: bool,
    },
}

impl Action<'_> {
    pub fn domain(&self) -> &str {
        match self {
            Action::Rotate { domain, .. } | Action::Revoke { domain, .. } => domain,
        }
    }

    pub fn emergency(&self) -> bool {
        match self {
            Action::Rotate { emergency, .. } | Action::Revoke { emergency, .. } => *emergency,
        }
    }

    /// Name recorded in audit lines: `rotate`, `emergency-rotate`, `revoke` or
    /// `emergency-revoke`.
    pub fn name(&self) -> &'static str {
        match (self, self.emergency()) {
            (Action::Rotate { .. }, false) => "rotate",
            (Action::Rotate { .. }, true) => "emergency-rotate",
            (Action::Revoke { .. }, false) => "revoke",
            (Action::Revoke { .. }, true) => "emergency-revoke",
        }
    }

    fn approval_action(&self) -> ApprovalAction {
        match self {
            Action::Rotate { .. } => ApprovalAction::Rotate,
            Action::Revoke { .. } => ApprovalAction::Revoke,
        }
    }

    /// Configuration key of the user list this action requires.
    fn user_list(&self) -> &'static str {
        match self {
            Action::Rotate {
                emergency: false, ..
            } => "access.scheduler_users",
            _ => "access.emergency_users",
        }
    }
}

/// A caller cleared by [`authorise`] for one action on one domain.
#[derive(Debug, Clone)]
pub struct Authorisation {
    pub user: String,
    pub domain: String,
    /// Action name as recorded in audit lines, see [`Action::name`].
    pub action: &'static str,
    /// Owner pool of the domain; `None` without a `[pool]` section.
    pub pool: Option<String>,
    /// The verified approval; its nonce is burned by [`begin_rotation`] or [`begin_run`].
    pub approval: Option<VerifiedApproval>,
}

/// An approval whose signature, claims and expiry have been checked.
#[derive(Debug, Clone)]
pub struct VerifiedApproval {
    pub path: PathBuf,
    pub document: SignedApproval,
}

/// One refusal, for the audit line.
struct Refusal<'a> {
    event: &'static str,
    domain: &'a str,
    action: &'a str,
    check: &'static str,
    approval: Option<&'a approval::Approval>,
}

/// Checks identity, pool ownership and, for emergencies or when `approval` is given,
/// the approval document. Does not take the domain lock and does not burn the nonce.
///
/// Reads the configuration, the approval file, the approver's public key and the
/// ledger (for the nonce), and never the HSM. On refusal it appends one
/// `access.refused` audit line (see the module documentation) and returns:
///
/// - `Error::NoPermission` (77): the user is not listed, or another pool owns the domain.
/// - `Error::NoInput` (66): the approval file does not exist.
/// - `Error::ApprovalRequired` (12): the approval is missing, invalid, expired,
///   mismatched, signed by the requester or already used.
/// - `Error::Config` (78): the approver's public key cannot be read.
pub fn authorise(
    ctx: &Context,
    action: &Action<'_>,
    approval: Option<&Path>,
) -> Result<Authorisation> {
    let mut refusal = Refusal {
        event: "access.refused",
        domain: action.domain(),
        action: action.name(),
        check: "identity",
        approval: None,
    };
    if let Err(error) = check_identity(ctx, action) {
        return Err(record_refusal_opening(ctx, &refusal, error));
    }
    refusal.check = "pool";
    let owner = match check_pool(ctx, action.domain()) {
        Ok(owner) => owner,
        Err(error) => return Err(record_refusal_opening(ctx, &refusal, error)),
    };
    refusal.check = "approval";
    let verified = match (approval, action.emergency()) {
        (None, false) => None,
        (None, true) => {
            let error = Error::ApprovalRequired(format!(
                "{} of domain {} needs an approval\nhint: ask an approver listed in access.approvers to run `keyrot approve --domain {} --action {} ...` and pass the file with --approval",
                action.name(),
                action.domain(),
                action.domain(),
                action.approval_action()
            ));
            return Err(record_refusal_opening(ctx, &refusal, error));
        }
        (Some(path), _) => {
            let document = match read_approval(path) {
                Ok(document) => document,
                Err(error) => return Err(record_refusal_opening(ctx, &refusal, error)),
            };
            refusal.approval = Some(&document.approval);
            if let Err(error) = check_approval(ctx, action, &document) {
                return Err(record_refusal_opening(ctx, &refusal, error));
            }
            tracing::info!(
                approver = %document.approval.approver,
                nonce = %document.approval.nonce,
                "approval verified"
            );
            Some(VerifiedApproval {
                path: path.to_path_buf(),
                document,
            })
        }
    };
    Ok(Authorisation {
        user: ctx.actor.user.clone(),
        domain: action.domain().to_string(),
        action: action.name(),
        pool: owner,
        approval: verified,
    })
}

impl Authorisation {
    /// Returns the nonce to burn with the run's intent, if an approval was given.
    pub fn approval_use(&self) -> Option<ApprovalUse<'_>> {
        self.approval.as_ref().map(|a| ApprovalUse {
            nonce: &a.document.approval.nonce,
            approver: &a.document.approval.approver,
            action: a.document.approval.action.as_str(),
        })
    }

    /// Returns a copy without the approval, for a rotation started inside a run whose
    /// own intent already burned the nonce (a revoke of the active key rotates first).
    pub fn without_approval(&self) -> Authorisation {
        Authorisation {
            approval: None,
            ..self.clone()
        }
    }

    /// Checks a rotation approval's `version` against the domain's active version.
    /// The caller runs it under the domain lock, so no other rotation intervenes.
    pub fn check_active_version(&self, active: Option<u32>) -> Result<()> {
        let Some(approval) = &self.approval else {
            return Ok(());
        };
        let claims = &approval.document.approval;
        match claims.version {
            Some(version) if Some(version) != active => Err(Error::ApprovalRequired(format!(
                "approval {} is for replacing v{version} of domain {}, but the active key is {}",
                approval.path.display(),
                self.domain,
                active
                    .map(|v| format!("v{v}"))
                    .unwrap_or_else(|| "none".into())
            ))),
            _ => Ok(()),
        }
    }

    /// Appends a `rotation.refused` line for a check made after authorisation (rate
    /// limit, clock, approval version) and returns `error` unchanged.
    pub fn refuse(
        &self,
        ctx: &Context,
        ledger: &mut Ledger,
        check: &'static str,
        error: Error,
    ) -> Error {
        let refusal = Refusal {
            event: "rotation.refused",
            domain: &self.domain,
            action: self.action,
            check,
            approval: self.approval.as_ref().map(|a| &a.document.approval),
        };
        record_refusal(ctx, ledger, &refusal, &error);
        error
    }
}

/// Records a rotation's intent (see [`Ledger::start_rotation_approved`]) and burns
/// the approval nonce in the same transaction, then appends `approval.used` to the
/// run's journal. A nonce burned meanwhile by another run is refused with
/// `Error::ApprovalRequired` and an audit line, and nothing else is written.
pub fn begin_rotation(
    ctx: &Context,
    ledger: &mut Ledger,
    journal: &mut Journal,
    auth: &Authorisation,
    start: &RotationStart<'_>,
) -> Result<()> {
    let result = ledger.start_rotation_approved(start, auth.approval_use().as_ref())?;
    after_start(ctx, ledger, journal, auth, result)
}

/// Like [`begin_rotation`] for a run that creates no key (see
/// [`Ledger::start_run_approved`]).
pub fn begin_run(
    ctx: &Context,
    ledger: &mut Ledger,
    journal: &mut Journal,
    auth: &Authorisation,
    start: &RotationStart<'_>,
) -> Result<()> {
    let result = ledger.start_run_approved(start, auth.approval_use().as_ref())?;
    after_start(ctx, ledger, journal, auth, result)
}

fn after_start(
    ctx: &Context,
    ledger: &mut Ledger,
    journal: &mut Journal,
    auth: &Authorisation,
    result: StartResult,
) -> Result<()> {
    let approval = auth.approval.as_ref();
    if let StartResult::NonceUsed { run_id } = result {
        let path = approval.map(|a| a.path.display().to_string());
        let error = Error::ApprovalRequired(format!(
            "approval {} was already used by run {run_id}\nhint: an approval works once; ask for a new one",
            path.unwrap_or_default()
        ));
        return Err(auth.refuse(ctx, ledger, "approval", error));
    }
    let Some(approval) = approval else {
        return Ok(());
    };
    let claims = &approval.document.approval;
    let mut event = Event::new(&auth.domain, "approval.used")
        .detail("action", auth.action)
        .detail("approver", claims.approver.as_str())
        .detail("nonce", claims.nonce.as_str())
        .detail("reason", claims.reason.as_str())
        .detail("issued_at", approval::format_time(claims.issued_at))
        .detail("expires_at", approval::format_time(claims.expires_at));
    if let Some(version) = claims.version {
        event = event.detail("version", version);
    }
    if let Some(requester) = &claims.requester {
        event = event.detail("requester", requester.as_str());
    }
    journal.emit(ledger, event)
}

fn check_identity(ctx: &Context, action: &Action<'_>) -> Result<()> {
    let access = &ctx.config.access;
    let users = match action {
        Action::Rotate {
            emergency: false, ..
        } => &access.scheduler_users,
        _ => &access.emergency_users,
    };
    let user = &ctx.actor.user;
    if users.iter().any(|u| u == user) {
        return Ok(());
    }
    let list = action.user_list();
    let config = ctx.config.path.display();
    let why = if users.is_empty() {
        format!("{list} in {config} is empty or missing, so nobody may")
    } else {
        format!("user {user} is not listed in {list} in {config}")
    };
    Err(Error::NoPermission(format!(
        "user {user} (uid {}) may not {} domain {}: {why}\nhint: add the account to {list} if it should",
        ctx.actor.uid,
        action.name().replace('-', " "),
        action.domain()
    )))
}

/// Returns the owner pool, or `None` without a `[pool]` section.
fn check_pool(ctx: &Context, domain: &str) -> Result<Option<String>> {
    let Some(settings) = &ctx.config.pool else {
        return Ok(None);
    };
    let owner = pool::owner(&settings.members, domain)
        .ok_or_else(|| Error::Software("pool.members is empty".into()))?;
    if owner != settings.name {
        return Err(Error::NoPermission(format!(
            "domain {domain} is owned by pool {owner}, and this host is in pool {}\nhint: run it on a host of pool {owner}; `keyrot status --pools` lists every owner",
            settings.name
        )));
    }
    Ok(Some(owner.to_string()))
}

fn read_approval(path: &Path) -> Result<SignedApproval> {
    match SignedApproval::read(path) {
        Ok(document) => Ok(document),
        Err(ReadError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Err(Error::NoInput {
                what: "approval file",
                path: path.to_path_buf(),
            })
        }
        Err(ReadError::Io { source, .. }) => Err(Error::Io {
            action: "failed to read approval file",
            path: path.to_path_buf(),
            source,
        }),
        Err(ReadError::Approval(error)) => Err(Error::ApprovalRequired(format!(
            "approval {}: {error}",
            path.display()
        ))),
    }
}

fn check_approval(ctx: &Context, action: &Action<'_>, document: &SignedApproval) -> Result<()> {
    let claims = &document.approval;
    let refuse = |why: String| Err(Error::ApprovalRequired(format!("approval rejected: {why}")));

    // Signature first: no other claim is worth reading from an unsigned document.
    let Some(approver) = ctx
        .config
        .access
        .approvers
        .iter()
        .find(|a| a.name == claims.approver)
    else {
        return refuse(format!(
            "approver {:?} is not listed in access.approvers in {}",
            claims.approver,
            ctx.config.path.display()
        ));
    };
    let key = approval::read_verifying_key(&approver.public_key).map_err(|error| {
        Error::Config(ConfigError::Value {
            path: ctx.config.path.clone(),
            key: format!("access.approvers {:?}", approver.name),
            message: error.to_string(),
            hint: "point public_key at the approver's P-256 public key (PEM)".into(),
        })
    })?;
    if let Err(error) = document.verify(&key) {
        return refuse(error.to_string());
    }

    if claims.domain != action.domain() {
        return refuse(format!(
            "it is for domain {}, not {}",
            claims.domain,
            action.domain()
        ));
    }
    if claims.action != action.approval_action() {
        return refuse(format!(
            "it is for action {}, not {}",
            claims.action,
            action.approval_action()
        ));
    }
    if let Action::Revoke { version, .. } = action
        && claims.version != Some(*version)
    {
        return refuse(format!(
            "it is for version {}, not v{version}",
            claims
                .version
                .map(|v| format!("v{v}"))
                .unwrap_or_else(|| "none".into())
        ));
    }

    let now = ctx.now().div_euclid(1_000_000);
    if now >= claims.expires_at {
        return refuse(format!(
            "it expired at {}",
            approval::format_time(claims.expires_at)
        ));
    }
    if claims.issued_at > now + ISSUE_SKEW_SECONDS {
        return refuse(format!(
            "it was issued at {}, later than this host's clock allows ({})",
            approval::format_time(claims.issued_at),
            approval::format_time(now)
        ));
    }

    let user = &ctx.actor.user;
    if let Some(requester) = &claims.requester
        && requester != user
    {
        return refuse(format!("it was issued to {requester}, not to {user}"));
    }
    if claims.approver == *user {
        return refuse(format!(
            "it is signed by {user}, the requesting user; an emergency needs a second person"
        ));
    }

    // The authoritative check is the burn in the intent transaction; this one
    // refuses a replay before the lock and the HSM are touched.
    let ledger_path = &ctx.config.storage.ledger;
    if ledger_path.exists() {
        let ledger = Ledger::open_read_only(ledger_path)?;
        // The run that burned it may use it again: that is a resume or a replay.
        if let Some(run_id) = ledger.nonce_user(&claims.nonce)?
            && run_id != ctx.run_id
        {
            return refuse(format!(
                "its nonce was already used by run {run_id}; an approval works once"
            ));
        }
    }
    Ok(())
}

/// Records a refusal when the ledger exists, and returns `error` unchanged.
fn record_refusal_opening(ctx: &Context, refusal: &Refusal<'_>, error: Error) -> Error {
    let ledger_path = &ctx.config.storage.ledger;
    if !ledger_path.exists() {
        tracing::warn!(
            check = refusal.check,
            "refusal not recorded in the audit trail: the ledger does not exist yet"
        );
        return error;
    }
    match Ledger::open_existing(ledger_path) {
        Ok(mut ledger) => record_refusal(ctx, &mut ledger, refusal, &error),
        Err(open_error) => tracing::warn!(
            error = %open_error,
            check = refusal.check,
            "refusal not recorded in the audit trail"
        ),
    }
    error
}

/// Appends the refusal's audit line with its own journal, so the run's journal does
/// not seal it. A failure to write is logged and not returned, because the refusal itself is the
/// error the caller must see.
fn record_refusal(ctx: &Context, ledger: &mut Ledger, refusal: &Refusal<'_>, error: &Error) {
    match ledger.audit_head() {
        Ok(Some(_)) => {}
        Ok(None) => {
            tracing::warn!(
                check = refusal.check,
                "refusal not recorded: the audit trail has no genesis line yet"
            );
            return;
        }
        Err(read_error) => {
            tracing::warn!(error = %read_error, "refusal not recorded in the audit trail");
            return;
        }
    }
    let message = error.to_string();
    let mut event = Event::new(refusal.domain, refusal.event)
        .outcome(AuditOutcome::Refused)
        .detail("action", refusal.action)
        .detail("check", refusal.check)
        .detail("exit_code", u32::from(exit_code(error)))
        .detail("message", message.lines().next().unwrap_or(""));
    if let Some(claims) = refusal.approval {
        event = event
            .detail("approver", claims.approver.as_str())
            .detail("nonce", claims.nonce.as_str());
    }
    tracing::warn!(
        domain = refusal.domain,
        action = refusal.action,
        check = refusal.check,
        "request refused"
    );
    let mut journal = Journal::new(ctx);
    if let Err(audit_error) = journal.emit(ledger, event) {
        tracing::warn!(error = %audit_error, "failed to record the refusal in the audit trail");
    }
}

/// `keyrot status --pools`: the owner pool of every configured domain. Reads the
/// configuration only.
pub fn pool_status(ctx: &Context) -> Result<Outcome> {
    let (this_pool, members): (Option<&str>, Vec<&str>) = match &ctx.config.pool {
        Some(pool) => (
            Some(pool.name.as_str()),
            pool.members.iter().map(String::as_str).collect(),
        ),
        None => (None, Vec::new()),
    };
    let mut report = Vec::new();
    let mut rows = Vec::new();
    let mut owned = 0;
    for domain in &ctx.config.domains {
        let owner = match this_pool {
            Some(_) => pool::owner(&members, &domain.name),
            None => None,
        };
        let here = this_pool.is_none() || owner == this_pool;
        if here {
            owned += 1;
        }
        let owner_text = owner.unwrap_or("(single pool)");
        report.push(format!(
            "{:<20} owner={:<16}{}",
            domain.name,
            owner_text,
            if here { " this-host" } else { "" }
        ));
        rows.push(json!({
            "domain": domain.name,
            "owner": owner,
            "owned_here": here,
        }));
    }
    let mut outcome = Outcome::new("pools")
        .field("pool", this_pool.unwrap_or("(single pool)"))
        .field("members", members.len().max(1))
        .field("domains", ctx.config.domains.len())
        .field("owned_here", owned)
        .field("run_id", &ctx.run_id);
    outcome.report = report;
    outcome.data.insert("pools".into(), Value::Array(rows));
    Ok(outcome)
}
