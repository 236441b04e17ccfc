//! Ledger schema and its forward migrations, versioned with `PRAGMA user_version`.

use std::path::Path;

use rusqlite::Connection;

use super::{LedgerError, Result};

/// Migrations in order; entry `i` moves the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE keys (
    domain        TEXT    NOT NULL,
    version       INTEGER NOT NULL CHECK (version >= 1),
    key_id        TEXT    NOT NULL UNIQUE,
    label         TEXT    NOT NULL,
    key_type      TEXT    NOT NULL,
    state         TEXT    NOT NULL
        CHECK (state IN ('pending', 'active', 'deprecated', 'revoked', 'destroyed')),
    created_at    INTEGER NOT NULL,
    activated_at  INTEGER,
    deprecated_at INTEGER,
    revoked_at    INTEGER,
    destroyed_at  INTEGER,
    check_value   TEXT,
    reason        TEXT,
    PRIMARY KEY (domain, version)
);
-- At most one active key per domain, enforced by SQLite itself.
CREATE UNIQUE INDEX keys_one_active ON keys (domain) WHERE state = 'active';

CREATE TABLE key_history (
    id         INTEGER PRIMARY KEY,
    domain     TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    from_state TEXT,
    to_state   TEXT    NOT NULL,
    run_id     TEXT    NOT NULL,
    at         INTEGER NOT NULL
);

CREATE TABLE runs (
    run_id         TEXT    NOT NULL,
    domain         TEXT    NOT NULL,
    kind           TEXT    NOT NULL CHECK (kind IN ('rotate', 'revoke')),
    step           TEXT    NOT NULL,
    new_version    INTEGER,
    old_version    INTEGER,
    target_version INTEGER,
    actor          TEXT    NOT NULL,
    emergency      INTEGER NOT NULL DEFAULT 0,
    reason         TEXT,
    started_at     INTEGER NOT NULL,
    finished_at    INTEGER,
    outcome        TEXT,
    result         TEXT,
    PRIMARY KEY (run_id, domain)
);
CREATE INDEX runs_by_domain ON runs (domain, started_at);

CREATE TABLE approvals_used (
    nonce    TEXT PRIMARY KEY,
    domain   TEXT    NOT NULL,
    action   TEXT    NOT NULL,
    approver TEXT    NOT NULL,
    run_id   TEXT    NOT NULL,
    used_at  INTEGER NOT NULL
);

CREATE TABLE checkpoints (
    seq       INTEGER PRIMARY KEY,
    size      INTEGER NOT NULL,
    head      TEXT    NOT NULL,
    signature TEXT    NOT NULL,
    signed_at INTEGER NOT NULL
);

CREATE TABLE audit_head (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    seq             INTEGER NOT NULL,
    hash            TEXT    NOT NULL,
    len             INTEGER NOT NULL,
    log_id          TEXT    NOT NULL,
    key_fingerprint TEXT    NOT NULL
);
"#];

/// Schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Applies every migration the file has not seen, each in its own transaction.
pub fn migrate(conn: &Connection, path: &Path) -> Result<()> {
    let sqlite = |action: &'static str| {
        move |source| LedgerError::Sqlite {
            path: path.to_path_buf(),
            action,
            source,
        }
    };
    let found: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(sqlite("read schema version"))?;
    if found > SCHEMA_VERSION {
        return Err(LedgerError::TooNew {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        // user_version cannot be bound as a parameter, so it is formatted in; it is
        // a number this code computed.
        let batch = format!(
            "BEGIN IMMEDIATE; {sql}; PRAGMA user_version = {}; COMMIT;",
            index + 1
        );
        conn.execute_batch(&batch)
            .map_err(sqlite("migrate schema"))?;
    }
    Ok(())
}
