//! Job-level transitions of the reconciler: deletion, completion and its TTL, a new
//! generation, suspension, the active deadline, and failing a job.

use std::time::Duration;

use chrono::Utc;

use super::{is_gone, Action, JobReconciler, ReconcileError};
use crate::machine_template::AttemptRef;
use crate::status::Phase;
use crate::store::StoredJob;

impl JobReconciler {
    /// Destroys every machine of a job whose deletion was requested, then removes the job.
    pub(super) async fn delete(&self, job: StoredJob) -> Result<Action, ReconcileError> {
        self.destroy_machines_of(job.name()).await?;
        self.store
            .remove(job.name())
            .await
            .map_err(|err| ReconcileError::Store(job.name().to_owned(), err))?;
        tracing::info!("job deleted");
        Ok(Action::AwaitChange)
    }

    /// Destroys the machines of a job that is gone. They can outlive it after a crash between
    /// the removal and the destroy, and the resync sweep also catches any this pass misses.
    pub(super) async fn clean_up_deleted(&self, name: &str) -> Result<Action, ReconcileError> {
        self.destroy_machines_of(name).await?;
        Ok(Action::AwaitChange)
    }

    pub(super) async fn destroy_machines_of(&self, name: &str) -> Result<(), ReconcileError> {
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

    pub(super) async fn finish(&self, job: StoredJob) -> Result<Action, ReconcileError> {
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

    pub(super) async fn start_new_generation(
        &self,
        job: StoredJob,
    ) -> Result<Action, ReconcileError> {
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
            stored.uncharged_failures = 0;
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

    pub(super) async fn suspend(&self, job: StoredJob) -> Result<Action, ReconcileError> {
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

    pub(super) async fn enforce_deadline(
        &self,
        job: &StoredJob,
    ) -> Result<Option<Action>, ReconcileError> {
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

    pub(super) async fn fail_job(
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
}
