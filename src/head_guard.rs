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
    line: Vec<u8>,
    head: Vec<u8>,
}

impl Default for HeadGuard {
    fn default() -> Self {
        HeadGuard {
            state: State::Head,
            line: Vec::new(),
            head: Vec::new(),
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
                        self.push_line(bytes);
                        return Ok(());
                    };
                    self.push_line(&bytes[..at]);
                    bytes = &bytes[at + 1..];
                    if self.line.last() != Some(&b'\r') {
                        return Err(BareLf);
                    }
                    self.line.pop();
                    self.end_of_line();
                    self.line.clear();
                }
            }
        }
        Ok(())
    }

    fn push_line(&mut self, part: &[u8]) {
        if self.line.len() + part.len() > MAX_HEAD {
            self.state = State::Off;
            return;
        }
        self.line.extend_from_slice(part);
    }

    fn end_of_line(&mut self) {
        match self.state {
            State::Head => {
                if self.line.is_empty() {
                    if self.head.is_empty() {
                        return; // blank lines before a request are allowed
                    }
                    self.head.extend_from_slice(b"\r\n");
                    self.state = body_framing(&self.head);
                    self.head.clear();
                    return;
                }
                if self.head.len() + self.line.len() > MAX_HEAD {
                    self.state = State::Off;
                    return;
                }
                self.head.extend_from_slice(&self.line);
                self.head.extend_from_slice(b"\r\n");
            }
            State::ChunkSize => {
                let digits = self.line.split(|&b| b == b';').next().unwrap_or(&[]);
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
                self.state = if self.line.is_empty() {
                    State::ChunkSize
                } else {
                    State::Off
                };
            }
            State::Trailers if self.line.is_empty() => self.state = State::Head,
            _ => {}
        }
    }
}

/// How the body after `head` is framed, as hyper will read it.
fn body_framing(head: &[u8]) -> State {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return State::Off,
    }
    let mut chunked = false;
    let mut length = None;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = header
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            if !chunked {
                return State::Off;
            }
        } else if header.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            if length.is_none() {
                return State::Off;
            }
        }
    }
    match (chunked, length) {
        (true, _) => State::ChunkSize,
        (false, Some(n)) => State::Body(n),
        (false, None) => State::Head,
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
        for split in [1, 2, 7, stream.len()] {
            assert!(feed(&stream, split).is_ok(), "split {split}");
        }
        // ...and a bare LF in the *next* head is still caught.
        stream.extend_from_slice(b"GET / HTTP/1.1\nHost: a\r\n\r\n");
        assert!(feed(&stream, 3).is_err());
    }
}
