//! A bounded in-memory set of fingerprints, each until a deadline: what this instance did
//! lately (windows it opened, tokens it wrote), so repeats can skip Redis.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use sha2::{Digest, Sha256};

/// Entries kept before expired ones are swept (one entry is ~40 bytes).
const CAPACITY: usize = 100_000;

/// 128 bits of SHA-256: a short, fixed-size stand-in for strings of any length.
pub type Fingerprint = [u8; 16];

/// The fingerprint of `parts`, each ended by a NUL so that ("ab", "c") and ("a", "bc") differ.
pub fn fingerprint(parts: &[&str]) -> Fingerprint {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    let mut print = Fingerprint::default();
    print.copy_from_slice(&hasher.finalize()[..16]);
    print
}

#[derive(Default)]
pub struct Recent {
    until: Mutex<HashMap<Fingerprint, Instant>>,
}

impl Recent {
    /// Whether `print` was inserted with a deadline still ahead.
    pub fn contains(&self, print: &Fingerprint) -> bool {
        let until = self.until.lock().expect("recent lock");
        until
            .get(print)
            .is_some_and(|until| Instant::now() < *until)
    }

    pub fn insert(&self, print: Fingerprint, deadline: Instant) {
        let mut until = self.until.lock().expect("recent lock");
        if until.len() >= CAPACITY {
            let now = Instant::now();
            until.retain(|_, until| now < *until);
            if until.len() >= CAPACITY {
                // Still full of live entries: forgetting them only sends repeats to Redis.
                until.clear();
            }
        }
        until.insert(print, deadline);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn entries_last_until_their_deadline() {
        let recent = Recent::default();
        let print = fingerprint(&["device"]);
        assert!(!recent.contains(&print));
        recent.insert(print, Instant::now() + Duration::from_secs(5));
        assert!(recent.contains(&print));
        assert!(!recent.contains(&fingerprint(&["other"])));
        recent.insert(print, Instant::now());
        assert!(!recent.contains(&print));
    }

    #[test]
    fn fingerprints_keep_parts_apart() {
        assert_ne!(fingerprint(&["ab", "c"]), fingerprint(&["a", "bc"]));
        assert_eq!(fingerprint(&["a", "b"]), fingerprint(&["a", "b"]));
    }
}
