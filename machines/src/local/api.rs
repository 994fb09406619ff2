//! HTTP handlers of the local server: the Machines API endpoints under `/v1/apps/{app}/machines`.
//!
//! Errors leave as Fly sends them, `{"error": "..."}` with a matching status, and bodies and
//! query strings are decoded here so that bad input gets that JSON shape too.

use std::ffi::OsString;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use nix::sys::signal::Signal;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::debug;

use super::faults::{inject_request_faults, lost_response};
use super::fleet::{event, now_rfc3339, FleetError, ListFilter, Progress};
use super::lifecycle::{machine_argv, run_machine, MachinePlan, RestartRule};
use super::process::{shutdown_requested, LaunchSpec, ProcessCommand};
use super::{ids, Shared};
use crate::types::{
    CreateMachineRequest, ErrorResponse, Machine, MachineConfig, MachineState, OkResponse,
    StopRequest,
};

/// Maximum wait the wait endpoint allows, and its default, as on Fly.
const MAX_WAIT_SECS: u64 = 60;

/// Region of machines whose create request names none.
const DEFAULT_REGION: &str = "local";

/// Stop signal when neither the request nor `stop_config` names one; Fly's default.
const DEFAULT_STOP_SIGNAL: Signal = Signal::SIGINT;

/// Time between the stop signal and SIGKILL when nothing sets it; Fly's default.
const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(5);

type Params = Query<Vec<(String, String)>>;

/// Builds the router of all machine endpoints.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/apps/{app}/machines", get(list).post(create))
        .route("/v1/apps/{app}/machines/{id}", get(get_one).delete(destroy))
        .route("/v1/apps/{app}/machines/{id}/wait", get(wait))
        .route(
            "/v1/apps/{app}/machines/{id}/stop",
            axum::routing::post(stop),
        )
        .fallback(unknown_route)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&shared),
            inject_request_faults,
        ))
        .with_state(shared)
}

/// An error response: a status and Fly's `{"error": ...}` body.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        debug!(status = self.status.as_u16(), error = %self.message, "machines api request rejected");
        let body = ErrorResponse {
            error: self.message,
            status: None,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<FleetError> for ApiError {
    fn from(error: FleetError) -> Self {
        let status = match error {
            FleetError::NotFound { .. } => StatusCode::NOT_FOUND,
            FleetError::NameTaken { .. } => StatusCode::CONFLICT,
            FleetError::StillRunning { .. } | FleetError::Destroyed { .. } => {
                StatusCode::PRECONDITION_FAILED
            }
        };
        ApiError::new(status, error.to_string())
    }
}

async fn unknown_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not found")
}

fn check_app(shared: &Shared, app: &str) -> Result<(), ApiError> {
    if app == shared.config.app {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::NOT_FOUND, "app not found"))
    }
}

async fn create(
    State(shared): State<Arc<Shared>>,
    Path(app): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_app(&shared, &app)?;
    if *shared.shutdown.borrow() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server shutting down",
        ));
    }
    let request: CreateMachineRequest = decode_body(&body, "create machine request")?;
    validate_create(&request)?;

    let machine = new_machine(&request);
    let plan = plan_for(&shared, &machine, &request.config);
    let (control, commands) = mpsc::unbounded_channel();
    shared.fleet.insert(machine.clone(), control)?;
    debug!(machine = %machine.id, "machine created");

    let fleet = Arc::clone(&shared.fleet);
    let shutdown = shared.shutdown.subscribe();
    shared.spawn_supervisor(run_machine(fleet, plan, commands, shutdown));
    if shared.faults.take_lost_create() {
        debug!(machine = %machine.id, "losing create response as injected");
        return Ok(lost_response());
    }
    Ok(Json(machine).into_response())
}

fn validate_create(request: &CreateMachineRequest) -> Result<(), ApiError> {
    let config = &request.config;
    if config
        .image
        .as_deref()
        .is_none_or(|image| image.trim().is_empty())
    {
        return Err(ApiError::bad_request(
            "invalid config.image: an image reference such as registry.fly.io/app:tag is required",
        ));
    }
    if request.skip_launch == Some(true) {
        return Err(ApiError::bad_request(
            "invalid skip_launch: the local machines server starts every machine it creates",
        ));
    }
    for (key, value) in config.env.iter().flatten() {
        if key.is_empty() || key.contains(['=', '\0']) || value.contains('\0') {
            return Err(ApiError::bad_request(format!(
                "invalid config.env entry {key:?}: names must be non-empty without '=' or NUL, values without NUL"
            )));
        }
    }
    let init = config.init.as_ref();
    let words = init
        .into_iter()
        .flat_map(|init| [&init.exec, &init.entrypoint, &init.cmd])
        .flatten()
        .flatten();
    for word in words {
        if word.contains('\0') {
            return Err(ApiError::bad_request(format!(
                "invalid config.init word {word:?}: it contains a NUL character"
            )));
        }
    }
    Ok(())
}

fn new_machine(request: &CreateMachineRequest) -> Machine {
    let id = ids::machine_id();
    let now = now_rfc3339();
    let region = request
        .region
        .clone()
        .filter(|region| !region.is_empty())
        .unwrap_or_else(|| DEFAULT_REGION.to_owned());
    Machine {
        name: Some(
            request
                .name
                .clone()
                .unwrap_or_else(|| format!("machine-{id}")),
        ),
        state: MachineState::Created,
        region: Some(region),
        instance_id: Some(ids::instance_id()),
        private_ip: None,
        config: Some(request.config.clone()),
        image_ref: None,
        created_at: Some(now.clone()),
        updated_at: Some(now),
        events: vec![event("launch", "created", "user", None)],
        id,
    }
}

fn plan_for(shared: &Shared, machine: &Machine, config: &MachineConfig) -> MachinePlan {
    let mut env: Vec<(String, String)> =
        config.env.clone().unwrap_or_default().into_iter().collect();
    env.extend([
        ("FLY_MACHINE_ID".to_owned(), machine.id.clone()),
        ("FLY_ALLOC_ID".to_owned(), machine.id.clone()),
        ("FLY_APP_NAME".to_owned(), shared.config.app.clone()),
        (
            "FLY_REGION".to_owned(),
            machine.region.clone().unwrap_or_default(),
        ),
        (
            "FLY_IMAGE_REF".to_owned(),
            config.image.clone().unwrap_or_default(),
        ),
        (
            "FLY_MACHINE_VERSION".to_owned(),
            machine.instance_id.clone().unwrap_or_default(),
        ),
    ]);
    let argv: Vec<OsString> = machine_argv(config.init.as_ref(), &shared.config.worker_bin);

    MachinePlan {
        id: machine.id.clone(),
        launch: LaunchSpec {
            argv,
            env,
            log_path: shared.config.log_dir.join(format!("{}.log", machine.id)),
        },
        restart: RestartRule::from_config(config.restart.as_ref()),
        auto_destroy: config.auto_destroy.unwrap_or(false),
        state_change_delay: shared.faults.state_change_delay(),
        fault: shared.faults.next_machine_fault(),
    }
}

async fn list(
    State(shared): State<Arc<Shared>>,
    Path(app): Path<String>,
    Query(params): Params,
) -> Result<Json<Vec<Machine>>, ApiError> {
    check_app(&shared, &app)?;
    let mut filter = ListFilter::default();
    for (key, value) in params {
        if key == "include_deleted" {
            filter.include_deleted = parse_bool("include_deleted", &value)?;
        } else if key == "region" {
            filter.region = Some(value).filter(|region| !region.is_empty());
        } else if let Some(metadata_key) = key.strip_prefix("metadata.") {
            filter.metadata.insert(metadata_key.to_owned(), value);
        }
    }
    Ok(Json(shared.fleet.list(&filter)))
}

async fn get_one(
    State(shared): State<Arc<Shared>>,
    Path((app, id)): Path<(String, String)>,
) -> Result<Json<Machine>, ApiError> {
    check_app(&shared, &app)?;
    Ok(Json(shared.fleet.get(&id)?))
}

/// The query of a wait request.
#[derive(Debug, PartialEq, Eq)]
struct WaitQuery {
    state: MachineState,
    timeout: Duration,
    instance_id: Option<String>,
}

impl WaitQuery {
    fn parse(params: &[(String, String)]) -> Result<Self, ApiError> {
        let mut query = WaitQuery {
            state: MachineState::Started,
            timeout: Duration::from_secs(MAX_WAIT_SECS),
            instance_id: None,
        };
        for (key, value) in params {
            match key.as_str() {
                "state" => query.state = parse_wait_state(value)?,
                "timeout" => {
                    let secs: u64 = value.parse().map_err(|_| {
                        ApiError::bad_request(format!(
                            "invalid timeout {value:?}: expected whole seconds from 0 to {MAX_WAIT_SECS}"
                        ))
                    })?;
                    query.timeout = Duration::from_secs(secs.min(MAX_WAIT_SECS));
                }
                "instance_id" if !value.is_empty() => query.instance_id = Some(value.clone()),
                _ => {}
            }
        }
        if query.state == MachineState::Stopped && query.instance_id.is_none() {
            return Err(ApiError::bad_request(
                "instance_id is required when waiting for state stopped",
            ));
        }
        Ok(query)
    }
}

fn parse_wait_state(value: &str) -> Result<MachineState, ApiError> {
    match value {
        "started" => Ok(MachineState::Started),
        "stopped" => Ok(MachineState::Stopped),
        "destroyed" => Ok(MachineState::Destroyed),
        _ => Err(ApiError::bad_request(format!(
            "invalid state {value:?}: expected started, stopped or destroyed"
        ))),
    }
}

/// Returns whether `progress` satisfies a wait for `target`.
///
/// NOTE: `started` also counts as reached when the current instance started and has since
/// exited, so a process that exits at once cannot make a wait for `started` time out.
/// `stopped` counts as reached by the later `destroying` and `destroyed` too.
fn reached(progress: &Progress, target: MachineState) -> bool {
    let exited = matches!(
        progress.state,
        MachineState::Stopped | MachineState::Destroying | MachineState::Destroyed
    );
    match target {
        MachineState::Started => {
            progress.state == MachineState::Started || (progress.started && exited)
        }
        MachineState::Stopped => exited,
        _ => progress.state == target,
    }
}

async fn wait(
    State(shared): State<Arc<Shared>>,
    Path((app, id)): Path<(String, String)>,
    Query(params): Params,
) -> Result<Json<OkResponse>, ApiError> {
    check_app(&shared, &app)?;
    let query = WaitQuery::parse(&params)?;
    let (instance_id, mut progress) = shared.fleet.subscribe(&id)?;
    if let Some(requested) = &query.instance_id {
        if instance_id.as_ref() != Some(requested) {
            return Err(ApiError::bad_request(format!(
                "invalid instance_id {requested:?}: machine {id} runs instance {}",
                instance_id.unwrap_or_default()
            )));
        }
    }

    let target = query.state;
    let reached_target = async {
        let result = progress.wait_for(|p| reached(p, target)).await;
        result.is_ok()
    };
    let mut stopping = shared.shutdown.subscribe();
    let outcome = tokio::select! {
        outcome = tokio::time::timeout(query.timeout, reached_target) => outcome,
        () = shutdown_requested(&mut stopping) => {
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server shutting down"));
        }
    };
    match outcome {
        Ok(true) => Ok(Json(OkResponse { ok: true })),
        // The machine was dropped from the table while waiting.
        Ok(false) => Err(FleetError::NotFound { id }.into()),
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "deadline_exceeded: machine {id} did not reach state {target} within {}s",
                query.timeout.as_secs()
            ),
        )),
    }
}

async fn stop(
    State(shared): State<Arc<Shared>>,
    Path((app, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<OkResponse>, ApiError> {
    check_app(&shared, &app)?;
    let request: StopRequest = if body.iter().all(u8::is_ascii_whitespace) {
        StopRequest::default()
    } else {
        decode_body(&body, "stop request")?
    };
    let machine = shared.fleet.get(&id)?;
    let stop_config = machine.config.as_ref().and_then(|c| c.stop_config.as_ref());

    let signal = match request
        .signal
        .or_else(|| stop_config.and_then(|c| c.signal.clone()))
    {
        Some(name) => parse_signal(&name)?,
        None => DEFAULT_STOP_SIGNAL,
    };
    let timeout = request
        .timeout
        .or_else(|| stop_config.and_then(|c| c.timeout))
        .map_or(DEFAULT_STOP_TIMEOUT, |timeout| timeout.0);
    let command = ProcessCommand::Stop { signal, timeout };
    shared
        .fleet
        .stop(&id, command, event("stop", "stopping", "user", None))?;
    Ok(Json(OkResponse { ok: true }))
}

async fn destroy(
    State(shared): State<Arc<Shared>>,
    Path((app, id)): Path<(String, String)>,
    Query(params): Params,
) -> Result<Json<OkResponse>, ApiError> {
    check_app(&shared, &app)?;
    let mut force = false;
    for (key, value) in &params {
        if key == "force" {
            force = parse_bool("force", value)?;
        }
    }
    shared.fleet.destroy(&id, force)?;
    Ok(Json(OkResponse { ok: true }))
}

fn decode_body<T: DeserializeOwned>(body: &[u8], body_name: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|error| ApiError::bad_request(format!("invalid {body_name} body: {error}")))
}

/// Parses a boolean as Go's `strconv.ParseBool` does, and an empty value as false.
fn parse_bool(name: &str, value: &str) -> Result<bool, ApiError> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" | "" => Ok(false),
        _ => Err(ApiError::bad_request(format!(
            "invalid {name} {value:?}: expected true or false"
        ))),
    }
}

/// Parses a signal name such as `SIGTERM` or `TERM`.
fn parse_signal(name: &str) -> Result<Signal, ApiError> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&full).map_err(|_| {
        ApiError::bad_request(format!(
            "invalid signal {name:?}: expected a signal name such as SIGTERM, SIGINT or SIGQUIT"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn wait_query_defaults_and_caps() {
        let query = WaitQuery::parse(&params(&[])).expect("valid");
        assert_eq!(query.state, MachineState::Started);
        assert_eq!(query.timeout, Duration::from_secs(60));

        let query = WaitQuery::parse(&params(&[("timeout", "600"), ("state", "destroyed")]))
            .expect("valid");
        assert_eq!(query.timeout, Duration::from_secs(60));
        assert_eq!(query.state, MachineState::Destroyed);
    }

    #[test]
    fn wait_query_rejects_bad_values() {
        for bad in [
            params(&[("state", "running")]),
            params(&[("timeout", "-1")]),
            params(&[("timeout", "1.5")]),
            params(&[("state", "stopped")]),
        ] {
            let error = WaitQuery::parse(&bad).expect_err("rejected");
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{bad:?}");
        }
    }

    #[test]
    fn reached_counts_exited_instance_as_started() {
        let progress = |state, started| Progress { state, started };

        assert!(reached(
            &progress(MachineState::Started, true),
            MachineState::Started
        ));
        assert!(reached(
            &progress(MachineState::Stopped, true),
            MachineState::Started
        ));
        assert!(!reached(
            &progress(MachineState::Stopped, false),
            MachineState::Started
        ));
        assert!(!reached(
            &progress(MachineState::Starting, false),
            MachineState::Started
        ));
        assert!(reached(
            &progress(MachineState::Destroyed, true),
            MachineState::Stopped
        ));
        assert!(!reached(
            &progress(MachineState::Stopping, true),
            MachineState::Stopped
        ));
        assert!(!reached(
            &progress(MachineState::Stopped, true),
            MachineState::Destroyed
        ));
    }

    #[test]
    fn signal_names_with_and_without_prefix() {
        assert_eq!(parse_signal("SIGTERM").expect("valid"), Signal::SIGTERM);
        assert_eq!(parse_signal("int").expect("valid"), Signal::SIGINT);
        assert!(parse_signal("SIGNOPE").is_err());
    }

    #[test]
    fn bool_parsing_matches_go() {
        assert!(parse_bool("force", "true").expect("valid"));
        assert!(!parse_bool("force", "0").expect("valid"));
        let error = parse_bool("force", "yes").expect_err("rejected");
        assert!(error.message.contains("force"));
    }
}
