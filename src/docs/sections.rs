//! Hand-written sections of the command pages: result line, exit status, environment,
//! files, signals and examples. Subcommands are never listed here: the generated
//! SYNOPSIS, SUBCOMMANDS and SEE ALSO sections follow the clap definition.

use roff::{Roff, bold, italic, line_break, roman};

use crate::cli::DEFAULT_CONFIG;
use crate::error::code;

/// Meaning of an exit code to an operator and to Control-M.
struct ExitStatus {
    code: u8,
    meaning: &'static str,
    control_m: &'static str,
    rerun: &'static str,
}

/// One entry per code in `code::ALL`; `exit_status` panics when one is missing, so
/// a new code cannot reach the pages undocumented.
const EXIT_STATUSES: [ExitStatus; 14] = [
    ExitStatus {
        code: code::OK,
        meaning: "Done. Also returned when the domain is not due yet, and when this run id \
                  already completed (the recorded result is replayed).",
        control_m: "Ended OK.",
        rerun: "yes.",
    },
    ExitStatus {
        code: code::LOCKED,
        meaning: "Another live run holds the domain lock. The message names its pid, host \
                  and run id.",
        control_m: "Rerun.",
        rerun: "yes, nothing was touched.",
    },
    ExitStatus {
        code: code::RATE_LIMITED,
        meaning: "Rejected by the domain's min_interval or max_per_day budget.",
        control_m: "NOTOK, alert.",
        rerun: "no; the limit still holds until time passes.",
    },
    ExitStatus {
        code: code::APPROVAL_REQUIRED,
        meaning: "An emergency action without a valid, unused approval.",
        control_m: "NOTOK.",
        rerun: "no.",
    },
    ExitStatus {
        code: code::INCONSISTENT,
        meaning: "A precondition or postcondition failed, or drift between ledger, HSM and \
                  audit trail was found. The run stopped and changed nothing further.",
        control_m: "NOTOK, page.",
        rerun: "never automatically; a person must look at the message first.",
    },
    ExitStatus {
        code: code::AUDIT_INVALID,
        meaning: "The audit trail failed verification. The message names the first failing \
                  line.",
        control_m: "NOTOK, page.",
        rerun: "pointless: verification is read-only and returns the same result.",
    },
    ExitStatus {
        code: code::USAGE,
        meaning: "Invalid command line, such as an unknown option, a missing argument or an \
                  unknown domain. Clap's own exit code 2 is mapped to 64.",
        control_m: "NOTOK.",
        rerun: "no.",
    },
    ExitStatus {
        code: code::NOINPUT,
        meaning: "A named input file does not exist: the ledger before keyrot init, an audit \
                  file, an approval or a key.",
        control_m: "NOTOK.",
        rerun: "no.",
    },
    ExitStatus {
        code: code::UNAVAILABLE,
        meaning: "The PKCS#11 module, slot or token is unreachable. Nothing changed, or the \
                  step in progress is recorded in the ledger so that the next run finishes it.",
        control_m: "Rerun.",
        rerun: "yes.",
    },
    ExitStatus {
        code: code::SOFTWARE,
        meaning: "Internal error or panic. A panic's exit code 101 is mapped to 70.",
        control_m: "NOTOK.",
        rerun: "no.",
    },
    ExitStatus {
        code: code::IOERR,
        meaning: "Reading or writing a file failed for a reason other than a full disk.",
        control_m: "NOTOK.",
        rerun: "after a person has looked at the message.",
    },
    ExitStatus {
        code: code::TEMPFAIL,
        meaning: "Interrupted by SIGTERM or SIGINT at a safe point, ledger busy past its \
                  timeout, or disk full.",
        control_m: "Rerun.",
        rerun: "yes.",
    },
    ExitStatus {
        code: code::NOPERM,
        meaning: "Not permitted: the caller is not authorised, this pool does not own the \
                  domain, the token rejected the login, or the PIN file is readable by group \
                  or others.",
        control_m: "NOTOK.",
        rerun: "no.",
    },
    ExitStatus {
        code: code::CONFIG,
        meaning: "The configuration file is missing or invalid. The message names the file \
                  and the key.",
        control_m: "NOTOK.",
        rerun: "no.",
    },
];

fn heading(roff: &mut Roff, title: &str) {
    roff.control("SH", [title]);
}

fn paragraph(roff: &mut Roff, text: &str) {
    roff.control("PP", [] as [&str; 0]);
    roff.text([roman(text)]);
}

/// Writes a tagged paragraph: `term` on its own line, `body` indented below it.
fn item(roff: &mut Roff, term: Vec<roff::Inline>, body: &str) {
    roff.control("TP", [] as [&str; 0]);
    roff.text(term);
    roff.text([roman(body)]);
}

/// Lines shown verbatim, as in a terminal.
fn example(roff: &mut Roff, lines: &[&str]) {
    roff.control("PP", [] as [&str; 0]);
    roff.control("EX", [] as [&str; 0]);
    for line in lines {
        roff.text([roman(*line)]);
    }
    roff.control("EE", [] as [&str; 0]);
}

pub(super) fn output(roff: &mut Roff) {
    heading(roff, "OUTPUT");
    paragraph(
        roff,
        "Every command ends with one result line on standard output, for example:",
    );
    example(
        roff,
        &["KEYROT-RESULT outcome=rotated domain=payments version=4 run_id=00012ab code=0"],
    );
    paragraph(
        roff,
        "With --output json the same fields form one JSON object. A failure reports \
         outcome=error, the error kind and the exit code. The result line never contains \
         a PIN or key material. Errors and warnings go to standard error as short lines \
         starting with \"keyrot:\"; -v shows more detail there, -q shows errors only.",
    );
}

pub(super) fn exit_status(roff: &mut Roff) {
    heading(roff, "EXIT STATUS");
    paragraph(
        roff,
        "The exit code is the contract with the job scheduler. For each code: what it \
         means, the Control-M outcome the shipped job definition assigns to it, and \
         whether running the same job again is safe.",
    );
    for (value, name) in code::ALL {
        let status = EXIT_STATUSES
            .iter()
            .find(|status| status.code == value)
            .unwrap_or_else(|| panic!("exit code {value} ({name}) has no description"));
        roff.control("TP", [] as [&str; 0]);
        roff.text([bold(value.to_string()), roman(" "), bold(name)]);
        roff.text([
            roman(status.meaning),
            line_break(),
            italic("Control-M:"),
            roman(" "),
            roman(status.control_m),
            line_break(),
            italic("Rerun safe:"),
            roman(" "),
            roman(status.rerun),
        ]);
    }
    paragraph(
        roff,
        "keyrot never exits with 1 on purpose: a bare 1 means something outside keyrot \
         failed. A process killed by a second signal ends with that signal and prints no \
         result line.",
    );
}

pub(super) fn subcommand_exit_status(roff: &mut Roff) {
    heading(roff, "EXIT STATUS");
    let codes: Vec<String> = code::ALL
        .iter()
        .map(|(value, name)| format!("{value} {name}"))
        .collect();
    paragraph(
        roff,
        &format!(
            "One of {}. keyrot(1) describes each code, its Control-M outcome and \
             whether a rerun is safe.",
            codes.join(", ")
        ),
    );
}

pub(super) fn environment(roff: &mut Roff) {
    heading(roff, "ENVIRONMENT");
    item(
        roff,
        vec![bold("KEYROT_CONFIG")],
        &format!(
            "Configuration file used when --config is not given. Without either, \
             keyrot reads {DEFAULT_CONFIG}."
        ),
    );
    item(
        roff,
        vec![bold("KEYROT_RUN_ID")],
        "Run id used when --run-id is not given: the idempotency key of the run. A \
         Control-M job passes %%ORDERID, so a rerun of the same order resumes or replays \
         the recorded result instead of rotating twice. 1 to 64 letters, digits, '.', \
         '_', '-' or ':'. Without it, a manual run gets a generated id.",
    );
    item(
        roff,
        vec![bold("SOFTHSM2_CONF")],
        "Read by the SoftHSM2 PKCS#11 module, not by keyrot: the softhsm2.conf file that \
         names the token folder. Other PKCS#11 modules have their own variables.",
    );
    paragraph(
        roff,
        "The variable named by hsm.pin_env in the configuration, when set, contains the \
         user PIN. keyrot never prints it.",
    );
}

pub(super) fn files(roff: &mut Roff) {
    heading(roff, "FILES");
    item(
        roff,
        vec![bold(DEFAULT_CONFIG)],
        "Default configuration file; see keyrot.toml(5). Relative paths inside it are \
         resolved against its folder.",
    );
    item(
        roff,
        vec![roman("hsm.pin_file")],
        "The user PIN; a trailing newline is ignored. It must be owned by the user running keyrot and \
         must not be readable by group or others (mode 0600 or 0400); otherwise keyrot \
         exits 77 before loading the PKCS#11 module.",
    );
    item(
        roff,
        vec![roman("storage.ledger")],
        "SQLite ledger: every key version and state, rotations, approvals used, \
         checkpoints and the audit head. Created by keyrot init with mode 0600.",
    );
    item(
        roff,
        vec![roman("storage.audit_log")],
        "Append-only, hash-chained JSONL audit trail. Check it with keyrot audit-verify.",
    );
    item(
        roff,
        vec![roman("storage.audit_pubkey")],
        "PEM public key of the audit checkpoint key, exported by keyrot init. Audit \
         verification needs this file and no secret.",
    );
    item(
        roff,
        vec![roman("storage.lock_dir"), italic("/DOMAIN"), roman(".lock")],
        "Per-domain lock file, held with flock(2) during a run. It contains the pid, \
         host, run id and start time of the holder.",
    );
    item(
        roff,
        vec![
            roman("log.dir"),
            italic("/keyrot.YYYY-MM-DD"),
            roman(".log"),
        ],
        "Diagnostic log, one JSON object per line, a new file each UTC day. Every line \
         carries run_id, command and domain. Written only when log.dir is set.",
    );
    paragraph(
        roff,
        "keyrot runs with umask 077, so every file it creates is private to its owner.",
    );
}

pub(super) fn signals(roff: &mut Roff) {
    heading(roff, "SIGNALS");
    item(
        roff,
        vec![bold("SIGTERM"), roman(", "), bold("SIGINT")],
        "The run finishes the HSM call in flight, starts no new step, records in the \
         ledger and the audit trail where it stopped, and exits 75. The next run for \
         the same domain completes the rotation.",
    );
    item(
        roff,
        vec![roman("A second SIGTERM or SIGINT")],
        "Terminates the process at once, with no result line. A rotation left half way \
         is finished or abandoned by the next run for the same domain, because each \
         step is recorded in the ledger before it touches the HSM.",
    );
}

pub(super) fn examples(roff: &mut Roff) {
    heading(roff, "EXAMPLES");
    paragraph(
        roff,
        "Create the ledger, the audit trail and the checkpoint key once:",
    );
    example(roff, &["keyrot --config /etc/keyrot/keyrot.toml init"]);
    paragraph(
        roff,
        "The nightly Control-M job; %%DOMAIN and %%ORDERID are Control-M variables:",
    );
    example(
        roff,
        &["keyrot --config /etc/keyrot/keyrot.toml rotate --domain %%DOMAIN --run-id %%ORDERID"],
    );
    paragraph(
        roff,
        "See what a forced rotation would do, without changing anything:",
    );
    example(roff, &["keyrot rotate --domain payments --force --dry-run"]);
    paragraph(
        roff,
        "Summarise every domain from the ledger, without the HSM, as JSON:",
    );
    example(roff, &["keyrot --output json status"]);
    paragraph(
        roff,
        "Verify the audit trail in CI with the exported public key and a state file \
         that detects rollback between runs:",
    );
    example(
        roff,
        &["keyrot audit-verify audit.jsonl --pubkey audit.pub.pem --state audit.state.json"],
    );
}

pub(super) fn see_also(roff: &mut Roff, pages: &[String]) {
    heading(roff, "SEE ALSO");
    roff.text([roman(pages.join(", "))]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_match_codes() {
        let documented: Vec<u8> = EXIT_STATUSES.iter().map(|s| s.code).collect();
        let defined: Vec<u8> = code::ALL.iter().map(|(value, _)| *value).collect();
        assert_eq!(documented, defined);
    }
}
