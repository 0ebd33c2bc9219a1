//! The `send` URL of each socket this instance delivers to, so that starting a delivery loop
//! is one Redis call (its first step), not two. SocketDock names a socket once and its URL
//! never changes; a socket that is gone is dropped. Kept parsed: each POST would parse it again.
//! Bounded: when full, it starts over.

use std::collections::HashMap;
use std::sync::Mutex;

use reqwest::Url;

/// Most sockets remembered (about 150 bytes each).
const MOST: usize = 16_384;

#[derive(Default)]
pub(super) struct SendUrls {
    urls: Mutex<HashMap<String, Url>>,
}

impl SendUrls {
    pub fn get(&self, socket_id: &str) -> Option<Url> {
        self.urls
            .lock()
            .expect("send URLs lock")
            .get(socket_id)
            .cloned()
    }

    pub fn insert(&self, socket_id: &str, url: Url) {
        let mut urls = self.urls.lock().expect("send URLs lock");
        if urls.len() >= MOST && !urls.contains_key(socket_id) {
            urls.clear();
        }
        urls.insert(socket_id.to_owned(), url);
    }

    pub fn remove(&self, socket_id: &str) {
        self.urls.lock().expect("send URLs lock").remove(socket_id);
    }
}
