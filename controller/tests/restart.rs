//! Crash safety of `transcoder up`: a `kill -9` mid-job loses no job, and the unfinished one
//! completes after a restart with the same data directory.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use controller::status::Phase;
use support::{repo_root, sine_wav, upload, upload_spec, wait_for_job, worker_binary};

const TIMEOUT: Duration = Duration::from_secs(180);

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

fn spawn_up(port: u16, data_dir: &Path, log_name: &str) -> Child {
    let log = std::fs::File::create(data_dir.with_file_name(log_name)).expect("log file");
    Command::new(env!("CARGO_BIN_EXE_transcoder"))
        .args(["up", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--worker-bin")
        .arg(worker_binary())
        .current_dir(repo_root())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("transcoder up starts")
}

async fn wait_healthy(api: &str) {
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        if http
            .get(format!("{api}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("transcoder up at {api} did not become healthy; see the up-*.log files");
}

/// Killing `up` while a long job runs keeps both jobs; after a restart the finished one is
/// still Succeeded and the unfinished one completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_during_job_keeps_jobs_and_finishes_them() {
    let root = tempfile::tempdir().expect("tempdir");
    let data_dir = root.path().join("data");
    let port = free_port();
    let api = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();

    let mut first = spawn_up(port, &data_dir, "up-first.log");
    wait_healthy(&api).await;
    for (name, seconds) in [("short", 1), ("long", 240)] {
        let response = http
            .put(format!("{api}/v1/jobs/{name}"))
            .body(upload_spec(name, ""))
            .send()
            .await
            .expect("apply");
        assert_eq!(response.status(), 201, "apply {name}");
        upload(&api, name, sine_wav(44100, 2, seconds)).await;
    }
    wait_for_job(&api, "short", TIMEOUT, |job| {
        job.status.phase == Phase::Succeeded
    })
    .await;
    let running = wait_for_job(&api, "long", TIMEOUT, |job| {
        job.status.phase != Phase::Pending
    })
    .await;
    assert_eq!(
        running.status.phase,
        Phase::Running,
        "the long job must still run when the controller is killed"
    );

    first.kill().expect("kill -9 transcoder up");
    first.wait().expect("reap transcoder up");

    let mut second = spawn_up(port, &data_dir, "up-second.log");
    wait_healthy(&api).await;
    let short = wait_for_job(&api, "short", TIMEOUT, |_| true).await;
    let long = wait_for_job(&api, "long", TIMEOUT, |job| job.status.phase.is_finished()).await;

    assert_eq!(short.status.phase, Phase::Succeeded);
    assert_eq!(
        long.status.phase,
        Phase::Succeeded,
        "status: {:#?}",
        long.status
    );
    let output = long.status.output.expect("output of the long job");
    assert!(
        (output.duration_seconds - 240.0).abs() < 0.05,
        "duration {}",
        output.duration_seconds
    );

    second.kill().expect("stop transcoder up");
    second.wait().expect("reap transcoder up");
}
