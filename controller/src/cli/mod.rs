//! The `transcoder` command line: verbs, their flags, and what each prints.

mod apply;
mod delete;
mod diff;
mod get;
mod serve;
mod up;
mod wait;
mod watch;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use controller::client::ApiClient;

/// Address `up` listens on and clients talk to by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Declarative audio transcoding on Fly Machines.
#[derive(Debug, Parser)]
#[command(name = "transcoder", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run everything on this machine: object store, local machines, controller and API.
    Up(up::UpArgs),
    /// Run the controller against Fly's Machines API and an S3-compatible store.
    Serve(Box<serve::ServeArgs>),
    /// Create or update jobs from spec files or directories.
    Apply(ApplyArgs),
    /// Show what applying spec files would change. Exit code 0: no changes, 1: changes,
    /// 2: errors.
    Diff(DiffArgs),
    /// Delete jobs by name or by the spec files that define them.
    Delete(DeleteArgs),
    /// Show jobs.
    Get(GetArgs),
    /// Wait until a job reaches a phase. Exit code 0: reached, 1: the job finished in another
    /// phase or was deleted, 2: timeout or error.
    Wait(WaitArgs),
}

#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Base URL of the transcoder API.
    #[arg(
        long,
        default_value = "http://127.0.0.1:8080",
        env = "TRANSCODER_SERVER"
    )]
    pub server: String,
    /// Bearer token of the API, when the server requires one.
    #[arg(long, env = "TRANSCODER_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl ServerArgs {
    pub fn client(&self) -> ApiClient {
        ApiClient::new(&self.server).with_token(self.token.clone())
    }
}

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// Spec files or directories (.yaml, .yml, .json; multi-document YAML allowed).
    #[arg(short = 'f', long = "filename", required = true)]
    pub paths: Vec<PathBuf>,
    /// Also read subdirectories.
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// Local source for an `upload: true` job: NAME=FILE, or FILE when one job takes an upload.
    #[arg(long)]
    pub upload: Vec<apply::UploadArg>,
    /// Show what each apply would do (created, configured, unchanged) and store nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Check every document, locally and with the server, and apply none if any is invalid.
    #[arg(long)]
    pub atomic: bool,
    /// Delete jobs that match --selector but are not among the applied documents.
    #[arg(long, requires = "selector")]
    pub prune: bool,
    /// Label selector that scopes --prune, e.g. show=weekly.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Prune even when no document is applied or none of the matching jobs is among them.
    #[arg(long, requires = "prune")]
    pub force: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// Spec files or directories.
    #[arg(short = 'f', long = "filename", required = true)]
    pub paths: Vec<PathBuf>,
    /// Also read subdirectories.
    #[arg(short = 'R', long)]
    pub recursive: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// Names of the jobs to delete.
    #[arg(required_unless_present = "paths")]
    pub names: Vec<String>,
    /// Spec files or directories whose jobs to delete.
    #[arg(short = 'f', long = "filename")]
    pub paths: Vec<PathBuf>,
    /// Also read subdirectories.
    #[arg(short = 'R', long)]
    pub recursive: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, clap::Args)]
pub struct WaitArgs {
    /// The job to wait for.
    pub name: String,
    /// Condition to wait for: phase=Pending, phase=Running, phase=Succeeded or phase=Failed.
    #[arg(long = "for", default_value = "phase=Succeeded")]
    pub wait_for: wait::WaitFor,
    /// How long to wait, e.g. 30s, 10m or 1h.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// A job name; all jobs when absent.
    pub name: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: get::OutputFormat,
    /// Label selector, e.g. show=weekly,tier!=free.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Print a line per job and then one per change until interrupted; on a terminal each job
    /// gets a progress bar instead.
    #[arg(short = 'w', long)]
    pub watch: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Runs a command and returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Up(args) => up::run(args).await,
        Command::Serve(args) => serve::run(*args).await,
        Command::Apply(args) => run_apply(args).await,
        Command::Diff(args) => {
            let client = args.server.client();
            Ok(diff::run(&client, &args.paths, args.recursive).await)
        }
        Command::Delete(args) => {
            let client = args.server.client();
            Ok(delete::run(&client, &args.names, &args.paths, args.recursive).await)
        }
        Command::Get(args) => run_get(args).await,
        Command::Wait(args) => {
            let client = args.server.client();
            let phase = args.wait_for.phase;
            Ok(wait::run(&client, &args.name, phase, args.timeout).await)
        }
    }
}

async fn run_apply(args: ApplyArgs) -> anyhow::Result<i32> {
    let client = args.server.client();
    let options = apply::ApplyOptions {
        recursive: args.recursive,
        dry_run: args.dry_run,
        atomic: args.atomic,
        prune: args
            .prune
            .then(|| args.selector.clone())
            .flatten()
            .map(|selector| apply::PruneOptions {
                selector,
                force: args.force,
            }),
    };
    let report = apply::apply_paths(&client, &args.paths, &options).await;
    if args.dry_run {
        return Ok(i32::from(report.failures > 0));
    }
    let upload_failures = apply::upload_sources(&client, &args.upload, &report.upload_jobs).await;
    apply::report_waiting_uploads(&args.upload, &report);
    Ok(if report.failures + upload_failures > 0 {
        1
    } else {
        0
    })
}

async fn run_get(args: GetArgs) -> anyhow::Result<i32> {
    let client = args.server.client();
    if args.watch {
        let name = args.name.as_deref();
        return Ok(watch::run(&client, args.selector.as_deref(), name, args.output).await);
    }
    let result = match &args.name {
        Some(name) => client.get(name).await.map(|job| vec![job]),
        None => client.list(args.selector.as_deref()).await,
    };
    let jobs = match result {
        Ok(jobs) => jobs,
        Err(err) => {
            eprintln!("error: {}", error_chain(&err));
            return Ok(1);
        }
    };

    if jobs.is_empty() {
        eprintln!("no jobs found");
        return Ok(0);
    }
    if let Err(message) = get::print_jobs(&jobs, args.output, args.name.is_some()) {
        eprintln!("error: {message}");
        return Ok(1);
    }
    Ok(0)
}

/// Formats an error with its causes: `a: b: c`.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
