//! The statuses this operator wrote that its object cache may not show yet. A reconcile started by
//! a builder's watch event can read the object from the cache before the cache has seen the
//! status the previous reconcile wrote; planning from that stale status would write the same
//! transition again and record its Event twice. So each reconcile plans from the status it last
//! wrote while the cache still shows a status that one superseded. An entry lives only until the
//! cache catches up (or shows a status this operator did not write), so the map stays small.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::api::MultiArchImageStatus;

/// Statuses superseded by one write are kept at most this many deep.
const MAX_SUPERSEDED: usize = 4;

#[derive(Default)]
pub(crate) struct Written {
    by_uid: Mutex<HashMap<String, Entry>>,
}

struct Entry {
    /// Statuses this operator's writes replaced, which a stale cache may still show.
    superseded: Vec<MultiArchImageStatus>,
    /// The last status written.
    wrote: MultiArchImageStatus,
}

impl Written {
    /// The status a reconcile of object `uid` builds on, given the cache's `cached`.
    pub(super) fn current(&self, uid: &str, cached: MultiArchImageStatus) -> MultiArchImageStatus {
        let mut by_uid = self.by_uid.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = by_uid.get(uid) else {
            return cached;
        };
        if entry.superseded.contains(&cached) {
            return entry.wrote.clone();
        }
        // caught up, or changed by someone else: the cache is the truth again
        by_uid.remove(uid);
        cached
    }

    /// Records that `before` was replaced by `wrote` for object `uid`.
    pub(super) fn record(
        &self,
        uid: &str,
        before: &MultiArchImageStatus,
        wrote: &MultiArchImageStatus,
    ) {
        let mut by_uid = self.by_uid.lock().unwrap_or_else(|e| e.into_inner());
        let entry = by_uid.entry(uid.to_string()).or_insert_with(|| Entry {
            superseded: Vec::new(),
            wrote: before.clone(),
        });
        let replaced = std::mem::replace(&mut entry.wrote, wrote.clone());
        for s in [before.clone(), replaced] {
            if !entry.superseded.contains(&s) && &s != wrote {
                entry.superseded.push(s);
            }
        }
        let excess = entry.superseded.len().saturating_sub(MAX_SUPERSEDED);
        entry.superseded.drain(..excess);
    }

    /// Forgets a deleted object.
    pub(super) fn forget(&self, uid: &str) {
        let mut by_uid = self.by_uid.lock().unwrap_or_else(|e| e.into_inner());
        by_uid.remove(uid);
    }

    /// Objects with a write the cache has not shown yet.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_uid.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Phase;

    fn status(phase: Phase) -> MultiArchImageStatus {
        MultiArchImageStatus {
            phase: Some(phase),
            ..Default::default()
        }
    }

    #[test]
    fn a_stale_cache_is_read_as_the_last_write_until_it_catches_up() {
        let written = Written::default();
        let (pending, publishing, done) = (
            status(Phase::Pending),
            status(Phase::Publishing),
            status(Phase::Succeeded),
        );
        assert_eq!(written.current("u", pending.clone()), pending);
        // one reconcile writes Publishing, then Succeeded
        written.record("u", &pending, &publishing);
        written.record("u", &pending, &done);
        assert_eq!(written.current("u", pending.clone()), done);
        assert_eq!(written.current("u", publishing.clone()), done);
        // the cache shows the last write: the entry goes
        assert_eq!(written.current("u", done.clone()), done);
        assert_eq!(written.len(), 0);
        // a status the operator did not write is the truth
        written.record("u", &pending, &publishing);
        let other = status(Phase::Failed);
        assert_eq!(written.current("u", other.clone()), other);
        assert_eq!(written.len(), 0);
    }
}
