//! Job mode: one attempt of one job, configured by the environment the controller sets.
//!
//! The attempt fetches its assignment, streams the source through the transcoder while
//! reporting progress about once a second, uploads the MP3, and reports success or a classified
//! failure. The exit code carries the outcome even when the final callback cannot be delivered.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use protocol::{
    Assignment, Callback, TranscodeResult, ENV_API_URL, ENV_ATTEMPT, ENV_JOB, ENV_TOKEN,
    EXIT_SUCCEEDED,
};
use thiserror::Error;
use tracing::Instrument;

use crate::controller_client::ControllerClient;
use crate::failure::{classify_http, classify_transcode, Failure, SOURCE_UNAVAILABLE};
use crate::source::Input;
use crate::storage::{self, DownloadState};
use crate::transcode::{transcode, TranscodeError};

const PROGRESS_PERIOD: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Progress stays below 1 until the output is uploaded.
const MAX_RUNNING_FRACTION: f64 = 0.99;

/// The attempt's configuration, from the environment.
#[derive(Debug, Clone)]
pub struct JobEnv {
    pub api_url: String,
    pub job: String,
    pub attempt: u32,
    pub token: String,
}

#[derive(Debug, Error)]
pub enum JobEnvError {
    #[error("environment variable {0} is not set")]
    Missing(&'static str),
    #[error("environment variable {name} has the invalid value {value:?}; expected {expected}")]
    Invalid {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
}

impl JobEnv {
    /// Reads the attempt's variables.
    pub fn from_env() -> Result<Self, JobEnvError> {
        let read = |name: &'static str| std::env::var(name).map_err(|_| JobEnvError::Missing(name));
        let attempt_text = read(ENV_ATTEMPT)?;
        let attempt = attempt_text.parse().map_err(|_| JobEnvError::Invalid {
            name: ENV_ATTEMPT,
            value: attempt_text.clone(),
            expected: "a positive integer",
        })?;
        Ok(Self {
            api_url: read(ENV_API_URL)?,
            job: read(ENV_JOB)?,
            attempt,
            token: read(ENV_TOKEN)?,
        })
    }
}

/// Runs the attempt and returns the process exit code.
pub async fn run(env: JobEnv) -> i32 {
    let http = match reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
    {
        Ok(http) => http,
        Err(err) => {
            tracing::error!(error = %err, "failed to create the HTTP client");
            return protocol::EXIT_RETRYABLE;
        }
    };
    let controller = ControllerClient::new(http.clone(), &env.api_url, &env.job, &env.token);

    let span = tracing::info_span!("attempt", job = %env.job, attempt = env.attempt);
    // Fly stops a machine with SIGINT by default, and SIGTERM is the usual alternative: either
    // ends the attempt as a retryable failure that is still reported.
    let outcome = tokio::select! {
        outcome = attempt(&http, &controller, &env).instrument(span) => outcome,
        signal = stop_signal() => Err(Failure {
            reason: "Stopped",
            message: format!("the worker was stopped by {signal} before it finished"),
            permanent: false,
        }),
    };
    let (callback, code) = match &outcome {
        Ok(result) => (Callback::Succeeded(result.clone()), EXIT_SUCCEEDED),
        Err(failure) => {
            tracing::error!(job = %env.job, attempt = env.attempt, reason = failure.reason, permanent = failure.permanent, error = %failure.message, "attempt failed");
            (failure.callback(), failure.exit_code())
        }
    };
    if let Err(err) = controller.report(&callback).await {
        tracing::error!(job = %env.job, attempt = env.attempt, error = %err, "final callback failed; exiting with the outcome's code");
    }
    code
}

/// Completes with the signal's name on SIGINT or SIGTERM; never completes when the handlers
/// cannot be installed.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::warn!(
            "failed to install stop signal handlers; a stop will end the worker without a report"
        );
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    }
}

async fn attempt(
    http: &reqwest::Client,
    controller: &ControllerClient,
    env: &JobEnv,
) -> Result<TranscodeResult, Failure> {
    let assignment = controller
        .assignment()
        .await
        .map_err(|err| classify_http("AssignmentUnavailable", &err))?;
    if assignment.attempt != env.attempt {
        tracing::warn!(job = %env.job, env_attempt = env.attempt, assigned_attempt = assignment.attempt, "assignment is for another attempt");
    }
    tracing::info!(job = %env.job, attempt = env.attempt, "attempt started");

    let response = storage::open_source(http, &assignment.source)
        .await
        .map_err(|err| classify_http(SOURCE_UNAVAILABLE, &err))?;
    let source_len = response.content_length();

    let output = tempfile::NamedTempFile::new()
        .map_err(|err| Failure::retryable("OutputWriteFailed", &err))?;
    let result =
        transcode_with_progress(response, source_len, &output, &assignment, controller).await?;

    storage::upload(http, &assignment.output, output.path(), result.bytes)
        .await
        .map_err(|err| classify_http("UploadFailed", &err))?;
    tracing::info!(job = %env.job, attempt = env.attempt, bytes = result.bytes, duration_s = result.duration_seconds, "attempt succeeded");
    Ok(result)
}

/// Transcodes the streamed source into `output`, reporting progress by bytes downloaded.
async fn transcode_with_progress(
    response: reqwest::Response,
    source_len: Option<u64>,
    output: &tempfile::NamedTempFile,
    assignment: &Assignment,
    controller: &ControllerClient,
) -> Result<TranscodeResult, Failure> {
    let state = Arc::new(DownloadState::default());
    let reader = storage::stream_body(response, Arc::clone(&state));
    let file = output
        .reopen()
        .map_err(|err| Failure::retryable("OutputWriteFailed", &err))?;
    let format = assignment.format.clone();
    let span = tracing::Span::current();
    let mut task = tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        transcode(Input::Stream(Box::new(reader)), file, &format).map(|(_, result)| result)
    });

    let mut ticker = tokio::time::interval(PROGRESS_PERIOD);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_reported = -1.0;
    let joined = loop {
        tokio::select! {
            joined = &mut task => break joined,
            _ = ticker.tick() => {
                let Some(total) = source_len.filter(|&total| total > 0) else { continue };
                let fraction = (state.received.load(Ordering::Relaxed) as f64 / total as f64).min(MAX_RUNNING_FRACTION);
                if fraction > last_reported {
                    last_reported = fraction;
                    controller.report_progress(fraction).await;
                }
            }
        }
    };

    let outcome = joined.map_err(|err| Failure::retryable("EncoderFailed", &err))?;
    outcome.map_err(|err| classify_with_download(&err, &state))
}

/// Classifies a transcode failure, counting it as a transient download failure whenever the
/// download broke off, whatever error the decoder made of the truncated stream.
fn classify_with_download(err: &TranscodeError, state: &DownloadState) -> Failure {
    match state.failure() {
        Some(message) => Failure {
            reason: SOURCE_UNAVAILABLE,
            message,
            permanent: false,
        },
        None => classify_transcode(err),
    }
}
