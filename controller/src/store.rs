//! `JobStore`: the durable record of every accepted job and of its current attempt, in sled.
//!
//! Every write is flushed before it returns, so a job the API accepted, and an attempt the
//! reconciler decided to start, survive `kill -9`. Writers that change what users asked for
//! (apply, delete, worker callbacks) notify subscribers; the reconciler's own status writes do
//! not, so a pass does not trigger itself.

use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::spec::TranscodeJob;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("failed to open the job database at {}", path.display())]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("failed to read job {name:?}")]
    Read {
        name: String,
        #[source]
        source: sled::Error,
    },
    #[error("failed to write job {name:?}")]
    Write {
        name: String,
        #[source]
        source: sled::Error,
    },
    #[error("stored job {name:?} is corrupt")]
    Corrupt {
        name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("job {0:?} not found")]
    NotFound(String),
    #[error("job {0:?} is being deleted; apply it again once it is gone")]
    BeingDeleted(String),
}

/// A job with the controller's private bookkeeping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredJob {
    pub job: TranscodeJob,
    /// The current attempt; `None` before the first one and after a spec change.
    #[serde(default)]
    pub attempt: Option<AttemptRecord>,
    /// Failed attempts that do not count against `backoffLimit` because the platform, not the
    /// job, lost them.
    #[serde(default)]
    pub uncharged_failures: u32,
    /// When the next attempt may start, after a failed one.
    #[serde(default)]
    pub retry_at: Option<DateTime<Utc>>,
}

impl StoredJob {
    pub fn name(&self) -> &str {
        &self.job.metadata.name
    }

    pub fn uid(&self) -> &str {
        self.job.metadata.uid.as_deref().unwrap_or_default()
    }

    pub fn generation(&self) -> u64 {
        self.job.metadata.generation.unwrap_or(1)
    }
}

/// One attempt: written before its machine is created, so a restarted controller finds the
/// machine by its metadata instead of creating a second one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptRecord {
    pub number: u32,
    pub generation: u64,
    /// Bearer token of the worker endpoints for this attempt only.
    pub token: String,
    pub machine_name: String,
    #[serde(default)]
    pub machine_id: Option<String>,
    #[serde(default)]
    pub instance_id: Option<String>,
    pub created_at: DateTime<Utc>,
    /// When the last create request for the machine was sent. A create whose response was
    /// lost may still have made the machine, so a later pass looks it up before sending
    /// another.
    #[serde(default)]
    pub create_sent_at: Option<DateTime<Utc>>,
    /// Which region the machine is created in: 0 for the job's own, then each fallback region
    /// in turn after a capacity error.
    #[serde(default)]
    pub region_index: usize,
    /// True once the machine is known to be destroyed, so finished jobs cost no API calls.
    #[serde(default)]
    pub machine_released: bool,
    /// The worker's final report, once it arrived.
    #[serde(default)]
    pub outcome: Option<AttemptOutcome>,
}

/// How an attempt ended, from the worker's callback or from the machine's exit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AttemptOutcome {
    Succeeded,
    Failed {
        reason: String,
        message: String,
        permanent: bool,
    },
}

/// What `apply` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ApplyOutcome {
    Created,
    Configured,
    Unchanged,
}

/// Something the controller did to a job, and why, as `GET /v1/jobs/{name}/events` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobEvent {
    pub time: DateTime<Utc>,
    /// `Normal` or `Warning`, as in Kubernetes events.
    #[serde(rename = "type")]
    pub kind: String,
    pub reason: String,
    pub message: String,
}

/// Events kept per job; older ones are dropped.
const MAX_EVENTS_PER_JOB: usize = 100;

#[derive(Clone)]
pub struct JobStore {
    db: sled::Db,
    jobs: sled::Tree,
    events: sled::Tree,
    changes: broadcast::Sender<String>,
}

impl JobStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_error = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let db = sled::open(path).map_err(open_error)?;
        let jobs = db.open_tree("jobs").map_err(open_error)?;
        let events = db.open_tree("events").map_err(open_error)?;
        let (changes, _) = broadcast::channel(1024);
        Ok(Self {
            db,
            jobs,
            events,
            changes,
        })
    }

    /// Names of jobs changed by users or workers, as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.changes.subscribe()
    }

    pub fn get(&self, name: &str) -> Result<Option<StoredJob>, StoreError> {
        let bytes = self.jobs.get(name).map_err(|source| StoreError::Read {
            name: name.to_owned(),
            source,
        })?;
        bytes.map(|bytes| decode(name, &bytes)).transpose()
    }

    /// Lists every job in name order. A corrupt record is logged and skipped.
    pub fn list(&self) -> Result<Vec<StoredJob>, StoreError> {
        let mut jobs = Vec::new();
        for entry in self.jobs.iter() {
            let (key, value) = entry.map_err(|source| StoreError::Read {
                name: String::new(),
                source,
            })?;
            let name = String::from_utf8_lossy(&key).into_owned();
            match decode(&name, &value) {
                Ok(job) => jobs.push(job),
                Err(err) => {
                    tracing::error!(job = %name, error = %err, "skipping corrupt job record")
                }
            }
        }
        Ok(jobs)
    }

    /// Creates or updates a job from a validated spec. The generation moves on only when the
    /// spec changes; labels are updated without a new generation.
    pub async fn apply(
        &self,
        applied: TranscodeJob,
    ) -> Result<(StoredJob, ApplyOutcome), StoreError> {
        let name = applied.metadata.name.clone();
        let mut outcome = ApplyOutcome::Unchanged;
        let mut deleting = false;

        let stored = self
            .modify(&name, |existing| {
                if existing
                    .as_ref()
                    .is_some_and(|job| job.job.metadata.deletion_timestamp.is_some())
                {
                    deleting = true;
                    return None;
                }
                let (next, result) = merge_applied(existing, applied.clone());
                outcome = result;
                Some(next)
            })
            .await?
            .ok_or_else(|| StoreError::NotFound(name.clone()))?;
        if deleting {
            return Err(StoreError::BeingDeleted(name));
        }

        if outcome != ApplyOutcome::Unchanged {
            let _ = self.changes.send(name);
        }
        Ok((stored, outcome))
    }

    /// What [`JobStore::apply`] would store and report for `applied`, without writing.
    pub fn preview_apply(
        &self,
        applied: TranscodeJob,
    ) -> Result<(StoredJob, ApplyOutcome), StoreError> {
        let name = applied.metadata.name.clone();
        let existing = self.get(&name)?;
        if existing
            .as_ref()
            .is_some_and(|job| job.job.metadata.deletion_timestamp.is_some())
        {
            return Err(StoreError::BeingDeleted(name));
        }
        Ok(merge_applied(existing, applied))
    }

    /// Changes a stored job with `change`; nothing is written when `change` leaves it as it
    /// was. Returns the job as stored afterwards.
    pub async fn update(
        &self,
        name: &str,
        mut change: impl FnMut(&mut StoredJob),
    ) -> Result<StoredJob, StoreError> {
        self.modify(name, |existing| {
            let mut job = existing?;
            change(&mut job);
            Some(job)
        })
        .await?
        .ok_or_else(|| StoreError::NotFound(name.to_owned()))
    }

    /// Works like [`JobStore::update`], then notifies subscribers that the job changed.
    pub async fn update_and_notify(
        &self,
        name: &str,
        change: impl FnMut(&mut StoredJob),
    ) -> Result<StoredJob, StoreError> {
        let stored = self.update(name, change).await?;
        let _ = self.changes.send(name.to_owned());
        Ok(stored)
    }

    /// Appends an event to the job's history. Events are written without a flush: a crash may
    /// lose the last few, never a job.
    pub fn record_event(
        &self,
        name: &str,
        kind: &str,
        reason: &str,
        message: &str,
    ) -> Result<(), StoreError> {
        let write_error = |source| StoreError::Write {
            name: name.to_owned(),
            source,
        };
        let event = JobEvent {
            time: Utc::now(),
            kind: kind.to_owned(),
            reason: reason.to_owned(),
            message: message.to_owned(),
        };
        let encoded = serde_json::to_vec(&event).map_err(|source| StoreError::Corrupt {
            name: name.to_owned(),
            source,
        })?;
        let sequence = self.db.generate_id().map_err(write_error)?;
        self.events
            .insert(event_key(name, sequence), encoded)
            .map_err(write_error)?;

        let keys: Vec<sled::IVec> = self
            .events
            .scan_prefix(event_prefix(name))
            .keys()
            .filter_map(Result::ok)
            .collect();
        for key in keys
            .iter()
            .take(keys.len().saturating_sub(MAX_EVENTS_PER_JOB))
        {
            self.events.remove(key).map_err(write_error)?;
        }
        Ok(())
    }

    /// Returns the job's events, oldest first.
    pub fn events(&self, name: &str) -> Result<Vec<JobEvent>, StoreError> {
        let mut events = Vec::new();
        for entry in self.events.scan_prefix(event_prefix(name)).values() {
            let bytes = entry.map_err(|source| StoreError::Read {
                name: name.to_owned(),
                source,
            })?;
            match serde_json::from_slice(&bytes) {
                Ok(event) => events.push(event),
                Err(err) => tracing::warn!(job = %name, error = %err, "skipping corrupt event"),
            }
        }
        Ok(events)
    }

    /// Marks a job for deletion; the reconciler destroys its machines and then removes it.
    /// Returns false when there is no such job.
    pub async fn request_deletion(&self, name: &str) -> Result<bool, StoreError> {
        let result = self
            .update_and_notify(name, |job| {
                job.job
                    .metadata
                    .deletion_timestamp
                    .get_or_insert_with(Utc::now);
            })
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(StoreError::NotFound(_)) => Ok(false),
            Err(err) => Err(err),
        }
    }

    pub async fn remove(&self, name: &str) -> Result<bool, StoreError> {
        let write_error = |source| StoreError::Write {
            name: name.to_owned(),
            source,
        };
        let removed = self.jobs.remove(name).map_err(write_error)?;
        for key in self
            .events
            .scan_prefix(event_prefix(name))
            .keys()
            .filter_map(Result::ok)
        {
            self.events.remove(key).map_err(write_error)?;
        }
        self.flush(name).await?;
        let _ = self.changes.send(name.to_owned());
        Ok(removed.is_some())
    }

    /// Reads, changes and writes one record with compare-and-swap, retrying when another writer
    /// got there first, then flushes. `change` gets `None` for a missing job and returns `None`
    /// to leave the record untouched.
    async fn modify(
        &self,
        name: &str,
        mut change: impl FnMut(Option<StoredJob>) -> Option<StoredJob>,
    ) -> Result<Option<StoredJob>, StoreError> {
        let write_error = |source| StoreError::Write {
            name: name.to_owned(),
            source,
        };
        loop {
            let current = self.jobs.get(name).map_err(|source| StoreError::Read {
                name: name.to_owned(),
                source,
            })?;
            let existing = current
                .as_ref()
                .map(|bytes| decode(name, bytes))
                .transpose()?;
            let Some(next) = change(existing.clone()) else {
                return Ok(existing);
            };
            if Some(&next) == existing.as_ref() {
                return Ok(existing);
            }

            let encoded = serde_json::to_vec(&next).map_err(|source| StoreError::Corrupt {
                name: name.to_owned(),
                source,
            })?;
            let swapped = self
                .jobs
                .compare_and_swap(name, current, Some(encoded))
                .map_err(write_error)?;
            if swapped.is_ok() {
                self.flush(name).await?;
                return Ok(Some(next));
            }
        }
    }

    async fn flush(&self, name: &str) -> Result<(), StoreError> {
        self.db
            .flush_async()
            .await
            .map_err(|source| StoreError::Write {
                name: name.to_owned(),
                source,
            })?;
        Ok(())
    }
}

/// Event keys sort by job, then by sequence: `NAME 0x00 SEQUENCE(big-endian)`. Names cannot
/// contain a NUL byte, so one job's prefix never matches another's.
fn event_prefix(name: &str) -> Vec<u8> {
    let mut prefix = name.as_bytes().to_vec();
    prefix.push(0);
    prefix
}

fn event_key(name: &str, sequence: u64) -> Vec<u8> {
    let mut key = event_prefix(name);
    key.extend_from_slice(&sequence.to_be_bytes());
    key
}

fn decode(name: &str, bytes: &[u8]) -> Result<StoredJob, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        name: name.to_owned(),
        source,
    })
}

/// Merges an applied spec into the stored job, keeping identity and status.
fn merge_applied(
    existing: Option<StoredJob>,
    mut applied: TranscodeJob,
) -> (StoredJob, ApplyOutcome) {
    let Some(mut stored) = existing else {
        applied.metadata.uid = Some(uuid::Uuid::new_v4().to_string());
        applied.metadata.generation = Some(1);
        applied.metadata.creation_timestamp = Some(Utc::now());
        applied.metadata.deletion_timestamp = None;
        let stored = StoredJob {
            job: applied,
            attempt: None,
            uncharged_failures: 0,
            retry_at: None,
        };
        return (stored, ApplyOutcome::Created);
    };

    let spec_changed = stored.job.spec != applied.spec;
    let labels_changed = stored.job.metadata.labels != applied.metadata.labels;
    if !spec_changed && !labels_changed {
        return (stored, ApplyOutcome::Unchanged);
    }

    stored.job.metadata.labels = applied.metadata.labels;
    if spec_changed {
        stored.job.spec = applied.spec;
        stored.job.metadata.generation = Some(stored.generation() + 1);
    }
    (stored, ApplyOutcome::Configured)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str, bitrate: u32) -> TranscodeJob {
        let text = format!(
            "apiVersion: transcoder/v1\nkind: TranscodeJob\nmetadata: {{name: {name}}}\n\
             spec: {{source: {{upload: true}}, output: {{codec: mp3, bitrateKbps: {bitrate}}}}}\n"
        );
        crate::spec::parse(&text).expect("valid test spec")
    }

    #[tokio::test]
    async fn apply_twice_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = JobStore::open(dir.path()).expect("open");

        let (first, created) = store.apply(job("a", 192)).await.expect("apply");
        let (second, unchanged) = store.apply(job("a", 192)).await.expect("apply");

        assert_eq!(created, ApplyOutcome::Created);
        assert_eq!(unchanged, ApplyOutcome::Unchanged);
        assert_eq!(first, second);
        assert_eq!(second.generation(), 1);
    }

    #[tokio::test]
    async fn spec_change_bumps_generation_and_keeps_uid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = JobStore::open(dir.path()).expect("open");

        let (first, _) = store.apply(job("a", 192)).await.expect("apply");
        let (second, outcome) = store.apply(job("a", 128)).await.expect("apply");

        assert_eq!(outcome, ApplyOutcome::Configured);
        assert_eq!(second.generation(), 2);
        assert_eq!(second.uid(), first.uid());
    }

    #[tokio::test]
    async fn jobs_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = JobStore::open(dir.path()).expect("open");
            store.apply(job("a", 192)).await.expect("apply");
            store.apply(job("b", 128)).await.expect("apply");
        }

        let store = JobStore::open(dir.path()).expect("reopen");
        let names: Vec<String> = store
            .list()
            .expect("list")
            .iter()
            .map(|j| j.name().to_owned())
            .collect();

        assert_eq!(names, ["a", "b"]);
    }

    #[tokio::test]
    async fn events_are_kept_per_job_and_capped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = JobStore::open(dir.path()).expect("open");
        store.apply(job("a", 192)).await.expect("apply");

        for n in 0..(MAX_EVENTS_PER_JOB + 5) {
            store
                .record_event("a", "Normal", "Tick", &format!("event {n}"))
                .expect("record");
        }
        store
            .record_event("ab", "Normal", "Other", "another job")
            .expect("record");
        let events = store.events("a").expect("events");

        assert_eq!(events.len(), MAX_EVENTS_PER_JOB);
        assert_eq!(events[0].message, "event 5");
        assert_eq!(events.last().map(|e| e.message.as_str()), Some("event 104"));
    }

    #[tokio::test]
    async fn remove_drops_the_jobs_events() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = JobStore::open(dir.path()).expect("open");
        store.apply(job("a", 192)).await.expect("apply");
        store
            .record_event("a", "Normal", "Tick", "one")
            .expect("record");

        assert!(store.remove("a").await.expect("remove"));

        assert_eq!(store.events("a").expect("events"), []);
    }

    #[tokio::test]
    async fn update_of_missing_job_is_not_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = JobStore::open(dir.path()).expect("open");

        let result = store.update("missing", |_| {}).await;

        assert!(matches!(result, Err(StoreError::NotFound(name)) if name == "missing"));
    }
}
