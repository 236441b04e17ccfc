//! Command-line definition (clap) and its conversion into checked workflow requests.
//!
//! Workflows never see clap types: `run` turns the parsed arguments and the
//! configuration into requests and calls the workflow for each command.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::approval::ApprovalAction;
use crate::config::{Config, Duration};
use crate::error::{Error, Result};
use crate::workflow::approve::ApproveRequest;
use crate::workflow::audit_verify::AuditVerifyRequest;
use crate::workflow::revoke::RevokeRequest;
use crate::workflow::rotate::RotateRequest;
use crate::workflow::verify::VerifyRequest;
use crate::workflow::{self, Context, Outcome, OutputFormat};

/// Default configuration path when neither --config nor KEYROT_CONFIG is given.
pub const DEFAULT_CONFIG: &str = "/etc/keyrot/keyrot.toml";

/// Rotate cryptographic keys held in a PKCS#11 HSM, with a SQLite ledger and a
/// hash-chained audit trail.
#[derive(Debug, Parser)]
#[command(name = "keyrot", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file (TOML).
    #[arg(long, global = true, env = "KEYROT_CONFIG", value_name = "PATH", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,

    /// Result line format on stdout.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,

    /// More log detail on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the ledger, the audit checkpoint key and the audit genesis line (idempotent).
    Init(RunIdArgs),
    /// Rotate a domain's key if it is due, or if --force and the rate limits allow.
    Rotate(RotateArgs),
    /// Summarise versions, states, last and next rotation from the ledger (no HSM).
    Status(StatusArgs),
    /// Verify the audit chain, its checkpoint signatures and its tail (read-only).
    AuditVerify(AuditVerifyArgs),
    /// Reconcile ledger, HSM and audit head and list every finding (read-only).
    ///
    /// Exit codes: 0 when nothing is inconsistent (an overdue domain is a warning
    /// unless --fail-on-overdue), 20 when any finding is an error, 64 for an unknown
    /// domain, 66 without a ledger, 69 when the HSM is unreachable.
    Verify(VerifyArgs),
    /// Revoke a deprecated key, revoke the active key (--emergency), or destroy a
    /// revoked key (--destroy).
    ///
    /// Exit codes: 0 when done, or already done for this run id. 10 when the domain is
    /// locked. 20 when the state model forbids the transition (key already revoked,
    /// destroy of a key that is not revoked, pending key) or the HSM does not match
    /// the ledger. 64 for an unknown domain or version, an empty reason, the active
    /// key without --emergency, or a run id recorded with other arguments. 75 when
    /// interrupted by SIGTERM or SIGINT: rerun with the same run id to finish.
    /// Invalid requests change nothing.
    Revoke(RevokeArgs),
    /// Sign an approval for an emergency rotate or revoke (approver side; no HSM).
    Approve(ApproveArgs),
}

#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// Key domain the approval is for.
    #[arg(long, value_name = "NAME")]
    pub domain: String,

    /// Action the approval allows.
    #[arg(long, value_enum)]
    pub action: ApprovalAction,

    /// Key version: the target of a revoke (required), or the active version a
    /// rotation must replace (optional).
    #[arg(long, value_name = "N")]
    pub version: Option<u32>,

    /// Reason for the emergency action, recorded in the audit trail.
    #[arg(long, value_name = "TEXT")]
    pub reason: String,

    /// How long the approval stays valid, such as 30m or 4h (at most 7d).
    #[arg(long, value_name = "DURATION", value_parser = Duration::parse)]
    pub expires_in: Duration,

    /// Approver's P-256 private key, PEM (PKCS#8 or SEC1), mode 0600 or 0400.
    #[arg(long, value_name = "PEM")]
    pub key: PathBuf,

    /// Approver name as listed in access.approvers [default: the current account name].
    #[arg(long, value_name = "NAME")]
    pub approver: Option<String>,

    /// Account name of the only user who may use the approval.
    #[arg(long, value_name = "USER")]
    pub requester: Option<String>,

    /// File to create with mode 0600 [default: print the document on stdout].
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,

    #[command(flatten)]
    pub run: RunIdArgs,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Domain to verify; repeat for several [default: every configured domain].
    #[arg(long, value_name = "NAME")]
    pub domain: Vec<String>,

    /// Treat a domain past its rotate_every as an inconsistency (exit 20).
    #[arg(long)]
    pub fail_on_overdue: bool,

    #[command(flatten)]
    pub run: RunIdArgs,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// Key domain, as named in the configuration.
    #[arg(long, value_name = "NAME")]
    pub domain: String,

    /// Key version to revoke or destroy.
    #[arg(long, value_name = "N")]
    pub version: u32,

    /// Reason for taking the key out of use, recorded in the ledger and the audit trail.
    #[arg(long, value_name = "TEXT")]
    pub reason: String,

    /// Allow revoking the active key: the domain is rotated to a new key first.
    #[arg(long)]
    pub emergency: bool,

    /// Destroy a key that is already revoked; the ledger keeps a tombstone.
    #[arg(long)]
    pub destroy: bool,

    /// Signed approval for the emergency action (accepted; not yet checked).
    #[arg(long, value_name = "FILE")]
    pub approval: Option<PathBuf>,

    #[command(flatten)]
    pub run: RunIdArgs,
}

#[derive(Debug, Args)]
pub struct AuditVerifyArgs {
    /// Audit file to verify [default: storage.audit_log of the configuration].
    #[arg(value_name = "PATH")]
    pub path: Option<PathBuf>,

    /// Ledger whose audit head the file must contain (detects a file cut short).
    #[arg(long, value_name = "PATH")]
    pub ledger: Option<PathBuf>,

    /// Checkpoint public key (PEM) that every checkpoint signature must verify with.
    #[arg(long, value_name = "PEM")]
    pub pubkey: Option<PathBuf>,

    /// State file remembering the last verified checkpoint (detects rollback and forks);
    /// updated only after a full successful pass.
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,

    #[command(flatten)]
    pub run: RunIdArgs,
}

#[derive(Debug, Args)]
pub struct RunIdArgs {
    /// Idempotency key of this run; a Control-M job passes %%ORDERID.
    #[arg(long, env = "KEYROT_RUN_ID", value_name = "ID")]
    pub run_id: Option<String>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["domain", "all_due"])))]
pub struct RotateArgs {
    /// Key domain to rotate, as named in the configuration.
    #[arg(long, value_name = "NAME")]
    pub domain: Option<String>,

    /// Rotate every due domain in one process, with one HSM login; the exit code is
    /// the most severe domain outcome.
    #[arg(long, conflicts_with_all = ["domain", "force", "dry_run"])]
    pub all_due: bool,

    #[command(flatten)]
    pub run: RunIdArgs,

    /// Rotate before the domain is due; min_interval and max_per_day still apply.
    #[arg(long)]
    pub force: bool,

    /// Report what would happen and change nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Rotate now, out of schedule: needs --reason and a signed --approval, skips the
    /// due check and min_interval, and still counts against max_per_day.
    #[arg(long, requires = "reason")]
    pub emergency: bool,

    /// Reason for the emergency rotation, recorded in the ledger and audit trail.
    #[arg(long, value_name = "TEXT", requires = "emergency")]
    pub reason: Option<String>,

    /// Approval document from `keyrot approve`.
    #[arg(long, value_name = "FILE", requires = "emergency")]
    pub approval: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this domain.
    #[arg(long, value_name = "NAME", conflicts_with = "pools")]
    pub domain: Option<String>,

    /// Show which pool owns each domain (configuration only, no ledger).
    #[arg(long)]
    pub pools: bool,

    #[command(flatten)]
    pub run: RunIdArgs,
}

impl Command {
    /// Run id given on the command line or in the environment.
    pub fn run_id(&self) -> Option<&str> {
        match self {
            Command::Init(a) => a.run_id.as_deref(),
            Command::Rotate(a) => a.run.run_id.as_deref(),
            Command::Status(a) => a.run.run_id.as_deref(),
            Command::AuditVerify(a) => a.run.run_id.as_deref(),
            Command::Approve(a) => a.run.run_id.as_deref(),
            Command::Verify(a) => a.run.run_id.as_deref(),
            Command::Revoke(a) => a.run.run_id.as_deref(),
        }
    }

    /// Domain the command is about, for the result line of a failure.
    pub fn domain(&self) -> Option<&str> {
        match self {
            Command::Rotate(a) => a.domain.as_deref(),
            Command::Status(a) => a.domain.as_deref(),
            Command::Approve(a) => Some(&a.domain),
            Command::Revoke(a) => Some(&a.domain),
            Command::Verify(a) if a.domain.len() == 1 => Some(&a.domain[0]),
            Command::Init(_) | Command::AuditVerify(_) | Command::Verify(_) => None,
        }
    }

    /// Command name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Init(_) => "init",
            Command::Rotate(_) => "rotate",
            Command::Status(_) => "status",
            Command::AuditVerify(_) => "audit-verify",
            Command::Approve(_) => "approve",
            Command::Verify(_) => "verify",
            Command::Revoke(_) => "revoke",
        }
    }

    /// Returns whether the command needs a configuration file.
    pub fn needs_config(&self) -> bool {
        match self {
            Command::AuditVerify(a) => a.path.is_none(),
            Command::Approve(_) => false,
            _ => true,
        }
    }
}

/// Resolves the run id: the given one after validation, or a generated one.
pub fn resolve_run_id(given: Option<&str>) -> Result<String> {
    match given {
        Some(id) => {
            workflow::validate_run_id(id)?;
            Ok(id.to_string())
        }
        None => Ok(workflow::generate_run_id()),
    }
}

/// Loads the configuration named on the command line.
pub fn load_config(cli: &Cli) -> Result<Config> {
    Ok(Config::load(&cli.config)?)
}

/// Runs the parsed command. `ctx` is `None` only for commands that need no
/// configuration and found none.
pub fn run(cli: &Cli, ctx: Option<&Context>, run_id: &str) -> Result<Outcome> {
    if let Command::AuditVerify(args) = &cli.command {
        let path = match (&args.path, ctx) {
            (Some(path), _) => path.clone(),
            (None, Some(ctx)) => ctx.config.storage.audit_log.clone(),
            (None, None) => {
                return Err(Error::Usage(
                    "audit-verify needs PATH or a configuration".into(),
                ));
            }
        };
        let request = AuditVerifyRequest {
            path,
            ledger: args.ledger.clone(),
            pubkey: args.pubkey.clone(),
            state: args.state.clone(),
        };
        return workflow::audit_verify::audit_verify(&request, run_id);
    }
    if let Command::Approve(args) = &cli.command {
        let request = ApproveRequest {
            domain: args.domain.clone(),
            action: args.action,
            version: args.version,
            reason: args.reason.clone(),
            requester: args.requester.clone(),
            approver: args.approver.clone(),
            expires_in: args.expires_in,
            key: args.key.clone(),
            out: args.out.clone(),
        };
        return workflow::approve::approve(ctx, &request, run_id);
    }
    let ctx = ctx.ok_or_else(|| Error::Software("command run without configuration".into()))?;
    match &cli.command {
        Command::AuditVerify(_) | Command::Approve(_) => unreachable!("handled above"),
        Command::Init(_) => workflow::init::init(ctx),
        Command::Rotate(args) if args.all_due => workflow::batch::rotate_all_due(ctx),
        Command::Rotate(args) => {
            let request = RotateRequest {
                domain: args.domain.clone().unwrap_or_default(),
                force: args.force,
                dry_run: args.dry_run,
                emergency: args.emergency,
                reason: args.reason.clone(),
                approval: args.approval.clone(),
            };
            workflow::rotate::rotate(ctx, &request)
        }
        Command::Status(args) if args.pools => workflow::access::pool_status(ctx),
        Command::Status(args) => workflow::status::status(ctx, args.domain.as_deref()),
        Command::Verify(args) => {
            let request = VerifyRequest {
                domains: args.domain.clone(),
                fail_on_overdue: args.fail_on_overdue,
            };
            workflow::verify::verify(ctx, &request)
        }
        Command::Revoke(args) => {
            let request = RevokeRequest {
                domain: args.domain.clone(),
                version: args.version,
                reason: args.reason.clone(),
                emergency: args.emergency,
                destroy: args.destroy,
                approval: args.approval.clone(),
            };
            workflow::revoke::revoke(ctx, &request)
        }
    }
}

/// Turns a clap error into keyrot's usage error, keeping clap's message.
pub fn usage_error(error: &clap::Error) -> Error {
    // clap starts its message with "error: ", which main's own prefix repeats.
    let text = error.to_string();
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    Error::Usage(text.trim_end().to_string())
}
