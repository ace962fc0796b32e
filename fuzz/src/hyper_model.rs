//! How hyper 1.x (server role, HTTP/1, the builder settings keygate uses)
//! frames a stream of pipelined requests: the `head_guard` target's reference.
//!
//! Heads are parsed by `httparse` with hyper's default `ParserConfig` and 100
//! header slots, exactly as `hyper::proto::h1::role::Server::parse` does; the
//! checks hyper adds after httparse (method, URI, Transfer-Encoding /
//! Content-Length rules, keep-alive) and its chunked decoder
//! (`hyper::proto::h1::decode`, trailers included) are ported from hyper
//! 1.12.0 line by line, so each state below names the hyper state it mirrors.
//! Bodies are assumed read to the end (keygate forwards every body).

/// How a request's body is framed, as hyper decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (neither Content-Length nor Transfer-Encoding).
    None,
    /// Content-Length.
    Length(u64),
    /// Transfer-Encoding whose last coding is `chunked`.
    Chunked,
}

/// One request hyper accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Offset of its first byte (leading blank lines included).
    pub start: usize,
    pub head_len: usize,
    pub method: String,
    pub path: String,
    pub headers: usize,
    pub framing: Framing,
}

/// Where hyper stops reading the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Every byte read; the next byte would start a new request.
    Boundary,
    /// Inside a Content-Length body that still needs `remaining` bytes.
    Body { remaining: u64 },
    /// Inside a head or a chunked body that has not ended; `bare_lf` is the
    /// first bare LF of the partial head (or of the trailers read so far),
    /// which the guard may refuse: hyper would take it as a line end.
    Incomplete { bare_lf: Option<usize> },
    /// hyper accepts a line ending in a bare LF at `at` (a head, or a
    /// trailer of a chunked body): what the guard exists to refuse.
    BareLf { at: usize },
    /// hyper refuses the request starting at `at` (400 and close): the bytes
    /// from `at` on are never framed by hyper.
    Error { at: usize },
    /// hyper stops after the request that ends at `at` (not keep-alive, or
    /// an upgrade, which this model does not follow).
    Closed { at: usize },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frames {
    pub messages: Vec<Message>,
    pub stop: Stop,
}

/// The first LF not preceded by CR in `bytes`.
pub fn first_bare_lf(bytes: &[u8]) -> Option<usize> {
    bytes
        .iter()
        .enumerate()
        .position(|(i, &b)| b == b'\n' && (i == 0 || bytes[i - 1] != b'\r'))
}

/// Frames `stream` as hyper would, request after request.
pub fn frame(stream: &[u8]) -> Frames {
    let mut messages = Vec::new();
    let mut pos = 0;
    let stop = loop {
        if pos == stream.len() {
            break Stop::Boundary;
        }
        let start = pos;
        let mut slots = [httparse::EMPTY_HEADER; 100];
        let mut req = httparse::Request::new(&mut slots);
        let head_len = match httparse::ParserConfig::default().parse_request(&mut req, &stream[pos..])
        {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => {
                break Stop::Incomplete {
                    bare_lf: first_bare_lf(&stream[pos..]).map(|i| pos + i),
                }
            }
            Err(_) => break Stop::Error { at: start },
        };
        let Ok(head) = hyper_checks(&req) else {
            break Stop::Error { at: start };
        };
        if let Some(i) = first_bare_lf(&stream[pos..pos + head_len]) {
            break Stop::BareLf { at: pos + i };
        }
        messages.push(Message {
            start,
            head_len,
            method: req.method.unwrap_or_default().to_owned(),
            path: req.path.unwrap_or_default().to_owned(),
            headers: req.headers.len(),
            framing: head.framing,
        });
        pos += head_len;
        match head.framing {
            Framing::None => {}
            Framing::Length(n) => {
                let available = (stream.len() - pos) as u64;
                if available < n {
                    break Stop::Body {
                        remaining: n - available,
                    };
                }
                pos += n as usize;
            }
            Framing::Chunked => match chunked(stream, pos) {
                Chunked::Done(end) => pos = end,
                Chunked::Incomplete(bare_lf) => break Stop::Incomplete { bare_lf },
                Chunked::Error => break Stop::Error { at: start },
                Chunked::BareLf(at) => break Stop::BareLf { at },
            },
        }
        if !head.keep_alive || head.upgrade {
            break Stop::Closed { at: pos };
        }
    };
    Frames { messages, stop }
}

struct Head {
    framing: Framing,
    keep_alive: bool,
    upgrade: bool,
}

/// What `Server::parse` does after httparse returns Complete.
fn hyper_checks(req: &httparse::Request<'_, '_>) -> Result<Head, ()> {
    let method = http::Method::from_bytes(req.method.ok_or(())?.as_bytes()).map_err(|_| ())?;
    http::Uri::try_from(req.path.ok_or(())?.as_bytes()).map_err(|_| ())?;
    let is_http_11 = req.version == Some(1);
    let mut keep_alive = is_http_11;
    let mut framing = Framing::None;
    let (mut con_len, mut is_cl, mut is_te, mut is_te_chunked) = (None, false, false, false);
    let mut saw_close = false;
    let mut upgrade = method == http::Method::CONNECT;
    for header in req.headers.iter() {
        let name = header.name.as_bytes();
        let value = header.value;
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if !is_http_11 {
                return Err(());
            }
            is_te = true;
            if is_cl {
                con_len = None;
            }
            is_te_chunked = is_chunked(value);
            if is_te_chunked {
                framing = Framing::Chunked;
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            is_cl = true;
            if is_te {
                continue;
            }
            let len = from_digits(value).ok_or(())?;
            if let Some(prev) = con_len {
                if prev != len {
                    return Err(());
                }
                continue;
            }
            if len > u64::MAX - 2 {
                return Err(()); // DecodedLength::checked_new
            }
            framing = Framing::Length(len);
            con_len = Some(len);
        } else if name.eq_ignore_ascii_case(b"connection") {
            if saw_close || connection_has(value, "close") {
                saw_close = true;
                keep_alive = false;
            } else if !keep_alive {
                keep_alive = connection_has(value, "keep-alive");
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade = is_http_11;
        }
    }
    if is_te && !is_te_chunked {
        return Err(());
    }
    if is_te && is_cl {
        keep_alive = false;
    }
    Ok(Head {
        framing,
        keep_alive,
        upgrade,
    })
}

/// `HeaderValue::to_str`: visible ASCII and tabs only.
fn to_str(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|&b| b == b'\t' || (32..127).contains(&b))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

fn is_chunked(value: &[u8]) -> bool {
    to_str(value)
        .and_then(|s| s.rsplit(',').next())
        .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
}

fn connection_has(value: &[u8], needle: &str) -> bool {
    to_str(value).is_some_and(|s| s.split(',').any(|v| v.trim().eq_ignore_ascii_case(needle)))
}

/// hyper's `from_digits`: ASCII digits only, no sign, no overflow.
fn from_digits(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() {
        return None;
    }
    bytes.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(b - b'0')))
            .flatten()
    })
}

enum Chunked {
    Done(usize),
    /// Not ended; the first bare LF of trailers read so far.
    Incomplete(Option<usize>),
    Error,
    BareLf(usize),
}

const CHUNKED_EXTENSIONS_LIMIT: u64 = 1024 * 16;
const TRAILER_LIMIT: usize = 1024 * 16;
const MAX_TRAILERS: usize = 100;

/// hyper's `ChunkedState` machine over `stream[pos..]`.
fn chunked(stream: &[u8], mut pos: usize) -> Chunked {
    #[derive(PartialEq)]
    enum S {
        Start,
        Size,
        SizeLws,
        Extension,
        SizeLf,
        Body,
        BodyCr,
        BodyLf,
        Trailer,
        TrailerLf,
        EndCr,
        EndLf,
    }
    let mut state = S::Start;
    let mut size = 0u64;
    let mut extensions = 0u64;
    let mut trailers: Option<Vec<u8>> = None;
    let mut trailer_count = 0usize;
    let mut bare_lf = None;
    let hex = |b: u8| (b as char).to_digit(16).map(u64::from);
    loop {
        if state == S::Body {
            let take = size.min((stream.len() - pos) as u64);
            pos += take as usize;
            size -= take;
            if size > 0 {
                return Chunked::Incomplete(None);
            }
            state = S::BodyCr;
            continue;
        }
        let Some(&b) = stream.get(pos) else {
            return Chunked::Incomplete(bare_lf);
        };
        pos += 1;
        state = match state {
            S::Start | S::Size if hex(b).is_some() => {
                let Some(next) = size.checked_mul(16).and_then(|s| s.checked_add(hex(b)?)) else {
                    return Chunked::Error;
                };
                size = next;
                S::Size
            }
            S::Start => return Chunked::Error,
            S::Size | S::SizeLws => match b {
                b'\t' | b' ' => S::SizeLws,
                b';' => S::Extension,
                b'\r' => S::SizeLf,
                _ => return Chunked::Error,
            },
            S::Extension => match b {
                b'\r' => S::SizeLf,
                b'\n' => return Chunked::Error,
                _ => {
                    extensions += 1;
                    if extensions >= CHUNKED_EXTENSIONS_LIMIT {
                        return Chunked::Error;
                    }
                    S::Extension
                }
            },
            S::SizeLf => match b {
                b'\n' if size == 0 => S::EndCr,
                b'\n' => S::Body,
                _ => return Chunked::Error,
            },
            S::Body => unreachable!("handled above"),
            S::BodyCr if b == b'\r' => S::BodyLf,
            S::BodyLf if b == b'\n' => S::Start,
            S::BodyCr | S::BodyLf => return Chunked::Error,
            S::Trailer => {
                let buf = trailers.get_or_insert_with(Vec::new);
                if buf.len() >= TRAILER_LIMIT {
                    return Chunked::Error;
                }
                buf.push(b);
                if b == b'\n' {
                    bare_lf = bare_lf.or(Some(pos - 1));
                }
                if b == b'\r' {
                    S::TrailerLf
                } else {
                    S::Trailer
                }
            }
            S::TrailerLf => {
                if b != b'\n' || trailer_count >= MAX_TRAILERS {
                    return Chunked::Error;
                }
                trailer_count += 1;
                let buf = trailers.get_or_insert_with(Vec::new);
                if buf.len() >= TRAILER_LIMIT {
                    return Chunked::Error;
                }
                buf.push(b);
                S::EndCr
            }
            S::EndCr => {
                if b == b'\r' {
                    if let Some(buf) = trailers.as_mut() {
                        if buf.len() >= TRAILER_LIMIT {
                            return Chunked::Error;
                        }
                        buf.push(b);
                    }
                    S::EndLf
                } else {
                    let buf = trailers.get_or_insert_with(Vec::new);
                    if buf.len() >= TRAILER_LIMIT {
                        return Chunked::Error;
                    }
                    buf.push(b);
                    if b == b'\n' {
                        bare_lf = bare_lf.or(Some(pos - 1));
                    }
                    S::Trailer
                }
            }
            S::EndLf => {
                if b != b'\n' {
                    return Chunked::Error;
                }
                if let Some(buf) = trailers.as_mut() {
                    buf.push(b);
                }
                // ChunkedState::End: hyper parses the trailers it kept.
                if let Some(buf) = &trailers {
                    if !trailers_parse(buf, trailer_count) {
                        return Chunked::Error;
                    }
                }
                return match bare_lf {
                    Some(at) => Chunked::BareLf(at),
                    None => Chunked::Done(pos),
                };
            }
        };
    }
}

/// hyper's `decode_trailers`.
fn trailers_parse(buf: &[u8], count: usize) -> bool {
    let mut headers = vec![httparse::EMPTY_HEADER; count];
    match httparse::parse_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete((_, headers))) => headers.iter().all(|h| {
            http::HeaderName::try_from(h.name).is_ok() && http::HeaderValue::from_bytes(h.value).is_ok()
        }),
        _ => false,
    }
}
