//! Retries for the worker's HTTP calls: network errors, 408, 429 and 5xx are retried with
//! exponential backoff; other statuses are final.

use std::future::Future;
use std::time::Duration;

use thiserror::Error;

/// Tries per HTTP call, the first included.
pub const MAX_TRIES: u32 = 4;
/// Delay before the second try; it doubles for each later one.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// A failed HTTP exchange. URLs are shown without their query, which may hold a signature.
#[derive(Debug, Error)]
pub enum HttpError {
    #[error("failed to send {method} {url}")]
    Send {
        method: &'static str,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{method} {url} returned HTTP {status}: {body}")]
    Status {
        method: &'static str,
        url: String,
        status: u16,
        body: String,
    },
    #[error("failed to read the response body of {method} {url}")]
    Body {
        method: &'static str,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("failed to parse the response of {method} {url}")]
    Decode {
        method: &'static str,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("invalid header {name:?} in the presigned request")]
    Header { name: String },
    #[error("failed to open the file to upload")]
    File(#[source] std::io::Error),
}

impl HttpError {
    /// True when another try may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Send { .. } | Self::Body { .. } | Self::File(_) => true,
            Self::Status { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            Self::Header { .. } | Self::Decode { .. } => false,
        }
    }

    /// Returns the HTTP status, when the server sent a response.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Runs `call` until it succeeds, fails with a final error, or has been tried [`MAX_TRIES`]
/// times. `operation` names the call in logs.
pub async fn with_retries<T, F, Fut>(operation: &str, mut call: F) -> Result<T, HttpError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, HttpError>>,
{
    let mut delay = FIRST_BACKOFF;
    let mut tries = 1;
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(err) if err.is_retryable() && tries < MAX_TRIES => {
                tracing::warn!(call = operation, tries, error = %err, retry_in_ms = delay.as_millis() as u64, "http call failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
                tries += 1;
            }
            Err(err) => return Err(err),
        }
    }
}

/// `url` without its query string and fragment, safe to log.
pub fn redact(url: &str) -> String {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    url[..end].to_string()
}

/// Reads the start of an error response body for the message, ignoring read failures.
pub async fn error_body(response: reqwest::Response) -> String {
    const MAX_BODY_CHARS: usize = 300;
    let text = response.text().await.unwrap_or_default();
    let trimmed: String = text.trim().chars().take(MAX_BODY_CHARS).collect();
    if trimmed.is_empty() {
        "(empty body)".to_string()
    } else {
        trimmed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_drops_query_and_fragment() {
        assert_eq!(
            redact("https://s3.local/b/k.wav?X-Amz-Signature=abc"),
            "https://s3.local/b/k.wav"
        );
        assert_eq!(redact("http://h/p#frag"), "http://h/p");
        assert_eq!(redact("http://h/p"), "http://h/p");
    }

    #[test]
    fn only_server_errors_are_retryable() {
        let status = |status| HttpError::Status {
            method: "GET",
            url: "u".into(),
            status,
            body: String::new(),
        };

        assert!(status(503).is_retryable());
        assert!(status(429).is_retryable());
        assert!(!status(404).is_retryable());
        assert!(!status(403).is_retryable());
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_after_max_tries() {
        let mut calls = 0;

        let result: Result<(), HttpError> = with_retries("test", || {
            calls += 1;
            async {
                Err(HttpError::Status {
                    method: "GET",
                    url: "u".into(),
                    status: 500,
                    body: String::new(),
                })
            }
        })
        .await;

        assert!(result.is_err());
        assert_eq!(calls, MAX_TRIES);
    }
}
