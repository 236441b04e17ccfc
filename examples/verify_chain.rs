//! Runs the library's audit verifier on one file and prints the report and the
//! elapsed time, so that benchmarks can measure the verifier without the CLI.
//!
//! Usage: `verify_chain FILE [--pubkey PEM] [--state FILE]`. Exits 0 when the chain
//! is valid, 21 when it is not, 66 when the file is missing and 74 on other errors.

use std::path::PathBuf;
use std::time::Instant;

use keyrot::audit::{ErrorKind, VerifyOptions, read_public_key_pem, verify};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(file) = args.next().map(PathBuf::from) else {
        eprintln!("usage: verify_chain FILE [--pubkey PEM] [--state FILE]");
        std::process::exit(64);
    };
    let mut opts = VerifyOptions::default();
    while let Some(flag) = args.next() {
        let value = args.next().map(PathBuf::from);
        match (flag.as_str(), value) {
            ("--pubkey", Some(path)) => match read_public_key_pem(&path) {
                Ok(key) => opts.pubkey = Some(key),
                Err(e) => exit_with(&e),
            },
            ("--state", Some(path)) => opts.state = Some(path),
            _ => {
                eprintln!("invalid argument {flag:?}");
                std::process::exit(64);
            }
        }
    }

    let started = Instant::now();
    let report = match verify(&file, &opts) {
        Ok(report) => report,
        Err(e) => exit_with(&e),
    };
    let elapsed = started.elapsed();
    print!("{}", report.to_text());
    eprintln!("verified in {:.3} s", elapsed.as_secs_f64());
    std::process::exit(if report.is_valid() { 0 } else { 21 });
}

fn exit_with(e: &keyrot::audit::AuditError) -> ! {
    eprintln!("{e}");
    std::process::exit(match e.kind() {
        ErrorKind::NotFound => 66,
        _ => 74,
    });
}
