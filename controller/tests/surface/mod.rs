//! Fixture of the user-surface tests: a local system with options, the `transcoder` CLI as a
//! process, and polling helpers.

#![allow(dead_code)]

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use controller::local::{ControllerOptions, LocalOptions, LocalSystem};

use crate::support::{fast_settings, worker_binary};

/// Starts the local system on loopback with `controller` options.
pub async fn start_with(data_dir: &Path, controller: ControllerOptions) -> LocalSystem {
    let options = LocalOptions {
        listen: "127.0.0.1:0".parse().expect("address"),
        data_dir: data_dir.to_path_buf(),
        machines_api_url: None,
        worker_bin: worker_binary(),
        reconciler: fast_settings(),
    };
    LocalSystem::start_with(options, controller)
        .await
        .expect("local system starts")
}

/// What a `transcoder` run printed and returned.
#[derive(Debug)]
pub struct CliRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliRun {
    fn from_output(output: Output) -> Self {
        Self {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// Runs `transcoder ARGS --server API` to completion, with `TRANSCODER_API_TOKEN` unset.
pub async fn transcoder(api: &str, args: &[&str]) -> CliRun {
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_transcoder"))
            .args(args)
            .args(["--server", api])
            .env_remove("TRANSCODER_API_TOKEN")
            .env_remove("TRANSCODER_SERVER")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("transcoder finishes within 120 s; a verb may be waiting forever")
    .expect("transcoder runs");
    CliRun::from_output(output)
}

/// Polls `check` every 100 ms until it returns `Some`, failing with `what` after `timeout`.
pub async fn poll<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Names of the stored jobs that are not being deleted.
pub async fn job_names(api: &str, token: Option<&str>) -> Vec<String> {
    let mut request = reqwest::Client::new().get(format!("{api}/v1/jobs"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let list: serde_json::Value = request
        .send()
        .await
        .expect("list request")
        .json()
        .await
        .expect("list JSON");
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|job| job["metadata"]["deletionTimestamp"].is_null())
        .map(|job| {
            job["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

/// A suspended upload spec with labels, which never starts a machine.
pub fn suspended_spec(name: &str, labels: &str, bitrate: u32) -> String {
    format!(
        "apiVersion: transcoder/v1\nkind: TranscodeJob\nmetadata:\n  name: {name}\n  labels: {{{labels}}}\n\
         spec:\n  source:\n    upload: true\n  output:\n    codec: mp3\n    bitrateKbps: {bitrate}\n  suspend: true\n"
    )
}
