//! The `transcoder` command line: verbs, their flags, and what each prints.

mod apply;
mod documents;
mod get;
mod serve;
mod up;

use std::path::PathBuf;

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
    Serve(serve::ServeArgs),
    /// Create or update jobs from spec files or directories.
    Apply(ApplyArgs),
    /// Show jobs.
    Get(GetArgs),
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
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Runs a command and returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Up(args) => up::run(args).await,
        Command::Serve(args) => serve::run(args).await,
        Command::Apply(args) => run_apply(args).await,
        Command::Get(args) => run_get(args).await,
    }
}

async fn run_apply(args: ApplyArgs) -> anyhow::Result<i32> {
    let client = ApiClient::new(&args.server.server);
    let report = apply::apply_paths(&client, &args.paths, args.recursive).await;
    let upload_failures = apply::upload_sources(&client, &args.upload, &report.upload_jobs).await;
    apply::report_waiting_uploads(&args.upload, &report.upload_jobs);
    Ok(if report.failures + upload_failures > 0 {
        1
    } else {
        0
    })
}

async fn run_get(args: GetArgs) -> anyhow::Result<i32> {
    let client = ApiClient::new(&args.server.server);
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
