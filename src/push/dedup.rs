//! At most one push per device token per window, across instances: the window is a Redis key
//! per token (`SET NX PX`), opened by whichever instance sends first. This instance also
//! remembers the windows it opened, so repeats within them are dropped before they reach the
//! queue or Redis (a window it opened cannot have closed earlier anywhere).

use std::time::{Duration, Instant};

use super::recent::{Fingerprint, Recent, fingerprint};
use crate::store::{Store, StoreResult};

pub struct Dedup {
    window: Duration,
    opened_here: Recent,
}

impl Dedup {
    /// A zero window turns deduplication off.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            opened_here: Recent::default(),
        }
    }

    /// The key of a device token's window: a fingerprint bounds its length.
    pub fn token_print(token: &str) -> Fingerprint {
        fingerprint(&[token])
    }

    /// Whether a window this instance opened for the token is still open.
    pub fn open_here(&self, token: &Fingerprint) -> bool {
        self.opened_here.contains(token)
    }

    /// Opens the token's window unless one is open (on any instance): true when this push is
    /// the first in it.
    pub async fn first_in_window(&self, store: &Store, token: &Fingerprint) -> StoreResult<bool> {
        if self.window.is_zero() {
            return Ok(true);
        }
        let hex: String = token.iter().map(|byte| format!("{byte:02x}")).collect();
        let until = Instant::now() + self.window;
        let opened = store.open_push_window(&hex, self.window).await?;
        if opened {
            self.opened_here.insert(*token, until);
        }
        Ok(opened)
    }
}
