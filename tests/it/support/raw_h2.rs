//! A minimal HTTP/2 client that writes frames by hand: [`h2_frame`] builds a
//! frame, [`hpack_request`] a header block of literal (never Huffman, never
//! indexed) fields, and [`RawH2`] holds a connection that answers the server's
//! SETTINGS and PING like a real client and notes a GOAWAY. It exists to send
//! what the `h2` crate refuses to: raw bytes (CR, LF) in header values, floods
//! of resets, endless CONTINUATION frames.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::Mutex as AsyncMutex;

/// One prior-knowledge (h2c) connection; its reader task ends when it drops.
pub struct RawH2 {
    write: Arc<AsyncMutex<OwnedWriteHalf>>,
    goaway: Arc<AtomicBool>,
    reader: tokio::task::JoinHandle<()>,
}

/// The client connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One frame: 9-byte header (24-bit length, type, flags, stream id), then `payload`.
pub fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with an N-bit prefix (RFC 7541 §5.1); `first` holds the
/// pattern bits above the prefix.
pub fn hpack_int(prefix_bits: u32, first: u8, mut v: usize, out: &mut Vec<u8>) {
    let max = (1usize << prefix_bits) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128 + 128) as u8);
        v /= 128;
    }
    out.push(v as u8);
}

/// An HPACK string literal, never Huffman-coded (RFC 7541 §5.2).
pub fn hpack_str(s: &[u8], out: &mut Vec<u8>) {
    hpack_int(7, 0, s.len(), out);
    out.extend_from_slice(s);
}

/// A header block: `method` (GET/POST), `path`, then literal (never Huffman,
/// never indexed) headers with raw bytes.
pub fn hpack_request(
    authority: &str,
    post: bool,
    path: &str,
    headers: &[(&str, &[u8])],
) -> Vec<u8> {
    let mut out = vec![if post { 0x83 } else { 0x82 }, 0x86];
    hpack_int(4, 0x00, 4, &mut out); // :path, literal value
    hpack_str(path.as_bytes(), &mut out);
    hpack_int(4, 0x00, 1, &mut out); // :authority
    hpack_str(authority.as_bytes(), &mut out);
    for (name, value) in headers {
        out.push(0x00);
        hpack_str(name.as_bytes(), &mut out);
        hpack_str(value, &mut out);
    }
    out
}

impl RawH2 {
    /// Connects, sends the preface and an empty SETTINGS, starts the reader.
    pub async fn connect(addr: SocketAddr) -> RawH2 {
        let stream = TcpStream::connect(addr).await.expect("connect (raw h2)");
        let (mut read, mut write) = stream.into_split();
        write.write_all(H2_PREFACE).await.expect("preface");
        write
            .write_all(&h2_frame(0x4, 0, 0, &[]))
            .await
            .expect("settings");
        let write = Arc::new(AsyncMutex::new(write));
        let goaway = Arc::new(AtomicBool::new(false));
        let (w, g) = (write.clone(), goaway.clone());
        // Drain the server's frames; acknowledge SETTINGS and PING like a real client.
        let reader = tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 16384];
            loop {
                match read.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                while buf.len() >= 9 {
                    let len = (usize::from(buf[0]) << 16)
                        | (usize::from(buf[1]) << 8)
                        | usize::from(buf[2]);
                    if buf.len() < 9 + len {
                        break;
                    }
                    let (kind, flags) = (buf[3], buf[4]);
                    let payload = buf[9..9 + len].to_vec();
                    buf.drain(..9 + len);
                    let reply = match (kind, flags & 1) {
                        (0x4, 0) => Some(h2_frame(0x4, 1, 0, &[])),
                        (0x6, 0) => Some(h2_frame(0x6, 1, 0, &payload)),
                        (0x7, _) => {
                            g.store(true, Ordering::SeqCst);
                            None
                        }
                        _ => None,
                    };
                    if let Some(reply) = reply {
                        let _ = w.lock().await.write_all(&reply).await;
                    }
                }
            }
        });
        RawH2 {
            write,
            goaway,
            reader,
        }
    }

    /// Writes `bytes` (bounded to 5 s); false when the connection took no more.
    pub async fn send(&self, bytes: &[u8]) -> bool {
        let mut w = self.write.lock().await;
        matches!(
            tokio::time::timeout(Duration::from_secs(5), w.write_all(bytes)).await,
            Ok(Ok(()))
        )
    }

    /// Whether the server sent GOAWAY.
    pub fn got_goaway(&self) -> bool {
        self.goaway.load(Ordering::SeqCst)
    }
}

impl Drop for RawH2 {
    fn drop(&mut self) {
        self.reader.abort();
    }
}
