//! Benchmark: many jobs applied at once against the local Machines API, with the controller
//! (`transcoder up`) in its own process.
//!
//! Prints the time to finish against the lower bound that the create rate limit and the
//! machine concurrency set, the Machines API calls per job, and the controller's peak memory.
//!
//! Run: `cargo bench -p controller --bench many_jobs -- [JOBS]` (default 1000 jobs).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fly_machines::client::RateLimits;
use fly_machines::local::{LocalMachines, LocalMachinesConfig};

fn main() -> anyhow::Result<()> {
    let jobs: usize = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(1000);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run(jobs))
}

async fn run(jobs: usize) -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let worker = build_worker()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let machines = LocalMachines::start(
        listener,
        LocalMachinesConfig {
            app: controller::local::LOCAL_APP.to_owned(),
            worker_bin: worker.clone(),
            log_dir: root.path().join("machines"),
        },
    )
    .await?;

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let api = format!("http://127.0.0.1:{port}");
    let mut controller = Command::new(env!("CARGO_BIN_EXE_transcoder"))
        .args([
            "up",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--machines-api-url",
            &machines.base_url(),
        ])
        .arg("--data-dir")
        .arg(root.path().join("data"))
        .arg("--worker-bin")
        .arg(&worker)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(root.path().join("up.log"))?)
        .spawn()?;
    wait_healthy(&api).await?;

    let wav = sine_wav(22050, 1, 1);
    let started = Instant::now();
    submit_all(&api, jobs, &wav).await?;
    let submitted = started.elapsed();
    let finished = wait_all_finished(&api, jobs).await?;
    let elapsed = started.elapsed();

    let peak_kib = peak_memory_kib(controller.id())?;
    let calls = machines.request_log().len();
    controller.kill()?;
    controller.wait()?;
    machines.shutdown().await;

    report(jobs, submitted, elapsed, finished, calls, peak_kib);
    Ok(())
}

fn report(
    jobs: usize,
    submitted: Duration,
    elapsed: Duration,
    succeeded: usize,
    calls: usize,
    peak_kib: u64,
) {
    let limits = RateLimits::default();
    // Every job needs one create; the limiter lets a burst through and then one per period.
    // Machine concurrency adds nothing here: each worker finishes well within that period.
    let bound = (jobs as f64 - f64::from(limits.create_burst)).max(0.0)
        / f64::from(limits.create_per_second);
    println!("jobs:                     {jobs} ({succeeded} succeeded)");
    println!("applied and uploaded in:  {:.1} s", submitted.as_secs_f64());
    println!("finished in:              {:.1} s", elapsed.as_secs_f64());
    println!(
        "lower bound:              {bound:.1} s (creates at {}/s after a burst of {})",
        limits.create_per_second, limits.create_burst
    );
    println!(
        "ratio to the bound:       {:.2}x",
        elapsed.as_secs_f64() / bound.max(f64::EPSILON)
    );
    println!(
        "Machines API calls:       {calls} ({:.1} per job)",
        calls as f64 / jobs as f64
    );
    println!(
        "controller peak memory:   {:.1} MiB (VmHWM of transcoder up)",
        peak_kib as f64 / 1024.0
    );
}

async fn submit_all(api: &str, jobs: usize, wav: &[u8]) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    for n in 0..jobs {
        let name = format!("bench-{n}");
        let spec = format!(
            "apiVersion: transcoder/v1\nkind: TranscodeJob\nmetadata: {{name: {name}}}\n\
             spec: {{source: {{upload: true}}, output: {{codec: mp3, bitrateKbps: 64}}}}\n"
        );
        http.put(format!("{api}/v1/jobs/{name}"))
            .body(spec)
            .send()
            .await?
            .error_for_status()?;
        let target: serde_json::Value = http
            .post(format!("{api}/v1/jobs/{name}/upload-url"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let url = target["url"].as_str().unwrap_or_default();
        http.put(url)
            .body(wav.to_vec())
            .send()
            .await?
            .error_for_status()?;
    }
    Ok(())
}

/// Polls the job list until every job is finished; returns how many succeeded.
async fn wait_all_finished(api: &str, jobs: usize) -> anyhow::Result<usize> {
    let http = reqwest::Client::new();
    loop {
        let list: serde_json::Value = http
            .get(format!("{api}/v1/jobs"))
            .send()
            .await?
            .json()
            .await?;
        let items = list["items"].as_array().cloned().unwrap_or_default();
        let phase = |item: &serde_json::Value| {
            item["status"]["phase"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        };
        let finished = items
            .iter()
            .filter(|item| matches!(phase(item).as_str(), "Succeeded" | "Failed"))
            .count();
        if finished >= jobs {
            return Ok(items
                .iter()
                .filter(|item| phase(item) == "Succeeded")
                .count());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn wait_healthy(api: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if reqwest::get(format!("{api}/healthz"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("transcoder up at {api} did not become healthy")
}

/// Builds `transcoder-worker` in release mode and returns its path.
fn build_worker() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "-p",
            "worker",
            "--bin",
            "transcoder-worker",
        ])
        .current_dir(root)
        .status()?;
    anyhow::ensure!(status.success(), "building transcoder-worker failed");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    Ok(target.join("release").join("transcoder-worker"))
}

fn peak_memory_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .unwrap_or("VmHWM: 0 kB");
    Ok(line
        .split_whitespace()
        .nth(1)
        .and_then(|value| value.parse().ok())
        .unwrap_or(0))
}

/// A 16-bit PCM WAV of `seconds` of a 440 Hz sine.
fn sine_wav(sample_rate: u32, channels: u16, seconds: u32) -> Vec<u8> {
    let frames = sample_rate * seconds;
    let mut data = Vec::new();
    for n in 0..frames {
        let phase = 2.0 * std::f64::consts::PI * 440.0 * f64::from(n) / f64::from(sample_rate);
        let sample = ((phase.sin() * 12000.0) as i16).to_le_bytes();
        (0..channels).for_each(|_| data.extend_from_slice(&sample));
    }
    let block_align = channels * 2;
    let mut file = b"RIFF".to_vec();
    file.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    file.extend_from_slice(b"WAVEfmt ");
    for field in [
        16u32.to_le_bytes().to_vec(),
        1u16.to_le_bytes().to_vec(),
        channels.to_le_bytes().to_vec(),
    ] {
        file.extend_from_slice(&field);
    }
    file.extend_from_slice(&sample_rate.to_le_bytes());
    file.extend_from_slice(&(sample_rate * u32::from(block_align)).to_le_bytes());
    file.extend_from_slice(&block_align.to_le_bytes());
    file.extend_from_slice(&16u16.to_le_bytes());
    file.extend_from_slice(b"data");
    file.extend_from_slice(&(data.len() as u32).to_le_bytes());
    file.extend_from_slice(&data);
    file
}
