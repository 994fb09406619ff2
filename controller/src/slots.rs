//! `MachineSlots`: which jobs hold one of the `maxConcurrentMachines` machine slots, so that
//! thousands of applied jobs queue instead of creating thousands of machines at once.

use std::collections::HashSet;
use std::sync::Mutex;

#[derive(Debug)]
pub struct MachineSlots {
    capacity: usize,
    holders: Mutex<HashSet<String>>,
}

impl MachineSlots {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            holders: Mutex::new(HashSet::new()),
        }
    }

    /// True when no job could get a slot now.
    pub fn is_full(&self) -> bool {
        self.lock().len() >= self.capacity
    }

    /// Takes a slot for `job`; true when it got one or already held one.
    pub fn try_acquire(&self, job: &str) -> bool {
        let mut holders = self.lock();
        if holders.contains(job) {
            return true;
        }
        if holders.len() >= self.capacity {
            return false;
        }
        holders.insert(job.to_owned());
        true
    }

    pub fn release(&self, job: &str) {
        self.lock().remove(job);
    }

    /// Replaces the holders with the jobs whose stored attempt is live.
    // NOTE: a pass that took a slot but has not yet stored its attempt loses the slot here, so
    // up to `max_parallel_reconciles` extra machines may start in that moment.
    pub fn reset(&self, jobs: impl IntoIterator<Item = String>) {
        *self.lock() = jobs.into_iter().collect();
    }

    pub fn held(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.holders
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acquire_stops_at_capacity() {
        let slots = MachineSlots::new(2);

        assert!(slots.try_acquire("a"));
        assert!(slots.try_acquire("b"));
        assert!(!slots.try_acquire("c"));
        assert!(slots.try_acquire("a"), "a holder keeps its slot");
        slots.release("a");

        assert!(slots.try_acquire("c"));
        assert_eq!(slots.held(), 2);
    }

    #[test]
    fn reset_replaces_holders() {
        let slots = MachineSlots::new(1);
        assert!(slots.try_acquire("a"));

        slots.reset(["b".to_owned()]);

        assert!(!slots.try_acquire("a"));
        assert!(slots.is_full());
    }
}
