//! Job mode run as a process against a fake controller and fake object storage: a real axum
//! server on 127.0.0.1 that speaks the worker endpoints and presigned GET/PUT.

mod audio;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use audio::{decode_mp3, mp3_frame_samples, sine_wav};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use protocol::{
    Assignment, Callback, OutputFormat, PresignedRequest, ENV_API_URL, ENV_ATTEMPT, ENV_JOB,
    ENV_TOKEN, EXIT_PERMANENT, EXIT_RETRYABLE, EXIT_SUCCEEDED,
};
use sha2::{Digest, Sha256};

const JOB: &str = "weekly-42";
const TOKEN: &str = "attempt-token-1";
const SOURCE_SIGNATURE: &str = "source-signature";
const WORKER_TIMEOUT: Duration = Duration::from_secs(120);

/// What the fake servers were sent, and how they should misbehave.
#[derive(Default)]
struct Recorded {
    source: Vec<u8>,
    /// Statuses returned to the first source GETs, before the bytes are served.
    source_failures: Vec<StatusCode>,
    /// Break the source connection after this many bytes.
    source_cut_after: Option<usize>,
    /// Statuses returned to the first output PUTs, before one is accepted.
    output_failures: Vec<StatusCode>,
    output_requests: usize,
    /// Status every callback gets; `None` accepts them.
    callback_status: Option<StatusCode>,
    source_requests: usize,
    uploads: Vec<Upload>,
    callbacks: Vec<Callback>,
    unauthorised: usize,
}

struct Upload {
    content_length: Option<String>,
    content_type: Option<String>,
    body: Vec<u8>,
}

type Shared = Arc<Mutex<Recorded>>;

struct FakeServers {
    addr: SocketAddr,
    recorded: Shared,
}

impl FakeServers {
    async fn start(recorded: Recorded) -> Self {
        let recorded = Arc::new(Mutex::new(recorded));
        let app = Router::new()
            .route("/v1/jobs/{job}/assignment", get(assignment))
            .route("/v1/jobs/{job}/callbacks", post(callback))
            .route("/storage/source", get(source))
            .route("/storage/output", put(output))
            .with_state(Arc::clone(&recorded));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
        Self { addr, recorded }
    }

    /// Runs `transcoder-worker run` against the servers and returns its exit code. The worker's
    /// log is printed only when the exit code differs from `expected`.
    async fn run_worker(&self, expected: i32) -> i32 {
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_transcoder-worker"))
            .arg("run")
            .env(ENV_API_URL, format!("http://{}", self.addr))
            .env(ENV_JOB, JOB)
            .env(ENV_ATTEMPT, "1")
            .env(ENV_TOKEN, TOKEN)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start transcoder-worker");
        let output = tokio::time::timeout(WORKER_TIMEOUT, child.wait_with_output())
            .await
            .expect("worker hung: it neither finished nor failed within the timeout")
            .expect("wait for worker");
        let code = output.status.code().expect("worker was killed by a signal");
        if code != expected {
            eprintln!("worker log:\n{}", String::from_utf8_lossy(&output.stderr));
        }
        code
    }

    fn recorded(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.recorded.lock().expect("recorded lock")
    }
}

fn authorised(headers: &HeaderMap, recorded: &mut Recorded) -> bool {
    let ok = headers.get("authorization").and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {TOKEN}"));
    if !ok {
        recorded.unauthorised += 1;
    }
    ok
}

async fn assignment(
    State(recorded): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<Assignment>, StatusCode> {
    let mut recorded = recorded.lock().expect("lock");
    if !authorised(&headers, &mut recorded) {
        return Err(StatusCode::UNAUTHORIZED);
    }
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let source_headers =
        BTreeMap::from([("x-test-signature".to_string(), SOURCE_SIGNATURE.to_string())]);
    let output_headers = BTreeMap::from([("content-type".to_string(), "audio/mpeg".to_string())]);
    Ok(Json(Assignment {
        job: JOB.into(),
        attempt: 1,
        source: PresignedRequest {
            url: format!("http://{host}/storage/source?X-Amz-Signature=secret"),
            method: "GET".into(),
            headers: source_headers,
        },
        output: PresignedRequest {
            url: format!("http://{host}/storage/output?X-Amz-Signature=secret"),
            method: "PUT".into(),
            headers: output_headers,
        },
        format: OutputFormat::default(),
    }))
}

async fn callback(
    State(recorded): State<Shared>,
    headers: HeaderMap,
    Json(callback): Json<Callback>,
) -> StatusCode {
    let mut recorded = recorded.lock().expect("lock");
    if !authorised(&headers, &mut recorded) {
        return StatusCode::UNAUTHORIZED;
    }
    recorded.callbacks.push(callback);
    recorded.callback_status.unwrap_or(StatusCode::NO_CONTENT)
}

async fn source(State(recorded): State<Shared>, headers: HeaderMap) -> Response {
    let mut recorded = recorded.lock().expect("lock");
    recorded.source_requests += 1;
    if headers
        .get("x-test-signature")
        .and_then(|v| v.to_str().ok())
        != Some(SOURCE_SIGNATURE)
    {
        return StatusCode::FORBIDDEN.into_response();
    }
    if !recorded.source_failures.is_empty() {
        return recorded.source_failures.remove(0).into_response();
    }
    let Some(cut) = recorded.source_cut_after else {
        return recorded.source.clone().into_response();
    };

    // Promise the whole file, send part of it, then break the connection.
    let head = Bytes::copy_from_slice(&recorded.source[..cut]);
    let pieces: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(head),
        Err(std::io::Error::other("connection dropped by the test")),
    ];
    Response::builder()
        .header("content-length", recorded.source.len())
        .body(Body::from_stream(futures::stream::iter(pieces)))
        .expect("response")
}

async fn output(State(recorded): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let mut recorded = recorded.lock().expect("lock");
    recorded.output_requests += 1;
    if !recorded.output_failures.is_empty() {
        return recorded.output_failures.remove(0);
    }
    recorded.uploads.push(Upload {
        content_length: header("content-length"),
        content_type: header("content-type"),
        body: body.to_vec(),
    });
    StatusCode::OK
}

fn last_callback(recorded: &Recorded) -> &Callback {
    recorded
        .callbacks
        .last()
        .expect("the worker sent no callback")
}

/// A WAV source is streamed, transcoded, uploaded with a Content-Length, and reported with the
/// uploaded file's size and SHA-256.
#[tokio::test(flavor = "multi_thread")]
async fn job_uploads_mp3_and_reports_success() {
    let servers = FakeServers::start(Recorded {
        source: sine_wav(44100, 2, 88_200),
        ..Default::default()
    })
    .await;

    let code = servers.run_worker(EXIT_SUCCEEDED).await;

    let recorded = servers.recorded();
    assert_eq!(code, EXIT_SUCCEEDED, "callbacks: {:?}", recorded.callbacks);
    assert_eq!(recorded.unauthorised, 0);
    assert_eq!(recorded.uploads.len(), 1);
    let upload = &recorded.uploads[0];
    assert_eq!(upload.content_length, Some(upload.body.len().to_string()));
    assert_eq!(upload.content_type.as_deref(), Some("audio/mpeg"));

    let Callback::Succeeded(result) = last_callback(&recorded) else {
        panic!("last callback is not Succeeded: {:?}", recorded.callbacks);
    };
    assert_eq!(result.bytes, upload.body.len() as u64);
    assert_eq!(result.sha256, hex::encode(Sha256::digest(&upload.body)));
    assert_eq!(result.sample_rate_hz, 44100);
    assert!(
        (result.duration_seconds - 2.0).abs() < 1e-9,
        "{}",
        result.duration_seconds
    );
    for earlier in &recorded.callbacks[..recorded.callbacks.len() - 1] {
        let Callback::Progress { fraction } = earlier else {
            panic!("only progress may precede the result: {earlier:?}");
        };
        assert!((0.0..=1.0).contains(fraction), "{fraction}");
    }

    let decoded = decode_mp3(&upload.body).expect("uploaded MP3 decodes");
    assert!(
        decoded.frames.abs_diff(88_200) <= mp3_frame_samples(44100),
        "decoded {} frames",
        decoded.frames
    );
}

/// A source that is not audio fails permanently: Failed callback, exit code 3, no upload.
#[tokio::test(flavor = "multi_thread")]
async fn not_audio_fails_permanently() {
    let page = b"<html><body><h1>404 Not Found</h1></body></html>\n".to_vec();
    let servers = FakeServers::start(Recorded {
        source: page,
        ..Default::default()
    })
    .await;

    let code = servers.run_worker(EXIT_PERMANENT).await;

    let recorded = servers.recorded();
    assert_eq!(code, EXIT_PERMANENT, "callbacks: {:?}", recorded.callbacks);
    assert!(recorded.uploads.is_empty());
    let Callback::Failed {
        reason,
        message,
        permanent,
    } = last_callback(&recorded)
    else {
        panic!("last callback is not Failed: {:?}", recorded.callbacks);
    };
    assert_eq!(reason, "NotAudio");
    assert!(*permanent);
    assert!(
        message.contains("not a recognised audio format"),
        "{message}"
    );
}

/// Transient storage errors are retried and the attempt still succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn storage_5xx_is_retried() {
    let servers = FakeServers::start(Recorded {
        source: sine_wav(22050, 1, 22_050),
        source_failures: vec![StatusCode::SERVICE_UNAVAILABLE, StatusCode::BAD_GATEWAY],
        ..Default::default()
    })
    .await;

    let code = servers.run_worker(EXIT_SUCCEEDED).await;

    let recorded = servers.recorded();
    assert_eq!(code, EXIT_SUCCEEDED, "callbacks: {:?}", recorded.callbacks);
    assert_eq!(recorded.source_requests, 3);
    assert!(matches!(last_callback(&recorded), Callback::Succeeded(_)));
}

/// Storage that keeps failing ends the attempt as retryable, with exit code 1.
#[tokio::test(flavor = "multi_thread")]
async fn storage_outage_is_retryable() {
    let servers = FakeServers::start(Recorded {
        source: sine_wav(22050, 1, 22_050),
        source_failures: vec![StatusCode::INTERNAL_SERVER_ERROR; 10],
        ..Default::default()
    })
    .await;

    let code = servers.run_worker(EXIT_RETRYABLE).await;

    let recorded = servers.recorded();
    assert_eq!(code, EXIT_RETRYABLE, "callbacks: {:?}", recorded.callbacks);
    let Callback::Failed {
        reason,
        permanent,
        message,
    } = last_callback(&recorded)
    else {
        panic!("last callback is not Failed: {:?}", recorded.callbacks);
    };
    assert_eq!(reason, "SourceUnavailable");
    assert!(!*permanent);
    assert!(
        !message.contains("secret"),
        "the presigned signature leaked into the message: {message}"
    );
}

/// A missing source object fails permanently.
#[tokio::test(flavor = "multi_thread")]
async fn missing_source_is_permanent() {
    let servers = FakeServers::start(Recorded {
        source_failures: vec![StatusCode::NOT_FOUND],
        ..Default::default()
    })
    .await;

    let code = servers.run_worker(EXIT_PERMANENT).await;

    let recorded = servers.recorded();
    assert_eq!(code, EXIT_PERMANENT, "callbacks: {:?}", recorded.callbacks);
    assert!(
        matches!(last_callback(&recorded), Callback::Failed { reason, .. } if reason == "SourceNotFound")
    );
}

/// When no callback can be delivered, the exit code still reports the outcome.
#[tokio::test(flavor = "multi_thread")]
async fn undeliverable_callbacks_keep_exit_code() {
    let servers = FakeServers::start(Recorded {
        source: sine_wav(22050, 1, 22_050),
        callback_status: Some(StatusCode::SERVICE_UNAVAILABLE),
        ..Default::default()
    })
    .await;

    let code = servers.run_worker(EXIT_SUCCEEDED).await;

    let recorded = servers.recorded();
    assert_eq!(code, EXIT_SUCCEEDED);
    assert_eq!(recorded.uploads.len(), 1);
    assert!(recorded
        .callbacks
        .iter()
        .any(|callback| matches!(callback, Callback::Succeeded(_))));
}

/// A download that breaks off mid-stream is a transient failure, with exit code 1.
#[tokio::test(flavor = "multi_thread")]
async fn broken_download_is_retryable() {
    let source = sine_wav(44100, 2, 441_000);
    let servers = FakeServers::start(Recorded {
        source_cut_after: Some(source.len() / 3),
        source,
        ..Default::default()
    })
    .await;

    let code = servers.run_worker(EXIT_RETRYABLE).await;

    let recorded = servers.recorded();
    assert_eq!(code, EXIT_RETRYABLE, "callbacks: {:?}", recorded.callbacks);
    assert!(recorded.uploads.is_empty());
    let Callback::Failed {
        reason,
        permanent,
        message,
    } = last_callback(&recorded)
    else {
        panic!("last callback is not Failed: {:?}", recorded.callbacks);
    };
    assert_eq!(reason, "SourceUnavailable");
    assert!(!*permanent);
    assert!(message.contains("broke off"), "{message}");
}

/// A failed upload is retried and the attempt still succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn upload_5xx_is_retried() {
    let servers = FakeServers::start(Recorded {
        source: sine_wav(22050, 1, 22_050),
        output_failures: vec![StatusCode::SERVICE_UNAVAILABLE],
        ..Default::default()
    })
    .await;

    let code = servers.run_worker(EXIT_SUCCEEDED).await;

    let recorded = servers.recorded();
    assert_eq!(code, EXIT_SUCCEEDED, "callbacks: {:?}", recorded.callbacks);
    assert_eq!(recorded.output_requests, 2);
    assert_eq!(recorded.uploads.len(), 1);
    let Callback::Succeeded(result) = last_callback(&recorded) else {
        panic!("last callback is not Succeeded: {:?}", recorded.callbacks);
    };
    assert_eq!(result.bytes, recorded.uploads[0].body.len() as u64);
}
