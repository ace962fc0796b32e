//! A byte-level guard in front of hyper's HTTP/1 parser: refuses a request
//! head (or chunk line, or trailer) containing a bare LF.
//!
//! hyper/httparse accept a lone `\n` as a line end (RFC 9112 §2.2 lets a
//! recipient do so), which turns `X-A: b<LF>X-Evil: 1` into two headers — header
//! injection when a front proxy kept the LF inside one value. The guard follows
//! the request framing (Content-Length or chunked) so bodies, which may hold any
//! bytes, are never inspected. It only reads bytes; it never changes them.

/// Why the connection is refused.
#[derive(Debug, thiserror::Error)]
#[error("bare LF in an HTTP/1 request head: refused")]
pub struct BareLf;

/// Largest head the guard follows (hyper refuses larger ones itself).
const MAX_HEAD: usize = 64 * 1024;

#[derive(Debug)]
enum State {
    /// Reading a request head (or leading blank lines).
    Head,
    /// Skipping `n` body bytes.
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    /// Skipping chunk data, then its CRLF.
    ChunkData(u64),
    /// Reading trailer lines after the last chunk.
    Trailers,
    /// Something the guard does not follow (hyper answers it): stop guarding.
    Off,
}

/// Follows one HTTP/1 connection's request bytes.
#[derive(Debug)]
pub struct HeadGuard {
    state: State,
    /// The start of a line that has not ended yet (split across reads).
    partial: Vec<u8>,
    head: HeadSoFar,
}

/// What the guard needs of the head being read: its size and its framing.
/// Framing is read line by line, so a head is never copied or parsed twice.
#[derive(Debug, Default)]
struct HeadSoFar {
    /// The request line has been seen.
    started: bool,
    bytes: usize,
    /// A Transfer-Encoding line was seen (its value is then the framing).
    encoded: bool,
    chunked: bool,
    length: Option<u64>,
    /// A Content-Length line the guard cannot read.
    bad_length: bool,
}

impl Default for HeadGuard {
    fn default() -> Self {
        HeadGuard {
            state: State::Head,
            partial: Vec::new(),
            head: HeadSoFar::default(),
        }
    }
}

impl HeadGuard {
    /// Inspects the next bytes the client sent.
    pub fn observe(&mut self, mut bytes: &[u8]) -> Result<(), BareLf> {
        while !bytes.is_empty() {
            match self.state {
                State::Off => return Ok(()),
                State::Body(remaining) | State::ChunkData(remaining) if remaining > 0 => {
                    let take = remaining.min(bytes.len() as u64);
                    bytes = &bytes[take as usize..];
                    self.state = match self.state {
                        State::Body(_) => State::Body(remaining - take),
                        _ => State::ChunkData(remaining - take),
                    };
                }
                State::Body(_) => self.state = State::Head,
                _ => {
                    // Line-oriented states: find the end of the current line.
                    let Some(at) = memchr::memchr(b'\n', bytes) else {
                        self.keep_partial(bytes);
                        return Ok(());
                    };
                    let end = &bytes[..at];
                    bytes = &bytes[at + 1..];
                    if self.partial.is_empty() {
                        // The whole line is in this read: look at it in place.
                        let Some(line) = end.strip_suffix(b"\r") else {
                            return Err(BareLf);
                        };
                        self.end_of_line(line);
                    } else {
                        self.keep_partial(end);
                        if matches!(self.state, State::Off) {
                            return Ok(());
                        }
                        let mut line = std::mem::take(&mut self.partial);
                        if line.pop() != Some(b'\r') {
                            return Err(BareLf);
                        }
                        self.end_of_line(&line);
                        line.clear();
                        self.partial = line;
                    }
                }
            }
        }
        Ok(())
    }

    fn keep_partial(&mut self, part: &[u8]) {
        if self.partial.len() + part.len() > MAX_HEAD {
            self.state = State::Off;
            return;
        }
        self.partial.extend_from_slice(part);
    }

    fn end_of_line(&mut self, line: &[u8]) {
        match self.state {
            State::Head => {
                if line.is_empty() {
                    if self.head.started {
                        self.state = std::mem::take(&mut self.head).framing();
                    }
                    // else: blank lines before a request are allowed
                    return;
                }
                self.head.bytes += line.len() + 2;
                if self.head.bytes > MAX_HEAD {
                    self.state = State::Off;
                } else if !self.head.started {
                    self.head.started = true; // the request line
                } else if !self.head.header_line(line) {
                    self.state = State::Off;
                }
            }
            State::ChunkSize => {
                let digits = line.split(|&b| b == b';').next().unwrap_or(&[]);
                let size = std::str::from_utf8(digits)
                    .ok()
                    .and_then(|text| u64::from_str_radix(text.trim(), 16).ok());
                self.state = match size {
                    Some(0) => State::Trailers,
                    // data, then the CRLF that ends it (an empty line)
                    Some(n) => State::ChunkData(n),
                    None => State::Off,
                };
            }
            State::ChunkData(0) => {
                // The line after chunk data must be empty.
                self.state = if line.is_empty() {
                    State::ChunkSize
                } else {
                    State::Off
                };
            }
            State::Trailers if line.is_empty() => self.state = State::Head,
            _ => {}
        }
    }
}

impl HeadSoFar {
    /// Notes the framing a header line sets; false for a line the guard
    /// does not follow (folded, no colon, unreadable framing), which hyper
    /// answers itself.
    fn header_line(&mut self, line: &[u8]) -> bool {
        if line.starts_with(b" ") || line.starts_with(b"\t") {
            return false; // obsolete line folding
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            return false;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Each line on its own, the last one deciding, as hyper reads it:
            // `gzip` then `chunked` is chunked (stopping at `gzip` would leave
            // the next head unguarded). Not chunked at the end: see `framing`.
            self.encoded = true;
            self.chunked = value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            return true;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            // Unreadable: decided at the end of the head, not here. hyper
            // ignores a length after a chunked Transfer-Encoding, so the rest
            // of this head is still one it parses, and must be guarded.
            match std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
            {
                Some(length) => self.length = Some(length),
                None => self.bad_length = true,
            }
            return true;
        }
        true
    }

    fn framing(self) -> State {
        match (self.chunked, self.length) {
            (true, _) => State::ChunkSize,
            // Encoded but not chunked last, or a length that cannot be read:
            // hyper refuses the request.
            _ if self.encoded || self.bad_length => State::Off,
            (false, Some(n)) => State::Body(n),
            (false, None) => State::Head,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(bytes: &[u8], split: usize) -> Result<(), BareLf> {
        let mut guard = HeadGuard::default();
        for chunk in bytes.chunks(split.max(1)) {
            guard.observe(chunk)?;
        }
        Ok(())
    }

    #[test]
    fn bare_lf_in_a_head_is_refused_at_any_split() {
        let evil = b"POST /v1/x HTTP/1.1\r\nHost: a\r\nX-A: b\nX-Evil: 1\r\n\r\n";
        for split in 1..evil.len() {
            assert!(feed(evil, split).is_err(), "split {split}");
        }
    }

    #[test]
    fn bodies_may_hold_bare_lf_and_keep_alive_continues() {
        let body = b"{\n \"a\": 1\n}";
        let mut stream = format!(
            "POST /v1/x HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        stream.extend_from_slice(body);
        stream.extend_from_slice(b"POST /v1/y HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        stream.extend_from_slice(b"5\r\n\n\n\n\n\n\r\n0\r\n\r\n");
        stream.extend_from_slice(b"GET /v1/models HTTP/1.1\r\nHost: a\r\n\r\n");
        for split in 1..=stream.len() {
            assert!(feed(&stream, split).is_ok(), "split {split}");
        }
        // ...and a bare LF in the *next* head is still caught.
        stream.extend_from_slice(b"GET / HTTP/1.1\nHost: a\r\n\r\n");
        assert!(feed(&stream, 3).is_err());
    }

    #[test]
    fn framing_is_read_case_blind_and_chunked_wins_over_a_length() {
        // A bare LF in the body of a chunked request that also names a length:
        // chunked frames it (as hyper does), so the body is skipped.
        let mut stream = b"POST /v1/x HTTP/1.1\r\ncontent-LENGTH: 3\r\nTRANSFER-ENCODING: gzip, chunked\r\n\r\n4\r\n\n\n\n\n\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n".to_vec();
        assert!(feed(&stream, 5).is_ok());
        // Still on after it (a guard that gave up would also pass the above):
        // a bare LF in the next head is caught.
        stream.extend_from_slice(b"GET / HTTP/1.1\nHost: a\r\n\r\n");
        assert!(feed(&stream, 5).is_err());
    }

    #[test]
    fn the_last_transfer_encoding_line_decides_as_in_hyper() {
        // hyper reads each Transfer-Encoding line on its own and the last one
        // decides: `gzip` then `chunked` is a chunked keep-alive request. The
        // guard must follow it, not stop, or the next head goes unguarded
        // (fuzz/regressions/head_guard/te-gzip-then-chunked).
        let mut stream = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n\n\n\n\r\n0\r\n\r\n".to_vec();
        assert!(feed(&stream, 7).is_ok());
        stream.extend_from_slice(b"GET / HTTP/1.1\r\nHost: a\nX-Evil: 1\r\n\r\n");
        for split in 1..=stream.len() {
            assert!(feed(&stream, split).is_err(), "split {split}");
        }
        // `chunked` then `gzip`: hyper refuses the request; the guard stops.
        let mut guard = HeadGuard::default();
        let refused =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\nx\ny";
        assert!(guard.observe(refused).is_ok());
        assert!(matches!(guard.state, State::Off));
    }

    #[test]
    fn an_unreadable_length_beside_chunked_does_not_stop_the_guard() {
        // hyper ignores a Content-Length after a chunked Transfer-Encoding,
        // however malformed, and accepts the head: a bare LF later in it must
        // still be refused (fuzz/regressions/head_guard/te-then-bad-length).
        let head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: x\r\nX-A: b\nX-Evil: 1\r\n\r\n0\r\n\r\n";
        for split in 1..=head.len() {
            assert!(feed(head, split).is_err(), "split {split}");
        }
        // Without a bare LF it is followed as chunked.
        let mut guard = HeadGuard::default();
        let fine = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: x\r\n\r\n";
        assert!(guard.observe(fine).is_ok());
        assert!(matches!(guard.state, State::ChunkSize));
    }

    #[test]
    fn heads_it_cannot_follow_turn_it_off_instead_of_guessing() {
        // Folded header, a header without a colon, an unreadable length: hyper
        // refuses these itself; the guard stops rather than misjudge framing.
        for head in [
            &b"POST / HTTP/1.1\r\nContent-Length: 1\r\n 2\r\n\r\nx\ny"[..],
            b"POST / HTTP/1.1\r\nno colon here\r\n\r\nx\ny",
            b"POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\nx\ny",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\nx\ny",
        ] {
            let mut guard = HeadGuard::default();
            assert!(guard.observe(head).is_ok());
            assert!(matches!(guard.state, State::Off), "{head:?}");
        }
    }
}
