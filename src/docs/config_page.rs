//! keyrot.toml(5): every configuration key with its type, default and checks, as
//! `config.rs` parses them. The example at the end is parsed by a test, so it stays
//! a valid configuration.

use roff::{Roff, bold, italic, roman};

/// A complete configuration using every key, shown in EXAMPLE.
pub(crate) const EXAMPLE: &str = r#"[hsm]
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "keyrot"
pin_file = "/etc/keyrot/pin"

[storage]
ledger = "/var/lib/keyrot/ledger.db"
audit_log = "/var/log/keyrot/audit.jsonl"
audit_pubkey = "/var/log/keyrot/audit.pub.pem"
lock_dir = "/run/lock/keyrot"

[log]
dir = "/var/log/keyrot"
level = "info"

[access]
scheduler_users = ["ctmagent"]
emergency_users = ["oncall1"]
approvers = [
  { name = "sec-lead", public_key = "/etc/keyrot/approvers/sec-lead.pem" },
]

[pool]
name = "pool-a"
members = ["pool-a", "pool-b"]

[[domain]]
name = "payments"
key_type = "aes-256"
rotate_every = "90d"
min_interval = "1d"
max_per_day = 3
alert_per_day = 2
keep_deprecated = 2

[[domain]]
name = "signing"
key_type = "ec-p256"
rotate_every = "30d"
"#;

/// One key of a table: its name, its type and default, and what it sets.
struct Key {
    name: &'static str,
    kind: &'static str,
    text: &'static str,
}

const HSM: [Key; 4] = [
    Key {
        name: "module",
        kind: "path, required",
        text: "PKCS#11 module to load, such as /usr/lib/softhsm/libsofthsm2.so.",
    },
    Key {
        name: "token_label",
        kind: "string, required",
        text: "Label of the token that holds the keys, as given to softhsm2-util \
               --init-token. Must not be empty.",
    },
    Key {
        name: "pin_file",
        kind: "path",
        text: "File containing the user PIN; a trailing newline is ignored. It must be owned by the \
               user running keyrot and have no group or other permissions (mode 0600 or \
               0400), otherwise keyrot exits 77 before loading the module.",
    },
    Key {
        name: "pin_env",
        kind: "string",
        text: "Name of an environment variable containing the user PIN. Exactly one of \
               pin_file and pin_env must be set.",
    },
];

const STORAGE: [Key; 4] = [
    Key {
        name: "ledger",
        kind: "path, required",
        text: "SQLite ledger, created by keyrot init.",
    },
    Key {
        name: "audit_log",
        kind: "path, required",
        text: "Hash-chained JSONL audit trail, created by keyrot init.",
    },
    Key {
        name: "lock_dir",
        kind: "path, required",
        text: "Folder for the per-domain lock files, created on first use.",
    },
    Key {
        name: "audit_pubkey",
        kind: "path, default: audit_log with the extension replaced by .pub.pem",
        text: "Where keyrot init exports the audit checkpoint public key as PEM. For \
               audit_log = \"audit.jsonl\" the default is audit.pub.pem.",
    },
];

const LOG: [Key; 2] = [
    Key {
        name: "dir",
        kind: "path, default: none",
        text: "Folder for the diagnostic log, one JSON object per line in \
               keyrot.YYYY-MM-DD.log, a new file each UTC day. Without it keyrot logs only \
               to standard error.",
    },
    Key {
        name: "level",
        kind: "string, default: \"info\"",
        text: "Level of the file log: error, warn, info, debug or trace. The -v option \
               raises it for one run, never lowers it. Standard error shows warnings and \
               errors unless -v or -q is given.",
    },
];

const ACCESS: [Key; 3] = [
    Key {
        name: "scheduler_users",
        kind: "array of strings, default: []",
        text: "Users that may run a scheduled rotate.",
    },
    Key {
        name: "emergency_users",
        kind: "array of strings, default: []",
        text: "Users that may run an emergency rotate or a revoke, with an approval. Root \
               is not implied.",
    },
    Key {
        name: "approvers",
        kind: "array of tables, default: []",
        text: "Who may sign approvals. Each table has name (string) and public_key (path \
               to a P-256 public key in PEM).",
    },
];

const POOL: [Key; 2] = [
    Key {
        name: "name",
        kind: "string, required in [pool]",
        text: "This host's pool. It must be one of members.",
    },
    Key {
        name: "members",
        kind: "array of strings, required in [pool]",
        text: "Every pool, each listed once. Every host computes the owner pool of each \
               domain from this list by rendezvous hashing, so each domain has exactly one \
               owner and a run for a domain this pool does not own exits 77.",
    },
];

const DOMAIN: [Key; 7] = [
    Key {
        name: "name",
        kind: "string, required",
        text: "Domain name: 1 to 64 letters, digits, '.', '_' or '-', starting with a \
               letter or digit, unique in the file. It becomes part of the lock file name \
               and of each key label keyrot/NAME/vN.",
    },
    Key {
        name: "key_type",
        kind: "string, required",
        text: "aes-256, ec-p256 or rsa-3072.",
    },
    Key {
        name: "rotate_every",
        kind: "duration, required",
        text: "Rotation period. A scheduled rotate replaces the active key once it is this \
               old. Must be longer than zero.",
    },
    Key {
        name: "min_interval",
        kind: "duration, default: \"1d\"",
        text: "No rotation sooner than this after the last one, --force included (exit \
               11); emergency rotations are exempt. Must not exceed rotate_every.",
    },
    Key {
        name: "max_per_day",
        kind: "integer, default: 3",
        text: "Rotations allowed in the last 24 hours, emergencies included (exit 11 beyond \
               it). At least 1.",
    },
    Key {
        name: "alert_per_day",
        kind: "integer, default: none",
        text: "Rotations in 24 hours above which an alert event is recorded in the audit \
               trail; must be below max_per_day. Without it no alert is recorded.",
    },
    Key {
        name: "keep_deprecated",
        kind: "integer, default: 2",
        text: "Deprecated keys kept for decryption and verification. Rotate revokes older \
               deprecated keys.",
    },
];

fn heading(roff: &mut Roff, title: &str) {
    roff.control("SH", [title]);
}

fn paragraph(roff: &mut Roff, text: &str) {
    roff.control("PP", [] as [&str; 0]);
    roff.text([roman(text)]);
}

fn table(roff: &mut Roff, title: &str, intro: &str, keys: &[Key]) {
    roff.control("SS", [title]);
    roff.text([roman(intro)]);
    for key in keys {
        roff.control("TP", [] as [&str; 0]);
        roff.text([bold(key.name), roman(" ("), italic(key.kind), roman(")")]);
        roff.text([roman(key.text)]);
    }
}

/// Renders the page below `title`, the page's `.TH` line.
pub(super) fn render(title: &str) -> Vec<u8> {
    let mut roff = Roff::new();
    heading(&mut roff, "NAME");
    roff.text([roman("keyrot.toml - configuration file of keyrot")]);
    heading(&mut roff, "SYNOPSIS");
    roff.text([bold(crate::cli::DEFAULT_CONFIG)]);

    heading(&mut roff, "DESCRIPTION");
    paragraph(
        &mut roff,
        "keyrot reads a TOML file named by --config, else by KEYROT_CONFIG, else \
         /etc/keyrot/keyrot.toml. An unknown table or key, a wrong type or a failed check \
         stops every command with exit code 78 and a message naming the file and the key.",
    );
    paragraph(
        &mut roff,
        "Relative paths are resolved against the folder of the configuration file, so a \
         configuration and its ledger can move together. A duration is a string of a whole \
         number and a unit: s (seconds), m (minutes), h (hours), d (days) or w (weeks), \
         such as \"45s\", \"12h\" or \"90d\"; it may not exceed 10000 years.",
    );

    heading(&mut roff, "TABLES");
    table(
        &mut roff,
        "[hsm]",
        "Required. The PKCS#11 module and token.",
        &HSM,
    );
    table(
        &mut roff,
        "[storage]",
        "Required. Where the ledger, the audit trail and the locks live.",
        &STORAGE,
    );
    table(&mut roff, "[log]", "Optional. The diagnostic log.", &LOG);
    table(
        &mut roff,
        "[access]",
        "Optional. Who may run which command, and who may approve emergencies.",
        &ACCESS,
    );
    table(
        &mut roff,
        "[pool]",
        "Optional. Sharding of domains across host pools; without it this host owns \
         every domain.",
        &POOL,
    );
    table(
        &mut roff,
        "[[domain]]",
        "One table per key domain; none is required, but rotate needs the named domain.",
        &DOMAIN,
    );

    heading(&mut roff, "EXAMPLE");
    roff.control("PP", [] as [&str; 0]);
    roff.control("EX", [] as [&str; 0]);
    for line in EXAMPLE.lines() {
        roff.text([roman(line)]);
    }
    roff.control("EE", [] as [&str; 0]);
    heading(&mut roff, "SEE ALSO");
    roff.text([roman("keyrot(1)")]);

    // The title goes right after the apostrophe preamble that `render` starts with.
    let preamble = Roff::new().render();
    let text = roff.render();
    let body = text.strip_prefix(&preamble).unwrap_or(&text);
    format!("{preamble}{title}{body}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn example_is_valid_config() {
        let config = Config::parse(std::path::Path::new("/etc/keyrot/keyrot.toml"), EXAMPLE)
            .unwrap_or_else(|e| panic!("EXAMPLE in keyrot.toml(5) is invalid: {e}"));
        assert_eq!(config.domains.len(), 2);
        assert!(config.pool.is_some());
        assert_eq!(config.access.approvers.len(), 1);
    }

    #[test]
    fn example_uses_every_documented_key() {
        for key in HSM.iter().filter(|k| k.name != "pin_env") {
            assert!(EXAMPLE.contains(&format!("{} =", key.name)), "{}", key.name);
        }
        for keys in [&STORAGE[..], &LOG, &ACCESS, &POOL, &DOMAIN] {
            for key in keys {
                assert!(EXAMPLE.contains(&format!("{} =", key.name)), "{}", key.name);
            }
        }
    }

    #[test]
    fn defaults_match_config() {
        let minimal = "[hsm]\nmodule = \"m.so\"\ntoken_label = \"t\"\npin_file = \"pin\"\n\
                       [storage]\nledger = \"l.db\"\naudit_log = \"audit.jsonl\"\nlock_dir = \"locks\"\n\
                       [[domain]]\nname = \"d\"\nkey_type = \"aes-256\"\nrotate_every = \"90d\"\n";
        let config =
            Config::parse(std::path::Path::new("/etc/keyrot/keyrot.toml"), minimal).unwrap();
        let domain = &config.domains[0];
        assert_eq!(domain.min_interval.to_string(), "1d");
        assert_eq!(domain.max_per_day, 3);
        assert_eq!(domain.alert_per_day, None);
        assert_eq!(domain.keep_deprecated, 2);
        assert_eq!(config.log.level, "info");
        assert_eq!(config.log.dir, None);
        assert_eq!(
            config.storage.audit_pubkey,
            std::path::PathBuf::from("/etc/keyrot/audit.pub.pem")
        );
        assert!(config.pool.is_none());
        assert!(config.access.scheduler_users.is_empty());
    }
}
