//! Workflows: the order of steps, the locks and the transaction boundaries of every
//! command. Workflows call the HSM, ledger and audit layers; those layers never call
//! each other.

pub mod access;
pub mod approve;
pub mod audit_verify;
pub mod batch;
pub mod init;
pub mod journal;
pub mod lock;
pub mod outcome;
pub mod revoke;
pub mod rotate;
pub mod session;
pub mod status;
pub mod verify;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, SecondsFormat, Utc};

use crate::audit::Actor;
use crate::config::Config;
use crate::error::{Error, Result};

pub use outcome::{Outcome, OutputFormat};

/// Everything a workflow needs from the command line and the environment.
pub struct Context {
    pub config: Config,
    pub run_id: String,
    pub actor: Actor,
    pub stop: StopFlag,
}

impl Context {
    pub fn new(config: Config, run_id: String) -> Context {
        Context::with_stop(config, run_id, StopFlag::default())
    }

    /// Builds a context whose workflows poll `stop`, usually the flag whose signal
    /// handlers `main` installed.
    pub fn with_stop(config: Config, run_id: String, stop: StopFlag) -> Context {
        Context {
            config,
            run_id,
            actor: Actor::current(),
            stop,
        }
    }

    /// Current time in microseconds since the Unix epoch, UTC.
    pub fn now(&self) -> i64 {
        now_micros()
    }

    /// Returns `Error::Interrupted` if SIGTERM or SIGINT arrived; called between steps.
    pub fn check_stop(&self, step: &str) -> Result<()> {
        match self.stop.signal() {
            Some(signal) => Err(Error::Interrupted {
                signal: signal.to_string(),
                step: step.to_string(),
                run_id: self.run_id.clone(),
            }),
            None => Ok(()),
        }
    }
}

/// Stop request raised by the SIGTERM and SIGINT handlers. Workflows poll it only at
/// step boundaries, so an HSM call in flight finishes first. A second signal of the
/// same kind terminates the process at once (the default action).
#[derive(Clone, Default)]
pub struct StopFlag {
    term: Arc<AtomicBool>,
    int: Arc<AtomicBool>,
}

impl StopFlag {
    /// Installs the SIGTERM and SIGINT handlers that raise this flag.
    pub fn install(&self) -> std::io::Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        for (signal, flag) in [(SIGTERM, &self.term), (SIGINT, &self.int)] {
            // Registered first, so it reads the flag before this signal sets it.
            signal_hook::flag::register_conditional_default(signal, Arc::clone(flag))?;
            signal_hook::flag::register(signal, Arc::clone(flag))?;
        }
        // A paused failpoint polls the installed flag, so a signal ends the pause.
        let _ = INSTALLED_STOP.set(self.clone());
        Ok(())
    }

    /// Name of the signal that asked the run to stop, if one arrived.
    pub fn signal(&self) -> Option<&'static str> {
        if self.term.load(Ordering::SeqCst) {
            Some("SIGTERM")
        } else if self.int.load(Ordering::SeqCst) {
            Some("SIGINT")
        } else {
            None
        }
    }
}

/// Current time in microseconds since the Unix epoch.
///
/// Builds with the `failpoints` feature read `KEYROT_TEST_NOW` (RFC 3339) instead,
/// so tests can move the clock; release builds have no such hook.
pub fn now_micros() -> i64 {
    #[cfg(feature = "failpoints")]
    if let Ok(text) = std::env::var("KEYROT_TEST_NOW")
        && let Ok(time) = DateTime::parse_from_rfc3339(&text)
    {
        return time.timestamp_micros();
    }
    Utc::now().timestamp_micros()
}

/// Formats microseconds since the epoch as RFC 3339 UTC with six fractional digits.
pub fn format_time(micros: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Formats microseconds since the epoch as RFC 3339 UTC to the second.
pub fn format_time_seconds(micros: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The stop flag whose handlers [`StopFlag::install`] registered, for [`failpoint`].
static INSTALLED_STOP: OnceLock<StopFlag> = OnceLock::new();

/// Every failpoint name, in the order a run meets them. `KEYROT_FAILPOINT` accepts
/// these names; the crash tests iterate over this list.
///
/// - `rotate.*`: rotation steps, shared by `rotate` and `revoke --emergency`.
/// - `revoke.*`: the revoke steps after the rotation part, or on their own.
/// - `destroy.*`: the steps of `revoke --destroy`.
/// - `journal.before_head`: an audit line is synced but the ledger head not updated.
/// - `audit.*`: inside the audit append; see `audit::failpoint`. These abort the
///   process (SIGABRT) at the first append of the run and take no `=pause`.
pub const FAILPOINTS: [&str; 17] = [
    "rotate.after_intent",
    "rotate.after_generate",
    "rotate.after_self_test",
    "rotate.after_switch",
    "rotate.after_converge",
    "rotate.after_finish",
    "revoke.after_intent",
    "revoke.after_revoke",
    "revoke.after_converge",
    "revoke.after_finish",
    "destroy.after_intent",
    "destroy.after_hsm",
    "destroy.after_ledger",
    "journal.before_head",
    "audit.partial_write",
    "audit.before_sync",
    "audit.after_write",
];

/// Crash hook for the recovery tests: when `KEYROT_FAILPOINT` names this point the
/// process kills itself with SIGKILL. With `NAME=pause` it sleeps (holding its locks)
/// for up to ten minutes so a test can act while it waits; SIGTERM or SIGINT ends the
/// pause, and the caller's next `check_stop` reports the signal.
///
/// Compiled only with the `failpoints` feature; release builds do nothing here.
#[inline]
pub fn failpoint(_name: &str) {
    #[cfg(feature = "failpoints")]
    {
        debug_assert!(FAILPOINTS.contains(&_name), "unlisted failpoint {_name}");
        if let Ok(value) = std::env::var("KEYROT_FAILPOINT") {
            let (point, action) = value.split_once('=').unwrap_or((value.as_str(), "kill"));
            if point == _name {
                if action == "pause" {
                    pause_until_stopped(std::time::Duration::from_secs(600));
                } else {
                    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
    }
}

/// Sleeps in 20 ms slices until `limit` passes or a stop signal arrives.
#[cfg(feature = "failpoints")]
fn pause_until_stopped(limit: std::time::Duration) {
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        if INSTALLED_STOP
            .get()
            .is_some_and(|flag| flag.signal().is_some())
        {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Generates a run id for a manual run: `manual-<UTC time>-<random>`.
pub fn generate_run_id() -> String {
    format!(
        "manual-{}-{:08x}",
        Utc::now().format("%Y%m%dT%H%M%SZ"),
        rand::random::<u32>()
    )
}

/// Checks a run id given on the command line or in `KEYROT_RUN_ID`.
pub fn validate_run_id(run_id: &str) -> Result<()> {
    let valid = !run_id.is_empty()
        && run_id.len() <= 64
        && run_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'));
    if valid {
        Ok(())
    } else {
        // An overlong id is shown cut, so the message stays one readable line.
        let shown: String = run_id.chars().take(70).collect();
        let cut = if shown.len() < run_id.len() {
            "…"
        } else {
            ""
        };
        Err(Error::Usage(format!(
            "invalid run id {shown:?}{cut}: use 1 to 64 letters, digits, '.', '_', '-' or ':'"
        )))
    }
}
