//! The Control-M job definition in fixtures/controlm maps every keyrot exit code to
//! the outcome that keyrot(1) documents, and its command line parses.

use std::collections::BTreeMap;
use std::path::Path;

use clap::Parser;
use keyrot::error::code;
use serde_json::Value;

/// Codes that Control-M reruns, because nothing was touched or the step is journaled.
const RERUN: [u8; 3] = [code::LOCKED, code::UNAVAILABLE, code::TEMPFAIL];
/// Codes that page the on-call engineer.
const PAGE: [u8; 2] = [code::INCONSISTENT, code::AUDIT_INVALID];

fn job() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/controlm/keyrot-rotate.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let definition: Value = serde_json::from_str(&text).unwrap();
    definition["keyrot"]["keyrot-rotate"].clone()
}

/// Collects the `If:CompletionStatus` rules of the job: action types by exit code.
fn rules(job: &Value) -> BTreeMap<u8, Vec<String>> {
    let mut rules = BTreeMap::new();
    for rule in job.as_object().unwrap().values() {
        if rule["Type"] != "If:CompletionStatus" {
            continue;
        }
        let status = rule["CompletionStatus"].as_str().unwrap();
        let exit: u8 = status
            .parse()
            .unwrap_or_else(|_| panic!("CompletionStatus {status:?} is not an exit code"));
        let actions: Vec<String> = rule
            .as_object()
            .unwrap()
            .values()
            .filter_map(|action| action.get("Type")?.as_str().map(str::to_string))
            .collect();
        assert!(
            rules.insert(exit, actions).is_none(),
            "exit code {exit} has two rules"
        );
    }
    rules
}

fn urgencies(job: &Value, exit: u8) -> Vec<String> {
    job[format!("IfBase:Folder:CompletionStatus_{exit}")]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|action| action.get("Urgency")?.as_str().map(str::to_string))
        .collect()
}

#[test]
fn every_exit_code_has_a_rule() {
    let rules = rules(&job());
    for (exit, name) in code::ALL {
        assert!(rules.contains_key(&exit), "no rule for {exit} {name}");
    }
}

#[test]
fn no_rule_for_unknown_code() {
    let known: Vec<u8> = code::ALL.iter().map(|(exit, _)| *exit).collect();
    for exit in rules(&job()).keys() {
        assert!(
            known.contains(exit),
            "rule for {exit}, which keyrot never returns"
        );
    }
}

#[test]
fn outcomes_follow_exit_codes() {
    let job = job();
    let rules = rules(&job);
    for (exit, name) in code::ALL {
        let actions = &rules[&exit];
        let has = |action: &str| actions.iter().any(|a| a == action);
        if exit == code::OK {
            assert!(has("Action:SetToOK"), "{name}: {actions:?}");
        } else if RERUN.contains(&exit) {
            assert!(has("Action:Rerun"), "{name}: {actions:?}");
            assert!(!has("Action:SetToNotOK"), "{name}: {actions:?}");
        } else {
            assert!(has("Action:SetToNotOK"), "{name}: {actions:?}");
            assert!(has("Action:Notify"), "{name}: {actions:?}");
            assert!(has("Action:Mail"), "{name}: {actions:?}");
            assert!(!has("Action:Rerun"), "{name}: {actions:?}");
        }
        let paged = urgencies(&job, exit).iter().any(|u| u == "VeryUrgent");
        assert_eq!(paged, PAGE.contains(&exit), "{name}: VeryUrgent");
    }
}

#[test]
fn reruns_are_limited() {
    let job = job();
    let times: u32 = job["RerunLimit"]["Times"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=10).contains(&times), "RerunLimit.Times {times}");
}

#[test]
fn job_command_parses() {
    let job = job();
    let command = job["Command"].as_str().unwrap();
    assert!(command.contains("--run-id %%ORDERID"), "{command}");
    let args = command
        .replace("%%DOMAIN", "payments")
        .replace("%%ORDERID", "00012ab");
    let cli = keyrot::cli::Cli::try_parse_from(args.split_whitespace())
        .unwrap_or_else(|e| panic!("{command}: {e}"));
    assert_eq!(cli.command.name(), "rotate");
    assert_eq!(cli.command.domain(), Some("payments"));
    assert_eq!(cli.command.run_id(), Some("00012ab"));
}
