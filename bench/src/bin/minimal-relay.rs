//! The least a relay in mpr's place does, for `mpr-bench socketdock` to measure beside mpr: a
//! process of its own that takes messages on a WebSocket, stores each in Redis (`SET`) before
//! answering it and before sending it, POSTs it to its socket's SocketDock send URL (one sender
//! per URL, in order), and deletes it (`DEL`) once SocketDock took it. No JSON-RPC, no Lua, no
//! lease, no index: what is left is the hops and round trips any durable relay pays.
//!
//! `minimal-relay <listen port> <redis port>`; each text frame is `<send URL>\n<payload>`, each
//! answered `ok` once stored (or `error: ...`). Runs one runtime thread, as the scenario runs mpr.

use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// One connection to Redis, one command at a time, in plain RESP: the least client code there
/// is, so that what the relay costs is its hops, not a client library's work.
struct Redis(BufReader<TcpStream>);

impl Redis {
    async fn connect(port: u16) -> Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        Ok(Self(BufReader::new(stream)))
    }

    /// Sends a command; fails unless Redis answers `+OK` or an integer.
    async fn run(&mut self, args: &[&[u8]]) -> Result<()> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        self.0.get_mut().write_all(&out).await?;
        let mut line = String::new();
        self.0.read_line(&mut line).await?;
        if !(line.starts_with("+OK") || line.starts_with(':')) {
            bail!("redis answered {}", line.trim_end());
        }
        Ok(())
    }
}

/// Sends each message to `url` in turn, then deletes it from Redis.
async fn post_in_order(
    url: String,
    redis_port: u16,
    mut messages: mpsc::UnboundedReceiver<(String, String)>,
) -> Result<()> {
    let http = mpr::http::outbound_client().build()?;
    let mut redis = Redis::connect(redis_port).await?;
    while let Some((key, payload)) = messages.recv().await {
        let response = http
            .post(&url)
            .header("content-type", "text/plain")
            .body(payload)
            .send()
            .await?;
        let status = response.status();
        if status != reqwest::StatusCode::OK || response.text().await? != "OK" {
            bail!("{url} answered {status}");
        }
        redis.run(&[b"DEL", key.as_bytes()]).await?;
    }
    Ok(())
}

async fn serve(stream: TcpStream, redis_port: u16, id: u64) -> Result<()> {
    stream.set_nodelay(true)?;
    let ws = tokio_tungstenite::accept_async(stream).await?;
    let (mut replies, mut frames) = ws.split();
    let mut redis = Redis::connect(redis_port).await?;
    let mut senders: HashMap<String, mpsc::UnboundedSender<(String, String)>> = HashMap::new();
    let mut stored = 0u64;
    while let Some(frame) = frames.next().await {
        let Message::Text(text) = frame? else {
            continue;
        };
        let Some((url, payload)) = text.as_str().split_once('\n') else {
            replies.send(Message::text("error: no URL line")).await?;
            continue;
        };
        stored += 1;
        let key = format!("relay:{id}:{stored}");
        if let Err(error) = redis
            .run(&[b"SET", key.as_bytes(), payload.as_bytes()])
            .await
        {
            replies
                .send(Message::text(format!("error: {error:#}")))
                .await?;
            continue;
        }
        let sender = senders.entry(url.to_owned()).or_insert_with(|| {
            let (sender, messages) = mpsc::unbounded_channel();
            let url = url.to_owned();
            tokio::spawn(async move {
                if let Err(error) = post_in_order(url.clone(), redis_port, messages).await {
                    eprintln!("minimal-relay: sending to {url} stopped: {error:#}");
                }
            });
            sender
        });
        sender
            .send((key, payload.to_owned()))
            .context("a sender stopped")?;
        replies.send(Message::text("ok")).await?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, redis] = args.as_slice() else {
        bail!("usage: minimal-relay <listen port> <redis port>");
    };
    let (listen, redis_port): (u16, u16) = (listen.parse()?, redis.parse()?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = TcpListener::bind(("127.0.0.1", listen)).await?;
        let mut next_id = 0;
        loop {
            let (stream, _) = listener.accept().await?;
            next_id += 1;
            let id = next_id;
            tokio::spawn(async move {
                if let Err(error) = serve(stream, redis_port, id).await {
                    eprintln!("minimal-relay: connection {id}: {error:#}");
                }
            });
        }
    })
}
