//! `ApiClient`: the CLI's client of the controller's HTTP API.

use std::path::Path;

use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};
use reqwest::StatusCode;

use crate::api::{ApplyResponse, ErrorBody, JobList, UploadUrl};
use crate::spec::{FieldError, TranscodeJob};
use crate::sync::SyncState;
use crate::watch::WatchEvent;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("failed to reach the transcoder API at {url}")]
    Connect {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{message}")]
    Api {
        status: u16,
        message: String,
        details: Vec<FieldError>,
    },
    #[error("unexpected response from {url}")]
    Decode {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("failed to read {}", path.display())]
    ReadFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("watch stream from {url} failed")]
    Watch {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("upload of {} was rejected with HTTP {status}: {body}", path.display())]
    Upload {
        path: std::path::PathBuf,
        status: u16,
        body: String,
    },
}

#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl ApiClient {
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token: None,
            http: reqwest::Client::new(),
        }
    }

    /// Sends `token` as the bearer token of every API request.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token.filter(|token| !token.is_empty());
        self
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// A request to the API, with the bearer token when one is set.
    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, url);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Applies one job given as JSON or YAML text; with `dry_run` the server only reports what
    /// it would do.
    pub async fn apply(
        &self,
        name: &str,
        body: String,
        dry_run: bool,
    ) -> Result<ApplyResponse, ClientError> {
        let url = self.job_url(name, "")?;
        let mut request = self
            .request(reqwest::Method::PUT, &url)
            .header("content-type", "application/yaml")
            .body(body);
        if dry_run {
            request = request.query(&[("dryRun", "true")]);
        }
        decode(&url, request.send().await).await
    }

    /// Builds `BASE/v1/jobs/NAME[suffix]` after checking that `name` is a job name, so that
    /// a name such as `a/../b` can never address another job.
    fn job_url(&self, name: &str, suffix: &str) -> Result<String, ClientError> {
        crate::spec::check_name(name).map_err(|message| ClientError::Api {
            status: 400,
            message,
            details: Vec::new(),
        })?;
        Ok(format!("{}/v1/jobs/{name}{suffix}", self.base))
    }

    pub async fn get(&self, name: &str) -> Result<TranscodeJob, ClientError> {
        let url = self.job_url(name, "")?;
        decode(&url, self.request(reqwest::Method::GET, &url).send().await).await
    }

    /// The job, or `None` when it does not exist.
    pub async fn find(&self, name: &str) -> Result<Option<TranscodeJob>, ClientError> {
        match self.get(name).await {
            Ok(job) => Ok(Some(job)),
            Err(ClientError::Api { status: 404, .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    pub async fn list(
        &self,
        label_selector: Option<&str>,
    ) -> Result<Vec<TranscodeJob>, ClientError> {
        let url = format!("{}/v1/jobs", self.base);
        let mut request = self.request(reqwest::Method::GET, &url);
        if let Some(selector) = label_selector {
            request = request.query(&[("labelSelector", selector)]);
        }
        let list: JobList = decode(&url, request.send().await).await?;
        Ok(list.items)
    }

    /// Requests deletion of a job.
    pub async fn delete(&self, name: &str) -> Result<(), ClientError> {
        let url = self.job_url(name, "")?;
        let response = self.request(reqwest::Method::DELETE, &url).send().await;
        let _: serde_json::Value = decode(&url, response).await?;
        Ok(())
    }

    /// The state of the GitOps sync.
    pub async fn sync_status(&self) -> Result<SyncState, ClientError> {
        let url = format!("{}/v1/sync", self.base);
        decode(&url, self.request(reqwest::Method::GET, &url).send().await).await
    }

    /// Follows job changes: first an `ADDED` event per matching job, then one event per change.
    /// `name` restricts the stream to one job.
    pub async fn watch(
        &self,
        label_selector: Option<&str>,
        name: Option<&str>,
    ) -> Result<impl Stream<Item = Result<WatchEvent, ClientError>>, ClientError> {
        let url = format!("{}/v1/jobs", self.base);
        let mut query = vec![("watch", "true")];
        query.extend(label_selector.map(|selector| ("labelSelector", selector)));
        query.extend(name.map(|name| ("name", name)));
        let response = self
            .request(reqwest::Method::GET, &url)
            .query(&query)
            .send()
            .await
            .map_err(|source| ClientError::Connect {
                url: url.clone(),
                source,
            })?;
        if !response.status().is_success() {
            return Err(error_from(&url, response).await);
        }

        let events = response.bytes_stream().eventsource();
        Ok(events.map(move |event| {
            let event = event.map_err(|err| ClientError::Watch {
                url: url.clone(),
                source: err.to_string().into(),
            })?;
            serde_json::from_str::<WatchEvent>(&event.data).map_err(|err| ClientError::Watch {
                url: url.clone(),
                source: Box::new(err),
            })
        }))
    }

    /// Uploads a local file as the source of an `upload: true` job.
    pub async fn upload_source(&self, name: &str, path: &Path) -> Result<u64, ClientError> {
        let url = self.job_url(name, "/upload-url")?;
        let response = self.request(reqwest::Method::POST, &url).send().await;
        let target: UploadUrl = decode(&url, response).await?;

        let read_error = |source| ClientError::ReadFile {
            path: path.to_path_buf(),
            source,
        };
        let file = tokio::fs::File::open(path).await.map_err(read_error)?;
        let length = file.metadata().await.map_err(read_error)?.len();
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));

        let method =
            reqwest::Method::from_bytes(target.method.as_bytes()).unwrap_or(reqwest::Method::PUT);
        let mut request = self
            .http
            .request(method, &target.url)
            .header("content-length", length)
            .body(body);
        for (header, value) in &target.headers {
            request = request.header(header, value);
        }
        let response = request
            .send()
            .await
            .map_err(|source| ClientError::Connect {
                url: redact(&target.url),
                source,
            })?;
        if !response.status().is_success() {
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            return Err(ClientError::Upload {
                path: path.to_path_buf(),
                status,
                body,
            });
        }
        Ok(length)
    }
}

async fn decode<T: serde::de::DeserializeOwned>(
    url: &str,
    response: reqwest::Result<reqwest::Response>,
) -> Result<T, ClientError> {
    let response = response.map_err(|source| ClientError::Connect {
        url: url.to_owned(),
        source,
    })?;
    if response.status().is_success() {
        return response.json().await.map_err(|source| ClientError::Decode {
            url: url.to_owned(),
            source,
        });
    }
    Err(error_from(url, response).await)
}

/// The error of a failed response, with the server's message and field errors when it sent
/// an [`ErrorBody`].
async fn error_from(url: &str, response: reqwest::Response) -> ClientError {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let (message, details) = match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) => (body.error, body.details),
        Err(_) => (
            format!("HTTP {status} from {url}: {}", text.trim()),
            Vec::new(),
        ),
    };
    let message = if status == StatusCode::NOT_FOUND && message.is_empty() {
        format!("not found: {url}")
    } else {
        message
    };
    ClientError::Api {
        status: status.as_u16(),
        message,
        details,
    }
}

/// Drops the query of a presigned URL so that its signature is never printed.
fn redact(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_owned()
}
