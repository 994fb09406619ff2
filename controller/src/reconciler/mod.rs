//! `JobReconciler`: makes the Fly Machines of each job match what its spec and status call for.
//!
//! Design:
//! - A pass over one job is triggered by a change from a user or a worker (the store's change
//!   feed), by its own earlier request to look again after a delay, or by the periodic resync,
//!   which queues every job and also sweeps machines that belong to no live attempt.
//! - A pass is idempotent and level-triggered: it reads the job and its machine as they are
//!   now, decides, acts, and returns when to look again. It never sleeps; the next pass is the
//!   retry, and [`retry_delay`] maps every error to its delay.
//! - Before a machine is created, the attempt (number, generation, token, machine name) is
//!   written to the store. A restarted controller that finds an attempt without a machine id
//!   looks the machine up by its metadata before creating it, so one attempt never gets two
//!   machines.
//! - A job's phase follows from its attempts: the worker's callback records the outcome, the
//!   machine's exit code stands in when no callback arrived, and failed attempts are retried
//!   with exponential backoff up to `backoffLimit`.

mod attempts;
mod lifecycle;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use fly_machines::client::{ClientError, FlyClient};
use fly_machines::types::MachineState;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::machine_api::MachineApi;
use crate::machine_template::{AttemptRef, MachineTemplate};
use crate::metrics::Metrics;
use crate::objectstore::{ObjectStore, ObjectStoreError};
use crate::queue::JobQueue;
use crate::slots::MachineSlots;
use crate::sources::SourceLocator;
use crate::store::{AttemptOutcome, JobStore, StoreError, StoredJob};

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("failed to read or write job {0}")]
    Store(String, #[source] StoreError),
    #[error("failed to check the source of job {0}")]
    CheckSource(String, #[source] ObjectStoreError),
    #[error("failed to create machine {machine} for job {job}")]
    CreateMachine {
        job: String,
        machine: String,
        #[source]
        source: ClientError,
    },
    #[error("failed to read machine {machine} of job {job}")]
    GetMachine {
        job: String,
        machine: String,
        #[source]
        source: ClientError,
    },
    #[error("failed to list machines")]
    ListMachines(#[source] ClientError),
    #[error("failed to destroy machine {machine} of job {job}")]
    DestroyMachine {
        job: String,
        machine: String,
        #[source]
        source: ClientError,
    },
}

impl ReconcileError {
    fn client_error(&self) -> Option<&ClientError> {
        match self {
            ReconcileError::CreateMachine { source, .. }
            | ReconcileError::GetMachine { source, .. }
            | ReconcileError::DestroyMachine { source, .. }
            | ReconcileError::ListMachines(source) => Some(source),
            ReconcileError::Store(..) | ReconcileError::CheckSource(..) => None,
        }
    }
}

/// When to look at a job again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Look again after this delay.
    Requeue(Duration),
    /// Nothing to do until something changes.
    AwaitChange,
}

/// Maps an error to the delay before the next pass: rate limiting and server errors back off
/// longer than a plain network error.
pub fn retry_delay(error: &ReconcileError) -> Duration {
    match error.client_error().and_then(ClientError::status) {
        Some(429) => Duration::from_secs(10),
        Some(status) if status >= 500 => Duration::from_secs(5),
        Some(_) => Duration::from_secs(15),
        None => Duration::from_secs(3),
    }
}

/// Delay before a job whose pass panicked is looked at again.
const PANIC_RETRY_DELAY: Duration = Duration::from_secs(5);

/// Tunables of the reconciler.
#[derive(Debug, Clone)]
pub struct ReconcilerSettings {
    /// How often running machines are checked when no callback arrives.
    pub poll_interval: Duration,
    /// How often every job is queued and stray machines are swept.
    pub resync_interval: Duration,
    /// Delay before the second attempt; it doubles for each later one.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// How long a machine may stay in a transitional state before it is force-destroyed.
    pub stuck_after: Duration,
    /// Live machines allowed at once across all jobs.
    pub max_concurrent_machines: usize,
    /// Passes running at once.
    pub max_parallel_reconciles: usize,
    /// How long a machine may be missing from the API before its attempt counts as lost.
    pub machine_grace: Duration,
}

impl Default for ReconcilerSettings {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(5),
            resync_interval: Duration::from_secs(60),
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            max_concurrent_machines: 20,
            max_parallel_reconciles: 8,
            machine_grace: Duration::from_secs(30),
            stuck_after: Duration::from_secs(300),
        }
    }
}

/// Counters of one resync sweep, logged once at info.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub jobs_queued: usize,
    pub machines_seen: usize,
    pub orphans_destroyed: usize,
    pub errors: usize,
}

pub struct JobReconciler {
    store: JobStore,
    fly: MachineApi,
    metrics: Arc<Metrics>,
    slots: MachineSlots,
    objects: ObjectStore,
    sources: SourceLocator,
    template: MachineTemplate,
    settings: ReconcilerSettings,
}

impl JobReconciler {
    pub fn new(
        store: JobStore,
        fly: FlyClient,
        objects: ObjectStore,
        template: MachineTemplate,
        settings: ReconcilerSettings,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let sources = SourceLocator::new(objects.default_bucket());
        Arc::new(Self {
            store,
            fly: MachineApi::new(fly, Arc::clone(&metrics)),
            metrics,
            slots: MachineSlots::new(settings.max_concurrent_machines),
            objects,
            sources,
            template,
            settings,
        })
    }

    /// Runs until `shutdown` is cancelled, then lets the passes in flight finish.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut changes = self.store.subscribe();
        let mut queue = JobQueue::new();
        let mut passes: JoinSet<(String, Action)> = JoinSet::new();
        let mut in_flight: HashSet<String> = HashSet::new();
        let mut dirty: HashSet<String> = HashSet::new();
        let mut task_names: HashMap<tokio::task::Id, String> = HashMap::new();
        let mut resync = tokio::time::interval(self.settings.resync_interval);
        tracing::info!("reconciler started");

        loop {
            let has_room = in_flight.len() < self.settings.max_parallel_reconciles;
            tokio::select! {
                () = shutdown.cancelled() => break,
                change = changes.recv() => match change {
                    Ok(name) => queue.schedule(&name, Duration::ZERO),
                    // Missed changes are picked up by queueing everything now.
                    Err(_) => {
                        self.queue_all(&mut queue);
                    }
                },
                _ = resync.tick() => {
                    let report = self.sweep(&mut queue).await;
                    tracing::info!(?report, "resync finished");
                }
                Some(name) = queue.next(), if has_room => {
                    if !in_flight.insert(name.clone()) {
                        dirty.insert(name);
                        continue;
                    }
                    let reconciler = Arc::clone(&self);
                    let task_name = name.clone();
                    let handle = passes.spawn(async move {
                        let action = reconciler.reconcile_logged(&task_name).await;
                        (task_name, action)
                    });
                    task_names.insert(handle.id(), name);
                }
                Some(finished) = passes.join_next_with_id() => {
                    let (name, action) = match finished {
                        Ok((id, result)) => {
                            task_names.remove(&id);
                            result
                        }
                        Err(err) => {
                            // A panicked pass must not leave its job out of the queue for good.
                            let Some(name) = task_names.remove(&err.id()) else { continue };
                            tracing::error!(job = %name, error = %err, "reconcile pass panicked");
                            self.metrics.record_reconcile(true);
                            (name, Action::Requeue(PANIC_RETRY_DELAY))
                        }
                    };
                    in_flight.remove(&name);
                    if dirty.remove(&name) {
                        queue.schedule(&name, Duration::ZERO);
                    } else if let Action::Requeue(delay) = action {
                        queue.schedule(&name, delay);
                    }
                }
            }
            self.metrics.set_queue_depth(queue.len());
        }

        while passes.join_next().await.is_some() {}
        tracing::info!("reconciler stopped");
    }

    /// Queues every job and recounts the machine slots from the store.
    fn queue_all(&self, queue: &mut JobQueue) -> usize {
        match self.store.list() {
            Ok(jobs) => {
                let live = jobs
                    .iter()
                    .filter(|job| holds_machine(job))
                    .map(|job| job.name().to_owned());
                self.slots.reset(live);
                jobs.iter()
                    .for_each(|job| queue.schedule(job.name(), Duration::ZERO));
                jobs.len()
            }
            Err(err) => {
                tracing::error!(error = %err, "failed to list jobs for resync");
                0
            }
        }
    }

    /// Queues every job and destroys machines whose metadata names no live attempt.
    pub async fn sweep(&self, queue: &mut JobQueue) -> SweepReport {
        let mut report = SweepReport {
            jobs_queued: self.queue_all(queue),
            ..Default::default()
        };

        let machines = match self.fly.list().await {
            Ok(machines) => machines,
            Err(err) => {
                tracing::warn!(error = %err, "failed to list machines for resync");
                report.errors += 1;
                return report;
            }
        };
        report.machines_seen = machines.len();
        let mut by_state = std::collections::BTreeMap::new();
        for machine in &machines {
            *by_state.entry(machine.state.to_string()).or_insert(0) += 1;
        }
        self.metrics.set_machines_by_state(by_state);

        for machine in machines {
            let Some(owner) = AttemptRef::of(&machine) else {
                continue;
            };
            if is_gone(machine.state) || self.is_live_attempt(&owner) {
                continue;
            }
            match self.destroy(&owner.job, &machine.id).await {
                Ok(()) => {
                    report.orphans_destroyed += 1;
                    self.metrics.record_orphans_destroyed(1);
                    self.event(
                        &owner.job,
                        "Warning",
                        "OrphanDestroyed",
                        &format!("destroyed machine {} of a stale attempt", machine.id),
                    );
                }
                Err(err) => {
                    tracing::warn!(job = %owner.job, machine = %machine.id, error = %err, "failed to destroy orphan machine");
                    report.errors += 1;
                }
            }
        }
        report
    }

    fn is_live_attempt(&self, owner: &AttemptRef) -> bool {
        let Ok(Some(job)) = self.store.get(&owner.job) else {
            return false;
        };
        job.attempt.as_ref().is_some_and(|attempt| {
            owner.matches(&job, attempt) && !job.job.status.phase.is_finished()
        })
    }

    async fn reconcile_logged(&self, name: &str) -> Action {
        let span = tracing::info_span!("reconcile", job = %name);
        async {
            match self.reconcile(name).await {
                Ok(action) => {
                    self.metrics.record_reconcile(false);
                    self.record_error(name, None).await;
                    action
                }
                Err(err) => {
                    self.metrics.record_reconcile(true);
                    tracing::warn!(error = %err, cause = ?std::error::Error::source(&err).map(ToString::to_string), "reconcile failed");
                    self.record_error(name, Some(error_chain(&err))).await;
                    Action::Requeue(retry_delay(&err))
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn record_error(&self, name: &str, error: Option<String>) {
        let result = self
            .store
            .update(name, |job| {
                job.job.status.last_reconcile_error = error.clone();
            })
            .await;
        if let Err(err) = result {
            if !matches!(err, StoreError::NotFound(_)) {
                tracing::warn!(error = %err, "failed to record the reconcile error");
            }
        }
    }

    /// Runs one pass over one job.
    pub async fn reconcile(&self, name: &str) -> Result<Action, ReconcileError> {
        let store_error = |err| ReconcileError::Store(name.to_owned(), err);
        let Some(job) = self.store.get(name).map_err(store_error)? else {
            self.slots.release(name);
            return self.clean_up_deleted(name).await;
        };
        if !holds_machine(&job) {
            self.slots.release(name);
        }

        if job.job.metadata.deletion_timestamp.is_some() {
            return self.delete(job).await;
        }
        if job.job.status.phase.is_finished() {
            return self.finish(job).await;
        }
        if job
            .attempt
            .as_ref()
            .is_some_and(|attempt| attempt.generation != job.generation())
        {
            return self.start_new_generation(job).await;
        }
        if job.job.spec.suspend {
            return self.suspend(job).await;
        }
        let suspended = job.job.status.condition("Suspended");
        if suspended.is_some_and(|condition| condition.status == "True") {
            self.update(name, |stored| {
                let message = "spec.suspend is false";
                stored
                    .job
                    .status
                    .set_condition("Suspended", false, "Resumed", message);
            })
            .await?;
        }
        if let Some(action) = self.enforce_deadline(&job).await? {
            return Ok(action);
        }

        match job.attempt.clone() {
            Some(attempt) => self.follow_attempt(job, attempt).await,
            None => self.start_attempt(job).await,
        }
    }

    /// Makes sure the current attempt's machine is gone, and remembers that it is.
    async fn destroy_attempt_machine(&self, job: &StoredJob) -> Result<(), ReconcileError> {
        let Some(attempt) = job
            .attempt
            .as_ref()
            .filter(|attempt| !attempt.machine_released)
        else {
            return Ok(());
        };
        let Some(machine_id) = attempt.machine_id.clone() else {
            return Ok(());
        };
        match self.fly.get(&machine_id).await {
            Ok(machine) if is_gone(machine.state) => {}
            Ok(_) => self.destroy(job.name(), &machine_id).await?,
            Err(err) if err.is_not_found() => {}
            Err(source) => {
                return Err(ReconcileError::GetMachine {
                    job: job.name().to_owned(),
                    machine: machine_id,
                    source,
                })
            }
        }
        self.update_attempt(job.name(), attempt.number, |current| {
            current.machine_released = true
        })
        .await
    }

    async fn destroy(&self, job: &str, machine: &str) -> Result<(), ReconcileError> {
        match self.fly.destroy(machine).await {
            Ok(()) => {
                tracing::info!(job, machine, "machine destroyed");
                self.event(
                    job,
                    "Normal",
                    "MachineDestroyed",
                    &format!("destroyed machine {machine}"),
                );
                Ok(())
            }
            Err(err) if err.is_not_found() => Ok(()),
            Err(source) => Err(ReconcileError::DestroyMachine {
                job: job.to_owned(),
                machine: machine.to_owned(),
                source,
            }),
        }
    }

    /// Writes a change to a job and frees its machine slot as soon as the change shows that
    /// the job has no machine any more, so a queued job can take the slot at once.
    async fn update(
        &self,
        name: &str,
        change: impl FnMut(&mut StoredJob),
    ) -> Result<StoredJob, ReconcileError> {
        let stored = self
            .store
            .update(name, change)
            .await
            .map_err(|err| ReconcileError::Store(name.to_owned(), err))?;
        if !holds_machine(&stored) {
            self.slots.release(name);
        }
        Ok(stored)
    }

    /// Records what the controller did to a job; a failure to record is logged, not returned.
    fn event(&self, name: &str, kind: &str, reason: &str, message: &str) {
        if let Err(err) = self.store.record_event(name, kind, reason, message) {
            tracing::warn!(job = %name, error = %err, "failed to record job event");
        }
    }
}

/// True while the job's current attempt has, or may soon have, a machine that is not known
/// to be destroyed.
fn holds_machine(job: &StoredJob) -> bool {
    job.attempt.as_ref().is_some_and(|attempt| {
        !attempt.machine_released && (attempt.outcome.is_none() || attempt.machine_id.is_some())
    })
}

/// True for the error shapes Fly uses when a region has no room for the machine.
fn is_capacity_error(error: &ClientError) -> bool {
    let text = error.to_string().to_ascii_lowercase();
    let capacity_words = [
        "insufficient",
        "capacity",
        "could not reserve",
        "no available",
        "out of resources",
    ];
    matches!(error.status(), Some(409 | 412 | 422 | 503))
        && capacity_words.iter().any(|word| text.contains(word))
}

fn is_gone(state: MachineState) -> bool {
    matches!(state, MachineState::Destroying | MachineState::Destroyed)
}

fn failure(reason: &str, message: &str, permanent: bool) -> AttemptOutcome {
    AttemptOutcome::Failed {
        reason: reason.to_owned(),
        message: message.to_owned(),
        permanent,
    }
}

/// Reads the worker's exit code when its callback never arrived.
fn outcome_from_exit(machine: &str, exit_code: i32, oom_killed: bool) -> AttemptOutcome {
    if oom_killed {
        return failure(
            "OOMKilled",
            &format!("machine {machine} ran out of memory"),
            false,
        );
    }
    match exit_code {
        protocol::EXIT_PERMANENT => failure(
            "WorkerFailed",
            &format!("worker on machine {machine} failed permanently (exit code {exit_code})"),
            true,
        ),
        protocol::EXIT_SUCCEEDED => failure(
            "NoResult",
            &format!("worker on machine {machine} exited without reporting a result"),
            false,
        ),
        code => failure(
            "WorkerExited",
            &format!("worker on machine {machine} exited with code {code}"),
            false,
        ),
    }
}

/// Delay before the attempt after `attempt`: `base`, doubling per attempt, at most `max`.
pub fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exponent = attempt.saturating_sub(1).min(20);
    base.saturating_mul(1 << exponent).min(max)
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let base = Duration::from_secs(10);
        let max = Duration::from_secs(300);

        assert_eq!(backoff(base, max, 1), Duration::from_secs(10));
        assert_eq!(backoff(base, max, 2), Duration::from_secs(20));
        assert_eq!(backoff(base, max, 4), Duration::from_secs(80));
        assert_eq!(backoff(base, max, 30), max);
    }

    #[test]
    fn permanent_exit_code_is_not_retried() {
        let outcome = outcome_from_exit("m1", protocol::EXIT_PERMANENT, false);

        assert!(matches!(
            outcome,
            AttemptOutcome::Failed {
                permanent: true,
                ..
            }
        ));
    }

    #[test]
    fn oom_is_retryable() {
        let outcome = outcome_from_exit("m1", 137, true);

        assert!(
            matches!(outcome, AttemptOutcome::Failed { ref reason, permanent: false, .. } if reason == "OOMKilled")
        );
    }
}
