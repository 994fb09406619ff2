//! Failures the local server injects on request, so a client's handling of Fly's bad days
//! (rate limiting, 5xx, lost responses, slow machines) can be tested against real HTTP.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tracing::debug;

use super::Shared;
use crate::types::ErrorResponse;

/// Fault switches of a [`super::LocalMachines`] server; the default injects nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Respond to every n-th API request with 429 and `Retry-After: 1`; 0 turns it off.
    pub rate_limit_every: u32,
    /// Respond to every n-th API request with 503; 0 turns it off.
    pub server_error_every: u32,
    /// Create the machine, then break the connection instead of responding, for this many
    /// create requests: the client sees a network error although the machine exists.
    pub lose_create_responses: u32,
    /// Delay before each state change of a machine's lifecycle (starting, started, stopped).
    pub state_change_delay: Duration,
    /// Kill the process of every n-th created machine with SIGKILL as soon as it starts, as a
    /// host failure would; 0 turns it off.
    pub crash_every: u32,
    /// End the process of every n-th created machine as the kernel's OOM killer does: SIGKILL,
    /// exit code 137 and `oom_killed: true` in the exit event; 0 turns it off.
    pub out_of_memory_every: u32,
}

/// What an injected fault does to one machine's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MachineFault {
    Crash,
    OutOfMemory,
}

/// The fault switches and the request counter they apply to.
#[derive(Default)]
pub(crate) struct FaultInjector {
    faults: Mutex<Faults>,
    requests: AtomicU64,
    creates: AtomicU64,
    log: Mutex<Vec<RequestRecord>>,
}

/// Requests kept in the log; the older half is dropped when it is full.
const MAX_LOGGED_REQUESTS: usize = 100_000;

/// One request the server received, for tests that check a client's request rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub at: tokio::time::Instant,
    pub method: String,
    pub path: String,
}

impl FaultInjector {
    pub(crate) fn set(&self, faults: Faults) {
        *self.lock() = faults;
    }

    pub(crate) fn state_change_delay(&self) -> Duration {
        self.lock().state_change_delay
    }

    fn record(&self, request: &Request) {
        let record = RequestRecord {
            at: tokio::time::Instant::now(),
            method: request.method().to_string(),
            path: request.uri().path().to_owned(),
        };
        let mut log = self
            .log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if log.len() >= MAX_LOGGED_REQUESTS {
            log.drain(..MAX_LOGGED_REQUESTS / 2);
        }
        log.push(record);
    }

    pub(crate) fn request_log(&self) -> Vec<RequestRecord> {
        self.log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Picks the fault, if any, for the next created machine.
    pub(crate) fn next_machine_fault(&self) -> Option<MachineFault> {
        let count = self.creates.fetch_add(1, Ordering::Relaxed) + 1;
        let faults = self.lock().clone();
        let every = |n: u32| n > 0 && count.is_multiple_of(u64::from(n));
        if every(faults.out_of_memory_every) {
            return Some(MachineFault::OutOfMemory);
        }
        every(faults.crash_every).then_some(MachineFault::Crash)
    }

    /// Returns true, and counts it, when the next create response is to be lost.
    pub(crate) fn take_lost_create(&self) -> bool {
        let mut faults = self.lock();
        if faults.lose_create_responses == 0 {
            return false;
        }
        faults.lose_create_responses -= 1;
        true
    }

    /// Picks the injected response for the next request, if any.
    fn next_request_fault(&self) -> Option<Response> {
        let count = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let faults = self.lock().clone();
        let every = |n: u32| n > 0 && count.is_multiple_of(u64::from(n));

        if every(faults.rate_limit_every) {
            let body = error_body("rate limit exceeded (injected)");
            return Some(
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::RETRY_AFTER, "1")],
                    body,
                )
                    .into_response(),
            );
        }
        if every(faults.server_error_every) {
            let body = error_body("service unavailable (injected)");
            return Some((StatusCode::SERVICE_UNAVAILABLE, body).into_response());
        }
        None
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn error_body(message: &str) -> Json<ErrorResponse> {
    Json(ErrorResponse {
        error: message.to_owned(),
        status: None,
    })
}

/// Middleware that answers with an injected 429 or 503 instead of running the handler.
pub(crate) async fn inject_request_faults(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    shared.faults.record(&request);
    match shared.faults.next_request_fault() {
        Some(response) => {
            debug!(status = response.status().as_u16(), path = %request.uri().path(), "injected machines api fault");
            response
        }
        None => next.run(request).await,
    }
}

/// Builds a 200 response whose body fails, so the connection breaks before the client gets a machine.
pub(crate) fn lost_response() -> Response {
    let failing = futures::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other("create response lost (injected)"))
    });
    Response::new(Body::from_stream(failing))
}
