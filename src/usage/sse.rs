//! Server-sent events framing, incremental: bytes in any chunking → complete
//! events' `data` payloads, with the byte offset where each event ends.
//!
//! Handles an event split across reads (even mid-line or between `\r` and
//! `\n`), `\n`, `\r\n` and `\r` line endings, `:` comments, and `data:` with or
//! without the space. Framing only: it knows nothing of usage or JSON.

/// An incremental SSE parser. Reuses its buffers: no allocation per chunk once
/// they have grown to the largest line/event seen.
#[derive(Debug, Default)]
pub struct SseSplitter {
    line: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    has_lines: bool,
    after_cr: bool,
}

impl SseSplitter {
    /// Feeds one chunk. `on_event(data, end)` is called for every event that
    /// completes in this chunk, with its joined `data` lines (empty for a block
    /// without data, such as a `: keep-alive` comment) and the offset in
    /// `chunk` just past the blank line that ended it.
    pub fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(&[u8], usize)) {
        let mut start = 0;
        while start < chunk.len() {
            if self.after_cr {
                self.after_cr = false;
                if chunk[start] == b'\n' {
                    start += 1;
                    continue;
                }
            }
            let Some(found) = memchr::memchr2(b'\n', b'\r', &chunk[start..]) else {
                self.line.extend_from_slice(&chunk[start..]);
                return;
            };
            let end = start + found;
            self.after_cr = chunk[end] == b'\r';
            if self.line.is_empty() {
                self.process_line_slice(&chunk[start..end], end + 1, &mut on_event);
            } else {
                self.line.extend_from_slice(&chunk[start..end]);
                let line = std::mem::take(&mut self.line);
                self.process_line_slice(&line, end + 1, &mut on_event);
                self.line = line;
                self.line.clear();
            }
            start = end + 1;
        }
    }

    fn process_line_slice(
        &mut self,
        line: &[u8],
        end: usize,
        on_event: &mut impl FnMut(&[u8], usize),
    ) {
        if line.is_empty() {
            if self.has_data {
                if self.data.last() == Some(&b'\n') {
                    self.data.pop();
                }
                on_event(&self.data, end);
            } else if self.has_lines {
                // A block without data (a `: keep-alive` comment): reported too,
                // so a re-framing tap forwards it at once instead of holding it.
                on_event(&[], end);
            }
            self.data.clear();
            self.has_data = false;
            self.has_lines = false;
            return;
        }
        self.has_lines = true;
        if line[0] == b':' {
            return;
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        if field == b"data" {
            self.data.extend_from_slice(value);
            self.data.push(b'\n');
            self.has_data = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(chunks: &[&[u8]]) -> Vec<String> {
        let mut splitter = SseSplitter::default();
        let mut out = Vec::new();
        for chunk in chunks {
            splitter.feed(chunk, |data, _| {
                out.push(String::from_utf8(data.to_vec()).unwrap())
            });
        }
        out
    }

    #[test]
    fn any_chunking_gives_the_same_events() {
        let stream = b": keep-alive\r\ndata: {\"a\":1}\r\n\r\nevent: x\ndata:{\"b\":\ndata: 2}\n\ndata: [DONE]\n\n";
        let whole = events(&[stream]);
        assert_eq!(whole, ["{\"a\":1}", "{\"b\":\n2}", "[DONE]"]);
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(events(&bytes), whole);
        for split in 0..stream.len() {
            assert_eq!(
                events(&[&stream[..split], &stream[split..]]),
                whole,
                "split at {split}"
            );
        }
    }

    #[test]
    fn comment_only_blocks_are_reported_empty() {
        assert_eq!(events(&[b": ping\n\ndata: x\n\n"]), ["", "x"]);
    }

    #[test]
    fn lone_cr_line_endings_work() {
        assert_eq!(events(&[b"data: x\r\rdata: y\r\r"]), ["x", "y"]);
    }

    #[test]
    fn event_end_offsets_point_past_the_blank_line() {
        let mut splitter = SseSplitter::default();
        let mut ends = Vec::new();
        splitter.feed(b"data: a\n\ndata: b\n\n", |_, end| ends.push(end));
        assert_eq!(ends, [9, 18]);
    }
}
