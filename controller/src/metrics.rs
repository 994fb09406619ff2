//! `Metrics`: the controller's counters and gauges, rendered in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::status::Phase;
use crate::store::StoredJob;

/// Counters shared by the reconciler and the API. Cheap to update from any task.
#[derive(Debug, Default)]
pub struct Metrics {
    reconciles: AtomicU64,
    reconcile_errors: AtomicU64,
    queue_depth: AtomicU64,
    orphans_destroyed: AtomicU64,
    /// Machines API calls by (action, status), where status is the HTTP status or `error`.
    api_calls: Mutex<BTreeMap<(String, String), u64>>,
    /// Machines seen at the last resync, by state.
    machines: Mutex<BTreeMap<String, u64>>,
}

impl Metrics {
    pub fn record_reconcile(&self, failed: bool) {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.reconcile_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn set_queue_depth(&self, depth: usize) {
        self.queue_depth.store(depth as u64, Ordering::Relaxed);
    }

    pub fn record_orphans_destroyed(&self, count: usize) {
        self.orphans_destroyed
            .fetch_add(count as u64, Ordering::Relaxed);
    }

    pub fn record_api_call(&self, action: &str, status: &str) {
        let mut calls = self
            .api_calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *calls
            .entry((action.to_owned(), status.to_owned()))
            .or_default() += 1;
    }

    /// Total Machines API calls so far, of every action and status.
    pub fn api_calls_total(&self) -> u64 {
        let calls = self
            .api_calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        calls.values().sum()
    }

    pub fn set_machines_by_state(&self, counts: BTreeMap<String, u64>) {
        *self
            .machines
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = counts;
    }

    /// Renders every metric, with jobs counted by phase from `jobs`.
    pub fn render(&self, jobs: &[StoredJob]) -> String {
        let mut text = String::new();
        gauge_header(&mut text, "transcoder_jobs", "Jobs by phase.");
        for phase in [
            Phase::Pending,
            Phase::Running,
            Phase::Succeeded,
            Phase::Failed,
        ] {
            let count = jobs
                .iter()
                .filter(|job| job.job.status.phase == phase)
                .count();
            let _ = writeln!(
                text,
                "transcoder_jobs{{phase=\"{}\"}} {count}",
                phase.as_str()
            );
        }

        counter(
            &mut text,
            "transcoder_reconciles_total",
            "Reconcile passes run.",
            self.reconciles.load(Ordering::Relaxed),
        );
        counter(
            &mut text,
            "transcoder_reconcile_errors_total",
            "Reconcile passes that failed.",
            self.reconcile_errors.load(Ordering::Relaxed),
        );
        counter(
            &mut text,
            "transcoder_orphan_machines_destroyed_total",
            "Machines destroyed because no live attempt owned them.",
            self.orphans_destroyed.load(Ordering::Relaxed),
        );
        gauge_header(
            &mut text,
            "transcoder_queue_depth",
            "Jobs waiting in the reconcile queue.",
        );
        let _ = writeln!(
            text,
            "transcoder_queue_depth {}",
            self.queue_depth.load(Ordering::Relaxed)
        );

        let _ = writeln!(
            text,
            "# HELP transcoder_machines_api_calls_total Machines API calls by action and status."
        );
        let _ = writeln!(text, "# TYPE transcoder_machines_api_calls_total counter");
        for ((action, status), count) in self
            .api_calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
        {
            let _ = writeln!(text, "transcoder_machines_api_calls_total{{action=\"{action}\",status=\"{status}\"}} {count}");
        }

        gauge_header(
            &mut text,
            "transcoder_machines",
            "Machines seen at the last resync, by state.",
        );
        for (state, count) in self
            .machines
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
        {
            let _ = writeln!(text, "transcoder_machines{{state=\"{state}\"}} {count}");
        }
        text
    }
}

fn gauge_header(text: &mut String, name: &str, help: &str) {
    let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} gauge");
}

fn counter(text: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        text,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_lists_api_calls_by_action_and_status() {
        let metrics = Metrics::default();
        metrics.record_api_call("create", "200");
        metrics.record_api_call("create", "200");
        metrics.record_api_call("get", "404");

        let text = metrics.render(&[]);

        assert!(
            text.contains(
                "transcoder_machines_api_calls_total{action=\"create\",status=\"200\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("transcoder_machines_api_calls_total{action=\"get\",status=\"404\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("transcoder_jobs{phase=\"Pending\"} 0"),
            "{text}"
        );
        assert_eq!(metrics.api_calls_total(), 3);
    }
}
