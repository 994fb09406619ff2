//! The life of one local machine: start its process, restart it as its restart policy requires,
//! and record every exit in the machine table.

use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::faults::MachineFault;
use super::fleet::{now_rfc3339, AfterExit, Fleet};
use super::process::{self, LaunchSpec, Outcome, ProcessCommand, ProcessExit};
use crate::types::{ExitEvent, MachineInit, MachineRestart, MachineState, RestartPolicy};

/// Program name in a machine command that stands for the server's worker binary.
pub const WORKER_PROGRAM: &str = "transcoder-worker";

/// Restart attempts Fly allows under `on-failure` when `max_retries` is not set.
const DEFAULT_MAX_RETRIES: u32 = 10;

/// Pause before a restart, so a process that keeps crashing does not spin.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// Everything the lifecycle of one machine needs to know.
#[derive(Debug, Clone)]
pub(crate) struct MachinePlan {
    pub id: String,
    pub launch: LaunchSpec,
    pub restart: RestartRule,
    pub auto_destroy: bool,
    /// Injected pause before each state change; zero outside fault tests.
    pub state_change_delay: Duration,
    /// Injected end of the first run of the process; `None` outside fault tests.
    pub fault: Option<MachineFault>,
}

/// A machine's resolved restart policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RestartRule {
    pub policy: RestartPolicy,
    pub max_retries: u32,
}

impl RestartRule {
    /// Resolves the config's policy; Fly uses `on-failure` when none is set.
    pub(crate) fn from_config(restart: Option<&MachineRestart>) -> Self {
        let policy = match restart.and_then(|restart| restart.policy) {
            Some(RestartPolicy::No) => RestartPolicy::No,
            Some(RestartPolicy::Always) => RestartPolicy::Always,
            Some(RestartPolicy::OnFailure | RestartPolicy::Unspecified) | None => {
                RestartPolicy::OnFailure
            }
        };
        let max_retries = restart
            .and_then(|restart| restart.max_retries)
            .unwrap_or(DEFAULT_MAX_RETRIES);
        RestartRule {
            policy,
            max_retries,
        }
    }

    fn restarts_after(&self, exit: &ProcessExit, restarts_so_far: u32) -> bool {
        if exit.requested_stop {
            return false;
        }
        match self.policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => exit.exit_code != 0 && restarts_so_far < self.max_retries,
            RestartPolicy::No | RestartPolicy::Unspecified => false,
        }
    }
}

impl MachinePlan {
    fn after_exit(&self, exit: &ProcessExit, restarts_so_far: u32) -> AfterExit {
        if self.restart.restarts_after(exit, restarts_so_far) {
            AfterExit::Restart
        } else {
            self.after_stop()
        }
    }

    async fn pause_before_state_change(&self) {
        if !self.state_change_delay.is_zero() {
            tokio::time::sleep(self.state_change_delay).await;
        }
    }

    fn after_stop(&self) -> AfterExit {
        if self.auto_destroy {
            AfterExit::Destroy
        } else {
            AfterExit::Stay
        }
    }
}

/// Runs the machine's process until it stops for good or the server shuts down.
pub(crate) async fn run_machine(
    fleet: Arc<Fleet>,
    plan: MachinePlan,
    mut commands: mpsc::UnboundedReceiver<ProcessCommand>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut restarts = 0;
    loop {
        plan.pause_before_state_change().await;
        if !fleet.transition(&plan.id, MachineState::Starting) {
            return;
        }
        let launch = match plan.fault.filter(|_| restarts == 0) {
            Some(_) => plan.launch.doomed(),
            None => plan.launch.clone(),
        };
        let running = match process::spawn(&launch) {
            Ok(running) => running,
            Err(error) => {
                warn!(machine = %plan.id, error = %error, "machine process failed to start");
                let exit = failed_start_event(&error);
                fleet.record_exit(&plan.id, &exit, restarts, plan.after_stop());
                return;
            }
        };
        info!(machine = %plan.id, pid = running.pid(), restarts, "machine process started");
        plan.pause_before_state_change().await;
        fleet.mark_started(&plan.id);

        let exit = match process::supervise(running, &mut commands, &mut shutdown).await {
            Outcome::Exited(exit) => exit,
            Outcome::ShutDown => return,
        };
        info!(machine = %plan.id, exit_code = exit.exit_code, signal = exit.signal, requested_stop = exit.requested_stop, "machine process exited");

        plan.pause_before_state_change().await;
        let after = plan.after_exit(&exit, restarts);
        let mut event = exit_event(&exit);
        event.oom_killed = restarts == 0 && plan.fault == Some(MachineFault::OutOfMemory);
        let applied = fleet.record_exit(&plan.id, &event, restarts, after);
        if applied != AfterExit::Restart {
            return;
        }
        restarts += 1;
        if !restart_delay_passes(&mut commands, &mut shutdown).await {
            fleet.cancel_restart(&plan.id, plan.after_stop());
            return;
        }
    }
}

/// Waits out [`RESTART_DELAY`]; false when a stop, kill or shutdown came first.
async fn restart_delay_passes(
    commands: &mut mpsc::UnboundedReceiver<ProcessCommand>,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        () = tokio::time::sleep(RESTART_DELAY) => true,
        command = commands.recv() => command.is_none(),
        () = process::shutdown_requested(shutdown) => false,
    }
}

fn exit_event(exit: &ProcessExit) -> ExitEvent {
    ExitEvent {
        exit_code: exit.exit_code,
        oom_killed: false,
        requested_stop: exit.requested_stop,
        restarting: false,
        signal: exit.signal,
        exited_at: Some(now_rfc3339()),
        error: None,
    }
}

fn failed_start_event(error: &process::ProcessError) -> ExitEvent {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    ExitEvent {
        exit_code: -1,
        oom_killed: false,
        requested_stop: false,
        restarting: false,
        signal: -1,
        exited_at: Some(now_rfc3339()),
        error: Some(text),
    }
}

/// Builds the command line of a machine from `config.init`.
///
/// `exec` wins; otherwise `entrypoint` followed by `cmd`; with neither, `transcoder-worker run`.
/// A first element of `transcoder-worker` becomes `worker_bin`, because the local server has no
/// image to find that program in.
pub(crate) fn machine_argv(init: Option<&MachineInit>, worker_bin: &Path) -> Vec<OsString> {
    let non_empty = |list: Option<&Vec<String>>| list.filter(|list| !list.is_empty()).cloned();
    let exec = init.and_then(|init| non_empty(init.exec.as_ref()));
    let entrypoint_and_cmd = init.and_then(|init| {
        let mut argv = non_empty(init.entrypoint.as_ref()).unwrap_or_default();
        argv.extend(non_empty(init.cmd.as_ref()).unwrap_or_default());
        (!argv.is_empty()).then_some(argv)
    });
    let words = exec
        .or(entrypoint_and_cmd)
        .unwrap_or_else(|| vec![WORKER_PROGRAM.to_owned(), "run".to_owned()]);

    words
        .into_iter()
        .enumerate()
        .map(|(index, word)| {
            if index == 0 && word == WORKER_PROGRAM {
                worker_bin.as_os_str().to_owned()
            } else {
                OsString::from(word)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init(exec: &[&str], entrypoint: &[&str], cmd: &[&str]) -> MachineInit {
        let list = |words: &[&str]| {
            (!words.is_empty()).then(|| words.iter().map(|w| w.to_string()).collect())
        };
        MachineInit {
            exec: list(exec),
            entrypoint: list(entrypoint),
            cmd: list(cmd),
            ..MachineInit::default()
        }
    }

    #[test]
    fn machine_argv_follows_fly_precedence() {
        let bin = Path::new("/opt/bin/worker");
        let argv = |init: Option<&MachineInit>| -> Vec<String> {
            machine_argv(init, bin)
                .into_iter()
                .map(|word| word.to_string_lossy().into_owned())
                .collect()
        };

        assert_eq!(argv(None), ["/opt/bin/worker", "run"]);
        assert_eq!(argv(Some(&init(&[], &[], &[]))), ["/opt/bin/worker", "run"]);
        assert_eq!(
            argv(Some(&init(&[], &[], &["transcoder-worker", "run", "-v"]))),
            ["/opt/bin/worker", "run", "-v"]
        );
        assert_eq!(
            argv(Some(&init(
                &["sh", "-c", "exit 3"],
                &["ignored"],
                &["ignored"]
            ))),
            ["sh", "-c", "exit 3"]
        );
        assert_eq!(
            argv(Some(&init(&[], &["transcoder-worker"], &["run"]))),
            ["/opt/bin/worker", "run"]
        );
        assert_eq!(
            argv(Some(&init(&[], &[], &["echo", "transcoder-worker"]))),
            ["echo", "transcoder-worker"]
        );
    }

    fn exit(code: i32, requested_stop: bool) -> ProcessExit {
        ProcessExit {
            exit_code: code,
            signal: -1,
            requested_stop,
        }
    }

    #[test]
    fn restart_rule_defaults_to_on_failure() {
        let rule = RestartRule::from_config(None);

        assert_eq!(rule.policy, RestartPolicy::OnFailure);
        assert_eq!(rule.max_retries, DEFAULT_MAX_RETRIES);
        assert!(rule.restarts_after(&exit(1, false), 0));
        assert!(!rule.restarts_after(&exit(0, false), 0));
        assert!(!rule.restarts_after(&exit(1, false), DEFAULT_MAX_RETRIES));
        assert!(!rule.restarts_after(&exit(1, true), 0));
    }

    #[test]
    fn restart_rule_no_and_always() {
        let rule = |policy| {
            RestartRule::from_config(Some(&MachineRestart {
                policy: Some(policy),
                max_retries: None,
            }))
        };

        assert!(!rule(RestartPolicy::No).restarts_after(&exit(1, false), 0));
        assert!(rule(RestartPolicy::Always).restarts_after(&exit(0, false), 100));
        assert!(!rule(RestartPolicy::Always).restarts_after(&exit(0, true), 0));
    }
}
