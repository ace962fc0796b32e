//! The log line, written cheaply: the same text as `tracing-subscriber`'s
//! default format, for a fraction of its cost.
//!
//! At the default `RUST_LOG=info` keygate writes one line per request, so the
//! formatter is on the hot path. The stock one goes through `core::fmt` for
//! every field and works out the calendar date from the clock for every line;
//! under callgrind that was 9,300 instructions per request, 13 % of keygate's
//! own work (4,600 with these). Two pieces plug into the stock subscriber instead:
//!
//! - [`FastFields`] writes integers, booleans and plain strings directly, and
//!   hands everything else (the message, floats, `Debug` values, errors, and
//!   any string that needs escaping) to the stock visitor, so the output is
//!   the same byte for byte — escaping included.
//! - [`CachedUtcTime`] keeps the `YYYY-MM-DDTHH:MM:SS` prefix of the current
//!   second per thread and writes only the microseconds afresh.
//!
//! `[server] log_format = "json"` writes the same fields as one JSON object
//! per line instead ([`json`], through [`json_builder`]), as cheaply.

use std::cell::Cell;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultVisitor, FormatFields, Writer};
use tracing_subscriber::fmt::time::FormatTime;

pub mod json;

/// The stock `fmt` subscriber as keygate configures it: no colours, and
/// these two pieces in place of the stock field formatter and timer. The
/// writer and filter are the caller's.
pub fn builder() -> tracing_subscriber::fmt::SubscriberBuilder<
    FastFields,
    tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Full, CachedUtcTime>,
> {
    tracing_subscriber::fmt()
        .with_ansi(false)
        .fmt_fields(FastFields)
        .with_timer(CachedUtcTime)
}

/// The stock `fmt` subscriber writing one JSON object per line ([`json`]).
/// The writer and filter are the caller's.
pub fn json_builder() -> tracing_subscriber::fmt::SubscriberBuilder<json::JsonFields, json::JsonLine>
{
    tracing_subscriber::fmt()
        .with_ansi(false)
        .fmt_fields(json::JsonFields)
        .event_format(json::JsonLine)
}

/// Formats event and span fields exactly as `DefaultFields` does, without
/// `core::fmt` for the common value types.
#[derive(Debug, Default, Clone, Copy)]
pub struct FastFields;

impl<'w> FormatFields<'w> for FastFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = FastVisitor {
            fast: !writer.has_ansi_escapes(),
            writer,
            is_empty: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct FastVisitor<'w> {
    writer: Writer<'w>,
    /// No colours: field names are written plain, so the direct path applies.
    fast: bool,
    is_empty: bool,
    result: fmt::Result,
}

impl FastVisitor<'_> {
    /// Fields the stock visitor writes in a way of its own: the message (with
    /// ANSI escaping), and raw identifiers (`r#type`, written without `r#`).
    fn is_direct(&self, field: &Field) -> bool {
        self.fast && field.name() != "message" && !field.name().starts_with("r#")
    }

    /// ` name=` (with `"` to open a string), as the stock visitor writes it.
    fn name(&mut self, field: &Field, quote: bool) -> fmt::Result {
        if !std::mem::take(&mut self.is_empty) {
            self.writer.write_char(' ')?;
        }
        self.writer.write_str(field.name())?;
        self.writer.write_str(if quote { "=\"" } else { "=" })
    }

    fn integer(&mut self, field: &Field, value: impl itoa::Integer) {
        if self.result.is_ok() {
            let mut digits = itoa::Buffer::new();
            self.result = self
                .name(field, false)
                .and_then(|()| self.writer.write_str(digits.format(value)));
        }
    }

    /// Anything the direct path does not cover, written by the stock visitor.
    fn stock(&mut self, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        if self.result.is_ok() {
            let mut stock = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
            record(&mut stock);
            self.result = stock.finish();
            self.is_empty = false;
        }
    }
}

/// A string its `Debug` form writes unchanged between quotes.
fn needs_no_escape(value: &str) -> bool {
    value
        .bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
}

impl Visit for FastVisitor<'_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.is_direct(field) {
            self.integer(field, value);
        } else {
            self.stock(|v| v.record_u64(field, value));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.is_direct(field) {
            self.integer(field, value);
        } else {
            self.stock(|v| v.record_i64(field, value));
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.is_direct(field) && self.result.is_ok() {
            let text = if value { "true" } else { "false" };
            self.result = self
                .name(field, false)
                .and_then(|()| self.writer.write_str(text));
        } else {
            self.stock(|v| v.record_bool(field, value));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if self.is_direct(field) && needs_no_escape(value) && self.result.is_ok() {
            self.result = self.name(field, true).and_then(|()| {
                self.writer.write_str(value)?;
                self.writer.write_char('"')
            });
        } else {
            self.stock(|v| v.record_str(field, value));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.stock(|v| v.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.stock(|v| v.record_debug(field, value));
    }
}

/// RFC 3339 UTC time with microseconds, as `tracing-subscriber`'s
/// `SystemTime` writes it (`2026-12-02T02:00:00.123456Z`).
#[derive(Debug, Default, Clone, Copy)]
pub struct CachedUtcTime;

/// The second last formatted on this thread, and its text up to the seconds.
type SecondPrefix = (u64, [u8; 19]);

thread_local! {
    static LAST_SECOND: Cell<Option<SecondPrefix>> = const { Cell::new(None) };
}

impl FormatTime for CachedUtcTime {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        let Some(since_epoch) = SystemTime::now().duration_since(UNIX_EPOCH).ok() else {
            return tracing_subscriber::fmt::time::SystemTime.format_time(w);
        };
        let secs = since_epoch.as_secs();
        let prefix = match LAST_SECOND.get() {
            Some((cached, prefix)) if cached == secs => prefix,
            _ => match second_prefix(secs) {
                Some(prefix) => {
                    LAST_SECOND.set(Some((secs, prefix)));
                    prefix
                }
                // Past year 9999: the stock timer's own notation.
                None => return tracing_subscriber::fmt::time::SystemTime.format_time(w),
            },
        };
        let mut tail = *b".000000Z";
        write_digits(&mut tail[1..7], since_epoch.subsec_micros());
        // Both are ASCII digits and punctuation by construction.
        w.write_str(std::str::from_utf8(&prefix).map_err(|_| fmt::Error)?)?;
        w.write_str(std::str::from_utf8(&tail).map_err(|_| fmt::Error)?)
    }
}

/// `YYYY-MM-DDTHH:MM:SS` of a second since the epoch (None past year 9999).
fn second_prefix(secs: u64) -> Option<[u8; 19]> {
    let days = i64::try_from(secs / 86_400).ok()?;
    let (year, month, day) = crate::calendar::civil_from_days(days);
    let year = u32::try_from(year).ok().filter(|y| *y <= 9999)?;
    let in_day = (secs % 86_400) as u32;
    let mut text = *b"0000-00-00T00:00:00";
    write_digits(&mut text[0..4], year);
    write_digits(&mut text[5..7], month);
    write_digits(&mut text[8..10], day);
    write_digits(&mut text[11..13], in_day / 3600);
    write_digits(&mut text[14..16], in_day / 60 % 60);
    write_digits(&mut text[17..19], in_day % 60);
    Some(text)
}

/// Writes `value` zero-padded into `out` (its low digits, if it is longer).
fn write_digits(out: &mut [u8], mut value: u32) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// Collects what a subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
            String::from_utf8_lossy(&bytes).into_owned()
        }
    }

    #[derive(Debug)]
    struct Failure;
    impl fmt::Display for Failure {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("upstream \"went\" away \u{1b}[31m")
        }
    }
    impl std::error::Error for Failure {}

    /// Every kind of field keygate logs, and the awkward ones it might.
    fn emit_events() {
        let elapsed = Duration::from_micros(1234);
        tracing::info!(
            client = "app-one",
            provider = "openai",
            status = 200u16,
            latency_us = elapsed.as_micros() as u64,
            key_id = "key_20261202",
            attempts = 2u32,
            error = "-",
            "request"
        );
        tracing::warn!(
            provider = %"xai",
            key_id = %"key_a",
            status = 401u16,
            probe = false,
            first_failure = true,
            cooldown_s = 30u64,
            "UPSTREAM REJECTED KEY {} of provider {} ({}); it is suspect for {:?}{}",
            "key_a",
            "xai",
            http::StatusCode::UNAUTHORIZED,
            Duration::from_secs(30),
            ", retrying with the next key"
        );
        tracing::info!(
            quoted = "say \"hi\"",
            backslash = r"C:\keys",
            control = "line\nbreak\ttab\u{1b}[0m",
            unicode = "naïve ☃",
            empty = "",
            negative = -42i64,
            min = i64::MIN,
            max = u64::MAX,
            float = 0.1 + 0.2,
            whole = 3.0f64,
            wide = u128::MAX,
            r#type = "raw",
            a_field_name_long_enough_not_to_fit_the_sixty_four_byte_buffer_at_all = 7u64,
            a_field_name_long_enough_not_to_fit_the_sixty_four_byte_buffer_as_text = "x",
            debugged = ?Some("x"),
            shown = %"plain",
            "message with {} and \u{1b}[1m escapes",
            "args"
        );
        tracing::error!(error = &Failure as &(dyn std::error::Error + 'static));
        tracing::info!(only = 1u64);
        tracing::info!("message only");
        tracing::info!(first = "a", "then the message");
        let span = tracing::info_span!("drain", in_flight = 3u64, name = "listener \"a\"");
        let _entered = span.enter();
        tracing::warn!(left = 0u64, "inside a span");
    }

    fn render_json() -> String {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = json_builder()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, emit_events);
        out.text()
    }

    #[test]
    fn json_lines_carry_the_text_lines_fields() {
        let text = render(true);
        let json = render_json();
        let lines: Vec<serde_json::Value> = json
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect();
        assert_eq!(lines.len(), text.lines().count(), "{json}");
        let request = &lines[0];
        assert_eq!(request["level"], "INFO");
        assert_eq!(request["target"], "keygate::control::log_format::tests");
        assert_eq!(request["message"], "request");
        for (name, value) in [
            ("client", serde_json::json!("app-one")),
            ("provider", serde_json::json!("openai")),
            ("status", serde_json::json!(200)),
            ("latency_us", serde_json::json!(1234)),
            ("key_id", serde_json::json!("key_20261202")),
            ("attempts", serde_json::json!(2)),
            ("error", serde_json::json!("-")),
        ] {
            assert_eq!(request[name], value, "{name} in {request}");
            assert!(text.lines().next().is_some_and(|l| l.contains(name)));
        }
        let timestamp = request["timestamp"].as_str().unwrap_or_default();
        assert!(
            timestamp.len() == 27 && timestamp.ends_with('Z') && &timestamp[10..11] == "T",
            "{timestamp}"
        );
        // Every awkward value comes back as it was logged.
        let awkward = &lines[2];
        assert_eq!(awkward["quoted"], "say \"hi\"");
        assert_eq!(awkward["backslash"], r"C:\keys");
        assert_eq!(awkward["control"], "line\nbreak\ttab\u{1b}[0m");
        assert_eq!(awkward["unicode"], "naïve ☃");
        assert_eq!(awkward["empty"], "");
        assert_eq!(awkward["negative"], -42);
        assert_eq!(awkward["min"], i64::MIN);
        assert_eq!(awkward["max"], u64::MAX);
        assert_eq!(awkward["float"], 0.1 + 0.2);
        assert_eq!(awkward["whole"], 3.0);
        assert_eq!(awkward["type"], "raw");
        assert_eq!(awkward["debugged"], "Some(\"x\")");
        assert_eq!(awkward["shown"], "plain");
        assert_eq!(
            awkward["message"],
            "message with args and \u{1b}[1m escapes"
        );
        assert!(!json.contains('\u{1b}'), "an escape byte went out raw");
        let wide = json.lines().nth(2).unwrap_or_default();
        assert!(wide.contains(&format!("\"wide\":{}", u128::MAX)), "{wide}");
        assert_eq!(
            lines[3]["error"], "upstream \"went\" away \u{1b}[31m",
            "{}",
            lines[3]
        );
        // A line inside a span names the span and its fields.
        let inside = &lines[7];
        assert_eq!(inside["message"], "inside a span");
        assert_eq!(inside["left"], 0);
        assert_eq!(inside["spans"][0]["in_flight"], 3, "{inside}");
        let raw = json.lines().nth(7).unwrap_or_default();
        assert!(
            raw.ends_with(r#","spans":[{"name":"drain","in_flight":3,"name":"listener \"a\""}]}"#),
            "{raw}"
        );
        assert!(lines[0].get("spans").is_none());
    }

    fn render(fast: bool) -> String {
        let out = Captured::default();
        let writer = out.clone();
        let make_writer = move || writer.clone();
        if fast {
            let subscriber = builder()
                .without_time()
                .with_max_level(tracing::Level::TRACE)
                .with_writer(make_writer)
                .finish();
            tracing::subscriber::with_default(subscriber, emit_events);
        } else {
            let subscriber = tracing_subscriber::fmt()
                .with_ansi(false)
                .without_time()
                .with_max_level(tracing::Level::TRACE)
                .with_writer(make_writer)
                .finish();
            tracing::subscriber::with_default(subscriber, emit_events);
        }
        out.text()
    }

    #[test]
    fn fast_fields_write_what_the_stock_formatter_writes() {
        let stock = render(false);
        let fast = render(true);
        assert_eq!(stock.lines().count(), 8, "{stock}");
        assert!(stock.contains("client=\"app-one\""), "{stock}");
        assert!(stock.contains("latency_us=1234"), "{stock}");
        assert_eq!(fast, stock);
    }

    fn stock_time() -> String {
        let mut text = String::new();
        let _ = tracing_subscriber::fmt::time::SystemTime.format_time(&mut Writer::new(&mut text));
        text
    }

    fn cached_time() -> String {
        let mut text = String::new();
        let _ = CachedUtcTime.format_time(&mut Writer::new(&mut text));
        text
    }

    #[test]
    fn cached_time_reads_like_the_stock_timer() {
        for _ in 0..3 {
            // The first read fills this thread's cache for its second (or
            // finds it filled); the second, within the same second, is
            // written from the cache.
            let before = stock_time();
            let (filled, from_cache) = (cached_time(), cached_time());
            let after = stock_time();
            // The same second on either side: both prefixes must match it
            // exactly, and the microseconds lie between the two readings.
            if before[..19] == after[..19] {
                for cached in [&filled, &from_cache] {
                    assert_eq!(cached.len(), before.len(), "{cached} vs {before}");
                    assert!(
                        cached.ends_with('Z') && cached.as_bytes()[19] == b'.',
                        "{cached}"
                    );
                    assert_eq!(cached[..19], before[..19]);
                    assert!(
                        before <= *cached && *cached <= after,
                        "{before} {cached} {after}"
                    );
                }
                assert!(filled <= from_cache, "{filled} {from_cache}");
                return;
            }
        }
        panic!("the second changed three times in a row");
    }

    #[test]
    fn the_calendar_agrees_with_http_dates_across_four_centuries() {
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        // Every day from 1970 to 2370 (leap years, 2000 and 2100 included),
        // at a time of day that moves with the day.
        for day in 0..146_097u64 {
            let secs = day * 86_400 + (day * 7_919) % 86_400;
            let ours = second_prefix(secs).map(|p| String::from_utf8_lossy(&p).into_owned());
            let http = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
            // "Tue, 15 Nov 1994 08:12:31 GMT"
            let parts: Vec<&str> = http.split([' ', ':']).collect();
            let month = MONTHS.iter().position(|m| *m == parts[2]).map(|m| m + 1);
            let expected = format!(
                "{}-{:02}-{}T{}:{}:{}",
                parts[3],
                month.unwrap_or(0),
                parts[1],
                parts[4],
                parts[5],
                parts[6]
            );
            assert_eq!(ours.as_deref(), Some(expected.as_str()), "second {secs}");
        }
    }

    #[test]
    fn the_calendar_knows_its_edges() {
        let text = |secs| second_prefix(secs).map(|p| String::from_utf8_lossy(&p).into_owned());
        assert_eq!(text(0).as_deref(), Some("1970-01-01T00:00:00"));
        assert_eq!(text(951_825_599).as_deref(), Some("2000-02-29T11:59:59"));
        assert_eq!(
            text(253_402_300_799).as_deref(),
            Some("9999-12-31T23:59:59")
        );
        assert_eq!(text(253_402_300_800), None);
    }
}
