//! `[server] log_format = "json"`: one JSON object per line, with the fields
//! of the text line — `timestamp`, `level`, `target`, `message`, every field
//! of the event under its own name, and the spans it happened in (`spans`,
//! outermost first, each `{"name", …fields}`).
//!
//! Written as cheaply as the text line: straight into the subscriber's line
//! buffer, integers through `itoa`, strings escaped byte by byte, with no
//! `serde_json::Value` (nor any allocation) per line. `tracing-subscriber`'s
//! own `json` feature builds each line through serde_json's serializer over
//! `core::fmt`, and its field visitor collects the fields into a map first.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use super::CachedUtcTime;

/// The whole line: `{"timestamp":…,"level":…,"target":…, fields…, "spans":[…]}`.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonLine;

impl<S> FormatEvent<S, JsonFields> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        writer.write_str("{\"timestamp\":\"")?;
        CachedUtcTime.format_time(&mut writer)?;
        writer.write_str("\",\"level\":\"")?;
        writer.write_str(meta.level().as_str())?;
        writer.write_str("\",\"target\":")?;
        string(&mut writer, meta.target())?;
        let mut visitor = JsonVisitor {
            writer: writer.by_ref(),
            comma: true,
            result: Ok(()),
        };
        event.record(&mut visitor);
        visitor.result?;
        if let Some(scope) = ctx.event_scope() {
            let mut first = true;
            for span in scope.from_root() {
                writer.write_str(if first { ",\"spans\":[" } else { "," })?;
                first = false;
                writer.write_str("{\"name\":")?;
                string(&mut writer, span.name())?;
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<JsonFields>>() {
                    if !fields.is_empty() {
                        writer.write_char(',')?;
                        writer.write_str(fields)?;
                    }
                }
                writer.write_char('}')?;
            }
            if !first {
                writer.write_char(']')?;
            }
        }
        writer.write_str("}\n")
    }
}

/// Fields as JSON members (`"name":value`, comma-separated): an event's,
/// and each span's, kept with the span for the lines inside it.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonFields;

impl<'w> FormatFields<'w> for JsonFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = JsonVisitor {
            writer,
            comma: false,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.finish()
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let comma = !current.fields.is_empty();
        let mut visitor = JsonVisitor {
            writer: current.as_writer(),
            comma,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.finish()
    }
}

struct JsonVisitor<'w> {
    writer: Writer<'w>,
    /// A member was written before: the next one starts with a comma.
    comma: bool,
    result: fmt::Result,
}

impl VisitOutput<fmt::Result> for JsonVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl JsonVisitor<'_> {
    /// Writes `"name":` and then the value, unless an earlier write failed.
    fn member(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        let comma = std::mem::replace(&mut self.comma, true);
        let name = field.name();
        // A raw identifier (`r#type`) is logged under its plain name.
        let name = name.strip_prefix("r#").unwrap_or(name);
        self.result = (|| {
            if comma {
                self.writer.write_char(',')?;
            }
            string(&mut self.writer, name)?;
            self.writer.write_char(':')?;
            value(&mut self.writer)
        })();
    }
}

impl Visit for JsonVisitor<'_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.member(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.member(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.member(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity: those are written as null.
        self.member(field, |w| {
            if value.is_finite() {
                write!(w, "{value}")
            } else {
                w.write_str("null")
            }
        });
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field, |w| w.write_str(if value { "true" } else { "false" }));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.member(field, |w| string(w, value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // The error and its sources, as one sentence.
        self.member(field, |w| {
            w.write_char('"')?;
            let mut escaped = Escaped(w);
            write!(escaped, "{value}")?;
            let mut source = value.source();
            while let Some(error) = source {
                write!(escaped, ": {error}")?;
                source = error.source();
            }
            w.write_char('"')
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.member(field, |w| {
            w.write_char('"')?;
            write!(Escaped(w), "{value:?}")?;
            w.write_char('"')
        });
    }
}

/// `value` as a JSON string, quotes included.
fn string(w: &mut Writer<'_>, value: &str) -> fmt::Result {
    w.write_char('"')?;
    Escaped(w).write_str(value)?;
    w.write_char('"')
}

/// Writes what it is given escaped for the inside of a JSON string: `"`,
/// `\` and every control character (so no line break, and no terminal
/// escape sequence, ever reaches the log raw).
struct Escaped<'a, 'w>(&'a mut Writer<'w>);

impl fmt::Write for Escaped<'_, '_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let bytes = text.as_bytes();
        let mut plain = 0;
        for (i, &byte) in bytes.iter().enumerate() {
            let escape = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f | 0x7f => "",
                _ => continue,
            };
            // Only ASCII bytes are escaped, so every cut is on a char boundary.
            self.0.write_str(&text[plain..i])?;
            plain = i + 1;
            if escape.is_empty() {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                self.0.write_str("\\u00")?;
                self.0.write_char(char::from(HEX[usize::from(byte >> 4)]))?;
                self.0
                    .write_char(char::from(HEX[usize::from(byte & 0xf)]))?;
            } else {
                self.0.write_str(escape)?;
            }
        }
        self.0.write_str(&text[plain..])
    }
}
