//! The last good answer of each downstream list, per filter.
//!
//! When the downstream is down or slow, a merged list serves what it last
//! answered for the same filter (logged as stale) instead of dropping the
//! downstream's pods from the kubelet's view, or hanging.

use std::collections::HashMap;
use std::sync::Mutex;

/// Filters remembered per list; past it the memory starts over (the
/// kubelet uses a handful).
const MAX_FILTERS: usize = 64;

pub struct LastGood<T> {
    answers: Mutex<HashMap<Vec<u8>, T>>,
}

impl<T: Clone> LastGood<T> {
    pub fn new() -> Self {
        Self {
            answers: Mutex::new(HashMap::new()),
        }
    }

    pub fn put(&self, filter: Vec<u8>, answer: &T) {
        let mut answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        if answers.len() >= MAX_FILTERS && !answers.contains_key(&filter) {
            answers.clear();
        }
        answers.insert(filter, answer.clone());
    }

    pub fn get(&self, filter: &[u8]) -> Option<T> {
        let answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        answers.get(filter).cloned()
    }
}

/// The key of a filter: its protobuf encoding (empty for none).
pub fn key<F: prost::Message>(filter: &Option<F>) -> Vec<u8> {
    filter
        .as_ref()
        .map(|f| f.encode_to_vec())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_kept_per_filter_and_bounded() {
        let cache = LastGood::new();
        cache.put(b"a".to_vec(), &1);
        cache.put(b"b".to_vec(), &2);
        assert_eq!(cache.get(b"a"), Some(1));
        assert_eq!(cache.get(b"c"), None);
        for i in 0..MAX_FILTERS + 1 {
            cache.put(i.to_string().into_bytes(), &i);
        }
        assert!(cache.answers.lock().unwrap().len() <= MAX_FILTERS);
        assert_eq!(
            cache.get(MAX_FILTERS.to_string().as_bytes()),
            Some(MAX_FILTERS)
        );
    }
}
