//! Single-use URL tokens: Exec, Attach and PortForward each leave their
//! request here under a random token that the URL carries; the first
//! request for it takes it, and it expires after [`TTL`] (containerd's
//! streaming cache: one minute, 1000 in flight).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};

pub const TTL: Duration = Duration::from_secs(60);
pub const MAX_IN_FLIGHT: usize = 1000;

pub struct Tokens<T> {
    entries: Mutex<HashMap<String, (Instant, T)>>,
    random: SystemRandom,
    ttl: Duration,
}

impl<T> Tokens<T> {
    pub fn new(ttl: Duration) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            random: SystemRandom::new(),
            ttl,
        }
    }

    /// Stores `value`; `None` when [`MAX_IN_FLIGHT`] unexpired ones wait.
    pub fn insert(&self, value: T) -> Option<String> {
        let mut bytes = [0u8; 16];
        self.random.fill(&mut bytes).ok()?;
        let token = hex::encode(bytes);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        entries.retain(|_, (at, _)| now.duration_since(*at) < self.ttl);
        if entries.len() >= MAX_IN_FLIGHT {
            return None;
        }
        entries.insert(token.clone(), (now, value));
        Some(token)
    }

    /// Takes the value of `token` if it exists and has not expired; either
    /// way the token is gone afterwards.
    pub fn take(&self, token: &str) -> Option<T> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (at, value) = entries.remove(token)?;
        (at.elapsed() < self.ttl).then_some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_single_use_and_expire() {
        let tokens = Tokens::new(Duration::from_millis(50));
        let a = tokens.insert(1).unwrap();
        let b = tokens.insert(2).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert_eq!(tokens.take(&a), Some(1));
        assert_eq!(tokens.take(&a), None);
        assert_eq!(tokens.take("nope"), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(tokens.take(&b), None);
    }

    #[test]
    fn in_flight_tokens_are_bounded() {
        let tokens = Tokens::new(TTL);
        for i in 0..MAX_IN_FLIGHT {
            assert!(tokens.insert(i).is_some());
        }
        assert!(tokens.insert(0).is_none());
    }
}
