//! `MachineTemplate`: the Fly Machine that runs one attempt of a job, and the metadata that
//! ties a machine back to its job, uid, generation and attempt.

use std::collections::BTreeMap;

use fly_machines::types::{
    CreateMachineRequest, Machine, MachineConfig, MachineGuest, MachineInit, MachineRestart,
    RestartPolicy,
};

use crate::store::{AttemptRecord, StoredJob};

pub const META_JOB: &str = "transcoder_job";
pub const META_UID: &str = "transcoder_uid";
pub const META_GENERATION: &str = "transcoder_generation";
pub const META_ATTEMPT: &str = "transcoder_attempt";

/// Guest size used when a job names none.
pub const DEFAULT_MACHINE_SIZE: &str = "shared-cpu-2x";

/// What every attempt machine shares: the image and how workers reach the controller.
#[derive(Debug, Clone)]
pub struct MachineTemplate {
    /// Image with `transcoder-worker`; the local Machines implementation ignores it.
    pub image: String,
    /// Base URL at which workers reach the controller's API.
    pub controller_url: String,
    /// Region for jobs that name none; `None` lets Fly choose.
    pub default_region: Option<String>,
    /// Regions tried in turn when the first one has no capacity.
    pub fallback_regions: Vec<String>,
}

impl MachineTemplate {
    /// Builds the create request for `attempt` of `job`. The machine runs once: restart policy
    /// `no` and `auto_destroy`, so it goes away on its own when the worker exits.
    pub fn create_request(&self, job: &StoredJob, attempt: &AttemptRecord) -> CreateMachineRequest {
        let machine = job.job.spec.machine.clone().unwrap_or_default();
        let size = machine.size.as_deref().unwrap_or(DEFAULT_MACHINE_SIZE);

        let env = BTreeMap::from([
            (
                protocol::ENV_API_URL.to_owned(),
                self.controller_url.clone(),
            ),
            (protocol::ENV_JOB.to_owned(), job.name().to_owned()),
            (protocol::ENV_ATTEMPT.to_owned(), attempt.number.to_string()),
            (protocol::ENV_TOKEN.to_owned(), attempt.token.clone()),
        ]);

        let config = MachineConfig {
            image: Some(self.image.clone()),
            env: Some(env),
            init: Some(MachineInit {
                cmd: Some(vec!["transcoder-worker".to_owned(), "run".to_owned()]),
                ..Default::default()
            }),
            guest: Some(guest_preset(size)),
            restart: Some(MachineRestart {
                policy: Some(RestartPolicy::No),
                ..Default::default()
            }),
            auto_destroy: Some(true),
            metadata: Some(attempt_metadata(job, attempt)),
            ..Default::default()
        };

        CreateMachineRequest {
            config,
            name: Some(attempt.machine_name.clone()),
            region: self.region(machine.region, attempt.region_index),
            ..Default::default()
        }
    }
}

impl MachineTemplate {
    /// True when there is a region to try at `index`: 0 is the job's own, then the fallbacks.
    pub fn has_region(&self, index: usize) -> bool {
        index <= self.fallback_regions.len()
    }

    fn region(&self, job_region: Option<String>, index: usize) -> Option<String> {
        match index {
            0 => job_region.or_else(|| self.default_region.clone()),
            n => self.fallback_regions.get(n - 1).cloned(),
        }
    }
}

fn attempt_metadata(job: &StoredJob, attempt: &AttemptRecord) -> BTreeMap<String, String> {
    BTreeMap::from([
        (META_JOB.to_owned(), job.name().to_owned()),
        (META_UID.to_owned(), job.uid().to_owned()),
        (META_GENERATION.to_owned(), attempt.generation.to_string()),
        (META_ATTEMPT.to_owned(), attempt.number.to_string()),
    ])
}

/// The machine's name for an attempt: unique per job, generation and attempt, and readable in
/// `fly machines list`.
pub fn machine_name(job: &str, generation: u64, attempt: u32) -> String {
    format!("{job}-g{generation}-a{attempt}")
}

/// Which attempt a machine belongs to, read from its metadata; `None` for machines this
/// controller did not create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRef {
    pub job: String,
    pub uid: String,
    pub generation: u64,
    pub attempt: u32,
}

impl AttemptRef {
    pub fn of(machine: &Machine) -> Option<Self> {
        let metadata = machine.metadata();
        Some(Self {
            job: metadata.get(META_JOB)?.clone(),
            uid: metadata.get(META_UID)?.clone(),
            generation: metadata.get(META_GENERATION)?.parse().ok()?,
            attempt: metadata.get(META_ATTEMPT)?.parse().ok()?,
        })
    }

    /// True when `attempt` of `job` is the attempt this machine was created for.
    pub fn matches(&self, job: &StoredJob, attempt: &AttemptRecord) -> bool {
        self.uid == job.uid()
            && self.generation == attempt.generation
            && self.attempt == attempt.number
    }
}

/// CPU and memory of Fly's guest presets.
fn guest_preset(size: &str) -> MachineGuest {
    let (cpu_kind, cpus, memory_mb) = match size {
        "shared-cpu-1x" => ("shared", 1, 256),
        "shared-cpu-4x" => ("shared", 4, 1024),
        "shared-cpu-8x" => ("shared", 8, 2048),
        "performance-1x" => ("performance", 1, 2048),
        "performance-2x" => ("performance", 2, 4096),
        "performance-4x" => ("performance", 4, 8192),
        "performance-8x" => ("performance", 8, 16384),
        "performance-16x" => ("performance", 16, 32768),
        _ => ("shared", 2, 512),
    };
    MachineGuest {
        cpu_kind: Some(cpu_kind.to_owned()),
        cpus: Some(cpus),
        memory_mb: Some(memory_mb),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spec_size_has_a_preset() {
        for size in crate::spec::MACHINE_SIZES {
            let guest = guest_preset(size);
            let expected_kind = if size.starts_with("shared") {
                "shared"
            } else {
                "performance"
            };

            assert_eq!(guest.cpu_kind.as_deref(), Some(expected_kind), "{size}");
        }
    }

    #[test]
    fn machine_name_carries_generation_and_attempt() {
        assert_eq!(machine_name("weekly-42", 2, 3), "weekly-42-g2-a3");
    }
}
