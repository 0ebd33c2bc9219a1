//! A minimal RESP2 client: enough to flush, load scripts, read INFO and time the server's own
//! Lua scripts directly against Redis (the "ceiling" beside each server figure).

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

#[derive(Debug, Clone)]
pub enum Val {
    Simple(String),
    Err(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Arr(Option<Vec<Val>>),
}

impl Val {
    pub fn text(&self) -> String {
        match self {
            Val::Simple(s) | Val::Err(s) => s.clone(),
            Val::Int(i) => i.to_string(),
            Val::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            Val::Bulk(None) | Val::Arr(None) => String::new(),
            Val::Arr(Some(items)) => items.iter().map(Val::text).collect::<Vec<_>>().join(" "),
        }
    }

    pub fn ok(self) -> Result<Val> {
        match self {
            Val::Err(e) => bail!("redis error: {e}"),
            v => Ok(v),
        }
    }

    pub fn int(&self) -> Option<i64> {
        match self {
            Val::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn items(&self) -> &[Val] {
        match self {
            Val::Arr(Some(items)) => items,
            _ => &[],
        }
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            Val::Bulk(Some(b)) => b,
            Val::Simple(s) => s.as_bytes(),
            _ => &[],
        }
    }
}

pub fn encode<A: AsRef<[u8]>>(out: &mut Vec<u8>, args: &[A]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        let a = a.as_ref();
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

pub struct RespReader {
    rd: BufReader<OwnedReadHalf>,
    line: Vec<u8>,
}

impl RespReader {
    pub async fn read(&mut self) -> Result<Val> {
        Box::pin(self.read_inner()).await
    }

    async fn read_inner(&mut self) -> Result<Val> {
        self.line.clear();
        let n = self.rd.read_until(b'\n', &mut self.line).await?;
        if n < 3 {
            bail!("redis connection closed");
        }
        let kind = self.line[0];
        let body = String::from_utf8_lossy(&self.line[1..n - 2]).into_owned();
        Ok(match kind {
            b'+' => Val::Simple(body),
            b'-' => Val::Err(body),
            b':' => Val::Int(body.parse().context("bad integer")?),
            b'$' => {
                let len: i64 = body.parse().context("bad bulk length")?;
                if len < 0 {
                    Val::Bulk(None)
                } else {
                    let mut buf = vec![0u8; len as usize + 2];
                    self.rd.read_exact(&mut buf).await?;
                    buf.truncate(len as usize);
                    Val::Bulk(Some(buf))
                }
            }
            b'*' => {
                let len: i64 = body.parse().context("bad array length")?;
                if len < 0 {
                    Val::Arr(None)
                } else {
                    let mut items = Vec::with_capacity(len as usize);
                    for _ in 0..len {
                        items.push(Box::pin(self.read_inner()).await?);
                    }
                    Val::Arr(Some(items))
                }
            }
            other => bail!("unexpected RESP type byte {other:?}"),
        })
    }
}

pub struct RespWriter {
    wr: OwnedWriteHalf,
    buf: Vec<u8>,
}

impl RespWriter {
    /// Buffers one command.
    pub fn push<A: AsRef<[u8]>>(&mut self, args: &[A]) {
        encode(&mut self.buf, args);
    }

    pub async fn flush(&mut self) -> Result<()> {
        self.wr.write_all(&self.buf).await?;
        self.buf.clear();
        Ok(())
    }
}

pub struct Resp {
    pub r: RespReader,
    pub w: RespWriter,
}

impl Resp {
    pub async fn connect(port: u16) -> Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        let (rd, wr) = stream.into_split();
        Ok(Self {
            r: RespReader {
                rd: BufReader::with_capacity(64 * 1024, rd),
                line: Vec::new(),
            },
            w: RespWriter {
                wr,
                buf: Vec::new(),
            },
        })
    }

    pub async fn cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<Val> {
        self.w.push(args);
        self.w.flush().await?;
        self.r.read().await?.ok()
    }

    /// Sends many commands pipelined; returns how many replies were errors (and the first one).
    pub async fn pipeline<A: AsRef<[u8]>>(
        &mut self,
        cmds: &[Vec<A>],
    ) -> Result<(usize, Option<String>)> {
        for c in cmds {
            self.w.push(c);
        }
        self.w.flush().await?;
        let mut errors = 0;
        let mut first = None;
        for _ in cmds {
            if let Val::Err(e) = self.r.read().await? {
                errors += 1;
                first.get_or_insert(e);
            }
        }
        Ok((errors, first))
    }

    pub fn split(self) -> (RespReader, RespWriter) {
        (self.r, self.w)
    }

    /// SCRIPT LOAD; returns the sha.
    pub async fn load(&mut self, script: &str) -> Result<String> {
        Ok(self.cmd(&["SCRIPT", "LOAD", script]).await?.text())
    }

    /// Deletes every key matching a pattern (outside measurements; KEYS is fine here).
    pub async fn clear(&mut self, pattern: &str) -> Result<u64> {
        const SCRIPT: &str = "local n = 0\n\
            local keys = redis.call('KEYS', ARGV[1])\n\
            for i = 1, #keys, 500 do\n\
              redis.call('DEL', unpack(keys, i, math.min(i + 499, #keys)))\n\
            end\n\
            return #keys";
        Ok(self
            .cmd(&["EVAL", SCRIPT, "0", pattern])
            .await?
            .int()
            .unwrap_or(0) as u64)
    }

    /// Every `cmdstat_*` line of INFO commandstats: (command, calls, usec_per_call).
    pub async fn cmdstats(&mut self) -> Result<Vec<(String, u64, f64)>> {
        let info = self.cmd(&["INFO", "commandstats"]).await?.text();
        let mut out = Vec::new();
        for line in info.lines() {
            let Some(rest) = line.strip_prefix("cmdstat_") else {
                continue;
            };
            let Some((name, fields)) = rest.split_once(':') else {
                continue;
            };
            let mut calls = 0;
            let mut per = 0.0;
            for kv in fields.trim().split(',') {
                if let Some(v) = kv.strip_prefix("calls=") {
                    calls = v.parse().unwrap_or(0);
                } else if let Some(v) = kv.strip_prefix("usec_per_call=") {
                    per = v.parse().unwrap_or(0.0);
                }
            }
            out.push((name.to_owned(), calls, per));
        }
        out.sort_by_key(|x| std::cmp::Reverse(x.1));
        Ok(out)
    }
}
