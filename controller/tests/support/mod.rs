//! Shared fixture of the controller's process-level tests: the worker binary, a running
//! local system, HTTP helpers, and MP3 inspection.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use controller::local::{LocalOptions, LocalSystem};
use controller::machine_template::AttemptRef;
use controller::reconciler::ReconcilerSettings;
use controller::spec::TranscodeJob;
use fly_machines::local::{LocalMachines, LocalMachinesConfig};
use fly_machines::types::{Machine, MachineState};
use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;

/// Repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Builds `transcoder-worker` with the same profile as this test and returns its path.
pub fn worker_binary() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = std::process::Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "worker",
                "--bin",
                "transcoder-worker",
            ])
            .current_dir(repo_root())
            .status()
            .expect("cargo must run to build transcoder-worker");
        assert!(status.success(), "building transcoder-worker failed");

        // The test binary sits in target/<profile>/deps; the worker in target/<profile>.
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target profile directory");
        let worker = profile_dir.join("transcoder-worker");
        assert!(
            worker.is_file(),
            "worker binary missing at {}",
            worker.display()
        );
        worker
    })
    .clone()
}

/// Reconciler timing for tests: fast polls and short backoff.
pub fn fast_settings() -> ReconcilerSettings {
    ReconcilerSettings {
        poll_interval: Duration::from_millis(200),
        resync_interval: Duration::from_secs(5),
        backoff_base: Duration::from_millis(200),
        backoff_max: Duration::from_secs(2),
        machine_grace: Duration::from_secs(5),
        ..ReconcilerSettings::default()
    }
}

/// Starts the whole local system on loopback with its data under `data_dir`.
pub async fn start_system(data_dir: &Path) -> LocalSystem {
    start_system_with(data_dir, None).await
}

/// Starts the local system against the Machines API at `machines_api_url`, or its own one.
pub async fn start_system_with(data_dir: &Path, machines_api_url: Option<String>) -> LocalSystem {
    start_system_configured(data_dir, machines_api_url, fast_settings()).await
}

/// Starts the local system with the given reconciler settings.
pub async fn start_system_configured(
    data_dir: &Path,
    machines_api_url: Option<String>,
    reconciler: ReconcilerSettings,
) -> LocalSystem {
    let options = LocalOptions {
        listen: "127.0.0.1:0".parse().expect("address"),
        data_dir: data_dir.to_path_buf(),
        machines_api_url,
        worker_bin: worker_binary(),
        reconciler,
    };
    LocalSystem::start(options)
        .await
        .expect("local system starts")
}

/// Starts a local Machines API server of its own, so a test can switch its faults on and
/// read its request log.
pub async fn start_machines(log_dir: &Path) -> LocalMachines {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let config = LocalMachinesConfig {
        app: controller::local::LOCAL_APP.to_owned(),
        worker_bin: worker_binary(),
        log_dir: log_dir.to_path_buf(),
    };
    LocalMachines::start(listener, config)
        .await
        .expect("local machines start")
}

/// Lists every machine on the server, destroyed ones included.
pub async fn all_machines(machines_url: &str) -> Vec<Machine> {
    let url = format!(
        "{machines_url}/apps/{}/machines?include_deleted=true",
        controller::local::LOCAL_APP
    );
    reqwest::get(&url)
        .await
        .expect("list machines")
        .json()
        .await
        .expect("machines JSON")
}

/// A spec whose source is an upload.
pub fn upload_spec(name: &str, extra_output: &str) -> String {
    format!(
        "apiVersion: transcoder/v1\nkind: TranscodeJob\nmetadata:\n  name: {name}\nspec:\n  source:\n    upload: true\n  \
         output:\n    codec: mp3\n{extra_output}"
    )
}

/// Polls the job until `done` holds, failing with the last status seen after `timeout`.
pub async fn wait_for_job(
    api: &str,
    name: &str,
    timeout: Duration,
    done: impl Fn(&TranscodeJob) -> bool,
) -> TranscodeJob {
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        if let Ok(response) = http.get(format!("{api}/v1/jobs/{name}")).send().await {
            if let Ok(job) = response.json::<TranscodeJob>().await {
                if done(&job) {
                    return job;
                }
                last = Some(job);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "job {name} did not reach the expected state within {timeout:?}; last status: {:#?}",
        last.map(|job| job.status)
    );
}

/// Sends the `upload-url` request and PUTs `bytes` exactly as the response says.
pub async fn upload(api: &str, name: &str, bytes: Vec<u8>) {
    let http = reqwest::Client::new();
    let target: serde_json::Value = http
        .post(format!("{api}/v1/jobs/{name}/upload-url"))
        .send()
        .await
        .expect("upload-url request")
        .json()
        .await
        .expect("upload-url JSON");
    assert_eq!(target["method"], "PUT");

    let mut request = http.put(target["url"].as_str().expect("url"));
    for (header, value) in target["headers"].as_object().expect("headers") {
        request = request.header(header, value.as_str().expect("header value"));
    }
    let response = request.body(bytes).send().await.expect("upload PUT");
    assert!(
        response.status().is_success(),
        "upload rejected: {}",
        response.status()
    );
}

/// Frames, sample rate and channels of a decoded audio stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decoded {
    pub frames: u64,
    pub sample_rate: u32,
    pub channels: usize,
}

impl Decoded {
    pub fn seconds(&self) -> f64 {
        self.frames as f64 / f64::from(self.sample_rate)
    }
}

/// Decodes an MP3 with symphonia, which trims the encoder delay and padding that the LAME tag
/// states.
pub fn decode_mp3(bytes: Vec<u8>) -> Decoded {
    let stream = MediaSourceStream::new(Box::new(std::io::Cursor::new(bytes)), Default::default());
    let mut hint = Hint::new();
    hint.with_extension("mp3");
    let mut format = symphonia::default::get_probe()
        .probe(
            &hint,
            stream,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .expect("output is a readable MP3");
    let track = format.default_track(TrackType::Audio).expect("audio track");
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .expect("audio parameters")
        .clone();
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(&params, &AudioDecoderOptions::default())
        .expect("MP3 decoder");

    let mut decoded = Decoded {
        frames: 0,
        sample_rate: 0,
        channels: 0,
    };
    while let Some(packet) = format.next_packet().expect("MP3 packet reads") {
        let buffer = decoder.decode(&packet).expect("MP3 packet decodes");
        decoded.sample_rate = buffer.spec().rate();
        decoded.channels = buffer.spec().channels().count();
        decoded.frames += buffer.frames() as u64;
    }
    decoded
}

/// Samples in one MP3 frame at `sample_rate`: 1152 for MPEG-1, 576 for MPEG-2 and 2.5.
pub fn mp3_frame_samples(sample_rate: u32) -> u64 {
    if sample_rate >= 32000 {
        1152
    } else {
        576
    }
}

/// A 16-bit PCM WAV of `seconds` of a 440 Hz sine in every channel.
pub fn sine_wav(sample_rate: u32, channels: u16, seconds: u32) -> Vec<u8> {
    let frames = sample_rate * seconds;
    let mut data = Vec::with_capacity(frames as usize * usize::from(channels) * 2);
    for n in 0..frames {
        let phase = 2.0 * std::f64::consts::PI * 440.0 * f64::from(n) / f64::from(sample_rate);
        let sample = ((phase.sin() * 12000.0) as i16).to_le_bytes();
        for _ in 0..channels {
            data.extend_from_slice(&sample);
        }
    }

    let block_align = channels * 2;
    let mut file = Vec::with_capacity(44 + data.len());
    file.extend_from_slice(b"RIFF");
    file.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    file.extend_from_slice(b"WAVEfmt ");
    file.extend_from_slice(&16u32.to_le_bytes());
    file.extend_from_slice(&1u16.to_le_bytes());
    file.extend_from_slice(&channels.to_le_bytes());
    file.extend_from_slice(&sample_rate.to_le_bytes());
    file.extend_from_slice(&(sample_rate * u32::from(block_align)).to_le_bytes());
    file.extend_from_slice(&block_align.to_le_bytes());
    file.extend_from_slice(&16u16.to_le_bytes());
    file.extend_from_slice(b"data");
    file.extend_from_slice(&(data.len() as u32).to_le_bytes());
    file.extend_from_slice(&data);
    file
}

/// Returns a loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// Starts `transcoder up` as a process, logging to `log_name` beside `data_dir`, against its
/// own Machines API or the one at `machines_api_url`.
pub fn spawn_up(
    port: u16,
    data_dir: &Path,
    machines_api_url: Option<&str>,
    log_name: &str,
) -> Child {
    let log = std::fs::File::create(data_dir.with_file_name(log_name)).expect("log file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_transcoder"));
    command
        .args(["up", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--worker-bin")
        .arg(worker_binary());
    if let Some(url) = machines_api_url {
        command.args(["--machines-api-url", url]);
    }
    command
        .current_dir(repo_root())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("transcoder up starts")
}

/// Polls `/healthz` until the API responds.
pub async fn wait_healthy(api: &str) {
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

/// Fails when any attempt, identified by job uid, generation and attempt number, has more
/// than one machine, destroyed ones included.
pub async fn assert_one_machine_per_attempt(machines_url: &str) {
    let mut per_attempt: BTreeMap<(String, u64, u32), Vec<String>> = BTreeMap::new();
    for machine in all_machines(machines_url).await {
        let owner = AttemptRef::of(&machine).expect("every machine carries attempt metadata");
        per_attempt
            .entry((owner.uid, owner.generation, owner.attempt))
            .or_default()
            .push(machine.id);
    }
    for (attempt, ids) in &per_attempt {
        assert_eq!(ids.len(), 1, "attempt {attempt:?} has machines {ids:?}");
    }
}

/// Polls until every machine is destroyed; machines auto-destroy a moment after they exit.
pub async fn assert_no_machine_left(machines_url: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let live: Vec<(String, MachineState)> = all_machines(machines_url)
            .await
            .into_iter()
            .filter(|machine| machine.state != MachineState::Destroyed)
            .map(|machine| (machine.id, machine.state))
            .collect();
        if live.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "machines left behind: {live:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
