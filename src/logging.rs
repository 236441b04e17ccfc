//! Diagnostic logs through `tracing`: short human lines on stderr, and one JSON
//! object per event in a daily-rolling file when `log.dir` is configured.
//!
//! Every file line carries the fields of the spans it was emitted in (the `run` span
//! of `main` gives run_id, command and domain) as top-level keys, so a line can be
//! matched to its run without following nesting. The audit trail is a record, not a
//! log: nothing here writes to it.

use std::io::IsTerminal;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::{FilterExt, LevelFilter, filter_fn};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

use crate::config::LogSettings;

/// Target of the events that `main` both logs and prints itself (the final error).
/// The stderr layer skips them so an operator sees each error once.
pub const RESULT_TARGET: &str = "keyrot::result";

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

/// Level for the file: `log.level`, raised to the stderr level when `-v` asked for
/// more than warnings. `-q` never lowers it.
pub fn file_level(configured: &str, stderr: LevelFilter) -> LevelFilter {
    let configured: LevelFilter = configured.parse().unwrap_or(LevelFilter::INFO);
    if stderr > LevelFilter::WARN {
        configured.max(stderr)
    } else {
        configured
    }
}

/// Installs the subscriber. Keep the returned guard alive until exit: dropping it
/// flushes the file writer.
pub fn init(stderr: LevelFilter, file: Option<&LogSettings>) -> Option<WorkerGuard> {
    let stderr_layer = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .event_format(HumanFormat)
        .with_filter(stderr.and(filter_fn(|metadata| metadata.target() != RESULT_TARGET)));

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
        Some(
            fmt::layer()
                .fmt_fields(JsonFields::new())
                .event_format(JsonLineFormat)
                .with_writer(writer)
                .with_filter(file_level(&settings.level, stderr)),
        )
    });

    let _ = tracing_subscriber::registry()
        .with(stderr_layer)
        .with(file_layer)
        .try_init();
    guard
}

/// Stderr line: `keyrot: warning: message key=value ...`, like the error line that
/// `main` prints, without time, target or span context.
struct HumanFormat;

impl<S, N> FormatEvent<S, N> for HumanFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let level = match *event.metadata().level() {
            Level::ERROR => "error",
            Level::WARN => "warning",
            Level::INFO => "info",
            Level::DEBUG => "debug",
            Level::TRACE => "trace",
        };
        write!(writer, "keyrot: {level}: ")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// File line: one JSON object with timestamp, level, target, the event's fields, and
/// the fields of every enclosing span, outermost first. An event field wins over a
/// span field of the same name.
struct JsonLineFormat;

impl<S> FormatEvent<S, JsonFields> for JsonLineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let metadata = event.metadata();
        let mut line = Map::new();
        let timestamp = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ");
        line.insert("timestamp".into(), Value::String(timestamp.to_string()));
        line.insert("level".into(), Value::String(metadata.level().to_string()));
        line.insert("target".into(), Value::String(metadata.target().into()));

        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(fields) = extensions.get::<FormattedFields<JsonFields>>() else {
                    continue;
                };
                // JsonFields stores each span's fields as the text of a JSON object.
                if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(fields) {
                    line.extend(fields);
                }
            }
        }
        event.record(&mut JsonVisitor(&mut line));

        let text = serde_json::to_string(&line).map_err(|_| std::fmt::Error)?;
        writer.write_str(&text)?;
        writer.write_char('\n')
    }
}

/// Records event fields into a JSON map, keeping numbers and booleans typed.
struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbose_raises_file_level() {
        assert_eq!(
            file_level("info", stderr_level(0, false)),
            LevelFilter::INFO
        );
        assert_eq!(
            file_level("info", stderr_level(2, false)),
            LevelFilter::DEBUG
        );
        assert_eq!(
            file_level("trace", stderr_level(1, false)),
            LevelFilter::TRACE
        );
    }

    #[test]
    fn quiet_and_default_keep_file_level() {
        assert_eq!(
            file_level("error", stderr_level(0, false)),
            LevelFilter::ERROR
        );
        assert_eq!(
            file_level("debug", stderr_level(0, true)),
            LevelFilter::DEBUG
        );
    }
}
