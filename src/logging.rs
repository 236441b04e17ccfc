//! Diagnostic logs through `tracing`: short human lines on stderr, and one JSON
//! object per event in a daily-rolling file when `log.dir` is configured.
//!
//! The audit trail is a record, not a log: nothing here writes to it.

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

use crate::config::LogSettings;

/// Capacity of the log file writer's queue, in lines; logging waits when it is full.
const LOG_QUEUE_LINES: usize = 4096;

/// Level for stderr from `-v` and `-q`: warnings by default.
pub fn stderr_level(verbose: u8, quiet: bool) -> LevelFilter {
    if quiet {
        return LevelFilter::ERROR;
    }
    match verbose {
        0 => LevelFilter::WARN,
        1 => LevelFilter::INFO,
        2 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

/// Installs the subscriber. Keep the returned guard alive until exit: dropping it
/// flushes the file writer.
pub fn init(stderr: LevelFilter, file: Option<&LogSettings>) -> Option<WorkerGuard> {
    let stderr_layer = fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .with_filter(stderr);

    let mut guard = None;
    let file_layer = file.and_then(|settings| {
        let dir = settings.dir.as_ref()?;
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!(
                "keyrot: warning: failed to create log folder {}: {e}",
                dir.display()
            );
            return None;
        }
        let appender = tracing_appender::rolling::Builder::new()
            .rotation(tracing_appender::rolling::Rotation::DAILY)
            .filename_prefix("keyrot")
            .filename_suffix("log")
            .build(dir);
        let appender = match appender {
            Ok(appender) => appender,
            Err(e) => {
                eprintln!(
                    "keyrot: warning: failed to open log folder {}: {e}",
                    dir.display()
                );
                return None;
            }
        };
        // The default queue of 128,000 lines is allocated and zeroed up front, which
        // cost about 3 ms per process; a run logs far fewer lines. When the queue is
        // full, logging waits for the writer thread instead of dropping lines.
        let (writer, worker) = NonBlockingBuilder::default()
            .buffered_lines_limit(LOG_QUEUE_LINES)
            .lossy(false)
            .finish(appender);
        guard = Some(worker);
        let level: LevelFilter = settings.level.parse().unwrap_or(LevelFilter::INFO);
        Some(
            fmt::layer()
                .json()
                .with_current_span(true)
                .with_span_list(false)
                .with_writer(writer)
                .with_filter(level),
        )
    });

    let _ = tracing_subscriber::registry()
        .with(stderr_layer)
        .with(file_layer)
        .try_init();
    guard
}
