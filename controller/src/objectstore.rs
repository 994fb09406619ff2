//! Object storage: `s3://` URLs, presigned requests through aws-sdk-s3, and the embedded
//! S3-compatible store that `transcoder up` runs on loopback.
//!
//! Workers never see storage credentials. The controller presigns one GET for the source and
//! one PUT for the output of each attempt, and the worker sends exactly those requests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_credential_types::Credentials;
use aws_sdk_s3::config::{
    BehaviorVersion, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::presigning::PresigningConfig;
use chrono::{DateTime, Utc};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnectionBuilder;
use protocol::PresignedRequest;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Errors of object storage calls.
#[derive(Debug, thiserror::Error)]
pub enum ObjectStoreError {
    #[error("invalid presign expiry {0:?}")]
    PresignExpiry(
        Duration,
        #[source] aws_sdk_s3::presigning::PresigningConfigError,
    ),
    #[error("failed to presign {method} of {url}")]
    Presign {
        method: &'static str,
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("failed to look up object {url}")]
    HeadObject {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("failed to prepare the embedded store under {}", path.display())]
    PrepareEmbedded {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to start the embedded store under {}", path.display())]
    StartEmbedded {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A validated `s3://BUCKET/KEY` URL. Keys never contain `.` or `..` segments, empty segments
/// or backslashes, so a key cannot reach outside its bucket in a file-backed store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectUrl {
    pub bucket: String,
    pub key: String,
}

impl ObjectUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(format!(
                "invalid object URL {url:?}; expected s3://BUCKET/KEY"
            ));
        };
        let Some((bucket, key)) = rest.split_once('/') else {
            return Err(format!(
                "invalid object URL {url:?}: missing key; expected s3://BUCKET/KEY"
            ));
        };
        check_bucket(bucket).map_err(|message| format!("invalid object URL {url:?}: {message}"))?;
        check_key(key).map_err(|message| format!("invalid object URL {url:?}: {message}"))?;
        Ok(Self {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        })
    }

    pub fn new(bucket: &str, key: &str) -> Self {
        Self {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        }
    }
}

impl std::fmt::Display for ObjectUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

fn check_bucket(bucket: &str) -> Result<(), String> {
    let valid_chars = bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let valid_ends = bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !(3..=63).contains(&bucket.len()) || !valid_chars || !valid_ends || bucket.contains("..") {
        return Err(format!(
            "invalid bucket {bucket:?}; expected 3 to 63 characters of a-z, 0-9, '-' and '.'"
        ));
    }
    Ok(())
}

fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 1024 {
        return Err("the key must be 1 to 1024 bytes long".to_owned());
    }
    if key.contains('\\') || key.chars().any(char::is_control) {
        return Err(format!(
            "invalid key {key:?}: backslashes and control characters are not allowed"
        ));
    }
    if key
        .split('/')
        .any(|segment| segment.is_empty() || segment == "." || segment == "..")
    {
        return Err(format!(
            "invalid key {key:?}: empty, '.' and '..' path segments are not allowed"
        ));
    }
    Ok(())
}

/// Where to reach an S3-compatible store and with which credentials.
#[derive(Clone, Serialize, Deserialize)]
pub struct StoreSettings {
    /// Endpoint URL; `None` for AWS's own endpoints.
    pub endpoint: Option<String>,
    /// Region; `auto` for Cloudflare R2.
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Bucket for uploads and default outputs.
    pub default_bucket: String,
}

impl std::fmt::Debug for StoreSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSettings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("default_bucket", &self.default_bucket)
            .finish_non_exhaustive()
    }
}

/// Presigns requests and looks objects up in one S3-compatible store.
#[derive(Clone)]
pub struct ObjectStore {
    client: aws_sdk_s3::Client,
    default_bucket: String,
}

impl ObjectStore {
    /// Builds a client that works with AWS and with S3-compatible stores: path-style addressing
    /// and checksums only where the operation requires them, since several third-party stores
    /// reject the checksum headers recent SDKs add by default.
    pub fn new(settings: &StoreSettings) -> Self {
        let credentials = Credentials::new(
            &settings.access_key_id,
            &settings.secret_access_key,
            None,
            None,
            "transcoder",
        );
        let mut config = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .credentials_provider(credentials)
            .force_path_style(settings.endpoint.is_some())
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(endpoint) = &settings.endpoint {
            config = config.endpoint_url(endpoint);
        }

        Self {
            client: aws_sdk_s3::Client::from_conf(config.build()),
            default_bucket: settings.default_bucket.clone(),
        }
    }

    pub fn default_bucket(&self) -> &str {
        &self.default_bucket
    }

    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    pub async fn presign_get(
        &self,
        object: &ObjectUrl,
        expires_in: Duration,
    ) -> Result<PresignedRequest, ObjectStoreError> {
        let config = PresigningConfig::expires_in(expires_in)
            .map_err(|err| ObjectStoreError::PresignExpiry(expires_in, err))?;
        let request = self
            .client
            .get_object()
            .bucket(&object.bucket)
            .key(&object.key)
            .presigned(config)
            .await
            .map_err(|err| ObjectStoreError::Presign {
                method: "GET",
                url: object.to_string(),
                source: err.into(),
            })?;
        Ok(to_presigned(&request))
    }

    pub async fn presign_put(
        &self,
        object: &ObjectUrl,
        content_type: Option<&str>,
        expires_in: Duration,
    ) -> Result<PresignedRequest, ObjectStoreError> {
        let config = PresigningConfig::expires_in(expires_in)
            .map_err(|err| ObjectStoreError::PresignExpiry(expires_in, err))?;
        let request = self
            .client
            .put_object()
            .bucket(&object.bucket)
            .key(&object.key)
            .set_content_type(content_type.map(str::to_owned))
            .presigned(config)
            .await
            .map_err(|err| ObjectStoreError::Presign {
                method: "PUT",
                url: object.to_string(),
                source: err.into(),
            })?;

        // The signature covers Content-Type, so the client must send exactly this header.
        let mut presigned = to_presigned(&request);
        if let Some(content_type) = content_type {
            presigned
                .headers
                .insert("content-type".to_owned(), content_type.to_owned());
        }
        Ok(presigned)
    }

    /// Returns the object's size, or `None` when it does not exist.
    pub async fn object_size(&self, object: &ObjectUrl) -> Result<Option<u64>, ObjectStoreError> {
        let result = self
            .client
            .head_object()
            .bucket(&object.bucket)
            .key(&object.key)
            .send()
            .await;
        match result {
            Ok(head) => Ok(Some(head.content_length().unwrap_or_default().max(0) as u64)),
            Err(err) => {
                let service_error = err.into_service_error();
                if service_error.is_not_found() {
                    return Ok(None);
                }
                Err(ObjectStoreError::HeadObject {
                    url: object.to_string(),
                    source: service_error.into(),
                })
            }
        }
    }
}

fn to_presigned(request: &aws_sdk_s3::presigning::PresignedRequest) -> PresignedRequest {
    let headers: BTreeMap<String, String> = request
        .headers()
        .map(|(name, value)| (name.to_ascii_lowercase(), value.to_owned()))
        .collect();
    PresignedRequest {
        url: request.uri().to_owned(),
        method: request.method().to_owned(),
        headers,
    }
}

/// The time a presigned request made now with `expires_in` stops working.
pub fn expiry_time(expires_in: Duration) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(expires_in).unwrap_or_else(|_| chrono::Duration::zero())
}

/// An S3-compatible server on loopback that keeps objects as files under a directory.
pub struct EmbeddedObjectStore {
    address: SocketAddr,
    settings: StoreSettings,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl EmbeddedObjectStore {
    /// Starts the store on `listener` with objects under `root` and the credentials kept in
    /// `root/../credentials.json` (created on first start), and creates `default_bucket`.
    pub async fn start(
        listener: TcpListener,
        root: &Path,
        default_bucket: &str,
    ) -> Result<Self, ObjectStoreError> {
        let prepare = |source| ObjectStoreError::PrepareEmbedded {
            path: root.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(root.join(default_bucket)).map_err(prepare)?;
        let (access_key_id, secret_access_key) =
            load_or_create_credentials(root).map_err(prepare)?;
        let address = listener.local_addr().map_err(prepare)?;

        let filesystem =
            s3s_fs::FileSystem::new(root).map_err(|err| ObjectStoreError::StartEmbedded {
                path: root.to_path_buf(),
                source: format!("{err:?}").into(),
            })?;
        let mut builder = s3s::service::S3ServiceBuilder::new(filesystem);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(
            access_key_id.clone(),
            secret_access_key.clone(),
        ));
        let service = builder.build();

        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve_s3(listener, service, shutdown.clone()));
        let settings = StoreSettings {
            endpoint: Some(format!("http://{address}")),
            region: "us-east-1".to_owned(),
            access_key_id,
            secret_access_key,
            default_bucket: default_bucket.to_owned(),
        };
        tracing::info!(%address, root = %root.display(), "embedded object store started");
        Ok(Self {
            address,
            settings,
            shutdown,
            task,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn settings(&self) -> &StoreSettings {
        &self.settings
    }

    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

async fn serve_s3(
    listener: TcpListener,
    service: s3s::service::S3Service,
    shutdown: CancellationToken,
) {
    let connections = ConnectionBuilder::new(TokioExecutor::new());
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::warn!(error = %err, "embedded object store failed to accept a connection");
                continue;
            }
        };
        let connection = connections
            .serve_connection(TokioIo::new(stream), service.clone())
            .into_owned();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                result = connection => {
                    if let Err(err) = result {
                        tracing::debug!(error = %err, "embedded object store connection ended with an error");
                    }
                }
                () = shutdown.cancelled() => {}
            }
        });
    }
}

#[derive(Serialize, Deserialize)]
struct StoredCredentials {
    access_key_id: String,
    secret_access_key: String,
}

/// Keeps the embedded store's keys beside its root so that presigned URLs handed out before a
/// restart stay valid after it.
fn load_or_create_credentials(root: &Path) -> std::io::Result<(String, String)> {
    let path = root.with_file_name("object-store-credentials.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Ok(stored) = serde_json::from_str::<StoredCredentials>(&text) {
            return Ok((stored.access_key_id, stored.secret_access_key));
        }
        tracing::warn!(path = %path.display(), "unreadable embedded store credentials; creating new ones");
    }

    let stored = StoredCredentials {
        access_key_id: format!("TRANSCODER{}", random_hex(8).to_uppercase()),
        secret_access_key: random_hex(20),
    };
    let text = serde_json::to_string(&stored).map_err(std::io::Error::other)?;
    std::fs::write(&path, text)?;
    Ok((stored.access_key_id, stored.secret_access_key))
}

/// Returns `bytes` random bytes as lowercase hex.
pub fn random_hex(bytes: usize) -> String {
    let data: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    hex::encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_url_splits_bucket_and_key() {
        let url = ObjectUrl::parse("s3://media/in/42.wav").expect("valid");

        assert_eq!(url.bucket, "media");
        assert_eq!(url.key, "in/42.wav");
        assert_eq!(url.to_string(), "s3://media/in/42.wav");
    }

    #[test]
    fn object_url_rejects_keys_that_escape_the_bucket() {
        for url in [
            "s3://media/../x",
            "s3://media/a/./b",
            "s3://media//a",
            "s3://media/a\\b",
            "s3://media/",
            "s3://media",
        ] {
            assert!(ObjectUrl::parse(url).is_err(), "{url} must be rejected");
        }
    }

    #[test]
    fn object_url_rejects_bad_buckets() {
        for url in [
            "s3://ab/x",
            "s3://Media/x",
            "s3://-media/x",
            "s3://me..dia/x",
            "https://media/x",
        ] {
            assert!(ObjectUrl::parse(url).is_err(), "{url} must be rejected");
        }
    }
}
