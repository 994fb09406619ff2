//! `GET /v1/jobs?watch=true`: job changes as server-sent events.
//!
//! A stream opens with an `ADDED` event for every job that matches its filter, then sends
//! `ADDED`, `MODIFIED` and `DELETED` as jobs change. Each event's `data` is a [`WatchEvent`]
//! in JSON. Writes by users and workers reach a stream at once through the store's change
//! feed. The reconciler's status writes do not notify that feed, so every stream also
//! compares the store with its last snapshot each [`POLL_INTERVAL`]; a status change therefore
//! shows up within that interval. A job that stops matching the filter is sent as `DELETED`,
//! as Kubernetes watches do.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};

use crate::api::{render, AppState};
use crate::selector::LabelSelector;
use crate::spec::TranscodeJob;
use crate::status::Phase;

/// How often a stream compares the store with its snapshot.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Filter of a list or a watch. Every part that is set must match.
#[derive(Debug, Clone, Default)]
pub struct WatchFilter {
    pub selector: Option<LabelSelector>,
    pub phase: Option<Phase>,
    pub name: Option<String>,
}

impl WatchFilter {
    pub fn matches(&self, job: &TranscodeJob) -> bool {
        let labels = &job.metadata.labels;
        self.selector
            .as_ref()
            .is_none_or(|selector| selector.matches(labels))
            && self.phase.is_none_or(|phase| job.status.phase == phase)
            && self
                .name
                .as_ref()
                .is_none_or(|name| *name == job.metadata.name)
    }
}

/// Kind of change to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum WatchEventKind {
    Added,
    Modified,
    Deleted,
}

impl WatchEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WatchEventKind::Added => "ADDED",
            WatchEventKind::Modified => "MODIFIED",
            WatchEventKind::Deleted => "DELETED",
        }
    }
}

/// The `data` of one server-sent event: the job as it is now, or as it was last seen for
/// `DELETED`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WatchEvent {
    #[serde(rename = "type")]
    pub kind: WatchEventKind,
    pub object: TranscodeJob,
}

/// Starts a stream of the changes of the jobs that `filter` selects.
pub fn watch_response(state: AppState, filter: WatchFilter) -> Response {
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(follow_jobs(state, filter, sender));

    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        let event = receiver.recv().await?;
        Some((Ok::<Event, Infallible>(event), receiver))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Sends events until the client goes away or the server shuts down.
async fn follow_jobs(state: AppState, filter: WatchFilter, sender: mpsc::Sender<Event>) {
    let mut changes = state.store.subscribe();
    let mut seen = BTreeMap::new();
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        if send_changes(&state, &filter, &mut seen, &sender)
            .await
            .is_err()
        {
            return;
        }
        tokio::select! {
            () = sender.closed() => return,
            () = state.shutdown.cancelled() => return,
            _ = ticker.tick() => {}
            change = changes.recv() => {
                // A lagging receiver missed some names; the full comparison covers them.
                if matches!(change, Err(broadcast::error::RecvError::Closed)) {
                    return;
                }
            }
        }
    }
}

/// The client is gone.
struct Disconnected;

/// Compares the matching jobs with `seen`, sends an event per difference and updates `seen`.
// TODO-performance: every pass reads every job; keep a per-job version once stores hold
// thousands of jobs or many clients watch at once.
async fn send_changes(
    state: &AppState,
    filter: &WatchFilter,
    seen: &mut BTreeMap<String, TranscodeJob>,
    sender: &mpsc::Sender<Event>,
) -> Result<(), Disconnected> {
    let jobs = match state.store.list() {
        Ok(jobs) => jobs,
        Err(err) => {
            tracing::warn!(error = %err, "watch failed to list jobs");
            return Ok(());
        }
    };

    let mut current = BTreeMap::new();
    for stored in jobs
        .into_iter()
        .filter(|stored| filter.matches(&stored.job))
    {
        let name = stored.name().to_owned();
        let kind = match seen.get(&name) {
            None => Some(WatchEventKind::Added),
            Some(previous) if *previous != stored.job => Some(WatchEventKind::Modified),
            Some(_) => None,
        };
        current.insert(name, stored.job.clone());
        if let Some(kind) = kind {
            send(sender, kind, render(state, stored).await).await?;
        }
    }

    let gone: Vec<String> = seen
        .keys()
        .filter(|name| !current.contains_key(*name))
        .cloned()
        .collect();
    for name in gone {
        if let Some(job) = seen.remove(&name) {
            send(sender, WatchEventKind::Deleted, job).await?;
        }
    }
    *seen = current;
    Ok(())
}

async fn send(
    sender: &mpsc::Sender<Event>,
    kind: WatchEventKind,
    object: TranscodeJob,
) -> Result<(), Disconnected> {
    let data = WatchEvent { kind, object };
    let event = match Event::default().event(kind.as_str()).json_data(&data) {
        Ok(event) => event,
        Err(err) => {
            tracing::warn!(error = %err, "failed to encode a watch event");
            return Ok(());
        }
    };
    sender.send(event).await.map_err(|_| Disconnected)
}
