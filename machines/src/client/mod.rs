//! `FlyClient`: calls the Fly Machines REST API for one app, within Fly's rate limits.
//!
//! Every call first takes a token from its action's bucket (see [`RateLimits`]). A 429 response
//! pauses all actions for its `Retry-After` time, so one throttled call slows the whole client
//! instead of letting the others run into the same limit. The client does not retry, and
//! [`ClientError::is_retryable`] tells the caller whether trying again may succeed.

mod throttle;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, RETRY_AFTER};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use serde::de::DeserializeOwned;
use tracing::{debug, warn};

use crate::types::{CreateMachineRequest, ErrorResponse, Machine, StopRequest};
use throttle::Throttle;
pub use throttle::{Action, RateLimits};

/// Maximum wait Fly accepts in one wait request.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// Time limit of every request other than wait.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Extra time a wait request gets beyond its own timeout, so the server's 408 can arrive.
const WAIT_MARGIN: Duration = Duration::from_secs(10);

/// Pause after a 429 that carries no usable `Retry-After`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Upper bound on a `Retry-After` pause, so a bad header cannot stall the client for long.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Settings of a [`FlyClient`].
#[derive(Debug, Clone)]
pub struct FlyClientConfig {
    /// API root including the version, such as `https://api.machines.dev/v1`.
    pub base_url: String,
    /// Fly app whose machines the client manages.
    pub app: String,
    /// API token sent as `Authorization: Bearer`; `None` sends no header.
    pub token: Option<String>,
    pub limits: RateLimits,
}

/// Target state of [`FlyClient::wait_machine`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitState {
    Started,
    Stopped,
    Destroyed,
}

impl WaitState {
    /// Returns the value of the wait endpoint's `state` parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            WaitState::Started => "started",
            WaitState::Stopped => "stopped",
            WaitState::Destroyed => "destroyed",
        }
    }
}

impl fmt::Display for WaitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Result of a wait request that completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    /// The machine reached the state.
    Reached,
    /// The timeout passed first (HTTP 408).
    TimedOut,
}

/// Filters of [`FlyClient::list_machines_matching`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListMachinesQuery {
    /// Also return destroyed machines.
    pub include_deleted: bool,
    pub region: Option<String>,
    /// Only machines whose `config.metadata` contains every one of these pairs.
    pub metadata: BTreeMap<String, String>,
}

/// Failure of a [`FlyClient`] call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid rate limit for {action} requests: {field} must be at least 1")]
    InvalidRateLimit { action: Action, field: &'static str },

    #[error("invalid machines api base url {url:?}: expected an http or https url such as https://api.machines.dev/v1")]
    InvalidBaseUrl { url: String },

    #[error("invalid machines api token: it contains characters not allowed in an HTTP header")]
    InvalidToken,

    #[error("build http client for the machines api")]
    BuildHttpClient(#[source] reqwest::Error),

    #[error("send {action} request for {target}")]
    Send {
        action: Action,
        target: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("{action} request for {target} failed with status {status}: {message}")]
    Rejected {
        action: Action,
        target: String,
        status: u16,
        /// Fly's `error` text, or the raw body when it is not Fly's JSON.
        message: String,
    },

    #[error("read {action} response for {target}")]
    ReadResponse {
        action: Action,
        target: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("decode {action} response for {target}")]
    DecodeResponse {
        action: Action,
        target: String,
        #[source]
        source: serde_json::Error,
    },
}

impl ClientError {
    /// Returns the HTTP status of a rejected request.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Rejected { status, .. } => Some(*status),
            ClientError::Send { source, .. } | ClientError::ReadResponse { source, .. } => {
                source.status().map(|status| status.as_u16())
            }
            _ => None,
        }
    }

    /// True when the API returned 404: the app or machine does not exist (any longer).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// True for failures that may pass on a later try: network errors, timeouts, 429 and 5xx.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Send { .. } | ClientError::ReadResponse { .. } => true,
            ClientError::Rejected { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// Client of the Fly Machines API for one app; clones share the connection pool and limits.
#[derive(Clone)]
pub struct FlyClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    http: reqwest::Client,
    /// `Bearer {token}`, marked sensitive so that it is left out of debug output.
    authorization: Option<HeaderValue>,
    base_url: Url,
    app: String,
    throttle: Throttle,
}

impl fmt::Debug for FlyClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlyClient")
            .field("base_url", &self.inner.base_url.as_str())
            .field("app", &self.inner.app)
            .finish_non_exhaustive()
    }
}

impl FlyClient {
    /// Checks the configuration and builds the HTTP client; sends no request.
    pub fn new(config: FlyClientConfig) -> Result<Self, ClientError> {
        let base_url = parse_base_url(&config.base_url)?;
        let throttle =
            Throttle::new(&config.limits).map_err(|zero| ClientError::InvalidRateLimit {
                action: zero.action,
                field: zero.field,
            })?;

        let authorization = match &config.token {
            Some(token) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| ClientError::InvalidToken)?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(ClientError::BuildHttpClient)?;

        Ok(FlyClient {
            inner: Arc::new(ClientInner {
                http,
                authorization,
                base_url,
                app: config.app,
                throttle,
            }),
        })
    }

    /// Returns the app this client manages.
    pub fn app(&self) -> &str {
        &self.inner.app
    }

    /// Creates a machine (`POST /apps/{app}/machines`); Fly starts it unless `skip_launch`.
    pub async fn create_machine(
        &self,
        request: &CreateMachineRequest,
    ) -> Result<Machine, ClientError> {
        let (call, builder) = self.call(Action::Create, None, Method::POST, &[]);
        let response = self.send(&call, builder.json(request)).await?;
        call.decode(response).await
    }

    /// Lists the app's machines that are not destroyed.
    pub async fn list_machines(&self) -> Result<Vec<Machine>, ClientError> {
        self.list_machines_matching(&ListMachinesQuery::default())
            .await
    }

    /// Lists the app's machines that pass the filters of `query`.
    pub async fn list_machines_matching(
        &self,
        query: &ListMachinesQuery,
    ) -> Result<Vec<Machine>, ClientError> {
        let mut params: Vec<(String, String)> = Vec::new();
        if query.include_deleted {
            params.push(("include_deleted".into(), "true".into()));
        }
        if let Some(region) = &query.region {
            params.push(("region".into(), region.clone()));
        }
        for (key, value) in &query.metadata {
            params.push((format!("metadata.{key}"), value.clone()));
        }

        let (call, builder) = self.call(Action::List, None, Method::GET, &[]);
        let response = self.send(&call, builder.query(&params)).await?;
        call.decode(response).await
    }

    /// Fetches one machine; destroyed machines stay visible on Fly for a while.
    pub async fn get_machine(&self, id: &str) -> Result<Machine, ClientError> {
        let (call, builder) = self.call(Action::Get, Some(id), Method::GET, &[]);
        let response = self.send(&call, builder).await?;
        call.decode(response).await
    }

    /// Blocks until the machine reaches `state` or `timeout` passes (at most [`MAX_WAIT`]).
    ///
    /// Fly requires `instance_id` when waiting for `stopped`. The timeout goes out in whole
    /// seconds, rounded up, with at least one second.
    pub async fn wait_machine(
        &self,
        id: &str,
        instance_id: Option<&str>,
        state: WaitState,
        timeout: Duration,
    ) -> Result<WaitOutcome, ClientError> {
        let timeout_secs = wait_timeout_secs(timeout);
        let mut params = vec![
            ("state", state.as_str().to_owned()),
            ("timeout", timeout_secs.to_string()),
        ];
        if let Some(instance_id) = instance_id {
            params.push(("instance_id", instance_id.to_owned()));
        }

        let (call, builder) = self.call(Action::Wait, Some(id), Method::GET, &["wait"]);
        let builder = builder
            .query(&params)
            .timeout(Duration::from_secs(timeout_secs) + WAIT_MARGIN);
        let response = self.send_raw(&call, builder).await?;
        if response.status() == StatusCode::REQUEST_TIMEOUT {
            debug!(machine = %id, state = %state, "machine wait timed out");
            return Ok(WaitOutcome::TimedOut);
        }
        self.check_status(&call, response).await?;
        Ok(WaitOutcome::Reached)
    }

    /// Asks Fly to stop the machine with its configured signal; returns before it has stopped.
    pub async fn stop_machine(&self, id: &str) -> Result<(), ClientError> {
        let (call, builder) = self.call(Action::Stop, Some(id), Method::POST, &["stop"]);
        // Fly rejects a stop request without a JSON body, so an empty object goes out.
        let builder = builder.json(&StopRequest::default());
        self.send(&call, builder).await?;
        Ok(())
    }

    /// Destroys the machine; `force` kills it first when it is still running.
    pub async fn destroy_machine(&self, id: &str, force: bool) -> Result<(), ClientError> {
        let (call, builder) = self.call(Action::Destroy, Some(id), Method::DELETE, &[]);
        let builder = builder.query(&[("force", force)]);
        self.send(&call, builder).await?;
        Ok(())
    }

    /// Prepares a request to `/apps/{app}/machines[/{id}][/{suffix}]`.
    fn call(
        &self,
        action: Action,
        id: Option<&str>,
        method: Method,
        suffix: &[&str],
    ) -> (Call, RequestBuilder) {
        let mut url = self.inner.base_url.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments
                .pop_if_empty()
                .extend(["apps", self.inner.app.as_str(), "machines"]);
            segments.extend(id).extend(suffix);
        }
        let target = match id {
            Some(id) => format!("machine {id} in app {}", self.inner.app),
            None => format!("app {}", self.inner.app),
        };
        let mut builder = self.inner.http.request(method, url);
        if let Some(authorization) = &self.inner.authorization {
            builder = builder.header(AUTHORIZATION, authorization.clone());
        }
        (Call { action, target }, builder)
    }

    /// Sends after the rate limit allows it, and turns a non-2xx status into an error.
    async fn send(&self, call: &Call, builder: RequestBuilder) -> Result<Response, ClientError> {
        let response = self.send_raw(call, builder).await?;
        self.check_status(call, response).await
    }

    async fn send_raw(
        &self,
        call: &Call,
        builder: RequestBuilder,
    ) -> Result<Response, ClientError> {
        self.inner.throttle.until_ready(call.action).await;
        debug!(action = %call.action, target = %call.target, "sending machines api request");

        let response = builder.send().await.map_err(|source| ClientError::Send {
            action: call.action,
            target: call.target.clone(),
            source,
        })?;
        debug!(action = %call.action, target = %call.target, status = response.status().as_u16(), "machines api responded");
        Ok(response)
    }

    async fn check_status(&self, call: &Call, response: Response) -> Result<Response, ClientError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }

        if status == StatusCode::TOO_MANY_REQUESTS {
            let delay = retry_after(response.headers());
            warn!(action = %call.action, target = %call.target, retry_after_ms = delay.as_millis() as u64, "machines api rate limited the client");
            self.inner.throttle.pause(delay);
        }
        let body = response.bytes().await.unwrap_or_default();
        Err(ClientError::Rejected {
            action: call.action,
            target: call.target.clone(),
            status: status.as_u16(),
            message: error_message(&body),
        })
    }
}

/// Action and target of an API call, named in errors and logs.
struct Call {
    action: Action,
    target: String,
}

impl Call {
    async fn decode<T: DeserializeOwned>(&self, response: Response) -> Result<T, ClientError> {
        let body = response
            .bytes()
            .await
            .map_err(|source| ClientError::ReadResponse {
                action: self.action,
                target: self.target.clone(),
                source,
            })?;
        serde_json::from_slice(&body).map_err(|source| ClientError::DecodeResponse {
            action: self.action,
            target: self.target.clone(),
            source,
        })
    }
}

fn parse_base_url(text: &str) -> Result<Url, ClientError> {
    let invalid = || ClientError::InvalidBaseUrl {
        url: text.to_owned(),
    };
    let url = Url::parse(text).map_err(|_| invalid())?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(invalid());
    }
    Ok(url)
}

/// Whole seconds for the wait endpoint: rounded up, at least 1, at most [`MAX_WAIT`].
fn wait_timeout_secs(timeout: Duration) -> u64 {
    let rounded_up = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
    rounded_up.clamp(1, MAX_WAIT.as_secs())
}

/// Reads `Retry-After` in seconds; HTTP dates and missing values give the default.
fn retry_after(headers: &HeaderMap) -> Duration {
    headers
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.trim().parse::<f64>().ok())
        .filter(|secs| secs.is_finite() && *secs >= 0.0)
        .map(|secs| Duration::from_secs_f64(secs).min(MAX_RETRY_AFTER))
        .unwrap_or(DEFAULT_RETRY_AFTER)
}

/// Takes Fly's `{"error": "..."}` text, or else up to 500 bytes of the raw body.
fn error_message(body: &[u8]) -> String {
    if let Ok(error) = serde_json::from_slice::<ErrorResponse>(body) {
        if !error.error.is_empty() {
            return error.error;
        }
    }
    let text = String::from_utf8_lossy(body);
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return "(empty body)".to_owned();
    }
    trimmed.chars().take(500).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_timeout_rounds_up_and_caps() {
        assert_eq!(wait_timeout_secs(Duration::ZERO), 1);
        assert_eq!(wait_timeout_secs(Duration::from_millis(1500)), 2);
        assert_eq!(wait_timeout_secs(Duration::from_secs(30)), 30);
        assert_eq!(wait_timeout_secs(Duration::from_secs(600)), 60);
    }

    #[test]
    fn retry_after_reads_seconds_and_falls_back() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(RETRY_AFTER, HeaderValue::from_str(value).expect("header"));
            retry_after(&headers)
        };

        assert_eq!(with("3"), Duration::from_secs(3));
        assert_eq!(with("0.5"), Duration::from_millis(500));
        assert_eq!(with("3600"), MAX_RETRY_AFTER);
        assert_eq!(with("Wed, 21 Oct 2015 07:28:00 GMT"), DEFAULT_RETRY_AFTER);
        assert_eq!(retry_after(&HeaderMap::new()), DEFAULT_RETRY_AFTER);
    }

    #[test]
    fn error_message_prefers_fly_error_field() {
        assert_eq!(
            error_message(br#"{"error": "machine not found"}"#),
            "machine not found"
        );
        assert_eq!(error_message(b"upstream down\n"), "upstream down");
        assert_eq!(error_message(b""), "(empty body)");
    }

    #[test]
    fn base_url_must_be_http() {
        let config = |url: &str| FlyClientConfig {
            base_url: url.into(),
            app: "app".into(),
            token: None,
            limits: RateLimits::default(),
        };

        assert!(FlyClient::new(config("http://127.0.0.1:1/v1")).is_ok());
        for bad in ["ftp://host/v1", "not a url", "mailto:a@b"] {
            let error = FlyClient::new(config(bad)).expect_err("rejected");
            assert!(
                matches!(error, ClientError::InvalidBaseUrl { ref url } if url == bad),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn token_with_newline_is_rejected_without_echo() {
        let error = FlyClient::new(FlyClientConfig {
            base_url: "http://127.0.0.1:1/v1".into(),
            app: "app".into(),
            token: Some("secret\nvalue".into()),
            limits: RateLimits::default(),
        })
        .expect_err("rejected");

        assert!(matches!(error, ClientError::InvalidToken));
        assert!(!error.to_string().contains("secret"));
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limited_response_pauses_every_action() {
        let client = FlyClient::new(FlyClientConfig {
            base_url: "http://127.0.0.1:1/v1".into(),
            app: "app".into(),
            token: None,
            limits: RateLimits::default(),
        })
        .expect("client");
        let response = axum::http::Response::builder()
            .status(429)
            .header(RETRY_AFTER, "2")
            .body(r#"{"error": "rate limit exceeded"}"#)
            .expect("response");
        let call = Call {
            action: Action::Create,
            target: "app app".into(),
        };

        let error = client
            .check_status(&call, Response::from(response))
            .await
            .expect_err("429 is an error");
        let start = tokio::time::Instant::now();
        client.inner.throttle.until_ready(Action::Get).await;

        assert_eq!(error.status(), Some(429));
        assert!(error.is_retryable());
        assert!(error.to_string().contains("rate limit exceeded"), "{error}");
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[test]
    fn token_goes_out_as_sensitive_bearer_header() {
        let client = FlyClient::new(FlyClientConfig {
            base_url: "http://127.0.0.1:1/v1".into(),
            app: "app".into(),
            token: Some("fo1_secret".into()),
            limits: RateLimits::default(),
        })
        .expect("client");

        let (_, builder) = client.call(Action::Get, Some("abc"), Method::GET, &[]);
        let request = builder.build().expect("request");
        let header = request
            .headers()
            .get(AUTHORIZATION)
            .expect("authorization header");

        assert_eq!(header.to_str().expect("ascii"), "Bearer fo1_secret");
        assert!(header.is_sensitive());
        assert!(!format!("{client:?}").contains("fo1_secret"));
    }

    #[test]
    fn request_urls_escape_ids() {
        let client = FlyClient::new(FlyClientConfig {
            base_url: "http://127.0.0.1:1/v1/".into(),
            app: "my-app".into(),
            token: None,
            limits: RateLimits::default(),
        })
        .expect("client");

        let (_, builder) = client.call(Action::Wait, Some("a/b?c"), Method::GET, &["wait"]);
        let request = builder.build().expect("request");

        assert_eq!(
            request.url().as_str(),
            "http://127.0.0.1:1/v1/apps/my-app/machines/a%2Fb%3Fc/wait"
        );
    }
}
