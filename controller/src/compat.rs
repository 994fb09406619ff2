//! The job flow of the original transcoding service, on top of `TranscodeJob`s.
//!
//! A client creates a job with `POST /jobs/` and gets a presigned upload URL, uploads the source
//! there, starts the job with `POST /jobs/{id}/status/started/`, and polls `GET /jobs/{id}`
//! until `status` is `completed`, when `transcode.download_url` holds a presigned GET of the
//! MP3. A job is a `TranscodeJob` named by its id, with an upload source and
//! `spec.suspend: true` until it is started. `POST /jobs/{id}/status/completed/` is accepted
//! and recorded as an event, but the controller learns the outcome from its own worker.
//! Errors have FastAPI's shape: `{"detail": MESSAGE}`.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::api::{render, AppState, PRESIGN_TTL};
use crate::objectstore::{expiry_time, random_hex, ObjectStoreError};
use crate::spec::{self, JobSpec, ObjectMeta, OutputSpec, SourceSpec, TranscodeJob};
use crate::status::Phase;
use crate::store::{StoreError, StoredJob};

/// Label on jobs created through this API.
pub const COMPAT_LABEL: &str = "created-by";
pub const COMPAT_VALUE: &str = "compat-api";
/// The only bit depth accepted: LAME encodes from 16-bit PCM, and MP3 itself has none.
const BIT_DEPTH: u32 = 16;

#[derive(Debug, thiserror::Error)]
pub enum CompatError {
    #[error("{0}")]
    Invalid(String),
    #[error("job {0:?} not found")]
    NotFound(String),
    #[error("failed to read or write job {0:?}")]
    Store(String, #[source] StoreError),
    #[error("failed to presign a URL for job {0:?}")]
    Presign(String, #[source] ObjectStoreError),
}

impl IntoResponse for CompatError {
    fn into_response(self) -> Response {
        let status = match &self {
            CompatError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            CompatError::NotFound(_) | CompatError::Store(_, StoreError::NotFound(_)) => {
                StatusCode::NOT_FOUND
            }
            CompatError::Store(_, StoreError::BeingDeleted(_)) => StatusCode::CONFLICT,
            CompatError::Store(..) | CompatError::Presign(..) => {
                let cause = std::error::Error::source(&self).map(ToString::to_string);
                tracing::error!(error = %self, cause = cause.as_deref().unwrap_or(""), "compatibility request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (status, Json(json!({ "detail": self.to_string() }))).into_response()
    }
}

/// Body of `POST /jobs/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    pub transcode: TranscodeRequest,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranscodeRequest {
    pub format: Format,
}

/// The output format: `extension` "mp3", `bit_rate` in kbit/s, `sample_rate` in Hz.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Format {
    pub extension: String,
    #[serde(default = "default_bit_depth")]
    pub bit_depth: u32,
    #[serde(default = "default_bit_rate")]
    pub bit_rate: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_rate: Option<u32>,
}

fn default_bit_depth() -> u32 {
    BIT_DEPTH
}

fn default_bit_rate() -> u32 {
    spec::DEFAULT_BITRATE_KBPS
}

/// A job as this API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompatJob {
    pub id: String,
    /// `created` (waiting for `started`), `queued`, `running`, `completed` or `failed`.
    pub status: String,
    pub source: CompatSource,
    pub transcode: CompatTranscode,
    /// Why the job failed.
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub created_at: Option<DateTime<Utc>>,
}

/// Where to upload the source; the URL is there until the job is started.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CompatSource {
    #[serde(default)]
    pub upload_url: Option<String>,
    #[serde(default)]
    pub upload_method: Option<String>,
    /// Headers the upload must send exactly as given.
    #[serde(default)]
    pub upload_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub upload_expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompatTranscode {
    pub format: Format,
    /// A presigned GET of the MP3 once the job completed.
    #[serde(default)]
    pub download_url: Option<String>,
}

/// Routes of the compatibility API, with and without the trailing slash.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/jobs", post(create_job))
        .route("/jobs/", post(create_job))
        .route("/jobs/{id}", get(get_job))
        .route("/jobs/{id}/", get(get_job))
        .route("/jobs/{id}/status/started", post(start_job))
        .route("/jobs/{id}/status/started/", post(start_job))
        .route("/jobs/{id}/status/completed", post(report_completed))
        .route("/jobs/{id}/status/completed/", post(report_completed))
}

async fn create_job(
    State(state): State<AppState>,
    body: String,
) -> Result<(StatusCode, Json<CompatJob>), CompatError> {
    let request: CreateRequest = serde_json::from_str(&body)
        .map_err(|err| CompatError::Invalid(format!("invalid job request: {err}")))?;
    let format = request.transcode.format;
    check_format(&format)?;

    let id = format!("job-{}", random_hex(6));
    let job = compat_spec(&id, &format);
    spec::validate(&job).map_err(|err| CompatError::Invalid(err.to_string()))?;
    let (stored, _) = state
        .store
        .apply(job)
        .await
        .map_err(|err| CompatError::Store(id.clone(), err))?;
    tracing::info!(job = %id, "compatibility job created");

    Ok((StatusCode::CREATED, Json(view(&state, stored).await?)))
}

async fn get_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<CompatJob>, CompatError> {
    let stored = load(&state, &id)?;
    Ok(Json(view(&state, stored).await?))
}

/// Clears `spec.suspend`, so that the job runs once its upload exists.
async fn start_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<CompatJob>, CompatError> {
    let stored = load(&state, &id)?;
    let stored = if stored.job.spec.suspend {
        let mut job = stored.job.clone();
        job.spec.suspend = false;
        job.status = Default::default();
        let (stored, _) = state
            .store
            .apply(job)
            .await
            .map_err(|err| CompatError::Store(id.clone(), err))?;
        tracing::info!(job = %id, "compatibility job started");
        stored
    } else {
        stored
    };
    Ok(Json(view(&state, stored).await?))
}

async fn report_completed(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<CompatJob>), CompatError> {
    let stored = load(&state, &id)?;
    if let Err(err) = state.store.record_event(
        &id,
        "Normal",
        "CompletedReported",
        "a client reported the job completed; the status follows the worker's report",
    ) {
        tracing::warn!(job = %id, error = %err, "failed to record an event");
    }
    Ok((StatusCode::ACCEPTED, Json(view(&state, stored).await?)))
}

fn load(state: &AppState, id: &str) -> Result<StoredJob, CompatError> {
    if spec::check_name(id).is_err() {
        return Err(CompatError::NotFound(id.to_owned()));
    }
    state
        .store
        .get(id)
        .map_err(|err| CompatError::Store(id.to_owned(), err))?
        .ok_or_else(|| CompatError::NotFound(id.to_owned()))
}

fn check_format(format: &Format) -> Result<(), CompatError> {
    if format.extension != "mp3" {
        return Err(CompatError::Invalid(format!(
            "transcode.format.extension: unsupported extension {:?}; allowed: \"mp3\"",
            format.extension
        )));
    }
    if format.bit_depth != BIT_DEPTH {
        return Err(CompatError::Invalid(format!(
            "transcode.format.bit_depth: unsupported bit depth {}; allowed: {BIT_DEPTH}",
            format.bit_depth
        )));
    }
    if !spec::MP3_BITRATES_KBPS.contains(&format.bit_rate) {
        return Err(CompatError::Invalid(format!(
            "transcode.format.bit_rate: invalid bit rate {} kbit/s; allowed: {:?}",
            format.bit_rate,
            spec::MP3_BITRATES_KBPS
        )));
    }
    if let Some(rate) = format.sample_rate {
        if !spec::MP3_SAMPLE_RATES_HZ.contains(&rate) {
            return Err(CompatError::Invalid(format!(
                "transcode.format.sample_rate: invalid sample rate {rate} Hz; allowed: {:?}",
                spec::MP3_SAMPLE_RATES_HZ
            )));
        }
    }
    Ok(())
}

/// The `TranscodeJob` behind a compatibility job: an upload source, suspended until started.
fn compat_spec(id: &str, format: &Format) -> TranscodeJob {
    TranscodeJob {
        api_version: spec::API_VERSION.to_owned(),
        kind: spec::KIND.to_owned(),
        metadata: ObjectMeta {
            name: id.to_owned(),
            labels: BTreeMap::from([(COMPAT_LABEL.to_owned(), COMPAT_VALUE.to_owned())]),
            ..ObjectMeta::default()
        },
        spec: JobSpec {
            source: SourceSpec {
                url: None,
                upload: true,
            },
            output: OutputSpec {
                codec: "mp3".to_owned(),
                bitrate_kbps: Some(format.bit_rate),
                vbr_quality: None,
                sample_rate_hz: format.sample_rate,
                channels: None,
                url: None,
            },
            machine: None,
            backoff_limit: None,
            active_deadline_seconds: None,
            ttl_seconds_after_finished: None,
            suspend: true,
        },
        status: Default::default(),
    }
}

async fn view(state: &AppState, stored: StoredJob) -> Result<CompatJob, CompatError> {
    let id = stored.name().to_owned();
    let suspended = stored.job.spec.suspend;
    let source = if suspended && stored.job.spec.source.upload {
        let object = state.sources.upload_object(&stored);
        let request = state
            .objects
            .presign_put(&object, None, PRESIGN_TTL)
            .await
            .map_err(|err| CompatError::Presign(id.clone(), err))?;
        CompatSource {
            upload_url: Some(request.url),
            upload_method: Some(request.method),
            upload_headers: request.headers,
            upload_expires_at: Some(expiry_time(PRESIGN_TTL)),
        }
    } else {
        CompatSource::default()
    };

    let job = render(state, stored).await;
    let output = &job.spec.output;
    let format = Format {
        extension: output.codec.clone(),
        bit_depth: BIT_DEPTH,
        bit_rate: output.bitrate_kbps.unwrap_or(spec::DEFAULT_BITRATE_KBPS),
        sample_rate: output.sample_rate_hz,
    };
    let status = &job.status;
    let download_url = match status.phase {
        Phase::Succeeded => status.output.as_ref().and_then(|o| o.download_url.clone()),
        _ => None,
    };
    let error = (status.phase == Phase::Failed).then(|| {
        status
            .conditions
            .iter()
            .max_by_key(|c| c.last_transition_time)
            .map(|c| format!("{}: {}", c.reason, c.message))
            .unwrap_or_else(|| "the job failed".to_owned())
    });

    Ok(CompatJob {
        id,
        status: compat_status(status.phase, suspended).to_owned(),
        source,
        transcode: CompatTranscode {
            format,
            download_url,
        },
        error,
        created_at: job.metadata.creation_timestamp,
    })
}

fn compat_status(phase: Phase, suspended: bool) -> &'static str {
    match phase {
        Phase::Pending if suspended => "created",
        Phase::Pending => "queued",
        Phase::Running => "running",
        Phase::Succeeded => "completed",
        Phase::Failed => "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format(extension: &str, bit_rate: u32, sample_rate: Option<u32>) -> Format {
        Format {
            extension: extension.to_owned(),
            bit_depth: BIT_DEPTH,
            bit_rate,
            sample_rate,
        }
    }

    #[test]
    fn compat_spec_is_a_valid_suspended_upload_job() {
        let job = compat_spec("job-1", &format("mp3", 192, Some(44100)));

        assert_eq!(spec::validate(&job), Ok(()));
        assert!(job.spec.suspend);
        assert!(job.spec.source.upload);
        assert_eq!(job.spec.output.bitrate_kbps, Some(192));
    }

    #[test]
    fn unsupported_formats_are_named() {
        let cases = [
            (format("ogg", 192, None), "extension"),
            (format("mp3", 100, None), "bit_rate"),
            (format("mp3", 192, Some(96000)), "sample_rate"),
            (
                Format {
                    bit_depth: 24,
                    ..format("mp3", 192, None)
                },
                "bit_depth",
            ),
        ];
        for (format, field) in cases {
            let err = check_format(&format).expect_err(field);

            assert!(err.to_string().contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn suspended_pending_job_is_created() {
        assert_eq!(compat_status(Phase::Pending, true), "created");
        assert_eq!(compat_status(Phase::Pending, false), "queued");
        assert_eq!(compat_status(Phase::Succeeded, false), "completed");
    }
}
