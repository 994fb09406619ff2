//! `transcoder serve`, the production command, run as a process against real servers on
//! loopback. The local Machines API replaces Fly, and the embedded S3-compatible store replaces
//! R2 and is reached with R2's settings (region `auto`, path-style addressing). It transcodes a file,
//! stops cleanly on SIGTERM and SIGINT, and keeps its jobs across a restart.

mod support;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use controller::objectstore::EmbeddedObjectStore;
use controller::status::Phase;
use fly_machines::local::{LocalMachines, LocalMachinesConfig};
use support::{decode_mp3, repo_root, upload, upload_spec, wait_for_job, worker_binary};

const WORKER_APP: &str = "transcoder-workers";
const BUCKET: &str = "media";
const FLY_TOKEN: &str = "FlyV1 fm2_serve-test-token";
const JOB_TIMEOUT: Duration = Duration::from_secs(180);
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The fake Fly and the store that `serve` talks to, and where it keeps its data.
struct Backends {
    root: tempfile::TempDir,
    objects: EmbeddedObjectStore,
    machines: LocalMachines,
    port: u16,
}

impl Backends {
    async fn start() -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let objects = EmbeddedObjectStore::start(
            loopback_listener().await,
            &root.path().join("objects"),
            BUCKET,
        )
        .await
        .expect("embedded store starts");
        let machines = LocalMachines::start(
            loopback_listener().await,
            LocalMachinesConfig {
                app: WORKER_APP.to_owned(),
                worker_bin: worker_binary(),
                log_dir: root.path().join("machines"),
            },
        )
        .await
        .expect("local Machines API starts");
        Self {
            port: free_port(),
            root,
            objects,
            machines,
        }
    }

    fn api(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// Starts `transcoder serve` with a cleared environment holding only its configuration.
    fn spawn_serve(&self, log_name: &str) -> (Child, PathBuf) {
        let store = self.objects.settings();
        let log_path = self.root.path().join(log_name);
        let log = File::create(&log_path).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_transcoder"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("TRANSCODER_LOG_FORMAT", "json")
            .env("TRANSCODER_LISTEN", format!("127.0.0.1:{}", self.port))
            .env("TRANSCODER_DATA_DIR", self.data_dir())
            .env("TRANSCODER_PUBLIC_URL", self.api())
            .env("FLY_API_TOKEN", FLY_TOKEN)
            .env("FLY_MACHINES_API_URL", self.machines.base_url())
            .env("FLY_WORKER_APP_NAME", WORKER_APP)
            .env(
                "FLY_IMAGE_REF",
                "registry.fly.io/transcoder:deployment-test",
            )
            .env(
                "S3_ENDPOINT_URL",
                store.endpoint.clone().expect("embedded endpoint"),
            )
            .env("S3_REGION", "auto")
            .env("S3_BUCKET", BUCKET)
            .env("AWS_ACCESS_KEY_ID", &store.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &store.secret_access_key)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("transcoder serve starts");
        (child, log_path)
    }

    async fn shutdown(self) {
        self.machines.shutdown().await;
        self.objects.shutdown().await;
    }
}

async fn loopback_listener() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("loopback listener")
}

/// Returns a port that was free a moment ago, for `serve` to bind itself.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("loopback listener");
    listener.local_addr().expect("address").port()
}

async fn wait_healthy(api: &str, serve: &mut Child, log: &Path) {
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        if let Ok(Some(status)) = serve.try_wait() {
            panic!(
                "serve exited with {status} before it was healthy; log:\n{}",
                read(log)
            );
        }
        if let Ok(response) = http.get(format!("{api}/healthz")).send().await {
            if response.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "serve was not healthy within {START_TIMEOUT:?}; log:\n{}",
        read(log)
    );
}

/// Sends `signal` (a `kill` signal name) and waits for the process to exit.
async fn stop_with(serve: &mut Child, signal: &str, log: &Path) -> ExitStatus {
    let sent = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(serve.id().to_string())
        .status()
        .expect("kill runs");
    assert!(sent.success(), "kill -{signal} failed");

    let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        if let Some(status) = serve.try_wait().expect("wait for serve") {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = serve.kill();
    panic!(
        "serve did not stop within {STOP_TIMEOUT:?} of {signal}; log:\n{}",
        read(log)
    );
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Log lines as JSON objects; a line that is not JSON fails the test.
fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|err| panic!("not a JSON log line ({err}): {line}"))
        })
        .collect()
}

fn has_message(lines: &[serde_json::Value], message: &str) -> bool {
    lines.iter().any(|line| line["message"] == message)
}

/// Serve transcodes an uploaded WAV through a worker machine, logs JSON without secrets, stops
/// on SIGTERM with exit code 0, and after a restart (stopped by SIGINT, Fly's default signal)
/// still has the finished job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_transcodes_stops_cleanly_and_keeps_jobs() {
    let backends = Backends::start().await;
    let api = backends.api();
    let http = reqwest::Client::new();

    let (mut serve, log) = backends.spawn_serve("serve-first.log");
    wait_healthy(&api, &mut serve, &log).await;

    let response = http
        .put(format!("{api}/v1/jobs/speech"))
        .body(upload_spec("speech", "    bitrateKbps: 64\n"))
        .send()
        .await
        .expect("apply");
    assert_eq!(response.status(), 201, "apply speech");
    let wav = std::fs::read(repo_root().join("samples/speech.wav")).expect("sample audio");
    upload(&api, "speech", wav).await;

    let job = wait_for_job(&api, "speech", JOB_TIMEOUT, |job| {
        job.status.phase.is_finished()
    })
    .await;
    assert_eq!(
        job.status.phase,
        Phase::Succeeded,
        "status: {:#?}",
        job.status
    );
    let output = job.status.output.clone().expect("output");
    assert_eq!(output.url, format!("s3://{BUCKET}/outputs/speech.mp3"));

    let stored = backends
        .root
        .path()
        .join("objects")
        .join(BUCKET)
        .join("outputs/speech.mp3");
    let mp3 = std::fs::read(&stored).expect("output object in the store");
    assert_eq!(mp3.len() as u64, output.bytes);
    let decoded = decode_mp3(mp3);
    assert_eq!(decoded.sample_rate, 22050);
    assert!(
        (decoded.seconds() - 4.0).abs() < 0.1,
        "decoded {} s",
        decoded.seconds()
    );

    let status = stop_with(&mut serve, "TERM", &log).await;
    assert_eq!(status.code(), Some(0), "log:\n{}", read(&log));
    let text = read(&log);
    let lines = json_lines(&text);
    assert!(has_message(&lines, "controller serving"), "{text}");
    assert!(has_message(&lines, "controller stopped"), "{text}");
    let store = backends.objects.settings();
    for secret in [
        FLY_TOKEN,
        "fm2_serve-test-token",
        store.secret_access_key.as_str(),
    ] {
        assert!(!text.contains(secret), "secret {secret:?} logged:\n{text}");
    }

    let (mut restarted, log) = backends.spawn_serve("serve-second.log");
    wait_healthy(&api, &mut restarted, &log).await;
    let job = wait_for_job(&api, "speech", JOB_TIMEOUT, |job| {
        job.status.phase.is_finished()
    })
    .await;
    assert_eq!(job.status.phase, Phase::Succeeded);
    assert_eq!(
        job.status
            .output
            .as_ref()
            .map(|output| output.sha256.clone()),
        Some(output.sha256.clone())
    );

    let status = stop_with(&mut restarted, "INT", &log).await;
    assert_eq!(status.code(), Some(0), "log:\n{}", read(&log));
    assert!(has_message(&json_lines(&read(&log)), "controller stopped"));

    backends.shutdown().await;
}
