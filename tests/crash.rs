//! Crash safety of `rotate` and `revoke`: the real binary is killed at every failpoint,
//! by signals and by a timed SIGKILL, and the next run must converge. Runs only with
//! `--features failpoints`, because the crash hooks exist only in such builds.
#![cfg(feature = "failpoints")]

mod common;
mod support;

use std::collections::BTreeSet;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use keyrot::workflow::FAILPOINTS;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use support::{DomainSpec, Env};

const RUN_ID: &str = "crash-1";

fn domains() -> Vec<DomainSpec> {
    let mut payments = DomainSpec::new("payments", "aes-256");
    payments.max_per_day = 100_000;
    vec![payments]
}

/// Rotates payments twice, leaving v1 deprecated and v2 active.
/// Rotates `payments` twice and signs an emergency revoke approval for v2, whose
/// file name is [`APPROVAL_V2`].
fn two_versions(env: &Env) {
    env.run(&["rotate", "--domain", "payments"]).expect_code(0);
    env.run(&["rotate", "--domain", "payments", "--force"])
        .expect_code(0);
    assert_eq!(env.approve_revoke("payments", 2), APPROVAL_V2);
}

const APPROVAL_V2: &str = "approval-payments-v2.json";

fn state(env: &Env, version: u32) -> String {
    env.sqlite(&format!(
        "SELECT state FROM keys WHERE domain = 'payments' AND version = {version}"
    ))
}

/// Checks everything a converged domain must satisfy.
fn assert_converged(env: &Env, context: &str) {
    let (run, codes) = env.verify(&[]);
    assert_eq!(
        run.code, 0,
        "{context}: verify found {codes:?}\n{}",
        run.stdout
    );
    env.assert_audit_valid();
    env.assert_ledger_covers_token("payments");
    assert_eq!(env.active_count("payments"), 1, "{context}");
}

/// Runs `args` with each failpoint (SIGKILL or abort), then once more with the same run
/// id, and checks the result. Returns the failpoints that killed the first run.
fn crash_each_failpoint(
    setup: fn(&Env),
    args: &[&str],
    check: fn(&Env, &str),
) -> BTreeSet<&'static str> {
    let mut reached = BTreeSet::new();
    let mut all = args.to_vec();
    all.extend(["--run-id", RUN_ID]);
    for failpoint in FAILPOINTS {
        let env = Env::new(&domains());
        setup(&env);
        let first = env.run_with(&all, &[("KEYROT_FAILPOINT", failpoint)]);
        match first.code {
            -1 => {
                reached.insert(failpoint);
            }
            0 => {}
            code => panic!("{failpoint}: first run exited {code}\n{}", first.stderr),
        }
        let second = env.run(&all);
        assert_eq!(
            second.code, 0,
            "{failpoint}: rerun failed\n{}\n{}",
            second.stdout, second.stderr
        );
        assert_eq!(second.field("run_id").as_deref(), Some(RUN_ID));
        check(&env, failpoint);
        assert_converged(&env, failpoint);
    }
    reached
}

fn names(list: &[&'static str]) -> BTreeSet<&'static str> {
    list.iter().copied().collect()
}

const AUDIT_AND_JOURNAL: [&str; 4] = [
    "journal.before_head",
    "audit.partial_write",
    "audit.before_sync",
    "audit.after_write",
];

#[test]
fn rotate_converges_after_each_failpoint() {
    let reached = crash_each_failpoint(
        two_versions,
        &["rotate", "--domain", "payments", "--force"],
        |env, failpoint| {
            assert_eq!(state(env, 3), "active", "{failpoint}");
            assert_eq!(state(env, 2), "deprecated", "{failpoint}");
        },
    );
    let mut expected = names(&[
        "rotate.after_intent",
        "rotate.after_generate",
        "rotate.after_self_test",
        "rotate.after_switch",
        "rotate.after_converge",
        "rotate.after_finish",
    ]);
    expected.extend(AUDIT_AND_JOURNAL);
    assert_eq!(reached, expected);
}

#[test]
fn revoke_converges_after_each_failpoint() {
    let reached = crash_each_failpoint(
        two_versions,
        &[
            "revoke",
            "--domain",
            "payments",
            "--version",
            "1",
            "--reason",
            "retired",
        ],
        |env, failpoint| {
            assert_eq!(state(env, 1), "revoked", "{failpoint}");
            assert_eq!(state(env, 2), "active", "{failpoint}");
        },
    );
    let mut expected = names(&[
        "revoke.after_intent",
        "revoke.after_revoke",
        "revoke.after_converge",
        "revoke.after_finish",
    ]);
    expected.extend(AUDIT_AND_JOURNAL);
    assert_eq!(reached, expected);
}

#[test]
fn emergency_revoke_converges_after_each_failpoint() {
    let reached = crash_each_failpoint(
        two_versions,
        &[
            "revoke",
            "--domain",
            "payments",
            "--version",
            "2",
            "--reason",
            "leaked",
            "--emergency",
            "--approval",
            APPROVAL_V2,
        ],
        |env, failpoint| {
            assert_eq!(state(env, 2), "revoked", "{failpoint}");
            assert_eq!(state(env, 3), "active", "{failpoint}");
            assert_eq!(state(env, 1), "deprecated", "{failpoint}");
        },
    );
    let mut expected = names(&[
        "rotate.after_generate",
        "rotate.after_self_test",
        "rotate.after_switch",
        "revoke.after_intent",
        "revoke.after_revoke",
        "revoke.after_converge",
        "revoke.after_finish",
    ]);
    expected.extend(AUDIT_AND_JOURNAL);
    assert_eq!(reached, expected);
}

#[test]
fn destroy_converges_after_each_failpoint() {
    let reached = crash_each_failpoint(
        |env| {
            two_versions(env);
            env.run(&[
                "revoke",
                "--domain",
                "payments",
                "--version",
                "1",
                "--reason",
                "retired",
            ])
            .expect_code(0);
        },
        &[
            "revoke",
            "--domain",
            "payments",
            "--version",
            "1",
            "--reason",
            "end of life",
            "--destroy",
        ],
        |env, failpoint| {
            assert_eq!(state(env, 1), "destroyed", "{failpoint}");
            assert_eq!(env.object_count("keyrot/payments/v1"), 0, "{failpoint}");
        },
    );
    let mut expected = names(&[
        "destroy.after_intent",
        "destroy.after_hsm",
        "destroy.after_ledger",
        "revoke.after_finish",
    ]);
    expected.extend(AUDIT_AND_JOURNAL);
    assert_eq!(reached, expected);
}

#[test]
fn every_failpoint_is_exercised() {
    // The four tests above together must reach every listed failpoint; this pins the
    // list so that a new failpoint without a scenario fails here.
    let covered = names(&[
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
    ]);
    assert_eq!(names(&FAILPOINTS), covered);
}

#[test]
fn other_run_id_abandons_or_adopts() {
    // (failpoint, audit event the second run id must write)
    let cases = [
        ("rotate.after_intent", "rotation.abandoned"),
        ("rotate.after_generate", "rotation.abandoned"),
        ("rotate.after_self_test", "rotation.abandoned"),
        ("rotate.after_switch", "rotation.adopted"),
        ("rotate.after_converge", "rotation.adopted"),
    ];
    for (failpoint, event) in cases {
        let env = Env::new(&domains());
        two_versions(&env);
        let first = env.run_with(
            &[
                "rotate", "--domain", "payments", "--force", "--run-id", "first",
            ],
            &[("KEYROT_FAILPOINT", failpoint)],
        );
        assert_eq!(first.code, -1, "{failpoint}");
        let second = env.run(&["rotate", "--domain", "payments", "--run-id", "second"]);
        second.expect_code(0);
        let audit = std::fs::read_to_string(env.audit()).unwrap();
        assert!(
            audit.contains(&format!("\"event\":\"{event}\"")),
            "{failpoint}: no {event}"
        );
        let warning = if event == "rotation.abandoned" {
            "abandoning unfinished rotation"
        } else {
            "adopting unfinished rotation"
        };
        assert!(
            second.stderr.contains(warning),
            "{failpoint}: {}",
            second.stderr
        );
        let outcome = env.sqlite("SELECT outcome FROM runs WHERE run_id = 'first'");
        let expected = if event == "rotation.abandoned" {
            "abandoned"
        } else {
            "rotated"
        };
        assert_eq!(outcome, expected, "{failpoint}");
        assert_converged(&env, failpoint);
    }
}

#[test]
fn unfinished_revoke_blocks_other_run_ids() {
    let env = Env::new(&domains());
    two_versions(&env);
    let args = [
        "revoke",
        "--domain",
        "payments",
        "--version",
        "2",
        "--reason",
        "leaked",
        "--emergency",
        "--approval",
        APPROVAL_V2,
        "--run-id",
        "urgent",
    ];
    let first = env.run_with(&args, &[("KEYROT_FAILPOINT", "rotate.after_switch")]);
    assert_eq!(first.code, -1);
    let before = env.snapshot();
    for other in [
        vec![
            "rotate", "--domain", "payments", "--force", "--run-id", "r9",
        ],
        vec![
            "revoke",
            "--domain",
            "payments",
            "--version",
            "1",
            "--reason",
            "x",
            "--run-id",
            "r10",
        ],
    ] {
        let run = env.run(&other);
        run.expect_code(20);
        assert!(
            run.stderr.contains("unfinished revoke run urgent"),
            "{}",
            run.stderr
        );
        assert!(run.stderr.contains("--run-id urgent"), "{}", run.stderr);
        assert_eq!(env.snapshot(), before, "{other:?} changed state");
    }
    env.run(&args).expect_code(0);
    assert_converged(&env, "after rerun");
}

/// Starts `keyrot ARGS` paused at `failpoint` and waits until the run row exists.
fn spawn_paused(env: &Env, args: &[&str], failpoint: &str, run_id: &str) -> Child {
    let child = env
        .command()
        .args(args)
        .env("KEYROT_FAILPOINT", format!("{failpoint}=pause"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let query = format!("SELECT COUNT(*) FROM runs WHERE run_id = '{run_id}'");
    while env.sqlite(&query) != "1" {
        assert!(Instant::now() < deadline, "{run_id} never recorded its run");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[test]
fn signals_stop_at_step_boundary() {
    let cases = [
        (
            Signal::SIGTERM,
            vec![
                "rotate", "--domain", "payments", "--force", "--run-id", "sig-1",
            ],
            "rotate.after_intent",
            "rotation.stopped",
        ),
        (
            Signal::SIGINT,
            vec![
                "revoke",
                "--domain",
                "payments",
                "--version",
                "2",
                "--reason",
                "leaked",
                "--emergency",
                "--approval",
                APPROVAL_V2,
                "--run-id",
                "sig-1",
            ],
            "rotate.after_switch",
            "revocation.stopped",
        ),
    ];
    for (signal, args, failpoint, event) in cases {
        let env = Env::new(&domains());
        two_versions(&env);
        env.run(&["init"]).expect_code(0);
        let child = spawn_paused(&env, &args, failpoint, "sig-1");
        std::thread::sleep(Duration::from_millis(200));
        kill(Pid::from_raw(child.id() as i32), signal).unwrap();
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(75), "{signal}: {stderr}");
        assert!(
            stderr.contains(&format!("interrupted by {signal}")),
            "{stderr}"
        );
        let audit = std::fs::read_to_string(env.audit()).unwrap();
        let stopped = audit
            .lines()
            .find(|l| l.contains(&format!("\"event\":\"{event}\"")))
            .unwrap_or_else(|| panic!("{signal}: no {event} line"));
        assert!(stopped.contains("\"outcome\":\"interrupted\""), "{stopped}");
        assert_eq!(env.active_count("payments"), 1);

        let rerun = env.run(&args);
        rerun.expect_code(0);
        assert_converged(&env, signal.as_str());
    }
}

#[test]
fn dead_lock_holder_does_not_block() {
    for next_run in ["holder", "successor"] {
        let env = Env::new(&domains());
        two_versions(&env);
        let args = [
            "rotate", "--domain", "payments", "--force", "--run-id", "holder",
        ];
        let mut holder = spawn_paused(&env, &args, "rotate.after_generate", "holder");
        let deadline = Instant::now() + Duration::from_secs(30);
        while env.object_count("keyrot/payments/v3") == 0 {
            assert!(Instant::now() < deadline, "holder never generated v3");
            std::thread::sleep(Duration::from_millis(50));
        }
        holder.kill().unwrap();
        holder.wait().unwrap();

        let run = env.run(&[
            "rotate", "--domain", "payments", "--force", "--run-id", next_run,
        ]);
        run.expect_code(0);
        let expected = if next_run == "holder" { "3" } else { "4" };
        assert_eq!(
            run.field("version").as_deref(),
            Some(expected),
            "{next_run}"
        );
        assert_converged(&env, next_run);
    }
}

/// Rotates one domain `KEYROT_STRESS_ROUNDS` times (200 by default), killing each
/// run at a random failpoint, then recovering it with the same run id. Prints the
/// counts; any divergence fails. Slow: `scripts/stress.sh`.
///
/// NOTE: `KEYROT_STRESS_TIMED_KILLS=1` also kills half of the runs with SIGKILL after
/// a random delay. SoftHSM 2.6.1's file object store does not survive that: a kill
/// while it rewrites `token.object` (it does on every login) leaves the file empty
/// and the token gone, so that mode fails within a few dozen rounds for that reason.
#[test]
#[ignore = "slow; run by scripts/stress.sh"]
fn stress_random_kills() {
    let rounds: u32 = std::env::var("KEYROT_STRESS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let rotate_points: Vec<&str> = FAILPOINTS
        .iter()
        .copied()
        .filter(|p| !p.starts_with("revoke.") && !p.starts_with("destroy."))
        .collect();
    let env = Env::new(&domains());
    env.run(&["init"]).expect_code(0);
    let started = Instant::now();
    let timed_kills = std::env::var("KEYROT_STRESS_TIMED_KILLS").is_ok_and(|v| v == "1");
    let mut killed_at_failpoint = 0;
    let mut killed_by_timer = 0;
    let mut finished_before_kill = 0;
    let mut finished_by_recovery = 0;
    for round in 0..rounds {
        let run_id = format!("stress-{round}");
        let args = [
            "rotate",
            "--domain",
            "payments",
            "--force",
            "--run-id",
            run_id.as_str(),
        ];
        let by_failpoint = !timed_kills || rand::random::<bool>();
        let code = if by_failpoint {
            let point = rotate_points[rand::random::<u32>() as usize % rotate_points.len()];
            env.run_with(&args, &[("KEYROT_FAILPOINT", point)]).code
        } else {
            let child = env
                .command()
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(rand::random::<u64>() % 120));
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            wait_code(child)
        };
        match (code, by_failpoint) {
            (0, _) => finished_before_kill += 1,
            (-1, true) => killed_at_failpoint += 1,
            (-1, false) => killed_by_timer += 1,
            (other, _) => panic!("round {round}: first run exited {other}"),
        }
        let recovery = env.run(&args);
        assert_eq!(
            recovery.code, 0,
            "round {round}: recovery failed\n{}",
            recovery.stderr
        );
        assert_eq!(
            recovery.field("outcome").as_deref(),
            Some("rotated"),
            "round {round}"
        );
        if recovery.field("replayed").is_none() {
            finished_by_recovery += 1;
        }
        assert!(
            env.active_count("payments") <= 1,
            "round {round}: two active keys"
        );
        if round % 20 == 19 || round + 1 == rounds {
            assert_converged(&env, &format!("round {round}"));
        }
    }
    let active = env.sqlite("SELECT version FROM keys WHERE state = 'active'");
    let rotated = env.sqlite("SELECT COUNT(*) FROM runs WHERE outcome = 'rotated'");
    println!(
        "stress: {rounds} rounds in {:.1} s: {killed_at_failpoint} killed at a failpoint, \
         {killed_by_timer} killed by a timer, {finished_before_kill} finished before the kill, \
         {finished_by_recovery} finished by the recovery run; {rotated} rotated runs, active v{active}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(rotated, rounds.to_string(), "every round must end rotated");
}

fn wait_code(mut child: Child) -> i32 {
    child.wait().unwrap().code().unwrap_or(-1)
}
