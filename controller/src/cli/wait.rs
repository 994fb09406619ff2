//! `transcoder wait`: blocks until a job reaches a phase.

use std::time::Duration;

use controller::client::ApiClient;
use controller::status::Phase;
use controller::watch::WatchEventKind;
use futures::StreamExt;

/// Exit code when the job reached the phase.
pub const REACHED: i32 = 0;
/// Exit code when the job finished in another phase or was deleted.
pub const OTHER_OUTCOME: i32 = 1;
/// Exit code on a timeout or an error.
pub const TIMEOUT_OR_ERROR: i32 = 2;

/// Delay before a broken watch stream is opened again.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// What `--for` waits for: `phase=PHASE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitFor {
    pub phase: Phase,
}

impl std::str::FromStr for WaitFor {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let Some(("phase", phase)) = text.split_once('=') else {
            return Err(format!(
                "invalid condition {text:?}; expected phase=PHASE, e.g. phase=Succeeded"
            ));
        };
        Ok(Self {
            phase: phase.parse()?,
        })
    }
}

/// How the wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Reached,
    Finished(Phase, String),
    Deleted,
}

/// Waits for the job and returns the exit code.
pub async fn run(client: &ApiClient, name: &str, target: Phase, timeout: Duration) -> i32 {
    let mut last = None;
    let result = tokio::time::timeout(timeout, follow(client, name, target, &mut last)).await;
    let target = target.as_str();
    match result {
        Ok(Ok(Outcome::Reached)) => {
            println!("transcodejob/{name} reached phase {target}");
            REACHED
        }
        Ok(Ok(Outcome::Finished(phase, reason))) => {
            eprintln!(
                "error: transcodejob/{name} finished in phase {} instead of {target}{reason}",
                phase.as_str()
            );
            OTHER_OUTCOME
        }
        Ok(Ok(Outcome::Deleted)) => {
            eprintln!("error: transcodejob/{name} was deleted before it reached phase {target}");
            OTHER_OUTCOME
        }
        Ok(Err(message)) => {
            eprintln!("error: {message}");
            TIMEOUT_OR_ERROR
        }
        Err(_) => {
            let current = last.map_or("unknown", Phase::as_str);
            eprintln!(
                "error: timed out after {} waiting for transcodejob/{name} to reach phase {target}; it is {current}",
                humantime::format_duration(timeout)
            );
            TIMEOUT_OR_ERROR
        }
    }
}

/// Follows the job's watch stream, opening it again when it breaks, until the job reaches
/// `target`, finishes otherwise, or is deleted. `last` keeps the last phase seen.
async fn follow(
    client: &ApiClient,
    name: &str,
    target: Phase,
    last: &mut Option<Phase>,
) -> Result<Outcome, String> {
    let mut first = true;
    loop {
        // The stream says nothing about a job that does not exist, so look first.
        let job = client
            .find(name)
            .await
            .map_err(|err| super::error_chain(&err))?;
        match job {
            None if first => return Err(format!("job {name:?} not found")),
            None => return Ok(Outcome::Deleted),
            Some(_) => first = false,
        }

        let stream = client
            .watch(None, Some(name))
            .await
            .map_err(|err| super::error_chain(&err))?;
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(event) => event,
                Err(err) => {
                    eprintln!("warning: {}; reconnecting", super::error_chain(&err));
                    break;
                }
            };
            if event.kind == WatchEventKind::Deleted {
                return Ok(Outcome::Deleted);
            }
            let status = &event.object.status;
            *last = Some(status.phase);
            if status.phase == target {
                return Ok(Outcome::Reached);
            }
            if status.phase.is_finished() {
                let reason = status
                    .conditions
                    .iter()
                    .max_by_key(|c| c.last_transition_time)
                    .map(|c| format!(" ({}: {})", c.reason, c.message))
                    .unwrap_or_default();
                return Ok(Outcome::Finished(status.phase, reason));
            }
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_for_parses_a_phase() {
        assert_eq!(
            "phase=Succeeded".parse::<WaitFor>(),
            Ok(WaitFor {
                phase: Phase::Succeeded
            })
        );
        assert!("phase=Done".parse::<WaitFor>().is_err());
        assert!("condition=Complete".parse::<WaitFor>().is_err());
    }
}
