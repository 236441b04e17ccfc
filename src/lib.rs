//! keyrot rotates keys held in a PKCS#11 HSM, records every key state in a SQLite
//! ledger and every event in a hash-chained audit trail.
//!
//! Layers point one way: `cli` → `workflow` → {`hsm`, `ledger`, `audit`}. Only `hsm`
//! imports cryptoki and only `ledger` imports rusqlite.

pub mod approval;
pub mod audit;
pub mod cli;
pub mod config;
pub mod docs;
pub mod error;
pub mod hsm;
pub mod ledger;
pub mod logging;
pub mod model;
pub mod pem;
pub mod pool;
pub mod workflow;
