//! Attempts: starting one once its source and a machine slot are there, creating its machine
//! safely, following the machine, and settling the attempt into success, failure or a retry.

use std::time::Duration;

use chrono::Utc;
use fly_machines::client::ClientError;
use fly_machines::types::{Machine, MachineState};

use super::{
    backoff, failure, is_capacity_error, outcome_from_exit, Action, JobReconciler, ReconcileError,
};
use crate::machine_template::{machine_name, AttemptRef};
use crate::objectstore::random_hex;
use crate::status::Phase;
use crate::store::{AttemptOutcome, AttemptRecord, StoredJob};

impl JobReconciler {
    /// Starts the next attempt once the backoff has passed, the source exists and a machine
    /// slot is free.
    pub(super) async fn start_attempt(&self, job: StoredJob) -> Result<Action, ReconcileError> {
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

    pub(super) async fn wait_for_source(
        &self,
        job: &StoredJob,
    ) -> Result<Option<Action>, ReconcileError> {
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

    pub(super) async fn wait_for_slot(&self, job: &StoredJob) -> Result<Action, ReconcileError> {
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
    pub(super) async fn resume_create(
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

    pub(super) async fn adopt(
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
    pub(super) async fn send_create(
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
    pub(super) async fn create_failed(
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
    pub(super) async fn find_attempt_machine(
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

    pub(super) async fn update_attempt(
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

    pub(super) async fn record_machine(
        &self,
        name: &str,
        machine: &Machine,
    ) -> Result<(), ReconcileError> {
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
    pub(super) async fn follow_attempt(
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
    pub(super) async fn check_stuck(
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
    pub(super) async fn machine_missing(
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
    pub(super) async fn settle_attempt(
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
                let uncharged = is_uncharged(&reason, job.uncharged_failures);
                let charged = attempt.number.saturating_sub(job.uncharged_failures);
                if permanent {
                    self.fail_job(job.name(), &reason, &message).await?;
                } else if !uncharged && charged > limit {
                    let message = format!(
                        "{message}; gave up after {} attempts (backoffLimit {limit})",
                        attempt.number
                    );
                    self.fail_job(job.name(), "BackoffLimitExceeded", &message)
                        .await?;
                } else {
                    self.schedule_retry(&job, &attempt, &reason, &message, uncharged)
                        .await?;
                }
            }
        }
        Ok(Action::Requeue(Duration::ZERO))
    }

    pub(super) async fn schedule_retry(
        &self,
        job: &StoredJob,
        attempt: &AttemptRecord,
        reason: &str,
        message: &str,
        uncharged: bool,
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
            if uncharged {
                stored.uncharged_failures += 1;
            }
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

    pub(super) async fn record_outcome(
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
}

/// Most attempts lost to the platform that do not count against `backoffLimit`; past this,
/// lost machines count like any other failure so a job cannot retry forever.
const MAX_UNCHARGED_FAILURES: u32 = 10;

/// True when a failed attempt is not the job's fault: its machine vanished without an exit,
/// as when the controller or the local Machines API restarted or a host was lost, or the
/// platform stopped the worker with a signal.
fn is_uncharged(reason: &str, uncharged_so_far: u32) -> bool {
    matches!(reason, "MachineLost" | "Stopped") && uncharged_so_far < MAX_UNCHARGED_FAILURES
}
