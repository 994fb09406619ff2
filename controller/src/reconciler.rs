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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use fly_machines::client::{ClientError, FlyClient};
use fly_machines::types::{Machine, MachineState};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::machine_api::MachineApi;
use crate::machine_template::{machine_name, AttemptRef, MachineTemplate};
use crate::metrics::Metrics;
use crate::objectstore::{random_hex, ObjectStore, ObjectStoreError};
use crate::queue::JobQueue;
use crate::slots::MachineSlots;
use crate::sources::SourceLocator;
use crate::status::Phase;
use crate::store::{AttemptOutcome, AttemptRecord, JobStore, StoreError, StoredJob};

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

    /// One pass over one job.
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
                stored.job.status.set_condition("Suspended", false, "Resumed", message);
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

    /// Destroys every machine of a job whose deletion was requested, then removes the job.
    async fn delete(&self, job: StoredJob) -> Result<Action, ReconcileError> {
        self.destroy_machines_of(job.name()).await?;
        self.store
            .remove(job.name())
            .await
            .map_err(|err| ReconcileError::Store(job.name().to_owned(), err))?;
        tracing::info!("job deleted");
        Ok(Action::AwaitChange)
    }

    /// A job that is gone may still have machines, for example after a crash between the
    /// removal and the destroy; the resync sweep also catches any this pass misses.
    async fn clean_up_deleted(&self, name: &str) -> Result<Action, ReconcileError> {
        self.destroy_machines_of(name).await?;
        Ok(Action::AwaitChange)
    }

    async fn destroy_machines_of(&self, name: &str) -> Result<(), ReconcileError> {
        let machines = self
            .fly
            .list_for_job(name, false)
            .await
            .map_err(ReconcileError::ListMachines)?;
        for machine in machines {
            let owned = AttemptRef::of(&machine).is_some_and(|owner| owner.job == name);
            if owned && !is_gone(machine.state) {
                self.destroy(name, &machine.id).await?;
            }
        }
        Ok(())
    }

    async fn finish(&self, job: StoredJob) -> Result<Action, ReconcileError> {
        self.destroy_attempt_machine(&job).await?;

        let (Some(ttl), Some(done)) = (
            job.job.spec.ttl_seconds_after_finished,
            job.job.status.completion_time,
        ) else {
            return Ok(Action::AwaitChange);
        };
        let expires = done + chrono::Duration::seconds(ttl.min(i64::MAX as u64) as i64);
        let remaining = (expires - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        if remaining > Duration::ZERO {
            return Ok(Action::Requeue(remaining));
        }

        tracing::info!("deleting finished job after its ttl");
        self.store
            .remove(job.name())
            .await
            .map_err(|err| ReconcileError::Store(job.name().to_owned(), err))?;
        Ok(Action::AwaitChange)
    }

    async fn start_new_generation(&self, job: StoredJob) -> Result<Action, ReconcileError> {
        self.destroy_attempt_machine(&job).await?;
        let generation = job.generation();
        tracing::info!(
            generation,
            "spec changed; starting over for the new generation"
        );
        let message = format!("spec changed; starting over for generation {generation}");
        self.event(job.name(), "Normal", "SpecChanged", &message);

        self.update(job.name(), |stored| {
            stored.attempt = None;
            stored.retry_at = None;
            let status = &mut stored.job.status;
            status.phase = Phase::Pending;
            status.observed_generation = generation;
            status.attempts = 0;
            status.machine_id = None;
            status.progress = 0.0;
            status.start_time = None;
            status.completion_time = None;
            status.output = None;
            status.set_condition(
                "Complete",
                false,
                "SpecChanged",
                format!("generation {generation} is pending"),
            );
        })
        .await?;
        Ok(Action::Requeue(Duration::ZERO))
    }

    async fn suspend(&self, job: StoredJob) -> Result<Action, ReconcileError> {
        self.destroy_attempt_machine(&job).await?;
        self.update(job.name(), |stored| {
            stored.attempt = None;
            stored.job.status.phase = Phase::Pending;
            stored.job.status.machine_id = None;
            stored
                .job
                .status
                .set_condition("Suspended", true, "Suspended", "spec.suspend is true");
        })
        .await?;
        Ok(Action::AwaitChange)
    }

    async fn enforce_deadline(&self, job: &StoredJob) -> Result<Option<Action>, ReconcileError> {
        let (Some(deadline), Some(started)) = (
            job.job.spec.active_deadline_seconds,
            job.job.status.start_time,
        ) else {
            return Ok(None);
        };
        let expires = started + chrono::Duration::seconds(deadline.min(i64::MAX as u64) as i64);
        if Utc::now() < expires {
            return Ok(None);
        }

        self.destroy_attempt_machine(job).await?;
        let message = format!("the job ran longer than activeDeadlineSeconds ({deadline} s)");
        self.fail_job(job.name(), "DeadlineExceeded", &message)
            .await?;
        Ok(Some(Action::Requeue(Duration::ZERO)))
    }

    /// Starts the next attempt once the backoff has passed, the source exists and a machine
    /// slot is free.
    async fn start_attempt(&self, job: StoredJob) -> Result<Action, ReconcileError> {
        if let Some(retry_at) = job.retry_at {
            let wait = (retry_at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            if wait > Duration::ZERO {
                return Ok(Action::Requeue(wait));
            }
        }
        if self.slots.is_full() {
            return self.wait_for_slot(&job).await;
        }
        if let Some(action) = self.wait_for_source(&job).await? {
            return Ok(action);
        }
        if !self.slots.try_acquire(job.name()) {
            return self.wait_for_slot(&job).await;
        }

        let number = job.job.status.attempts + 1;
        let generation = job.generation();
        let attempt = AttemptRecord {
            number,
            generation,
            token: random_hex(32),
            machine_name: machine_name(job.name(), generation, number),
            machine_id: None,
            instance_id: None,
            created_at: Utc::now(),
            create_sent_at: None,
            region_index: 0,
            machine_released: false,
            outcome: None,
        };

        // The intent is durable before the machine exists.
        let stored = self
            .update(job.name(), |stored| {
                stored.attempt = Some(attempt.clone());
                stored.retry_at = None;
                let status = &mut stored.job.status;
                status.attempts = number;
                status.observed_generation = generation;
                status.progress = 0.0;
                status.start_time.get_or_insert_with(Utc::now);
                status.set_condition(
                    "Queued",
                    false,
                    "Scheduled",
                    format!("attempt {number} scheduled"),
                );
            })
            .await?;
        self.send_create(stored, attempt).await
    }

    async fn wait_for_source(&self, job: &StoredJob) -> Result<Option<Action>, ReconcileError> {
        let Some(object) = self.sources.stored_source(job) else {
            return Ok(None);
        };
        let size = self
            .objects
            .object_size(&object)
            .await
            .map_err(|err| ReconcileError::CheckSource(job.name().to_owned(), err))?;
        if size.is_some() {
            if job
                .job
                .status
                .condition("SourceReady")
                .is_none_or(|c| c.status != "True")
            {
                self.update(job.name(), |stored| {
                    stored.job.status.set_condition(
                        "SourceReady",
                        true,
                        "SourceFound",
                        format!("{object} exists"),
                    );
                })
                .await?;
            }
            return Ok(None);
        }

        let (reason, message) = if job.job.spec.source.upload {
            (
                "WaitingForUpload",
                format!(
                    "waiting for the upload to {object}; POST /v1/jobs/{}/upload-url for a URL",
                    job.name()
                ),
            )
        } else {
            ("SourceNotFound", format!("waiting for {object} to exist"))
        };
        self.update(job.name(), |stored| {
            stored
                .job
                .status
                .set_condition("SourceReady", false, reason, message.clone());
        })
        .await?;
        Ok(Some(Action::Requeue(
            self.settings.poll_interval.min(Duration::from_secs(2)),
        )))
    }

    async fn wait_for_slot(&self, job: &StoredJob) -> Result<Action, ReconcileError> {
        self.update(job.name(), |stored| {
            stored.job.status.set_condition(
                "Queued",
                true,
                "MachineLimit",
                "waiting for a free machine slot",
            );
        })
        .await?;
        Ok(Action::Requeue(self.settings.poll_interval))
    }

    /// Creates the machine of an attempt whose earlier create failed or went unanswered. A
    /// create may have succeeded without its response reaching us, so the machine is looked up
    /// by its metadata first, and a new create waits out the grace period in which Fly's
    /// eventually consistent list may not show it yet.
    async fn resume_create(
        &self,
        job: StoredJob,
        attempt: AttemptRecord,
    ) -> Result<Action, ReconcileError> {
        let Some(sent_at) = attempt.create_sent_at else {
            return self.send_create(job, attempt).await;
        };
        if let Some(existing) = self.find_attempt_machine(&job, &attempt).await? {
            return self.adopt(&job, &attempt, &existing).await;
        }
        let since = (Utc::now() - sent_at).to_std().unwrap_or(Duration::ZERO);
        if since < self.settings.machine_grace {
            return Ok(Action::Requeue(Duration::from_secs(1)));
        }
        self.send_create(job, attempt).await
    }

    async fn adopt(
        &self,
        job: &StoredJob,
        attempt: &AttemptRecord,
        machine: &Machine,
    ) -> Result<Action, ReconcileError> {
        tracing::info!(machine = %machine.id, "adopting machine created by an earlier pass");
        let message = format!(
            "found machine {} of attempt {} created earlier",
            machine.id, attempt.number
        );
        self.event(job.name(), "Normal", "MachineAdopted", &message);
        self.record_machine(job.name(), machine).await?;
        Ok(Action::Requeue(self.settings.poll_interval))
    }

    /// Sends the create request, after recording durably that it is about to be sent.
    async fn send_create(
        &self,
        job: StoredJob,
        attempt: AttemptRecord,
    ) -> Result<Action, ReconcileError> {
        let sent_at = Utc::now();
        self.update_attempt(job.name(), attempt.number, |current| {
            current.create_sent_at = Some(sent_at);
        })
        .await?;

        let request = self.template.create_request(&job, &attempt);
        let source = match self.fly.create(&request).await {
            Ok(machine) => {
                tracing::info!(machine = %machine.id, attempt = attempt.number, region = machine.region.as_deref().unwrap_or(""), "machine created");
                let message = format!(
                    "created machine {} for attempt {}",
                    machine.id, attempt.number
                );
                self.event(job.name(), "Normal", "MachineCreated", &message);
                self.record_machine(job.name(), &machine).await?;
                return Ok(Action::Requeue(self.settings.poll_interval));
            }
            Err(source) => source,
        };
        self.create_failed(job, attempt, source).await
    }

    /// Decides what a failed create means: the machine exists already, the region is full, a
    /// transient failure, or a request the API will never accept.
    async fn create_failed(
        &self,
        job: StoredJob,
        attempt: AttemptRecord,
        source: ClientError,
    ) -> Result<Action, ReconcileError> {
        if source.status() == Some(409) {
            // The name is taken: our own machine, created by a create whose response was lost.
            if let Some(existing) = self.find_attempt_machine(&job, &attempt).await? {
                return self.adopt(&job, &attempt, &existing).await;
            }
        }

        if is_capacity_error(&source) && self.template.has_region(attempt.region_index + 1) {
            let next = attempt.region_index + 1;
            tracing::warn!(error = %source, region_index = next, "no capacity; trying the next region");
            self.event(
                job.name(),
                "Warning",
                "NoCapacity",
                &format!("{source}; trying the next region"),
            );
            self.update_attempt(job.name(), attempt.number, |current| {
                current.region_index = next;
                current.create_sent_at = None;
            })
            .await?;
            return Ok(Action::Requeue(Duration::ZERO));
        }

        if source.is_retryable() {
            if matches!(source.status(), Some(status) if status < 500) {
                // A 429 means the create was not performed; the next pass need not look it up.
                self.update_attempt(job.name(), attempt.number, |current| {
                    current.create_sent_at = None
                })
                .await?;
            }
            return Err(ReconcileError::CreateMachine {
                job: job.name().to_owned(),
                machine: attempt.machine_name,
                source,
            });
        }

        // The API rejected the request itself; count it as a failed attempt.
        let message = format!("machine create rejected: {source}");
        tracing::warn!(error = %source, "machine create rejected");
        self.event(job.name(), "Warning", "MachineCreateFailed", &message);
        self.record_outcome(
            job.name(),
            &attempt,
            failure("MachineCreateFailed", &message, false),
        )
        .await?;
        Ok(Action::Requeue(Duration::ZERO))
    }

    /// Finds the attempt's machine by metadata, destroyed ones included so that an exit that
    /// happened before we learned the machine's id is still seen.
    async fn find_attempt_machine(
        &self,
        job: &StoredJob,
        attempt: &AttemptRecord,
    ) -> Result<Option<Machine>, ReconcileError> {
        let machines = self
            .fly
            .list_for_job(job.name(), true)
            .await
            .map_err(ReconcileError::ListMachines)?;
        Ok(machines.into_iter().find(|machine| {
            AttemptRef::of(machine).is_some_and(|owner| owner.matches(job, attempt))
        }))
    }

    async fn update_attempt(
        &self,
        name: &str,
        number: u32,
        mut change: impl FnMut(&mut AttemptRecord),
    ) -> Result<(), ReconcileError> {
        self.update(name, |stored| {
            if let Some(current) = stored.attempt.as_mut().filter(|a| a.number == number) {
                change(current);
            }
        })
        .await?;
        Ok(())
    }

    async fn record_machine(&self, name: &str, machine: &Machine) -> Result<(), ReconcileError> {
        self.update(name, |stored| {
            if let Some(attempt) = stored.attempt.as_mut() {
                attempt.machine_id = Some(machine.id.clone());
                attempt.instance_id = machine.instance_id.clone();
            }
            stored.job.status.machine_id = Some(machine.id.clone());
            stored.job.status.phase = Phase::Running;
        })
        .await?;
        Ok(())
    }

    /// Follows the current attempt: settles it once the worker reported or the machine ended.
    async fn follow_attempt(
        &self,
        job: StoredJob,
        attempt: AttemptRecord,
    ) -> Result<Action, ReconcileError> {
        if let Some(outcome) = attempt.outcome.clone() {
            return self.settle_attempt(job, attempt, outcome).await;
        }
        let Some(machine_id) = attempt.machine_id.clone() else {
            return self.resume_create(job, attempt).await;
        };

        let machine = match self.fly.get(&machine_id).await {
            Ok(machine) => machine,
            Err(err) if err.is_not_found() => return self.machine_missing(&job, &attempt).await,
            Err(source) => {
                return Err(ReconcileError::GetMachine {
                    job: job.name().to_owned(),
                    machine: machine_id,
                    source,
                })
            }
        };

        if !matches!(
            machine.state,
            MachineState::Stopped | MachineState::Destroyed | MachineState::Failed
        ) {
            return self.check_stuck(&job, &attempt, &machine).await;
        }
        let Some(exit) = machine.exit_event() else {
            if machine.state == MachineState::Stopped {
                // The exit event can trail the state change briefly.
                return Ok(Action::Requeue(Duration::from_secs(1)));
            }
            let message = format!(
                "machine {machine_id} ended in state {} without an exit event",
                machine.state
            );
            self.record_outcome(
                job.name(),
                &attempt,
                failure("MachineLost", &message, false),
            )
            .await?;
            return Ok(Action::Requeue(Duration::ZERO));
        };

        let outcome = outcome_from_exit(&machine_id, exit.exit_code, exit.oom_killed);
        self.record_outcome(job.name(), &attempt, outcome).await?;
        Ok(Action::Requeue(Duration::ZERO))
    }

    /// Force-destroys a machine that has sat in a transitional state (created, starting,
    /// stopping, ...) for longer than `stuck_after`; a started machine is left to the worker
    /// and the job's deadline.
    async fn check_stuck(
        &self,
        job: &StoredJob,
        attempt: &AttemptRecord,
        machine: &Machine,
    ) -> Result<Action, ReconcileError> {
        let poll = Action::Requeue(self.settings.poll_interval);
        if machine.state == MachineState::Started {
            return Ok(poll);
        }
        let since = machine
            .updated_at
            .as_deref()
            .and_then(|text| chrono::DateTime::parse_from_rfc3339(text).ok())
            .map(|time| time.with_timezone(&Utc))
            .unwrap_or(attempt.created_at);
        let stuck_for = (Utc::now() - since).to_std().unwrap_or(Duration::ZERO);
        if stuck_for < self.settings.stuck_after {
            return Ok(poll);
        }

        let message = format!(
            "machine {} stayed {} for {} s",
            machine.id,
            machine.state,
            stuck_for.as_secs()
        );
        tracing::warn!(machine = %machine.id, state = %machine.state, "force-destroying stuck machine");
        self.destroy(job.name(), &machine.id).await?;
        self.record_outcome(
            job.name(),
            attempt,
            failure("MachineStuck", &message, false),
        )
        .await?;
        Ok(Action::Requeue(Duration::ZERO))
    }

    /// A machine that the API does not know: normal for a moment after create, a lost attempt
    /// after the grace period.
    async fn machine_missing(
        &self,
        job: &StoredJob,
        attempt: &AttemptRecord,
    ) -> Result<Action, ReconcileError> {
        let age = (Utc::now() - attempt.created_at)
            .to_std()
            .unwrap_or(Duration::ZERO);
        if age < self.settings.machine_grace {
            return Ok(Action::Requeue(Duration::from_secs(1)));
        }
        let machine = attempt.machine_id.as_deref().unwrap_or("?");
        let message = format!("machine {machine} disappeared before the worker reported");
        self.record_outcome(job.name(), attempt, failure("MachineLost", &message, false))
            .await?;
        Ok(Action::Requeue(Duration::ZERO))
    }

    /// Turns a finished attempt into the job's next state: success, failure, or a retry.
    async fn settle_attempt(
        &self,
        job: StoredJob,
        attempt: AttemptRecord,
        outcome: AttemptOutcome,
    ) -> Result<Action, ReconcileError> {
        match outcome {
            AttemptOutcome::Succeeded => {
                self.update(job.name(), |stored| {
                    let status = &mut stored.job.status;
                    status.phase = Phase::Succeeded;
                    status.progress = 1.0;
                    status.completion_time = Some(Utc::now());
                    status.set_condition(
                        "Complete",
                        true,
                        "Succeeded",
                        format!("attempt {} succeeded", attempt.number),
                    );
                })
                .await?;
                tracing::info!(attempt = attempt.number, "job succeeded");
                let message = format!("attempt {} succeeded", attempt.number);
                self.event(job.name(), "Normal", "Succeeded", &message);
            }
            AttemptOutcome::Failed {
                reason,
                message,
                permanent,
            } => {
                let limit = job.job.spec.backoff_limit();
                if permanent {
                    self.fail_job(job.name(), &reason, &message).await?;
                } else if attempt.number > limit {
                    let message = format!(
                        "{message}; gave up after {} attempts (backoffLimit {limit})",
                        attempt.number
                    );
                    self.fail_job(job.name(), "BackoffLimitExceeded", &message)
                        .await?;
                } else {
                    self.schedule_retry(&job, &attempt, &reason, &message)
                        .await?;
                }
            }
        }
        Ok(Action::Requeue(Duration::ZERO))
    }

    async fn schedule_retry(
        &self,
        job: &StoredJob,
        attempt: &AttemptRecord,
        reason: &str,
        message: &str,
    ) -> Result<(), ReconcileError> {
        self.destroy_attempt_machine(job).await?;
        let delay = backoff(
            self.settings.backoff_base,
            self.settings.backoff_max,
            attempt.number,
        );
        let retry_at = Utc::now()
            + chrono::Duration::from_std(delay).unwrap_or_else(|_| chrono::Duration::zero());
        tracing::info!(
            attempt = attempt.number,
            reason,
            delay_seconds = delay.as_secs_f64(),
            "attempt failed; retrying after backoff"
        );
        let text = format!(
            "attempt {} failed ({reason}: {message}); retrying in {:.1} s",
            attempt.number,
            delay.as_secs_f64()
        );
        self.event(job.name(), "Warning", "AttemptFailed", &text);

        self.update(job.name(), |stored| {
            stored.attempt = None;
            stored.retry_at = Some(retry_at);
            let status = &mut stored.job.status;
            status.phase = Phase::Pending;
            status.machine_id = None;
            let text = format!(
                "attempt {} failed: {message}; retrying at {}",
                attempt.number,
                retry_at.to_rfc3339()
            );
            status.set_condition("Retrying", true, reason, text);
        })
        .await?;
        Ok(())
    }

    async fn fail_job(
        &self,
        name: &str,
        reason: &str,
        message: &str,
    ) -> Result<(), ReconcileError> {
        tracing::info!(reason, message, "job failed");
        self.event(name, "Warning", reason, message);
        self.update(name, |stored| {
            let status = &mut stored.job.status;
            status.phase = Phase::Failed;
            status.completion_time = Some(Utc::now());
            status.set_condition("Complete", true, reason, message);
        })
        .await?;
        Ok(())
    }

    async fn record_outcome(
        &self,
        name: &str,
        attempt: &AttemptRecord,
        outcome: AttemptOutcome,
    ) -> Result<(), ReconcileError> {
        self.update(name, |stored| {
            if let Some(current) = stored
                .attempt
                .as_mut()
                .filter(|current| current.number == attempt.number)
            {
                current.outcome.get_or_insert(outcome.clone());
            }
        })
        .await?;
        Ok(())
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

    async fn update(
        &self,
        name: &str,
        change: impl FnMut(&mut StoredJob),
    ) -> Result<StoredJob, ReconcileError> {
        self.store
            .update(name, change)
            .await
            .map_err(|err| ReconcileError::Store(name.to_owned(), err))
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
