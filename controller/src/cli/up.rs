//! `transcoder up`: the whole system on this machine, with specs applied and followed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use controller::client::ApiClient;
use controller::local::{ControllerOptions, LocalOptions, LocalSystem};
use controller::objectstore::ObjectUrl;
use controller::reconciler::ReconcilerSettings;
use controller::spec::TranscodeJob;
use controller::status::Phase;

use super::apply::{apply_paths, report_waiting_uploads, upload_sources, ApplyOptions, UploadArg};

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Address of the HTTP API.
    #[arg(long, default_value = super::DEFAULT_LISTEN, env = "TRANSCODER_LISTEN")]
    pub listen: SocketAddr,
    /// Directory for the job database, stored objects and machine logs.
    #[arg(long, default_value = "transcoder-data", env = "TRANSCODER_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Spec files or directories to apply once the system is up.
    #[arg(long, short = 'f')]
    pub apply: Vec<PathBuf>,
    /// Local source for an `upload: true` job: NAME=FILE, or FILE when one job takes an upload.
    #[arg(long)]
    pub upload: Vec<UploadArg>,
    /// Use this Fly Machines API server instead of the local one.
    #[arg(long, env = "TRANSCODER_MACHINES_API_URL")]
    pub machines_api_url: Option<String>,
    /// The `transcoder-worker` binary that local machines run. Default: next to this binary.
    #[arg(long, env = "TRANSCODER_WORKER_BIN")]
    pub worker_bin: Option<PathBuf>,
    /// Keep the jobs equal to the spec files of this directory (GitOps); see GET /v1/sync.
    #[arg(long, env = "TRANSCODER_SYNC_DIR")]
    pub sync_dir: Option<PathBuf>,
    /// Time between full passes over --sync-dir; file changes trigger a pass at once.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub sync_interval: Duration,
    /// Bearer token that the user endpoints require. Required when --listen is not a loopback
    /// address.
    #[arg(long, env = "TRANSCODER_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
}

pub async fn run(args: UpArgs) -> anyhow::Result<i32> {
    let api_token = args.api_token.clone().filter(|token| !token.is_empty());
    if !args.listen.ip().is_loopback() && api_token.is_none() {
        eprintln!(
            "error: --listen {} is reachable from other hosts; set an API token with --api-token or TRANSCODER_API_TOKEN",
            args.listen
        );
        return Ok(2);
    }

    let controller = ControllerOptions {
        api_token: api_token.clone(),
        sync_dir: args.sync_dir.clone(),
        sync_interval: Some(args.sync_interval),
    };
    let options = LocalOptions {
        listen: args.listen,
        data_dir: args.data_dir.clone(),
        machines_api_url: args.machines_api_url.clone(),
        worker_bin: args.worker_bin.clone().unwrap_or_else(default_worker_bin),
        reconciler: local_settings(),
    };
    let system = LocalSystem::start_with(options, controller).await?;
    println!(
        "transcoder is up: API at {}, data in {}",
        system.api_url(),
        args.data_dir.display()
    );

    let mut exit_code = 0;
    if !args.apply.is_empty() {
        let client = ApiClient::new(&system.api_url()).with_token(api_token);
        let report = apply_paths(&client, &args.apply, &ApplyOptions::default()).await;
        let upload_failures = upload_sources(&client, &args.upload, &report.upload_jobs).await;
        report_waiting_uploads(&args.upload, &report);
        if report.failures + upload_failures > 0 {
            exit_code = 1;
        }

        tokio::select! {
            () = follow_jobs(&client, &system, &report.applied) => {
                println!("all applied jobs finished; serving until interrupted (Ctrl-C)");
            }
            () = super::shutdown_signal() => {
                system.shutdown().await;
                return Ok(exit_code);
            }
        }
    }

    super::shutdown_signal().await;
    println!("shutting down");
    system.shutdown().await;
    Ok(exit_code)
}

/// Reconciler timing for one machine: quick polls, short backoff.
fn local_settings() -> ReconcilerSettings {
    ReconcilerSettings {
        poll_interval: Duration::from_secs(1),
        resync_interval: Duration::from_secs(15),
        backoff_base: Duration::from_secs(2),
        backoff_max: Duration::from_secs(60),
        max_concurrent_machines: 4,
        machine_grace: Duration::from_secs(10),
        ..ReconcilerSettings::default()
    }
}

fn default_worker_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.with_file_name(format!("transcoder-worker{}", std::env::consts::EXE_SUFFIX))
}

/// Prints each job's phase as it changes until all of `names` are finished.
async fn follow_jobs(client: &ApiClient, system: &LocalSystem, names: &[String]) {
    let mut last: BTreeMap<String, (Phase, u32)> = BTreeMap::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    loop {
        ticker.tick().await;
        let jobs = match client.list(None).await {
            Ok(jobs) => jobs,
            Err(err) => {
                eprintln!(
                    "warning: failed to read job status: {}",
                    super::error_chain(&err)
                );
                continue;
            }
        };

        let watched: Vec<&TranscodeJob> = jobs
            .iter()
            .filter(|job| names.contains(&job.metadata.name))
            .collect();
        for job in &watched {
            let state = (job.status.phase, job.status.attempts);
            if last.get(&job.metadata.name) != Some(&state) {
                println!("{}", describe(job, system));
                last.insert(job.metadata.name.clone(), state);
            }
        }
        if watched.len() == names.len() && watched.iter().all(|job| job.status.phase.is_finished())
        {
            return;
        }
    }
}

fn describe(job: &TranscodeJob, system: &LocalSystem) -> String {
    let name = &job.metadata.name;
    let status = &job.status;
    let reason = status
        .conditions
        .iter()
        .max_by_key(|c| c.last_transition_time);
    match status.phase {
        Phase::Succeeded => {
            let Some(output) = &status.output else {
                return format!("{name:<16} Succeeded");
            };
            let local = ObjectUrl::parse(&output.url)
                .map(|o| system.object_path(&o.bucket, &o.key).display().to_string())
                .unwrap_or_default();
            format!(
                "{name:<16} Succeeded  {:.2} s, {} Hz, {} ch, {} bytes -> {} (file {local})",
                output.duration_seconds,
                output.sample_rate_hz,
                output.channels,
                output.bytes,
                output.url
            )
        }
        Phase::Failed => format!(
            "{name:<16} Failed     {}",
            reason
                .map(|c| format!("{}: {}", c.reason, c.message))
                .unwrap_or_default()
        ),
        Phase::Running => format!(
            "{name:<16} Running    attempt {} on machine {}",
            status.attempts,
            status.machine_id.as_deref().unwrap_or("-")
        ),
        Phase::Pending => format!(
            "{name:<16} Pending    {}",
            reason.map(|c| c.message.clone()).unwrap_or_default()
        ),
    }
}
