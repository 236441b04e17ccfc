//! The diagnostic log written to `log.dir` by the real binary: one JSON object per
//! line, each carrying run_id, command and domain, with the level from `log.level`
//! raised by `-v`, and no PIN anywhere.

mod common;
mod support;

use serde_json::Value;
use support::{DomainSpec, Env, PIN, Run};

fn env() -> Env {
    Env::new(&[DomainSpec::new("payments", "aes-256")])
}

/// Parses every line of every file in the log folder, and panics on a line that is
/// not a JSON object.
fn log_events(env: &Env) -> Vec<Value> {
    let mut events = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(env.path("logs"))
        .expect("log folder created")
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (index, line) in text.lines().enumerate() {
            let event: Value = serde_json::from_str(line).unwrap_or_else(|e| {
                panic!("{}:{}: not JSON ({e}): {line}", file.display(), index + 1)
            });
            assert!(
                event.is_object(),
                "{}:{}: {line}",
                file.display(),
                index + 1
            );
            events.push(event);
        }
    }
    events
}

fn events_of_run<'a>(events: &'a [Value], run_id: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["run_id"] == run_id).collect()
}

fn has_message(events: &[&Value], message: &str) -> bool {
    events.iter().any(|e| e["message"] == message)
}

/// Asserts that the PIN is in no log file, and in neither stream of `run`.
fn assert_pin_absent(env: &Env, run: &Run, pin: &str) {
    assert!(!run.stdout.contains(pin), "PIN on stdout");
    assert!(!run.stderr.contains(pin), "PIN on stderr");
    for entry in std::fs::read_dir(env.path("logs")).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(pin), "PIN in {}", path.display());
    }
}

#[test]
fn rotation_logs_carry_run_fields() {
    let env = env();
    let run = env.run(&["rotate", "--domain", "payments", "--run-id", "log-1"]);
    run.expect_code(0);
    let events = log_events(&env);
    assert!(!events.is_empty(), "log file is empty");
    for event in &events {
        assert_eq!(event["run_id"], "log-1", "run_id: {event}");
        assert_eq!(event["command"], "rotate", "command: {event}");
        assert_eq!(event["domain"], "payments", "domain: {event}");
        assert!(event["timestamp"].is_string(), "timestamp: {event}");
        assert!(event["level"].is_string(), "level: {event}");
    }
    let run_events = events_of_run(&events, "log-1");
    assert!(has_message(&run_events, "started"), "no started event");
    let finished = run_events
        .iter()
        .find(|e| e["message"] == "finished")
        .expect("no finished event");
    assert_eq!(finished["code"], 0);
    assert_eq!(finished["outcome"], "rotated");
    assert!(
        run_events.iter().any(|e| e["target"] == "keyrot::hsm"),
        "no event from the hsm layer"
    );
    assert_pin_absent(&env, &run, PIN);
}

#[test]
fn failed_login_is_logged_once() {
    let env = env();
    env.run(&["rotate", "--domain", "payments", "--run-id", "ok-1"])
        .expect_code(0);
    let wrong_pin = "wrong-pin-8086";
    std::fs::write(env.path("pin"), format!("{wrong_pin}\n")).unwrap();
    let run = env.run(&[
        "rotate", "--domain", "payments", "--run-id", "bad-1", "--force",
    ]);
    run.expect_code(77);

    let events = log_events(&env);
    let failed_run = events_of_run(&events, "bad-1");
    assert!(has_message(&failed_run, "started"), "no started event");
    let failed = failed_run
        .iter()
        .find(|e| e["message"] == "failed")
        .expect("no failed event");
    assert_eq!(failed["code"], 77);
    assert_eq!(failed["level"], "ERROR");
    assert_eq!(failed["command"], "rotate");
    assert_eq!(failed["domain"], "payments");
    assert!(
        !has_message(&failed_run, "finished"),
        "failed run logged finished"
    );

    let error_lines = run.stderr.matches("keyrot: error:").count();
    assert_eq!(error_lines, 1, "stderr:\n{}", run.stderr);
    assert_pin_absent(&env, &run, PIN);
    assert_pin_absent(&env, &run, wrong_pin);
}

#[test]
fn missing_module_logs_failure() {
    let env = env();
    let good = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        good.replace(support::MODULE, "/nonexistent/libpkcs11.so"),
    )
    .unwrap();
    let run = env.run(&["rotate", "--domain", "payments", "--run-id", "nomod-1"]);
    run.expect_code(69);
    let events = log_events(&env);
    let failed = events
        .iter()
        .find(|e| e["message"] == "failed")
        .expect("no failed event");
    assert_eq!(failed["code"], 69);
    assert_eq!(failed["run_id"], "nomod-1");
    assert_pin_absent(&env, &run, PIN);
}

#[test]
fn verbose_raises_file_level() {
    let env = env();
    let good = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        good.replace("level = \"debug\"", "level = \"warn\""),
    )
    .unwrap();
    env.run(&["rotate", "--domain", "payments", "--run-id", "quiet-1"])
        .expect_code(0);
    env.run(&[
        "-vv", "rotate", "--domain", "payments", "--run-id", "loud-1", "--force",
    ])
    .expect_code(0);

    let events = log_events(&env);
    let quiet = events_of_run(&events, "quiet-1");
    assert!(!has_message(&quiet, "started"), "info event at level warn");
    let loud = events_of_run(&events, "loud-1");
    assert!(has_message(&loud, "started"), "-vv did not raise to info");
    assert!(
        loud.iter().any(|e| e["level"] == "DEBUG"),
        "-vv did not raise to debug"
    );
}

#[test]
fn stderr_lines_are_short() {
    let env = env();
    let default = env.run(&["rotate", "--domain", "payments", "--run-id", "s-1"]);
    default.expect_code(0);
    assert_eq!(default.stderr, "", "default stderr shows warnings only");

    let verbose = env.run(&[
        "-v", "rotate", "--domain", "payments", "--run-id", "s-2", "--force",
    ]);
    verbose.expect_code(0);
    assert!(
        verbose.stderr.lines().any(|l| l == "keyrot: info: started"),
        "{}",
        verbose.stderr
    );
    assert!(!verbose.stderr.contains('\u{1b}'), "ANSI escape on a pipe");
    for line in verbose.stderr.lines() {
        assert!(line.starts_with("keyrot: "), "{line}");
    }
}
