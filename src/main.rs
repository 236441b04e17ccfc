use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;

use keyrot::cli::{self, Cli};
use keyrot::error::{self, Error, code};
use keyrot::logging;
use keyrot::workflow::{Context, Outcome, OutputFormat, StopFlag};

fn main() -> ExitCode {
    // Every file keyrot creates (ledger and its WAL, logs, locks) is private to its
    // owner. The exported public key is meant to be shared, so the operator copies it.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    // Handlers first, so a SIGTERM during start-up is recorded rather than fatal.
    let stop = StopFlag::default();
    let installed = stop.install();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::from(code::OK);
        }
        Err(e) => {
            let error = cli::usage_error(&e);
            return finish(Err(error), OutputFormat::Text, None, None);
        }
    };
    let format = cli.output;
    let domain = cli.command.domain().map(str::to_string);
    let run_id = match cli::resolve_run_id(cli.command.run_id()) {
        Ok(id) => id,
        Err(e) => return finish(Err(e), format, domain.as_deref(), None),
    };

    let config = match cli::load_config(&cli) {
        Ok(config) => Some(config),
        Err(_) if !cli.command.needs_config() => None,
        Err(e) => {
            let _guard = logging::init(logging::stderr_level(cli.verbose, cli.quiet), None);
            return finish(Err(e), format, domain.as_deref(), Some(&run_id));
        }
    };
    let _guard = logging::init(
        logging::stderr_level(cli.verbose, cli.quiet),
        config.as_ref().map(|c| &c.log),
    );
    let span = tracing::info_span!(
        "run",
        run_id = %run_id,
        command = cli.command.name(),
        domain = domain.as_deref().unwrap_or("")
    );
    let _entered = span.enter();

    let result = catch_unwind(AssertUnwindSafe(|| {
        installed
            .map_err(|e| Error::Software(format!("failed to install signal handlers: {e}")))?;
        let ctx = config.map(|config| Context::with_stop(config, run_id.clone(), stop.clone()));
        tracing::info!("started");
        cli::run(&cli, ctx.as_ref(), &run_id)
    }));
    let result = match result {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(Error::Software(format!("panic: {message}")))
        }
    };
    finish(result, format, domain.as_deref(), Some(&run_id))
}

/// Prints the error (if any) on stderr and the result line on stdout, and returns
/// the exit code. This is the only place the process's exit code is decided.
fn finish(
    result: error::Result<Outcome>,
    format: OutputFormat,
    domain: Option<&str>,
    run_id: Option<&str>,
) -> ExitCode {
    let outcome = match result {
        Ok(outcome) => {
            tracing::info!(outcome = %outcome.outcome, code = outcome.code, "finished");
            outcome
        }
        Err(error) => {
            let outcome = Outcome::from_error(&error, domain, run_id);
            // The error reaches stderr through eprintln below, so this event goes to
            // the log file only.
            tracing::error!(
                target: logging::RESULT_TARGET,
                error = %error.to_string().lines().next().unwrap_or(""),
                code = outcome.code,
                "failed"
            );
            eprintln!("keyrot: error: {error}");
            outcome
        }
    };
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{}", outcome.render(format));
    let _ = stdout.flush();
    ExitCode::from(outcome.code)
}
