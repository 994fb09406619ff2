//! The local server's table of machines: their API records, state changes and events.
//!
//! Every state change goes through [`Fleet::transition`], which updates the record, adds the
//! event (newest first, as Fly lists them) and publishes the state on the machine's watch
//! channel, which the wait endpoint listens to. Destroyed machines stay readable for
//! [`DESTROYED_RETENTION`] and are then dropped.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::process::ProcessCommand;
use crate::types::{ExitEvent, Machine, MachineEvent, MachineState};

/// How long a destroyed machine can still be fetched by id.
pub const DESTROYED_RETENTION: Duration = Duration::from_secs(600);

/// What the wait endpoint watches: the state, and whether the current instance ever started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Progress {
    pub state: MachineState,
    pub started: bool,
}

/// A machine request the table rejects.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FleetError {
    #[error("machine {id} not found")]
    NotFound { id: String },

    #[error("machine name {name:?} is already used by machine {id}")]
    NameTaken { name: String, id: String },

    #[error("machine {id} is {state}; stop it first or destroy it with force=true")]
    StillRunning { id: String, state: MachineState },

    #[error("machine {id} is destroyed")]
    Destroyed { id: String },
}

/// Filters of the list endpoint.
#[derive(Debug, Clone, Default)]
pub(crate) struct ListFilter {
    pub include_deleted: bool,
    pub region: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

/// What happens to a machine after its process exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterExit {
    /// Stay `stopped`.
    Stay,
    /// Go on to `destroyed` (auto destroy).
    Destroy,
    /// Start the process again (restart policy); the machine never shows `stopped`.
    Restart,
}

struct Record {
    /// Creation order, which orders the list.
    sequence: u64,
    machine: Machine,
    progress: watch::Sender<Progress>,
    /// Commands to the machine's process; `None` once it has exited.
    control: Option<mpsc::UnboundedSender<ProcessCommand>>,
    /// Set by a forced destroy of a running machine: destroy once the process is gone.
    destroy_on_exit: bool,
    destroyed_at: Option<Instant>,
}

/// All machines of the local app.
#[derive(Default)]
pub(crate) struct Fleet {
    records: Mutex<HashMap<String, Record>>,
    next_sequence: AtomicU64,
}

impl Fleet {
    /// Adds a new machine in state `created`, controlled through `control`.
    pub(crate) fn insert(
        &self,
        machine: Machine,
        control: mpsc::UnboundedSender<ProcessCommand>,
    ) -> Result<(), FleetError> {
        let mut records = self.lock();
        if let Some(name) = &machine.name {
            let taken = records.values().find(|record| {
                record.destroyed_at.is_none() && record.machine.name.as_ref() == Some(name)
            });
            if let Some(existing) = taken {
                return Err(FleetError::NameTaken {
                    name: name.clone(),
                    id: existing.machine.id.clone(),
                });
            }
        }

        let (progress, _) = watch::channel(Progress {
            state: machine.state,
            started: false,
        });
        records.insert(
            machine.id.clone(),
            Record {
                sequence: self.next_sequence.fetch_add(1, Ordering::Relaxed),
                machine,
                progress,
                control: Some(control),
                destroy_on_exit: false,
                destroyed_at: None,
            },
        );
        Ok(())
    }

    /// Returns a machine by id; destroyed ones within the retention period included.
    pub(crate) fn get(&self, id: &str) -> Result<Machine, FleetError> {
        let records = self.lock_purged();
        records
            .get(id)
            .map(|record| record.machine.clone())
            .ok_or_else(|| not_found(id))
    }

    /// Returns the machines that pass `filter`, oldest first.
    pub(crate) fn list(&self, filter: &ListFilter) -> Vec<Machine> {
        let records = self.lock_purged();
        let mut matching: Vec<&Record> = records
            .values()
            .filter(|record| filter.include_deleted || record.destroyed_at.is_none())
            .filter(|record| {
                let machine = &record.machine;
                filter
                    .region
                    .as_ref()
                    .is_none_or(|region| machine.region.as_ref() == Some(region))
            })
            .filter(|record| {
                let metadata = record.machine.metadata();
                filter
                    .metadata
                    .iter()
                    .all(|(key, value)| metadata.get(key) == Some(value))
            })
            .collect();
        matching.sort_by_key(|record| record.sequence);
        matching
            .into_iter()
            .map(|record| record.machine.clone())
            .collect()
    }

    /// Returns the machine's current instance id and a receiver of its progress.
    pub(crate) fn subscribe(
        &self,
        id: &str,
    ) -> Result<(Option<String>, watch::Receiver<Progress>), FleetError> {
        let records = self.lock_purged();
        let record = records.get(id).ok_or_else(|| not_found(id))?;
        Ok((
            record.machine.instance_id.clone(),
            record.progress.subscribe(),
        ))
    }

    /// Moves the machine to `state`; returns false if it is gone.
    pub(crate) fn transition(&self, id: &str, state: MachineState) -> bool {
        let mut records = self.lock();
        let Some(record) = records.get_mut(id) else {
            return false;
        };
        record.machine.state = state;
        record.machine.updated_at = Some(now_rfc3339());
        record
            .progress
            .send_modify(|progress| progress.state = state);
        true
    }

    /// Sends `command` to the machine's process after recording the request as `event`.
    ///
    /// A machine whose process already exited accepts the request and stays as it is.
    pub(crate) fn stop(
        &self,
        id: &str,
        command: ProcessCommand,
        event: MachineEvent,
    ) -> Result<(), FleetError> {
        let mut records = self.lock_purged();
        let record = records.get_mut(id).ok_or_else(|| not_found(id))?;
        if record.destroyed_at.is_some() {
            return Err(FleetError::Destroyed { id: id.to_owned() });
        }
        let Some(control) = record.control.clone() else {
            return Ok(());
        };
        if matches!(
            record.machine.state,
            MachineState::Created | MachineState::Starting | MachineState::Started
        ) {
            apply(record, MachineState::Stopping, event);
        }
        // A closed channel means the process exit is being recorded right now.
        let _ = control.send(command);
        Ok(())
    }

    /// Destroys a machine whose process has exited; with `force`, kills a running one first.
    pub(crate) fn destroy(&self, id: &str, force: bool) -> Result<(), FleetError> {
        let mut records = self.lock_purged();
        let record = records.get_mut(id).ok_or_else(|| not_found(id))?;
        if record.destroyed_at.is_some() {
            return Ok(());
        }
        match record.control.clone() {
            None => mark_destroyed(record),
            Some(_) if !force => {
                return Err(FleetError::StillRunning {
                    id: id.to_owned(),
                    state: record.machine.state,
                })
            }
            Some(control) => {
                record.destroy_on_exit = true;
                apply(
                    record,
                    MachineState::Destroying,
                    event("destroy", "destroying", "user", None),
                );
                let _ = control.send(ProcessCommand::Kill);
            }
        }
        Ok(())
    }

    /// Marks that the machine's process reached `started`.
    pub(crate) fn mark_started(&self, id: &str) {
        let mut records = self.lock();
        if let Some(record) = records.get_mut(id) {
            if record.machine.state == MachineState::Starting {
                apply(
                    record,
                    MachineState::Started,
                    event("start", "started", "flyd", None),
                );
            }
            record
                .progress
                .send_modify(|progress| progress.started = true);
        }
    }

    /// Records the exit of the machine's process as an `exit` event, and moves the machine to
    /// `starting` for a restart, or else to `stopped` and on to `destroyed` when `after` or an
    /// earlier forced destroy asks for it.
    ///
    /// Returns the action taken, which is never a restart once a forced destroy is pending.
    pub(crate) fn record_exit(
        &self,
        id: &str,
        exit: &ExitEvent,
        restart_count: u32,
        after: AfterExit,
    ) -> AfterExit {
        let mut records = self.lock();
        let Some(record) = records.get_mut(id) else {
            return AfterExit::Stay;
        };
        let restart = after == AfterExit::Restart && !record.destroy_on_exit;
        let exit = ExitEvent {
            restarting: restart,
            ..exit.clone()
        };
        let request = json!({ "exit_event": exit, "restart_count": restart_count });

        if restart {
            let exit_event = event("exit", "starting", "flyd", Some(request));
            apply(record, MachineState::Starting, exit_event);
            record
                .progress
                .send_modify(|progress| progress.started = false);
            return AfterExit::Restart;
        }

        record.control = None;
        apply(
            record,
            MachineState::Stopped,
            event("exit", "stopped", "flyd", Some(request)),
        );
        if after == AfterExit::Destroy || record.destroy_on_exit {
            mark_destroyed(record);
            return AfterExit::Destroy;
        }
        AfterExit::Stay
    }

    /// Ends a pending restart after a stop or kill request: state `stopped`, then `destroyed`
    /// when `after` or a forced destroy asks for it.
    pub(crate) fn cancel_restart(&self, id: &str, after: AfterExit) {
        let mut records = self.lock();
        let Some(record) = records.get_mut(id) else {
            return;
        };
        record.control = None;
        apply(
            record,
            MachineState::Stopped,
            event("stop", "stopped", "user", None),
        );
        if after == AfterExit::Destroy || record.destroy_on_exit {
            mark_destroyed(record);
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Record>> {
        self.records
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Locks the table after dropping machines destroyed longer ago than the retention period.
    fn lock_purged(&self) -> MutexGuard<'_, HashMap<String, Record>> {
        let mut records = self.lock();
        let now = Instant::now();
        records.retain(|_, record| {
            record
                .destroyed_at
                .is_none_or(|at| now.duration_since(at) < DESTROYED_RETENTION)
        });
        records
    }
}

fn apply(record: &mut Record, state: MachineState, event: MachineEvent) {
    record.machine.state = state;
    record.machine.updated_at = Some(now_rfc3339());
    record.machine.events.insert(0, event);
    record
        .progress
        .send_modify(|progress| progress.state = state);
}

fn mark_destroyed(record: &mut Record) {
    record.destroyed_at = Some(Instant::now());
    apply(
        record,
        MachineState::Destroyed,
        event("destroy", "destroyed", "flyd", None),
    );
}

fn not_found(id: &str) -> FleetError {
    FleetError::NotFound { id: id.to_owned() }
}

/// Builds a machine event stamped now.
pub(crate) fn event(
    kind: &str,
    status: &str,
    source: &str,
    request: Option<serde_json::Value>,
) -> MachineEvent {
    MachineEvent {
        id: Some(super::ids::event_id()),
        kind: kind.to_owned(),
        status: Some(status.to_owned()),
        source: Some(source.to_owned()),
        timestamp: Some(Utc::now().timestamp_millis()),
        request,
    }
}

/// Returns the current time in the RFC 3339 form Fly uses.
pub(crate) fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}
