//! Configuration file: parsing, validation and the checked settings every command uses.
//!
//! Relative paths in the file are resolved against the file's own folder, so a
//! configuration and its ledger can move together. This module reads files but
//! never writes one.

use std::collections::BTreeSet;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use crate::model::KeyType;

/// Invalid, missing or unsafe configuration, named with the file and the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path} not found\nhint: pass --config PATH or set KEYROT_CONFIG")]
    Missing { path: PathBuf },
    #[error("failed to read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration in {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("invalid configuration in {path}: {key}: {message}\nhint: {hint}")]
    Value {
        path: PathBuf,
        key: String,
        message: String,
        hint: String,
    },
}

/// Length of time written as a whole number and a unit: `45s`, `30m`, `12h`, `90d`, `2w`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration {
    seconds: i64,
}

impl Duration {
    pub fn from_seconds(seconds: i64) -> Duration {
        Duration { seconds }
    }

    pub fn seconds(self) -> i64 {
        self.seconds
    }

    pub fn micros(self) -> i64 {
        self.seconds.saturating_mul(1_000_000)
    }

    /// Parses `<whole number><unit>` with unit s, m, h, d or w.
    pub fn parse(text: &str) -> Result<Duration, String> {
        let invalid = || {
            format!(
                "invalid duration {text:?} (expected a whole number followed by s, m, h, d or w, such as 90d)"
            )
        };
        let unit_at = text
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(invalid)?;
        let (number, unit) = text.split_at(unit_at);
        let count: i64 = number.parse().map_err(|_| invalid())?;
        let unit_seconds = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            "w" => 604_800,
            _ => return Err(invalid()),
        };
        let seconds = count.checked_mul(unit_seconds).ok_or_else(invalid)?;
        // Ten thousand years is far beyond any sensible rotation period and keeps
        // every later microsecond sum inside i64.
        if seconds > 10_000 * 366 * 86_400 {
            return Err(format!(
                "invalid duration {text:?}: longer than 10000 years"
            ));
        }
        Ok(Duration { seconds })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.seconds;
        for (unit, size) in [("w", 604_800), ("d", 86_400), ("h", 3_600), ("m", 60)] {
            if s != 0 && s % size == 0 {
                return write!(f, "{}{unit}", s / size);
            }
        }
        write!(f, "{s}s")
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Duration::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    hsm: RawHsm,
    storage: RawStorage,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    access: RawAccess,
    pool: Option<RawPool>,
    #[serde(default)]
    domain: Vec<RawDomain>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHsm {
    module: PathBuf,
    token_label: String,
    pin_file: Option<PathBuf>,
    pin_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    ledger: PathBuf,
    audit_log: PathBuf,
    lock_dir: PathBuf,
    audit_pubkey: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    dir: Option<PathBuf>,
    level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccess {
    #[serde(default)]
    scheduler_users: Vec<String>,
    #[serde(default)]
    emergency_users: Vec<String>,
    #[serde(default)]
    approvers: Vec<RawApprover>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApprover {
    name: String,
    public_key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    name: String,
    members: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDomain {
    name: String,
    key_type: KeyType,
    rotate_every: Duration,
    #[serde(default = "default_min_interval")]
    min_interval: Duration,
    #[serde(default = "default_max_per_day")]
    max_per_day: u32,
    alert_per_day: Option<u32>,
    #[serde(default = "default_keep_deprecated")]
    keep_deprecated: u32,
}

fn default_min_interval() -> Duration {
    Duration::from_seconds(86_400)
}

fn default_max_per_day() -> u32 {
    3
}

fn default_keep_deprecated() -> u32 {
    2
}

/// Source of the PIN. The PIN itself is read only when the HSM is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinSource {
    File(PathBuf),
    Env(String),
}

#[derive(Debug, Clone)]
pub struct HsmSettings {
    pub module: PathBuf,
    pub token_label: String,
    pub pin: PinSource,
}

#[derive(Debug, Clone)]
pub struct StorageSettings {
    pub ledger: PathBuf,
    pub audit_log: PathBuf,
    pub lock_dir: PathBuf,
    /// Destination of the checkpoint public key PEM that `init` exports.
    pub audit_pubkey: PathBuf,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub dir: Option<PathBuf>,
    pub level: String,
}

#[derive(Debug, Clone)]
pub struct Approver {
    pub name: String,
    pub public_key: PathBuf,
}

#[derive(Debug, Clone, Default)]
pub struct AccessSettings {
    pub scheduler_users: Vec<String>,
    pub emergency_users: Vec<String>,
    pub approvers: Vec<Approver>,
}

#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub name: String,
    pub members: Vec<String>,
}

/// Rotation policy of one key domain.
#[derive(Debug, Clone)]
pub struct DomainSettings {
    pub name: String,
    pub key_type: KeyType,
    pub rotate_every: Duration,
    pub min_interval: Duration,
    pub max_per_day: u32,
    /// Rotations a day above which an alert event is recorded; `None` disables it.
    pub alert_per_day: Option<u32>,
    pub keep_deprecated: u32,
}

/// Checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub hsm: HsmSettings,
    pub storage: StorageSettings,
    pub log: LogSettings,
    pub access: AccessSettings,
    pub pool: Option<PoolSettings>,
    pub domains: Vec<DomainSettings>,
}

impl Config {
    /// Reads and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ConfigError::Missing {
                    path: path.to_path_buf(),
                });
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Config::parse(path, &text)
    }

    /// Validates configuration `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| -> PathBuf {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let value_error = |key: &str, message: String, hint: &str| ConfigError::Value {
            path: path.to_path_buf(),
            key: key.to_string(),
            message,
            hint: hint.to_string(),
        };

        let pin = match (raw.hsm.pin_file, raw.hsm.pin_env) {
            (Some(file), None) => PinSource::File(resolve(&file)),
            (None, Some(var)) => PinSource::Env(var),
            _ => {
                return Err(value_error(
                    "hsm",
                    "exactly one of pin_file and pin_env must be set".into(),
                    "set pin_file = \"/etc/keyrot/pin\" (mode 0600) or pin_env = \"VARIABLE\"",
                ));
            }
        };
        if raw.hsm.token_label.is_empty() {
            return Err(value_error(
                "hsm.token_label",
                "must not be empty".into(),
                "set it to the label given to softhsm2-util --init-token",
            ));
        }

        let audit_log = resolve(&raw.storage.audit_log);
        let audit_pubkey = match raw.storage.audit_pubkey {
            Some(p) => resolve(&p),
            None => audit_log.with_extension("pub.pem"),
        };
        let storage = StorageSettings {
            ledger: resolve(&raw.storage.ledger),
            audit_log,
            lock_dir: resolve(&raw.storage.lock_dir),
            audit_pubkey,
        };

        let level = raw.log.level.unwrap_or_else(|| "info".into());
        if !["error", "warn", "info", "debug", "trace"].contains(&level.as_str()) {
            return Err(value_error(
                "log.level",
                format!("invalid level {level:?}"),
                "use one of error, warn, info, debug, trace",
            ));
        }
        let log = LogSettings {
            dir: raw.log.dir.map(|d| resolve(&d)),
            level,
        };

        let access = AccessSettings {
            scheduler_users: raw.access.scheduler_users,
            emergency_users: raw.access.emergency_users,
            approvers: raw
                .access
                .approvers
                .into_iter()
                .map(|a| Approver {
                    name: a.name,
                    public_key: resolve(&a.public_key),
                })
                .collect(),
        };

        let pool = match raw.pool {
            None => None,
            Some(pool) => {
                if !pool.members.contains(&pool.name) {
                    return Err(value_error(
                        "pool.members",
                        format!("does not contain this host's pool {:?}", pool.name),
                        "list every pool in members, this one included",
                    ));
                }
                let unique: BTreeSet<_> = pool.members.iter().collect();
                if unique.len() != pool.members.len() {
                    return Err(value_error(
                        "pool.members",
                        "lists a pool twice".into(),
                        "list each pool once",
                    ));
                }
                Some(PoolSettings {
                    name: pool.name,
                    members: pool.members,
                })
            }
        };

        let mut names = BTreeSet::new();
        let mut domains = Vec::with_capacity(raw.domain.len());
        for d in raw.domain {
            let key = format!("domain {:?}", d.name);
            if let Err(message) = validate_domain_name(&d.name) {
                return Err(value_error(
                    &key,
                    message,
                    "use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit",
                ));
            }
            if !names.insert(d.name.clone()) {
                return Err(value_error(
                    &key,
                    "is defined twice".into(),
                    "keep one [[domain]] table per name",
                ));
            }
            if d.rotate_every.seconds() <= 0 {
                return Err(value_error(
                    &format!("{key}.rotate_every"),
                    "must be longer than zero".into(),
                    "use a period such as 90d",
                ));
            }
            if d.min_interval > d.rotate_every {
                return Err(value_error(
                    &format!("{key}.min_interval"),
                    format!(
                        "{} is longer than rotate_every {}",
                        d.min_interval, d.rotate_every
                    ),
                    "min_interval must not exceed rotate_every",
                ));
            }
            if d.max_per_day == 0 {
                return Err(value_error(
                    &format!("{key}.max_per_day"),
                    "must be at least 1".into(),
                    "allow at least one rotation a day",
                ));
            }
            if let Some(alert) = d.alert_per_day
                && alert >= d.max_per_day
            {
                return Err(value_error(
                    &format!("{key}.alert_per_day"),
                    format!(
                        "{alert} is not below max_per_day {}, so the alert could never fire",
                        d.max_per_day
                    ),
                    "set alert_per_day below max_per_day, or remove it",
                ));
            }
            domains.push(DomainSettings {
                name: d.name,
                key_type: d.key_type,
                rotate_every: d.rotate_every,
                min_interval: d.min_interval,
                max_per_day: d.max_per_day,
                alert_per_day: d.alert_per_day,
                keep_deprecated: d.keep_deprecated,
            });
        }

        Ok(Config {
            path: path.to_path_buf(),
            hsm: HsmSettings {
                module: resolve(&raw.hsm.module),
                token_label: raw.hsm.token_label,
                pin,
            },
            storage,
            log,
            access,
            pool,
            domains,
        })
    }

    /// Looks up a domain by name.
    pub fn domain(&self, name: &str) -> Option<&DomainSettings> {
        self.domains.iter().find(|d| d.name == name)
    }

    /// Names of every configured domain, for error hints.
    pub fn domain_names(&self) -> String {
        let names: Vec<&str> = self.domains.iter().map(|d| d.name.as_str()).collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }
}

/// Checks a domain name: it becomes part of a lock file name and an HSM label.
pub fn validate_domain_name(name: &str) -> Result<(), String> {
    let valid_start = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let valid_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if name.is_empty() || name.len() > 64 || !valid_start || !valid_chars {
        return Err(format!("invalid domain name {name:?}"));
    }
    Ok(())
}

/// Reads the PIN from its source after checking that a PIN file is private to its owner.
///
/// Returns `Err` with a message naming the file and its mode; the PIN never appears in it.
pub fn read_pin(source: &PinSource) -> Result<String, PinError> {
    match source {
        PinSource::Env(var) => match std::env::var(var) {
            Ok(pin) if !pin.is_empty() => Ok(pin),
            _ => Err(PinError::Missing(format!(
                "environment variable {var} named by hsm.pin_env is not set"
            ))),
        },
        PinSource::File(path) => {
            let meta = match std::fs::metadata(path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(PinError::Missing(format!(
                        "PIN file {} not found",
                        path.display()
                    )));
                }
                Err(e) => {
                    return Err(PinError::Unreadable(format!(
                        "failed to read PIN file {}: {e}",
                        path.display()
                    )));
                }
            };
            let mode = meta.mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(PinError::Insecure(format!(
                    "PIN file {} has mode {mode:04o}, readable by group or others\nhint: keep the PIN in a file of its own, owned by the user that runs keyrot, with chmod 600",
                    path.display()
                )));
            }
            let uid = nix::unistd::geteuid().as_raw();
            if meta.uid() != uid {
                return Err(PinError::Insecure(format!(
                    "PIN file {} is owned by uid {}, not by the running user (uid {uid})\nhint: chown the file to the user that runs keyrot",
                    path.display(),
                    meta.uid()
                )));
            }
            let text = std::fs::read_to_string(path).map_err(|e| {
                PinError::Unreadable(format!("failed to read PIN file {}: {e}", path.display()))
            })?;
            let pin = text.trim_end_matches(['\n', '\r']).to_string();
            if pin.is_empty() {
                return Err(PinError::Missing(format!(
                    "PIN file {} is empty",
                    path.display()
                )));
            }
            Ok(pin)
        }
    }
}

/// Reason the PIN could not be read. Messages name the source, never the PIN.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("{0}")]
    Missing(String),
    #[error("{0}")]
    Unreadable(String),
    #[error("{0}")]
    Insecure(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[hsm]
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "keyrot"
pin_file = "pin"

[storage]
ledger = "ledger.db"
audit_log = "audit.jsonl"
lock_dir = "locks"

[[domain]]
name = "payments"
key_type = "aes-256"
rotate_every = "90d"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/keyrot/keyrot.toml"), text)
    }

    #[test]
    fn duration_units_parse() {
        assert_eq!(Duration::parse("45s").unwrap().seconds(), 45);
        assert_eq!(Duration::parse("30m").unwrap().seconds(), 1_800);
        assert_eq!(Duration::parse("12h").unwrap().seconds(), 43_200);
        assert_eq!(Duration::parse("90d").unwrap().seconds(), 7_776_000);
        assert_eq!(Duration::parse("2w").unwrap().seconds(), 1_209_600);
    }

    #[test]
    fn duration_rejects_bad_text() {
        for text in [
            "",
            "d",
            "90",
            "1.5d",
            "-1d",
            "9x",
            "90 d",
            "99999999999999999999d",
        ] {
            assert!(Duration::parse(text).is_err(), "{text:?} parsed");
        }
    }

    #[test]
    fn duration_display_round_trip() {
        for text in ["45s", "30m", "12h", "90d", "2w"] {
            assert_eq!(Duration::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn minimal_config_resolves_paths() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.storage.ledger, Path::new("/etc/keyrot/ledger.db"));
        assert_eq!(
            config.storage.audit_pubkey,
            Path::new("/etc/keyrot/audit.pub.pem")
        );
        assert_eq!(
            config.hsm.pin,
            PinSource::File(PathBuf::from("/etc/keyrot/pin"))
        );
        let domain = config.domain("payments").unwrap();
        assert_eq!(domain.min_interval.seconds(), 86_400);
        assert_eq!(domain.keep_deprecated, 2);
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let text = MINIMAL.replace(
            "lock_dir = \"locks\"",
            "lock_dir = \"locks\"\nlockdir = \"x\"",
        );
        let message = parse(&text).unwrap_err().to_string();
        assert!(message.contains("/etc/keyrot/keyrot.toml"), "{message}");
        assert!(message.contains("lockdir"), "{message}");
        assert!(message.contains("line 11"), "{message}");
    }

    #[test]
    fn unknown_key_type_is_rejected() {
        let message = parse(&MINIMAL.replace("aes-256", "des"))
            .unwrap_err()
            .to_string();
        assert!(message.contains("des"), "{message}");
    }

    #[test]
    fn bad_duration_is_rejected() {
        let message = parse(&MINIMAL.replace("90d", "ninety days"))
            .unwrap_err()
            .to_string();
        assert!(message.contains("invalid duration"), "{message}");
    }

    #[test]
    fn unsafe_domain_name_is_rejected() {
        let message = parse(&MINIMAL.replace("\"payments\"", "\"../etc\""))
            .unwrap_err()
            .to_string();
        assert!(message.contains("invalid domain name"), "{message}");
    }

    #[test]
    fn both_pin_sources_are_rejected() {
        let text = MINIMAL.replace(
            "pin_file = \"pin\"",
            "pin_file = \"pin\"\npin_env = \"PIN\"",
        );
        assert!(parse(&text).is_err());
    }

    #[test]
    fn unreachable_alert_is_rejected() {
        let text = MINIMAL.replace(
            "rotate_every = \"90d\"",
            "rotate_every = \"90d\"\nmax_per_day = 3\nalert_per_day = 3",
        );
        let message = parse(&text).unwrap_err().to_string();
        assert!(message.contains("alert_per_day"), "{message}");
    }
}
