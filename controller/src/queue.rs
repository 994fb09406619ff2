//! `JobQueue`: the reconciler's work queue of job names, deduplicated, each due at a time.
//!
//! A name is in the queue at most once. Scheduling a name that is already queued keeps the
//! earlier of the two due times, so a burst of changes to one job costs one reconcile.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;
use tokio_util::time::{delay_queue, DelayQueue};

/// Maximum delay the queue accepts. `DelayQueue` panics on deadlines past its wheel's range
/// (about two years), so far-future requeues are clamped; a pass then simply runs early.
pub const MAX_DELAY: Duration = Duration::from_secs(24 * 60 * 60);

#[derive(Default)]
pub struct JobQueue {
    delays: DelayQueue<String>,
    entries: HashMap<String, (delay_queue::Key, Instant)>,
}

impl JobQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues `name` to be due after `delay`, unless it is already due sooner.
    pub fn schedule(&mut self, name: &str, delay: Duration) {
        let delay = delay.min(MAX_DELAY);
        let due = Instant::now() + delay;

        match self.entries.get_mut(name) {
            Some((key, existing)) if due < *existing => {
                self.delays.reset(key, delay);
                *existing = due;
            }
            Some(_) => {}
            None => {
                let key = self.delays.insert(name.to_owned(), delay);
                self.entries.insert(name.to_owned(), (key, due));
            }
        }
    }

    /// Waits for the next due name. Returns `None` at once when the queue is empty.
    pub async fn next(&mut self) -> Option<String> {
        let expired = self.delays.next().await?;
        let name = expired.into_inner();
        self.entries.remove(&name);
        Some(name)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn scheduling_twice_keeps_one_entry_at_the_earlier_time() {
        let mut queue = JobQueue::new();
        let start = Instant::now();

        queue.schedule("a", Duration::from_secs(30));
        queue.schedule("a", Duration::from_secs(5));
        queue.schedule("a", Duration::from_secs(60));

        assert_eq!(queue.len(), 1);
        assert_eq!(queue.next().await.as_deref(), Some("a"));
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert!(queue.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn names_come_out_in_due_order() {
        let mut queue = JobQueue::new();

        queue.schedule("late", Duration::from_secs(10));
        queue.schedule("early", Duration::from_secs(1));

        assert_eq!(queue.next().await.as_deref(), Some("early"));
        assert_eq!(queue.next().await.as_deref(), Some("late"));
    }

    #[tokio::test(start_paused = true)]
    async fn far_future_delay_is_clamped() {
        let mut queue = JobQueue::new();
        let start = Instant::now();

        queue.schedule("a", Duration::from_secs(u64::MAX / 4));

        assert_eq!(queue.next().await.as_deref(), Some("a"));
        assert_eq!(start.elapsed(), MAX_DELAY);
    }

    #[tokio::test]
    async fn empty_queue_returns_none() {
        let mut queue = JobQueue::new();

        assert_eq!(queue.next().await, None);
    }
}
