//! `ApiClient`: the CLI's client of the controller's HTTP API.

use std::path::Path;

use reqwest::StatusCode;

use crate::api::{ApplyResponse, ErrorBody, JobList, UploadUrl};
use crate::spec::{FieldError, TranscodeJob};

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
    http: reqwest::Client,
}

impl ApiClient {
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Applies one job given as JSON or YAML text.
    pub async fn apply(&self, name: &str, body: String) -> Result<ApplyResponse, ClientError> {
        let url = format!("{}/v1/jobs/{name}", self.base);
        let response = self
            .http
            .put(&url)
            .header("content-type", "application/yaml")
            .body(body)
            .send()
            .await;
        decode(&url, response).await
    }

    pub async fn get(&self, name: &str) -> Result<TranscodeJob, ClientError> {
        let url = format!("{}/v1/jobs/{name}", self.base);
        decode(&url, self.http.get(&url).send().await).await
    }

    pub async fn list(
        &self,
        label_selector: Option<&str>,
    ) -> Result<Vec<TranscodeJob>, ClientError> {
        let url = format!("{}/v1/jobs", self.base);
        let mut request = self.http.get(&url);
        if let Some(selector) = label_selector {
            request = request.query(&[("labelSelector", selector)]);
        }
        let list: JobList = decode(&url, request.send().await).await?;
        Ok(list.items)
    }

    /// Uploads a local file as the source of an `upload: true` job.
    pub async fn upload_source(&self, name: &str, path: &Path) -> Result<u64, ClientError> {
        let url = format!("{}/v1/jobs/{name}/upload-url", self.base);
        let target: UploadUrl = decode(&url, self.http.post(&url).send().await).await?;

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
    let status = response.status();
    if status.is_success() {
        return response.json().await.map_err(|source| ClientError::Decode {
            url: url.to_owned(),
            source,
        });
    }

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
    Err(ClientError::Api {
        status: status.as_u16(),
        message,
        details,
    })
}

/// Drops the query of a presigned URL so that its signature is never printed.
fn redact(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_owned()
}
