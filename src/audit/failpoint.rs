//! Crash hooks for tests, compiled only with the `failpoints` feature. Setting
//! `KEYROT_FAILPOINT` to one of the names below makes the writer abort the process at
//! that point of an append:
//!
//! - `audit.partial_write`: after writing the first half of the line and syncing it.
//! - `audit.before_sync`: after writing the whole line, before `fdatasync`.
//! - `audit.after_write`: after `fdatasync`, before the new head is returned, so the
//!   ledger never learns of the line.

pub(crate) const PARTIAL_WRITE: &str = "audit.partial_write";
pub(crate) const BEFORE_SYNC: &str = "audit.before_sync";
pub(crate) const AFTER_WRITE: &str = "audit.after_write";

/// Returns whether `KEYROT_FAILPOINT` names `name`.
pub(crate) fn is_set(name: &str) -> bool {
    std::env::var("KEYROT_FAILPOINT").is_ok_and(|value| value == name)
}
