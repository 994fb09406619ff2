//! The controller's HTTP API: jobs for users, assignments and callbacks for workers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{middleware, Json, Router};
use protocol::{Assignment, Callback, OutputFormat, PresignedRequest};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::auth::{bearer_token, constant_time_eq};
use crate::metrics::Metrics;
use crate::objectstore::{expiry_time, ObjectStore, ObjectStoreError, ObjectUrl};
use crate::selector::LabelSelector;
use crate::sources::SourceLocator;
use crate::spec::{self, FieldError, SpecError, TranscodeJob};
use crate::status::{OutputStatus, Phase};
use crate::store::{ApplyOutcome, AttemptOutcome, JobEvent, JobStore, StoreError, StoredJob};
use crate::sync::SyncStatus;
use crate::watch::{self, WatchFilter};

/// Largest spec or callback body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Lifetime of presigned URLs handed to users and workers.
pub const PRESIGN_TTL: Duration = Duration::from_secs(12 * 60 * 60);
/// Lifetime of the download URL shown in a job's status; it is made anew on every read.
const DOWNLOAD_TTL: Duration = Duration::from_secs(60 * 60);

#[derive(Clone)]
pub struct AppState {
    pub store: JobStore,
    pub objects: ObjectStore,
    pub sources: SourceLocator,
    pub metrics: Arc<Metrics>,
    /// Bearer token of the user endpoints; `None` leaves them open.
    pub api_token: Option<Arc<str>>,
    /// Result of the GitOps sync, when a sync directory is configured.
    pub sync: Option<SyncStatus>,
    /// Cancelled on shutdown, so that open watch streams end and the server can stop.
    pub shutdown: CancellationToken,
}

impl AppState {
    pub fn new(store: JobStore, objects: ObjectStore, metrics: Arc<Metrics>) -> Self {
        let sources = SourceLocator::new(objects.default_bucket());
        Self {
            store,
            objects,
            sources,
            metrics,
            api_token: None,
            sync: None,
            shutdown: CancellationToken::new(),
        }
    }
}

/// Errors of API requests, each mapped to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidSpec(SpecError),
    #[error("job {0:?} not found")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("missing or invalid worker token for job {0:?}")]
    Unauthorized(String),
    #[error("missing or invalid API token; send the header Authorization: Bearer TOKEN")]
    MissingApiToken,
    #[error("GitOps sync is not enabled; start the controller with --sync-dir DIR")]
    SyncDisabled,
    #[error("job store failed")]
    Store(#[from] StoreError),
    #[error("object store failed")]
    Objects(#[from] ObjectStoreError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, details) = match &self {
            ApiError::InvalidSpec(err) => (StatusCode::UNPROCESSABLE_ENTITY, err.errors.clone()),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, Vec::new()),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, Vec::new()),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, Vec::new()),
            ApiError::Unauthorized(_) | ApiError::MissingApiToken => {
                (StatusCode::UNAUTHORIZED, Vec::new())
            }
            ApiError::SyncDisabled => (StatusCode::NOT_FOUND, Vec::new()),
            ApiError::Store(StoreError::NotFound(_)) => (StatusCode::NOT_FOUND, Vec::new()),
            ApiError::Store(StoreError::BeingDeleted(_)) => (StatusCode::CONFLICT, Vec::new()),
            ApiError::Store(_) | ApiError::Objects(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, Vec::new())
            }
        };
        if status.is_server_error() {
            let cause = std::error::Error::source(&self).map(ToString::to_string);
            tracing::error!(error = %self, cause = cause.as_deref().unwrap_or(""), "request failed");
        }
        (
            status,
            Json(ErrorBody {
                error: self.to_string(),
                details,
            }),
        )
            .into_response()
    }
}

/// JSON body of every error response.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldError>,
}

/// The OpenAPI 3.1 document of this API, kept beside the crate's manifest.
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

/// Builds the API router: user endpoints behind the optional API token, worker endpoints
/// behind their per-attempt tokens, and open health, metrics and API description endpoints.
pub fn router(state: AppState) -> Router {
    let user = Router::new()
        .route("/v1/jobs", get(list_jobs))
        .route(
            "/v1/jobs/{name}",
            put(apply_job).get(get_job).delete(delete_job),
        )
        .route("/v1/jobs/{name}/events", get(job_events))
        .route("/v1/jobs/{name}/upload-url", post(upload_url))
        .route("/v1/sync", get(sync_status))
        .merge(crate::compat::routes())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            crate::auth::require_user_token,
        ));
    let worker = Router::new()
        .route("/v1/jobs/{name}/assignment", get(assignment))
        .route("/v1/jobs/{name}/callbacks", post(callback));

    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .merge(user)
        .merge(worker)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// A job name from the URL path, checked like `metadata.name`, so that no other form of name
/// reaches a store key, an event key or an object key.
#[derive(Debug, Clone)]
pub struct JobName(pub String);

impl<S: Send + Sync> FromRequestParts<S> for JobName {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(name) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|err| ApiError::BadRequest(err.body_text()))?;
        spec::check_name(&name).map_err(ApiError::BadRequest)?;
        Ok(JobName(name))
    }
}

/// Result of `PUT /v1/jobs/{name}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ApplyResponse {
    pub outcome: ApplyOutcome,
    pub job: TranscodeJob,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApplyQuery {
    /// Report what the apply would do without storing anything.
    #[serde(default)]
    dry_run: bool,
}

async fn apply_job(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<ApplyQuery>,
    body: String,
) -> Result<Response, ApiError> {
    let job = spec::parse(&body).map_err(ApiError::InvalidSpec)?;
    if job.metadata.name != name {
        let message = format!(
            "name {:?} does not match the URL's job name {name:?}",
            job.metadata.name
        );
        return Err(ApiError::InvalidSpec(SpecError {
            errors: vec![FieldError {
                field: "metadata.name".into(),
                message,
            }],
        }));
    }

    if query.dry_run {
        let (mut stored, outcome) = state.store.preview_apply(job)?;
        if outcome == ApplyOutcome::Created {
            stored.job.metadata.uid = None;
        }
        let job = render(&state, stored).await;
        return Ok(Json(ApplyResponse { outcome, job }).into_response());
    }

    let (stored, outcome) = state.store.apply(job).await?;
    tracing::info!(job = %name, ?outcome, generation = stored.generation(), "job applied");

    let status = if outcome == ApplyOutcome::Created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let job = render(&state, stored).await;
    Ok((status, Json(ApplyResponse { outcome, job })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    label_selector: Option<String>,
    phase: Option<String>,
    /// Stream changes as server-sent events instead of returning the list.
    #[serde(default)]
    watch: bool,
    /// With `watch`: follow this job only.
    name: Option<String>,
}

/// Body of `GET /v1/jobs`.
#[derive(Debug, Serialize, Deserialize)]
pub struct JobList {
    pub items: Vec<TranscodeJob>,
}

async fn list_jobs(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let selector = query
        .label_selector
        .as_deref()
        .map(LabelSelector::parse)
        .transpose()
        .map_err(ApiError::BadRequest)?;
    let phase = query
        .phase
        .as_deref()
        .map(str::parse::<Phase>)
        .transpose()
        .map_err(ApiError::BadRequest)?;
    if let Some(name) = &query.name {
        spec::check_name(name).map_err(ApiError::BadRequest)?;
    }
    let filter = WatchFilter {
        selector,
        phase,
        name: query.name,
    };
    if query.watch {
        return Ok(watch::watch_response(state, filter));
    }

    let mut items = Vec::new();
    for stored in state.store.list()? {
        if filter.matches(&stored.job) {
            items.push(render(&state, stored).await);
        }
    }
    Ok(Json(JobList { items }).into_response())
}

async fn get_job(
    State(state): State<AppState>,
    JobName(name): JobName,
) -> Result<Json<TranscodeJob>, ApiError> {
    let stored = state.store.get(&name)?.ok_or(ApiError::NotFound(name))?;
    Ok(Json(render(&state, stored).await))
}

async fn delete_job(
    State(state): State<AppState>,
    JobName(name): JobName,
) -> Result<Json<serde_json::Value>, ApiError> {
    // The reconciler destroys the job's machines first, then removes the job.
    if !state.store.request_deletion(&name).await? {
        return Err(ApiError::NotFound(name));
    }
    tracing::info!(job = %name, "job deletion requested");
    Ok(Json(json!({ "deleted": name })))
}

/// Body of `POST /v1/jobs/{name}/upload-url`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadUrl {
    pub url: String,
    pub method: String,
    pub headers: BTreeMap<String, String>,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

async fn upload_url(
    State(state): State<AppState>,
    JobName(name): JobName,
) -> Result<Json<UploadUrl>, ApiError> {
    let stored = state
        .store
        .get(&name)?
        .ok_or_else(|| ApiError::NotFound(name.clone()))?;
    if !stored.job.spec.source.upload {
        return Err(ApiError::Conflict(format!("job {name:?} reads its source from a URL; upload URLs exist only for spec.source.upload: true")));
    }

    let object = state.sources.upload_object(&stored);
    let request = state
        .objects
        .presign_put(&object, None, PRESIGN_TTL)
        .await?;
    Ok(Json(UploadUrl {
        url: request.url,
        method: request.method,
        headers: request.headers,
        expires_at: expiry_time(PRESIGN_TTL),
    }))
}

async fn assignment(
    State(state): State<AppState>,
    JobName(name): JobName,
    headers: HeaderMap,
) -> Result<Json<Assignment>, ApiError> {
    let stored = authorize_worker(&state, &name, &headers)?;
    let attempt = stored
        .attempt
        .as_ref()
        .map(|attempt| attempt.number)
        .unwrap_or_default();

    let source = match state.sources.stored_source(&stored) {
        Some(object) => state.objects.presign_get(&object, PRESIGN_TTL).await?,
        None => {
            let url = stored.job.spec.source.url.clone().unwrap_or_default();
            PresignedRequest {
                url,
                method: "GET".to_owned(),
                headers: BTreeMap::new(),
            }
        }
    };
    let output_object = state.sources.output_object(&stored);
    let output = state
        .objects
        .presign_put(&output_object, Some("audio/mpeg"), PRESIGN_TTL)
        .await?;

    let spec = &stored.job.spec.output;
    let bitrate_kbps = if spec.vbr_quality.is_none() {
        Some(spec.bitrate_kbps.unwrap_or(spec::DEFAULT_BITRATE_KBPS))
    } else {
        None
    };
    let format = OutputFormat {
        bitrate_kbps,
        vbr_quality: spec.vbr_quality,
        sample_rate_hz: spec.sample_rate_hz,
        channels: spec.channels,
    };
    tracing::info!(job = %name, attempt, "assignment handed out");
    Ok(Json(Assignment {
        job: name,
        attempt,
        source,
        output,
        format,
    }))
}

async fn callback(
    State(state): State<AppState>,
    JobName(name): JobName,
    headers: HeaderMap,
    Json(callback): Json<Callback>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let stored = authorize_worker(&state, &name, &headers)?;
    let number = stored
        .attempt
        .as_ref()
        .map(|attempt| attempt.number)
        .unwrap_or_default();
    let output_url = state.sources.output_object(&stored).to_string();

    if let Callback::Progress { fraction } = &callback {
        if !fraction.is_finite() {
            return Err(ApiError::BadRequest(format!(
                "invalid progress {fraction}; expected a number from 0 to 1"
            )));
        }
    }

    // Progress needs no reconcile; a final report does, at once.
    let record = |job: &mut StoredJob| {
        apply_callback(job, number, &callback, &output_url);
    };
    if matches!(callback, Callback::Progress { .. }) {
        state.store.update(&name, record).await?;
    } else {
        state.store.update_and_notify(&name, record).await?;
    }
    tracing::debug!(job = %name, attempt = number, "worker callback recorded");
    Ok(Json(json!({ "ok": true })))
}

/// Records a worker's report on the attempt it came from; reports about an attempt that is no
/// longer current change nothing.
fn apply_callback(job: &mut StoredJob, number: u32, callback: &Callback, output_url: &str) {
    let Some(attempt) = job
        .attempt
        .as_mut()
        .filter(|attempt| attempt.number == number && attempt.outcome.is_none())
    else {
        return;
    };
    match callback {
        Callback::Progress { fraction } => {
            job.job.status.progress = fraction.clamp(0.0, 1.0);
        }
        Callback::Succeeded(result) => {
            attempt.outcome = Some(AttemptOutcome::Succeeded);
            job.job.status.output = Some(OutputStatus {
                url: output_url.to_owned(),
                download_url: None,
                bytes: result.bytes,
                duration_seconds: result.duration_seconds,
                sha256: result.sha256.clone(),
                sample_rate_hz: result.sample_rate_hz,
                channels: result.channels,
                bitrate_kbps: result.bitrate_kbps,
                vbr_quality: result.vbr_quality,
                notes: result.notes.clone(),
            });
        }
        Callback::Failed {
            reason,
            message,
            permanent,
        } => {
            attempt.outcome = Some(AttemptOutcome::Failed {
                reason: reason.clone(),
                message: message.clone(),
                permanent: *permanent,
            });
        }
    }
}

/// Checks the bearer token against the job's current attempt.
fn authorize_worker(
    state: &AppState,
    name: &str,
    headers: &HeaderMap,
) -> Result<StoredJob, ApiError> {
    let unauthorized = || ApiError::Unauthorized(name.to_owned());
    let token = bearer_token(headers).ok_or_else(unauthorized)?;

    let stored = state.store.get(name)?.ok_or_else(unauthorized)?;
    let expected = stored
        .attempt
        .as_ref()
        .map(|attempt| attempt.token.as_str())
        .ok_or_else(unauthorized)?;
    if !constant_time_eq(token.as_bytes(), expected.as_bytes()) {
        return Err(unauthorized());
    }
    Ok(stored)
}

/// Prepares a stored job for a response: a fresh download URL for its output.
pub(crate) async fn render(state: &AppState, stored: StoredJob) -> TranscodeJob {
    let mut job = stored.job;
    if let Some(output) = job.status.output.as_mut() {
        if let Ok(object) = ObjectUrl::parse(&output.url) {
            match state.objects.presign_get(&object, DOWNLOAD_TTL).await {
                Ok(request) => output.download_url = Some(request.url),
                Err(err) => {
                    tracing::warn!(job = %job.metadata.name, error = %err, "failed to presign the download URL")
                }
            }
        }
    }
    job
}

async fn metrics(State(state): State<AppState>) -> Result<String, ApiError> {
    let jobs = state.store.list()?;
    Ok(state.metrics.render(&jobs))
}

/// Body of `GET /v1/jobs/{name}/events`.
#[derive(Debug, Serialize, Deserialize)]
pub struct EventList {
    pub items: Vec<JobEvent>,
}

async fn job_events(
    State(state): State<AppState>,
    JobName(name): JobName,
) -> Result<Json<EventList>, ApiError> {
    if state.store.get(&name)?.is_none() {
        return Err(ApiError::NotFound(name));
    }
    Ok(Json(EventList {
        items: state.store.events(&name)?,
    }))
}

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI_JSON,
    )
        .into_response()
}

async fn sync_status(
    State(state): State<AppState>,
) -> Result<Json<crate::sync::SyncState>, ApiError> {
    let status = state.sync.as_ref().ok_or(ApiError::SyncDisabled)?;
    Ok(Json(status.snapshot()))
}
