//! The meter's tap on a response body: every frame is forwarded as it arrives,
//! and usage is read from it on the way by the [`UsageScanner`], which finds
//! the `usage` object without framing the stream.
//!
//! Only when keygate itself added `stream_options.include_usage` for a client
//! that did not ask does the tap re-frame the stream on event boundaries, to
//! drop the usage-only chunk that client never asked for; even then each event
//! goes out as soon as its blank line arrives.
//!
//! A compressed body (`Content-Encoding`) is read through a
//! [`Decoder`]: passing through, the client gets the upstream's bytes and the
//! scanner a decoded copy, piece by piece as they pass; re-framing, the
//! splitter works on the decoded stream and that is what the client gets
//! (the caller removes `Content-Encoding`).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::key_meter::KeyCounters;
use super::meter::{Outcome, TokenMetrics, UsageCounters};
use super::scan::UsageScanner;
use super::shapes::{self as usage, Usage};
use super::sse::SseSplitter;
use crate::net::content_coding::Decoder;
use crate::usage::limits::{Charge, Reservation};

enum Mode {
    /// Pass-through: frames go out untouched; a stream counts the usage seen
    /// even when cut, a JSON body's usage counts only if it arrived whole.
    Scan(UsageScanner),
    /// Removing the usage-only chunk: events are split out and re-framed.
    Reframe {
        splitter: SseSplitter,
        held: BytesMut,
        ends: Vec<(usize, bool)>,
    },
    Opaque,
}

/// A lower bound of the bytes of stream that carry one output token: an
/// OpenAI chunk is ~150–200 bytes for about a token, an Anthropic delta ~110
/// bytes for one to three. A stream cut before its usage is charged at least
/// what it passed at this rate, so reading a long answer and leaving before
/// the last event does not make it cheap.
const STREAM_BYTES_PER_TOKEN: u64 = 200;

/// Reads usage out of one response as it streams.
pub struct MeterTap {
    counters: Arc<UsageCounters>,
    /// The answering key's counters (per-key usage), when known.
    key: Option<Arc<KeyCounters>>,
    metrics: TokenMetrics,
    mode: Mode,
    usage: Option<Usage>,
    outcome: Outcome,
    reservation: Option<Reservation>,
    finished: bool,
    /// Decodes a compressed body before it is read.
    decoder: Option<Decoder>,
    /// The compressed body could not be decoded: its usage is unknown.
    undecodable: bool,
}

impl MeterTap {
    /// A tap for a response of `content_type`. `strip_usage_chunk`: keygate
    /// asked for usage on the client's behalf, so the usage-only chunk is removed.
    pub fn new(
        counters: Arc<UsageCounters>,
        metrics: TokenMetrics,
        content_type: Option<&str>,
        strip_usage_chunk: bool,
        outcome: Outcome,
        reservation: Option<Reservation>,
    ) -> Self {
        let content_type = content_type.unwrap_or("");
        let sse = content_type.starts_with("text/event-stream");
        let mode = if sse && strip_usage_chunk {
            Mode::Reframe {
                splitter: SseSplitter::default(),
                held: BytesMut::new(),
                ends: Vec::new(),
            }
        } else if sse || content_type.contains("json") {
            Mode::Scan(UsageScanner::new(sse))
        } else {
            Mode::Opaque
        };
        MeterTap {
            counters,
            key: None,
            metrics,
            mode,
            usage: None,
            outcome,
            reservation,
            finished: false,
            decoder: None,
            undecodable: false,
        }
    }

    /// Reads the body through `decoder` (it came compressed). True when the
    /// tap then forwards decoded bytes (it re-frames the stream), so the
    /// caller must drop `Content-Encoding`; false when the client gets the
    /// upstream's bytes as they are.
    pub fn decode(&mut self, decoder: Decoder) -> bool {
        match self.mode {
            Mode::Opaque => false,
            Mode::Scan(_) => {
                self.decoder = Some(decoder);
                false
            }
            Mode::Reframe { .. } => {
                self.decoder = Some(decoder);
                true
            }
        }
    }

    /// True once a stream the tap forwards decoded turned out corrupt: the
    /// caller ends it with an error.
    pub fn broken(&self) -> bool {
        self.undecodable && self.rewrites()
    }

    /// Observes one data frame; returns what to forward now (`None`: nothing
    /// yet, only when re-framing holds part of an event).
    pub fn on_data(&mut self, chunk: Bytes) -> Option<Bytes> {
        if chunk.is_empty() {
            return None; // nothing to forward (found by fuzzing: never emit empty frames)
        }
        self.outcome.response_bytes += chunk.len() as u64;
        match &mut self.mode {
            Mode::Opaque => Some(chunk),
            Mode::Scan(scanner) => {
                let fed = match &mut self.decoder {
                    None if !self.undecodable => {
                        scanner.feed(&chunk);
                        Ok(())
                    }
                    None => Ok(()),
                    Some(decoder) => decoder.feed(&chunk, &mut |piece| scanner.feed(piece)),
                };
                if fed.is_err() {
                    self.decoder = None;
                    self.undecodable = true;
                }
                Some(chunk)
            }
            Mode::Reframe {
                splitter,
                held,
                ends,
            } => {
                let chunk = match &mut self.decoder {
                    None => chunk,
                    Some(decoder) => {
                        let mut decoded = BytesMut::new();
                        let fed =
                            decoder.feed(&chunk, &mut |piece| decoded.extend_from_slice(piece));
                        if fed.is_err() {
                            self.decoder = None;
                            self.undecodable = true;
                            return None;
                        }
                        decoded.freeze()
                    }
                };
                reframe_events(splitter, held, ends, &mut self.usage, chunk)
            }
        }
    }

    /// True when the tap may drop bytes (so the body length is not the upstream's).
    pub fn rewrites(&self) -> bool {
        matches!(self.mode, Mode::Reframe { .. })
    }

    /// Bytes still held when the upstream body ends (an unterminated event).
    pub fn flush(&mut self) -> Option<Bytes> {
        let Mode::Reframe {
            splitter,
            held,
            ends,
        } = &mut self.mode
        else {
            return None;
        };
        // What the decoder still held, through the splitter like the rest.
        let mut out = None;
        if let Some(mut decoder) = self.decoder.take() {
            let mut tail = BytesMut::new();
            if decoder
                .finish(&mut |piece| tail.extend_from_slice(piece))
                .is_err()
            {
                self.undecodable = true;
            }
            if !tail.is_empty() {
                out = reframe_events(splitter, held, ends, &mut self.usage, tail.freeze());
            }
        }
        if held.is_empty() {
            return out;
        }
        let rest = held.split().freeze();
        Some(match out {
            Some(out) => Bytes::from([out, rest].concat()),
            None => rest,
        })
    }

    /// Also counts the answer against the key that carried it.
    pub fn for_key(mut self, key: Arc<KeyCounters>) -> Self {
        self.key = Some(key);
        self
    }

    /// Input and output tokens the answer reported, once [`MeterTap::finish`]
    /// read them.
    pub fn tokens(&self) -> Option<(u64, u64)> {
        self.usage.map(|usage| (usage.prompt, usage.completion))
    }

    /// Records the request; `complete` is false when the stream was cut.
    pub fn finish(&mut self, complete: bool) {
        if self.finished {
            return;
        }
        self.finished = true;
        if let Mode::Scan(scanner) = &mut self.mode {
            let mut complete = complete && !self.undecodable;
            if let Some(mut decoder) = self.decoder.take() {
                // Drop after a cut stream: what the decoder holds is not whole.
                if complete {
                    complete = decoder.finish(&mut |piece| scanner.feed(piece)).is_ok();
                }
            }
            // A cut JSON body may end before its usage is whole; a cut stream
            // still used the tokens it reported.
            if scanner.is_sse() || complete {
                self.usage = scanner.usage();
            }
        }
        self.outcome.incomplete = !complete;
        self.outcome.usage = self.usage;
        if let Some(usage) = self.usage {
            if usage.capped {
                tracing::warn!(
                    cap = crate::usage::shapes::MAX_ANSWER_TOKENS,
                    "the upstream reported more tokens in one answer than any context holds; counted at the cap"
                );
            }
            self.metrics.prompt.inc_by(usage.prompt);
            self.metrics.completion.inc_by(usage.completion);
            match self.metrics.price {
                Some(price) => self.outcome.cost_micros = price.cost_micros(&usage),
                None => {
                    self.outcome.unpriced = true;
                    self.metrics.unpriced.inc();
                }
            }
        }
        // No usage reported (omitted, cut, unreadable): the admission
        // estimate stays charged, and the ledger says so. A stream cut short
        // is charged at least its estimate too: its usage may come only at
        // the end (Anthropic's `message_start` reports 1 output token), so a
        // client leaving before it must not pay for what it saw so far alone.
        // Tokens charged by estimate are priced as output, the dearer side.
        let price = self.metrics.price;
        let estimated_cost = |tokens: u64| price.map_or(0, |p| p.most_micros(0, tokens));
        if let Some(reservation) = self.reservation.take() {
            let seen = self.usage.map(|u| u.total);
            // What the client was sent of a cut stream counts too, when it
            // is more: at least a token per `STREAM_BYTES_PER_TOKEN` bytes.
            let passed = self.outcome.response_bytes / STREAM_BYTES_PER_TOKEN;
            let charged = match seen {
                _ if complete => seen,
                Some(seen) => Some(seen.max(reservation.estimate()).max(passed)),
                None if passed > reservation.estimate() => Some(passed),
                None => None,
            };
            let estimated = !complete && seen.is_none() && charged.is_some();
            let charge = charged.map(|tokens| Charge {
                tokens,
                micros: match self.usage {
                    Some(usage) if tokens == usage.total => self.outcome.cost_micros,
                    // A cut stream charged more than it reported.
                    Some(_) => self.outcome.cost_micros.max(estimated_cost(tokens)),
                    None => estimated_cost(tokens),
                },
            });
            let kept = reservation.settle(charge);
            self.outcome.estimated_tokens = if estimated { charged } else { kept };
        }
        if let Some(tokens) = self.outcome.estimated_tokens {
            self.outcome.cost_micros = self.outcome.cost_micros.max(estimated_cost(tokens));
        }
        if self.outcome.cost_micros > 0 {
            self.metrics
                .cost
                .inc_by(self.outcome.cost_micros as f64 / 1e6);
        }
        if let Some(key) = &self.key {
            key.record(self.usage.as_ref(), self.outcome.cost_micros);
        }
        self.counters.record(&self.outcome);
    }
}

impl Drop for MeterTap {
    fn drop(&mut self) {
        // Dropped before the end: the client left or the stream failed.
        self.finish(false);
    }
}

/// Splits `chunk` into events, reads usage from each, and emits the complete
/// ones minus the usage-only chunk.
fn reframe_events(
    splitter: &mut SseSplitter,
    held: &mut BytesMut,
    ends: &mut Vec<(usize, bool)>,
    usage: &mut Option<Usage>,
    chunk: Bytes,
) -> Option<Bytes> {
    if chunk.is_empty() {
        return None;
    }
    ends.clear();
    splitter.feed(&chunk, |data, end| {
        let found = usage::find(data);
        if let Some(u) = found.usage {
            *usage = Some(Usage::merged(*usage, u));
        }
        ends.push((end, found.usage_only_chunk));
    });
    reframe(&chunk, held, ends)
}

/// Emits the complete events of `chunk` (with any bytes held from earlier
/// chunks), minus those marked to drop; holds the unfinished tail.
fn reframe(chunk: &Bytes, held: &mut BytesMut, ends: &[(usize, bool)]) -> Option<Bytes> {
    let Some(&(last_end, _)) = ends.last() else {
        held.extend_from_slice(chunk);
        return None;
    };
    let out = if held.is_empty() && ends.iter().all(|&(_, drop)| !drop) {
        chunk.slice(..last_end)
    } else {
        let mut out = BytesMut::with_capacity(held.len() + last_end);
        let mut start = 0;
        for &(end, drop) in ends {
            if !drop {
                out.extend_from_slice(held);
                out.extend_from_slice(&chunk[start..end]);
            }
            held.clear();
            start = end;
        }
        out.freeze()
    };
    held.extend_from_slice(&chunk[last_end..]);
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &[u8] = b"data: {\"choices\":[{\"delta\":{\"content\":\"h\xc3\xa9\"}}],\"usage\":null}\r\n\r\n: ping\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7}}\n\ndata: [DONE]\n\n";

    fn tap(strip: bool) -> (MeterTap, Arc<UsageCounters>) {
        let counters = Arc::new(UsageCounters::default());
        let metrics = TokenMetrics::detached(None);
        let tap = MeterTap::new(
            counters.clone(),
            metrics,
            Some("text/event-stream"),
            strip,
            Outcome::default(),
            None,
        );
        (tap, counters)
    }

    fn run(strip: bool, chunk_size: usize) -> (Vec<u8>, crate::usage::meter::UsageDelta) {
        let (mut tap, counters) = tap(strip);
        let mut out = Vec::new();
        for chunk in STREAM.chunks(chunk_size) {
            if let Some(bytes) = tap.on_data(Bytes::copy_from_slice(chunk)) {
                out.extend_from_slice(&bytes);
            }
        }
        if let Some(bytes) = tap.flush() {
            out.extend_from_slice(&bytes);
        }
        tap.finish(true);
        (out, counters.drain())
    }

    #[test]
    fn passthrough_is_byte_identical_at_any_chunking() {
        for size in [1, 2, 3, 7, 64, STREAM.len()] {
            let (out, delta) = run(false, size);
            assert_eq!(out, STREAM, "chunk size {size}");
            assert_eq!(
                (
                    delta.prompt_tokens,
                    delta.completion_tokens,
                    delta.total_tokens
                ),
                (3, 4, 7)
            );
            assert_eq!(delta.incomplete, 0);
        }
    }

    #[test]
    fn a_stream_cut_before_its_last_usage_is_charged_at_least_its_estimate() {
        use crate::usage::limits::{ClientLimits, Limits};
        // Anthropic reports input tokens and 1 output token first, the rest
        // only in the last `message_delta`: a client that leaves before it
        // saw 26 tokens of usage.
        const CUT: &[u8] = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n";
        let limits = Limits::default();
        let client: Arc<str> = Arc::from("app");
        let budget = ClientLimits {
            budget_tokens: Some(10_000),
            ..ClientLimits::default()
        };
        let reservation = limits
            .admit(
                &client,
                budget,
                || crate::usage::limits::Estimate {
                    tokens: 500,
                    micros: 0,
                },
                0,
            )
            .unwrap();
        let counters = Arc::new(UsageCounters::default());
        let metrics = TokenMetrics::detached(None);
        let mut tap = MeterTap::new(
            counters,
            metrics,
            Some("text/event-stream"),
            false,
            Outcome::default(),
            Some(reservation),
        );
        tap.on_data(Bytes::from_static(CUT));
        drop(tap); // the client left
        let (_, _, spent, _) = limits.counted("app", 0);
        assert_eq!(spent, 500, "charged its estimate, not the 26 tokens seen");

        // A long answer passed in full, then cut before any usage: charged
        // for what it passed (a token per 200 bytes at least), not the estimate.
        let reservation = limits
            .admit(
                &client,
                budget,
                || crate::usage::limits::Estimate {
                    tokens: 500,
                    micros: 0,
                },
                0,
            )
            .unwrap();
        let counters = Arc::new(UsageCounters::default());
        let metrics = TokenMetrics::detached(None);
        let mut tap = MeterTap::new(
            counters.clone(),
            metrics,
            Some("text/event-stream"),
            false,
            Outcome::default(),
            Some(reservation),
        );
        let chunk = Bytes::from(
            "data: {\"choices\":[{\"delta\":{\"content\":\"word \"}}]}\n\n".repeat(10_000),
        );
        let passed = chunk.len() as u64;
        tap.on_data(chunk);
        drop(tap);
        let (_, _, spent, _) = limits.counted("app", 0);
        assert_eq!(spent, 500 + passed / 200);
        assert_eq!(counters.drain().estimated_tokens, passed / 200);
    }

    #[test]
    fn stripping_removes_only_the_usage_chunk() {
        for size in [1, 5, STREAM.len()] {
            let (out, delta) = run(true, size);
            let text = String::from_utf8(out).unwrap();
            assert!(!text.contains("prompt_tokens"), "{text}");
            assert!(
                text.contains("h\u{e9}") && text.ends_with("data: [DONE]\n\n"),
                "{text}"
            );
            assert_eq!(delta.total_tokens, 7);
        }
    }

    #[test]
    fn empty_chunks_are_never_forwarded() {
        for strip in [false, true] {
            let (mut tap, _) = tap(strip);
            assert!(tap.on_data(Bytes::new()).is_none());
            assert!(tap.on_data(Bytes::from_static(b"data: x\n\n")).is_some());
        }
    }

    #[test]
    fn a_dropped_tap_is_recorded_as_incomplete() {
        let (mut tap, counters) = tap(false);
        tap.on_data(Bytes::from_static(b"data: {\"usage\":null}\n\n"));
        drop(tap);
        let delta = counters.drain();
        assert_eq!((delta.requests, delta.incomplete, delta.errors), (1, 1, 1));
    }
}
