//! The observed state of a job, written by the controller and read by users.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Accepted; waiting for its source, a machine slot or a retry.
    #[default]
    Pending,
    /// A machine is working on the current attempt.
    Running,
    Succeeded,
    Failed,
}

impl Phase {
    pub fn is_finished(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }
}

impl std::str::FromStr for Phase {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "Pending" => Ok(Phase::Pending),
            "Running" => Ok(Phase::Running),
            "Succeeded" => Ok(Phase::Succeeded),
            "Failed" => Ok(Phase::Failed),
            other => Err(format!(
                "unknown phase {other:?}; allowed: Pending, Running, Succeeded, Failed"
            )),
        }
    }
}

/// Status as stored and as returned by the API. Unknown fields are tolerated so that the output
/// of `transcoder get -o yaml` can be applied again.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    pub phase: Phase,
    #[serde(default)]
    pub observed_generation: u64,
    /// Attempts started so far, for the observed generation.
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub machine_id: Option<String>,
    /// 0 to 1, from worker callbacks.
    #[serde(default)]
    pub progress: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The last error the controller hit while reconciling this job, cleared on the next success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reconcile_error: Option<String>,
}

/// What the worker produced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputStatus {
    /// `s3://BUCKET/KEY` of the MP3.
    pub url: String,
    /// A presigned GET of the MP3, valid for a limited time; filled in when the job is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download_url: Option<String>,
    pub bytes: u64,
    pub duration_seconds: f64,
    pub sha256: String,
    #[serde(default)]
    pub sample_rate_hz: u32,
    #[serde(default)]
    pub channels: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitrate_kbps: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vbr_quality: Option<u8>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// One aspect of the job's state, as in Kubernetes: `type` is the aspect, `status` is
/// `"True"` or `"False"`, `reason` is a machine-readable word.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    pub last_transition_time: DateTime<Utc>,
}

impl JobStatus {
    /// Sets a condition, keeping its transition time when its status did not change.
    pub fn set_condition(
        &mut self,
        kind: &str,
        active: bool,
        reason: &str,
        message: impl Into<String>,
    ) {
        let status = if active { "True" } else { "False" };
        let message = message.into();
        let now = Utc::now();

        if let Some(existing) = self.conditions.iter_mut().find(|c| c.kind == kind) {
            if existing.status != status {
                existing.last_transition_time = now;
            }
            existing.status = status.to_owned();
            existing.reason = reason.to_owned();
            existing.message = message;
            return;
        }

        self.conditions.push(Condition {
            kind: kind.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message,
            last_transition_time: now,
        });
    }

    pub fn condition(&self, kind: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.kind == kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_condition_keeps_transition_time_when_status_is_unchanged() {
        let mut status = JobStatus::default();
        status.set_condition("Complete", false, "Running", "first");
        let first = status.conditions[0].last_transition_time;

        status.set_condition("Complete", false, "Running", "second");

        assert_eq!(status.conditions.len(), 1);
        assert_eq!(status.conditions[0].last_transition_time, first);
        assert_eq!(status.conditions[0].message, "second");
    }

    #[test]
    fn phase_parses_from_its_name() {
        assert_eq!("Succeeded".parse::<Phase>(), Ok(Phase::Succeeded));
        assert!("Done".parse::<Phase>().is_err());
    }
}
