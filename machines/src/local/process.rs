//! The child process behind a local machine: spawning it, delivering stop requests, and
//! reporting how it ended.
//!
//! Each process leads its own process group, which stands in for the machine's VM. A stop
//! signal goes to the main process only, as Fly's init forwards it. A kill, a stop timeout, the
//! main process's exit, server shutdown or a dropped supervisor SIGKILLs the whole group.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, warn};

/// A request to the supervisor of a machine's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProcessCommand {
    /// Send `signal` to the main process, then SIGKILL the group after `timeout`.
    Stop { signal: Signal, timeout: Duration },
    /// SIGKILL the group now.
    Kill,
}

/// Command line, environment and log file of a machine's process.
#[derive(Debug, Clone)]
pub(crate) struct LaunchSpec {
    pub argv: Vec<OsString>,
    /// Variables set on top of the server's own environment.
    pub env: Vec<(String, String)>,
    /// File that receives stdout and stderr, appended to.
    pub log_path: PathBuf,
}

impl LaunchSpec {
    /// The same launch with a command that kills itself with SIGKILL at once, standing in for
    /// a process that a host failure or the OOM killer ends.
    pub(crate) fn doomed(&self) -> LaunchSpec {
        LaunchSpec {
            argv: ["sh", "-c", "kill -9 $$"].map(OsString::from).to_vec(),
            env: self.env.clone(),
            log_path: self.log_path.clone(),
        }
    }
}

/// Failure to start a machine's process.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProcessError {
    #[error("machine command is empty")]
    EmptyCommand,

    #[error("open machine log file {path}")]
    OpenLog {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("spawn machine process {program:?}")]
    Spawn {
        program: OsString,
        #[source]
        source: io::Error,
    },
}

/// Exit details of a machine's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcessExit {
    /// Exit code, or 128 + signal number when a signal ended the process, as shells report it.
    ///
    /// NOTE: what Fly reports as `exit_code` for a process ended by a signal is not verified;
    /// read `signal` to tell signal deaths apart.
    pub exit_code: i32,
    /// Signal number that ended the process, or -1.
    pub signal: i32,
    /// True when a stop or kill request came before the exit.
    pub requested_stop: bool,
}

/// Result of [`supervise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Exited(ProcessExit),
    /// The server shut down and killed the process.
    ShutDown,
}

/// A started machine process and the guard that kills its group.
pub(crate) struct RunningProcess {
    child: Child,
    group: GroupGuard,
}

/// Starts `spec` in a new process group with its output appended to the log file.
pub(crate) fn spawn(spec: &LaunchSpec) -> Result<RunningProcess, ProcessError> {
    let (program, args) = spec.argv.split_first().ok_or(ProcessError::EmptyCommand)?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log_path)
        .map_err(|source| ProcessError::OpenLog {
            path: spec.log_path.clone(),
            source,
        })?;
    let log_for_stderr = log.try_clone().map_err(|source| ProcessError::OpenLog {
        path: spec.log_path.clone(),
        source,
    })?;

    let child = Command::new(program)
        .args(args)
        .envs(spec.env.iter().map(|(key, value)| (key, value)))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_for_stderr)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ProcessError::Spawn {
            program: program.clone(),
            source,
        })?;

    let group = GroupGuard {
        pgid: child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .map(Pid::from_raw),
    };
    Ok(RunningProcess { child, group })
}

/// Runs until the process exits, carrying out commands meanwhile, or until `shutdown` is set.
pub(crate) async fn supervise(
    mut process: RunningProcess,
    commands: &mut mpsc::UnboundedReceiver<ProcessCommand>,
    shutdown: &mut watch::Receiver<bool>,
) -> Outcome {
    let mut requested_stop = false;
    let mut commands_open = true;
    let mut kill_deadline: Option<Instant> = None;

    let status = loop {
        tokio::select! {
            status = process.child.wait() => break status,
            command = commands.recv(), if commands_open => match command {
                Some(command) => {
                    requested_stop = true;
                    kill_deadline = process.carry_out(command).or(kill_deadline);
                }
                None => commands_open = false,
            },
            () = sleep_until_some(kill_deadline) => {
                debug!(pgid = ?process.group.pgid, "stop timeout passed; killing machine process group");
                process.group.kill();
                kill_deadline = None;
            }
            () = shutdown_requested(shutdown) => {
                process.group.kill();
                let _ = process.child.wait().await;
                process.group.disarm();
                return Outcome::ShutDown;
            }
        }
    };

    // The main process is gone, so the rest of its "VM" goes too.
    process.group.kill();
    process.group.disarm();
    Outcome::Exited(exit_of(status, requested_stop))
}

impl RunningProcess {
    /// Returns the process id of the main process.
    pub(crate) fn pid(&self) -> Option<i32> {
        self.group.pgid.map(Pid::as_raw)
    }

    /// Sends the signal of `command`; returns when the group must be killed if still alive.
    fn carry_out(&mut self, command: ProcessCommand) -> Option<Instant> {
        match command {
            ProcessCommand::Stop { signal, timeout } => {
                if let Some(pid) = self.group.pgid {
                    if let Err(errno) = kill(pid, signal) {
                        debug!(pid = pid.as_raw(), signal = %signal, error = %errno, "signal to machine process failed");
                    }
                }
                Some(Instant::now() + timeout)
            }
            ProcessCommand::Kill => {
                self.group.kill();
                None
            }
        }
    }
}

/// Completes once shutdown is set, or once the server that could set it is gone.
pub(crate) async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stopping| *stopping).await;
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn exit_of(status: io::Result<ExitStatus>, requested_stop: bool) -> ProcessExit {
    match status {
        Ok(status) => {
            let signal = status.signal();
            ProcessExit {
                exit_code: status.code().or(signal.map(|s| 128 + s)).unwrap_or(-1),
                signal: signal.unwrap_or(-1),
                requested_stop,
            }
        }
        Err(error) => {
            warn!(error = %error, "waiting for machine process failed");
            ProcessExit {
                exit_code: -1,
                signal: -1,
                requested_stop,
            }
        }
    }
}

/// SIGKILLs the process group when dropped, unless disarmed after the group was reaped.
struct GroupGuard {
    pgid: Option<Pid>,
}

impl GroupGuard {
    fn kill(&self) {
        if let Some(pgid) = self.pgid {
            // ESRCH only means that no process of the group is left.
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }

    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(script: &str, log_dir: &tempfile::TempDir) -> LaunchSpec {
        LaunchSpec {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            env: vec![("GREETING".into(), "hello".into())],
            log_path: log_dir.path().join("m.log"),
        }
    }

    #[tokio::test]
    async fn exit_code_and_output_are_reported() {
        let dir = tempfile::tempdir().expect("temp dir");
        let process = spawn(&shell("echo $GREETING; echo oops >&2; exit 7", &dir)).expect("spawn");
        let (_commands, mut receiver) = mpsc::unbounded_channel();
        let (_shutdown, mut watcher) = watch::channel(false);

        let outcome = supervise(process, &mut receiver, &mut watcher).await;

        assert_eq!(
            outcome,
            Outcome::Exited(ProcessExit {
                exit_code: 7,
                signal: -1,
                requested_stop: false
            })
        );
        let log = std::fs::read_to_string(dir.path().join("m.log")).expect("log");
        assert_eq!(log, "hello\noops\n");
    }

    #[tokio::test]
    async fn stop_signal_ends_process() {
        let dir = tempfile::tempdir().expect("temp dir");
        let process = spawn(&shell("exec sleep 30", &dir)).expect("spawn");
        let (commands, mut receiver) = mpsc::unbounded_channel();
        let (_shutdown, mut watcher) = watch::channel(false);

        let stop = ProcessCommand::Stop {
            signal: Signal::SIGTERM,
            timeout: Duration::from_secs(30),
        };
        commands.send(stop).expect("supervisor listening");
        let outcome = tokio::time::timeout(
            Duration::from_secs(20),
            supervise(process, &mut receiver, &mut watcher),
        )
        .await
        .expect("SIGTERM should end sleep well before the timeout");

        assert_eq!(
            outcome,
            Outcome::Exited(ProcessExit {
                exit_code: 128 + 15,
                signal: 15,
                requested_stop: true
            })
        );
    }

    #[tokio::test]
    async fn ignored_stop_signal_escalates_to_kill() {
        let dir = tempfile::tempdir().expect("temp dir");
        let spec = shell("trap '' TERM; echo ready; sleep 30 & wait", &dir);
        let process = spawn(&spec).expect("spawn");
        let (commands, mut receiver) = mpsc::unbounded_channel();
        let (_shutdown, mut watcher) = watch::channel(false);
        let supervisor =
            tokio::spawn(async move { supervise(process, &mut receiver, &mut watcher).await });

        // The signal must not arrive before the shell has set its trap.
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::fs::read_to_string(&spec.log_path).unwrap_or_default() != "ready\n" {
            assert!(Instant::now() < deadline, "the shell never set its trap");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stop = ProcessCommand::Stop {
            signal: Signal::SIGTERM,
            timeout: Duration::from_millis(200),
        };
        commands.send(stop).expect("supervisor listening");
        let outcome = tokio::time::timeout(Duration::from_secs(20), supervisor)
            .await
            .expect("the stop timeout should lead to SIGKILL")
            .expect("supervisor task");

        assert_eq!(
            outcome,
            Outcome::Exited(ProcessExit {
                exit_code: 128 + 9,
                signal: 9,
                requested_stop: true
            })
        );
    }

    #[tokio::test]
    async fn shutdown_kills_process() {
        let dir = tempfile::tempdir().expect("temp dir");
        let process = spawn(&shell("sleep 30", &dir)).expect("spawn");
        let (_commands, mut receiver) = mpsc::unbounded_channel();
        let (shutdown, mut watcher) = watch::channel(false);

        shutdown.send_replace(true);
        let outcome = tokio::time::timeout(
            Duration::from_secs(20),
            supervise(process, &mut receiver, &mut watcher),
        )
        .await
        .expect("shutdown should kill the process");

        assert_eq!(outcome, Outcome::ShutDown);
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let spec = LaunchSpec {
            argv: vec!["/nonexistent/transcoder-worker".into()],
            env: Vec::new(),
            log_path: dir.path().join("m.log"),
        };

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let error = runtime
            .block_on(async { spawn(&spec).err() })
            .expect("spawn fails");

        assert!(
            matches!(error, ProcessError::Spawn { ref program, .. } if program == "/nonexistent/transcoder-worker")
        );
    }
}
