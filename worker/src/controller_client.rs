//! The controller's worker endpoints: the attempt's assignment and its callbacks.

use std::time::Duration;

use protocol::{Assignment, Callback};

use crate::retry::{error_body, redact, with_retries, HttpError};

/// Maximum wait for one assignment or final callback request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Maximum wait for one progress report, because progress is best-effort and must not stall
/// the job.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(3);

/// Client for `{api}/v1/jobs/{job}/…`, authenticated with the attempt's bearer token.
#[derive(Clone)]
pub struct ControllerClient {
    http: reqwest::Client,
    job_url: String,
    token: String,
}

impl ControllerClient {
    pub fn new(http: reqwest::Client, api_url: &str, job: &str, token: &str) -> Self {
        let job_url = format!("{}/v1/jobs/{job}", api_url.trim_end_matches('/'));
        Self {
            http,
            job_url,
            token: token.to_string(),
        }
    }

    /// Fetches the attempt's assignment, retrying transient failures.
    pub async fn assignment(&self) -> Result<Assignment, HttpError> {
        let url = format!("{}/assignment", self.job_url);
        with_retries("get assignment", || async {
            let response = self
                .http
                .get(&url)
                .timeout(REQUEST_TIMEOUT)
                .bearer_auth(&self.token)
                .send()
                .await
                .map_err(|source| HttpError::Send {
                    method: "GET",
                    url: redact(&url),
                    source,
                })?;
            let response = check_status("GET", &url, response).await?;
            response
                .json::<Assignment>()
                .await
                .map_err(|source| HttpError::Decode {
                    method: "GET",
                    url: redact(&url),
                    source,
                })
        })
        .await
    }

    /// Sends a callback, retrying transient failures.
    pub async fn report(&self, callback: &Callback) -> Result<(), HttpError> {
        with_retries("post callback", || self.post_callback(callback)).await
    }

    /// Sends a progress callback once, giving up after a short timeout.
    pub async fn report_progress(&self, fraction: f64) {
        let callback = Callback::Progress { fraction };
        match tokio::time::timeout(PROGRESS_TIMEOUT, self.post_callback(&callback)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "progress callback failed"),
            Err(_) => tracing::warn!(
                timeout_s = PROGRESS_TIMEOUT.as_secs(),
                "progress callback timed out"
            ),
        }
    }

    async fn post_callback(&self, callback: &Callback) -> Result<(), HttpError> {
        let url = format!("{}/callbacks", self.job_url);
        let response = self
            .http
            .post(&url)
            .timeout(REQUEST_TIMEOUT)
            .bearer_auth(&self.token)
            .json(callback)
            .send()
            .await
            .map_err(|source| HttpError::Send {
                method: "POST",
                url: redact(&url),
                source,
            })?;
        check_status("POST", &url, response).await.map(drop)
    }
}

/// Passes a 2xx response through and turns any other status into [`HttpError::Status`].
pub async fn check_status(
    method: &'static str,
    url: &str,
    response: reqwest::Response,
) -> Result<reqwest::Response, HttpError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = error_body(response).await;
    Err(HttpError::Status {
        method,
        url: redact(url),
        status: status.as_u16(),
        body,
    })
}
