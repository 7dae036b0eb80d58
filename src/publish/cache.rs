//! Publishers kept for reuse, keyed by the credentials they were made with (for the controller:
//! the push Secret's namespace, name and resourceVersion), so that every check and publish with
//! the same credentials shares one registry client: its connections, the challenges it has met
//! and the tokens it holds. A new version of a Secret is a new key, so changed credentials are
//! never served from an old client. Bounded: past its capacity, the publisher used least
//! recently is dropped.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::Publisher;

/// Publishers by key, at most `capacity` of them.
#[derive(Debug)]
pub struct PublisherCache<K> {
    capacity: usize,
    /// Least recently used first.
    entries: Mutex<VecDeque<(K, Publisher)>>,
}

impl<K: Eq + Clone> PublisherCache<K> {
    /// An empty cache keeping at most `capacity` publishers (at least one).
    pub fn new(capacity: usize) -> Self {
        PublisherCache {
            capacity: capacity.max(1),
            entries: Mutex::new(VecDeque::new()),
        }
    }

    /// The publisher kept for `key`, or the one `make` makes (kept unless it fails).
    pub fn get_or_make<E>(
        &self,
        key: &K,
        make: impl FnOnce() -> Result<Publisher, E>,
    ) -> Result<Publisher, E> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = entries
            .iter()
            .position(|(k, _)| k == key)
            .and_then(|at| entries.remove(at))
        {
            let publisher = entry.1.clone();
            entries.push_back(entry);
            return Ok(publisher);
        }
        let publisher = make()?;
        if entries.len() >= self.capacity {
            entries.pop_front();
        }
        entries.push_back((key.clone(), publisher.clone()));
        Ok(publisher)
    }

    /// How many publishers are kept.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::{DockerConfig, RegistryConfig};

    fn make(made: &mut usize) -> Result<Publisher, String> {
        crate::install_crypto_provider();
        *made += 1;
        Publisher::from_config(RegistryConfig::default(), DockerConfig::empty())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn one_publisher_per_key_the_least_recently_used_dropped_past_the_capacity() {
        let cache = PublisherCache::new(2);
        let mut made = 0;
        cache.get_or_make(&"a@1", || make(&mut made)).unwrap();
        cache.get_or_make(&"a@1", || make(&mut made)).unwrap();
        assert_eq!(made, 1, "the same key reuses its publisher");
        cache.get_or_make(&"b@1", || make(&mut made)).unwrap();
        // a@1 used last: b@1 is the one dropped
        cache.get_or_make(&"a@1", || make(&mut made)).unwrap();
        cache.get_or_make(&"a@2", || make(&mut made)).unwrap();
        assert_eq!((made, cache.len()), (3, 2));
        cache.get_or_make(&"a@1", || make(&mut made)).unwrap();
        assert_eq!(made, 3, "a@1 kept");
        cache.get_or_make(&"b@1", || make(&mut made)).unwrap();
        assert_eq!(made, 4, "b@1 was dropped");
    }

    #[test]
    fn a_publisher_that_cannot_be_made_is_not_kept() {
        let cache: PublisherCache<&str> = PublisherCache::new(4);
        let refused = cache.get_or_make(&"a@1", || Err::<Publisher, _>("no Secret"));
        assert_eq!(refused.unwrap_err(), "no Secret");
        assert!(cache.is_empty());
    }
}
