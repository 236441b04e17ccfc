//! Test fixtures shared by the integration tests: a SoftHSM2 token in a private
//! temporary directory, and a way to run a test body in a child process whose
//! environment points SoftHSM at that token.
//!
//! SoftHSM reads `SOFTHSM2_CONF` from the process environment in `C_Initialize`, and
//! the tests of one binary run as threads of one process. Changing the environment of
//! a running process is `unsafe` in Rust 2024, so [`run_with_token`] runs each HSM test
//! body in its own child process with `SOFTHSM2_CONF` set on the child only. Tests that
//! spawn the keyrot binary set it the same way, with [`TestToken::conf_path`].

// Each integration test binary uses a different part of this module.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

/// Path of the SoftHSM2 PKCS#11 module as Debian and Ubuntu install it.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// Label of the token that [`TestToken::new`] initialises.
pub const TEST_TOKEN_LABEL: &str = "keyrot-test";

/// User PIN of the token that [`TestToken::new`] initialises.
pub const TEST_USER_PIN: &str = "user-pin-4711";

/// Security officer PIN of the test token.
pub const TEST_SO_PIN: &str = "1234";

/// Environment variable that contains the test token's label in a child process
/// started by [`run_with_token`].
const CHILD_LABEL_VAR: &str = "KEYROT_TEST_TOKEN_LABEL";
/// Environment variable that contains the user PIN in a child process started by
/// [`run_with_token`].
const CHILD_PIN_VAR: &str = "KEYROT_TEST_TOKEN_PIN";

/// A SoftHSM2 token with its own configuration and token directory, removed on drop.
pub struct TestToken {
    dir: TempDir,
    conf: PathBuf,
    pin: String,
    label: String,
}

impl TestToken {
    /// Initialises a token labelled `keyrot-test` with user PIN [`TEST_USER_PIN`].
    pub fn new() -> TestToken {
        TestToken::with_label(TEST_TOKEN_LABEL)
    }

    /// Initialises a token with the given label in a new temporary directory, by
    /// running `softhsm2-util --init-token` with `SOFTHSM2_CONF` set on that process.
    pub fn with_label(label: &str) -> TestToken {
        let dir = tempfile::Builder::new()
            .prefix("keyrot-softhsm-")
            .tempdir()
            .expect("create temporary directory for the test token");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700))
            .expect("restrict the test token directory to its owner");
        let tokens = dir.path().join("tokens");
        fs::create_dir(&tokens).expect("create the SoftHSM token directory");
        let conf = dir.path().join("softhsm2.conf");
        let conf_text = format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        );
        fs::write(&conf, conf_text).expect("write softhsm2.conf");

        let output = Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", label])
            .args(["--so-pin", TEST_SO_PIN, "--pin", TEST_USER_PIN])
            .env("SOFTHSM2_CONF", &conf)
            .output()
            .expect("run softhsm2-util (is the softhsm2 package installed?)");
        assert!(
            output.status.success(),
            "softhsm2-util --init-token failed with {}: {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        TestToken {
            dir,
            conf,
            pin: TEST_USER_PIN.to_string(),
            label: label.to_string(),
        }
    }

    /// Path of the `softhsm2.conf` to pass as `SOFTHSM2_CONF` to a child process.
    pub fn conf_path(&self) -> &Path {
        &self.conf
    }

    /// Path of the SoftHSM2 PKCS#11 module.
    pub fn module(&self) -> PathBuf {
        PathBuf::from(SOFTHSM_MODULE)
    }

    /// User PIN of the token.
    pub fn pin(&self) -> &str {
        &self.pin
    }

    /// Label of the token.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Returns the token's private temporary directory, where other tests may put
    /// their files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Token settings that a test body receives from [`run_with_token`].
pub struct TokenEnv {
    pub module: PathBuf,
    pub label: String,
    pub pin: String,
}

/// Runs `body` against a fresh token in a child process of this test binary.
///
/// In the parent, creates a [`TestToken`], re-runs the current test binary filtered to
/// exactly `test_name` with `SOFTHSM2_CONF` set on the child, and fails if the child
/// fails. In that child, runs `body`. `test_name` must be the test's full name as the
/// test harness prints it.
pub fn run_with_token(test_name: &str, body: impl FnOnce(&TokenEnv)) {
    if let (Ok(label), Ok(pin)) = (std::env::var(CHILD_LABEL_VAR), std::env::var(CHILD_PIN_VAR)) {
        let env = TokenEnv {
            module: PathBuf::from(SOFTHSM_MODULE),
            label,
            pin,
        };
        body(&env);
        return;
    }

    let token = TestToken::new();
    let test_binary = std::env::current_exe().expect("path of the test binary");
    let output = Command::new(test_binary)
        .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env("SOFTHSM2_CONF", token.conf_path())
        .env(CHILD_LABEL_VAR, token.label())
        .env(CHILD_PIN_VAR, token.pin())
        .output()
        .expect("run the test binary as a child process");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "test {test_name} failed in its child process ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("1 passed"),
        "child process ran no test named {test_name}:\n{stdout}"
    );
}
