//! A TCP proxy in front of one redis-server that can hold Redis's replies back: commands still
//! reach Redis and run, their replies wait until released, so a caller's timeout makes the
//! outcome of a call that did take effect unknown to it (a reply lost after Redis ran it).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct HeldReplies {
    pub port: u16,
    holding: watch::Sender<bool>,
    /// What clients sent while replies were held (lossy UTF-8), for [`Self::wait_sent`].
    sent_while_holding: Arc<Mutex<String>>,
    accept: tokio::task::JoinHandle<()>,
}

impl HeldReplies {
    /// Relays to the redis-server on `target`.
    pub async fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let port = listener.local_addr().expect("its address").port();
        let (holding, _) = watch::channel(false);
        let sent_while_holding = Arc::new(Mutex::new(String::new()));
        let (watching, sent) = (holding.clone(), sent_while_holding.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, target, watching.subscribe(), sent.clone()));
            }
        });
        Self {
            port,
            holding,
            sent_while_holding,
            accept,
        }
    }

    /// For REDIS_URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Replies are held from now on.
    pub fn hold(&self) {
        self.sent_while_holding.lock().unwrap().clear();
        self.holding.send_replace(true);
    }

    /// Waits until a client sent `needle` (e.g. a function's name) while replies were held.
    pub async fn wait_sent(&self, needle: &str, within: Duration) {
        super::eventually(within, async || {
            self.sent_while_holding.lock().unwrap().contains(needle)
        })
        .await;
    }

    /// The held replies go on to their clients, in order, and replies flow again.
    pub fn release(&self) {
        self.holding.send_replace(false);
    }
}

impl Drop for HeldReplies {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// One client's connection: its commands go on at once, Redis's replies wait while held.
async fn relay(
    mut client: TcpStream,
    target: u16,
    mut holding: watch::Receiver<bool>,
    sent_while_holding: Arc<Mutex<String>>,
) {
    let Ok(mut redis) = TcpStream::connect(("127.0.0.1", target)).await else {
        return;
    };
    let (mut from_client, mut to_client) = client.split();
    let (mut from_redis, mut to_redis) = redis.split();
    let (mut up, mut down) = ([0u8; 16384], [0u8; 16384]);
    let mut held = Vec::new();
    loop {
        tokio::select! {
            read = from_client.read(&mut up) => {
                let Ok(n @ 1..) = read else { return };
                if *holding.borrow() {
                    sent_while_holding.lock().unwrap().push_str(&String::from_utf8_lossy(&up[..n]));
                }
                if to_redis.write_all(&up[..n]).await.is_err() {
                    return;
                }
            }
            read = from_redis.read(&mut down) => {
                let Ok(n @ 1..) = read else { return };
                held.extend_from_slice(&down[..n]);
            }
            Ok(()) = holding.changed() => {}
        }
        if !*holding.borrow() && !held.is_empty() {
            if to_client.write_all(&held).await.is_err() {
                return;
            }
            held.clear();
        }
    }
}
