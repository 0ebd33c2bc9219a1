//! A lean WebSocket client for the throughput hot path, so the tool costs the shared CPUs as
//! little as possible: a plain RFC 6455 handshake, then pre-built masked request frames in which
//! only the fixed-width request id is patched, and replies read straight off the socket. It
//! speaks the same wire format as any client (masked text frames, JSON-RPC 2.0).

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::clip;

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
/// Ids are written with this many digits so a template's length never changes.
const ID_DIGITS: usize = 10;
const ID_BASE: u64 = 1_000_000_000;

/// A masked text frame of one JSON-RPC request, with the place of its id.
#[derive(Clone)]
pub struct Template {
    frame: Vec<u8>,
    /// Offset of the first id digit inside `frame`, and of the payload start.
    id_at: usize,
    payload_at: usize,
}

impl Template {
    pub fn new(method: &str, params: &str) -> Self {
        let json = format!(
            r#"{{"jsonrpc":"2.0","method":"{method}","params":{params},"id":{}}}"#,
            ID_BASE
        );
        let id_in_json = json.len() - 1 - ID_DIGITS;
        let mut frame = vec![0x81u8];
        let len = json.len();
        if len < 126 {
            frame.push(0x80 | len as u8);
        } else if len < 65536 {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
        frame.extend_from_slice(&MASK);
        let payload_at = frame.len();
        frame.extend(json.bytes().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        Self {
            frame,
            id_at: payload_at + id_in_json,
            payload_at,
        }
    }

    /// Writes the frame for request `id` into `out`.
    fn render(&self, id: u64, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.frame);
        let mut n = ID_BASE + id;
        for k in (0..ID_DIGITS).rev() {
            let pos = self.id_at + k;
            out[pos] = (b'0' + (n % 10) as u8) ^ MASK[(pos - self.payload_at) % 4];
            n /= 10;
        }
    }
}

pub struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    out: Vec<u8>,
    next_id: u64,
}

impl RawWs {
    pub async fn connect(port: u16) -> Result<Self> {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        let req = format!(
            "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut n = 0;
        let head_end = loop {
            let got = stream.read(&mut buf[n..]).await?;
            if got == 0 {
                bail!("closed during handshake");
            }
            n += got;
            if let Some(p) = buf[..n].windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            if n == buf.len() {
                bail!("handshake reply too long");
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]);
        if !head.starts_with("HTTP/1.1 101") {
            bail!("handshake refused: {}", clip(&head));
        }
        // The expected accept key for the fixed nonce above (RFC 6455, section 1.3).
        if !head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") {
            bail!("bad Sec-WebSocket-Accept: {}", clip(&head));
        }
        Ok(Self {
            stream,
            buf,
            start: head_end,
            end: n,
            out: Vec::with_capacity(4096),
            next_id: 0,
        })
    }

    /// One request, then its reply. Returns whether the reply was a success (`result`), with
    /// the reply text on failure.
    pub async fn call(&mut self, template: &Template) -> Result<Result<(), String>> {
        self.next_id += 1;
        template.render(self.next_id, &mut self.out);
        self.stream.write_all(&self.out).await?;
        loop {
            let (opcode, payload) = self.next_frame().await?;
            match opcode {
                0x1 | 0x2 => {
                    let text = &self.buf[payload.0..payload.1];
                    // A push (no top-level id matching ours) is skipped: look for our id.
                    let id = format!("\"id\":{}", ID_BASE + self.next_id);
                    if !contains(text, id.as_bytes()) {
                        if contains(text, b"\"method\"") {
                            continue;
                        }
                        bail!(
                            "reply with another id: {}",
                            clip(&String::from_utf8_lossy(text))
                        );
                    }
                    if contains(text, b"\"error\"") && !contains(text, b"\"result\"") {
                        return Ok(Err(String::from_utf8_lossy(text).into_owned()));
                    }
                    return Ok(Ok(()));
                }
                0x8 => bail!("socket closed by the server"),
                0x9 => {
                    // Ping: answer with a masked pong carrying the same payload.
                    let data = self.buf[payload.0..payload.1].to_vec();
                    let mut pong = vec![0x8a, 0x80 | data.len() as u8];
                    pong.extend_from_slice(&MASK);
                    pong.extend(data.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
                    self.stream.write_all(&pong).await?;
                }
                _ => {}
            }
        }
    }

    /// Reads one whole (unfragmented) server frame; returns its opcode and payload range in buf.
    async fn next_frame(&mut self) -> Result<(u8, (usize, usize))> {
        loop {
            let avail = self.end - self.start;
            if avail >= 2 {
                let b0 = self.buf[self.start];
                let b1 = self.buf[self.start + 1];
                let (len, hdr) = match b1 & 0x7f {
                    126 if avail >= 4 => (
                        u16::from_be_bytes([self.buf[self.start + 2], self.buf[self.start + 3]])
                            as usize,
                        4,
                    ),
                    127 if avail >= 10 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&self.buf[self.start + 2..self.start + 10]);
                        (u64::from_be_bytes(b) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && avail >= hdr + len {
                    if b0 & 0x80 == 0 {
                        bail!("fragmented frames are not expected here");
                    }
                    let range = (self.start + hdr, self.start + hdr + len);
                    self.start += hdr + len;
                    return Ok((b0 & 0x0f, range));
                }
                if len != usize::MAX && hdr + len > self.buf.len() {
                    self.buf.resize(hdr + len, 0);
                }
            }
            // Compact, then read more.
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.buf.len() {
                let len = self.buf.len();
                self.buf.resize(len * 2, 0);
            }
            let got = self
                .stream
                .read(&mut self.buf[self.end..])
                .await
                .context("read")?;
            if got == 0 {
                bail!("socket closed");
            }
            self.end += got;
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_masks_and_patches_the_id() {
        let t = Template::new("ping", "{}");
        let mut out = Vec::new();
        t.render(42, &mut out);
        assert_eq!(out[0], 0x81);
        let len = (out[1] & 0x7f) as usize;
        let payload: Vec<u8> = out[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ MASK[i % 4])
            .collect();
        assert_eq!(payload.len(), len);
        let text = String::from_utf8(payload).unwrap();
        assert_eq!(
            text,
            r#"{"jsonrpc":"2.0","method":"ping","params":{},"id":1000000042}"#
        );
    }
}
