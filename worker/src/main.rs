//! Command-line entry point of `transcoder-worker`: `run` for job mode on a machine, and
//! `transcode` for converting a local file.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use protocol::{OutputFormat, EXIT_USAGE};
use worker::failure::classify_transcode;
use worker::job::{self, JobEnv};
use worker::source::Input;
use worker::transcode::transcode;

#[derive(Parser)]
#[command(name = "transcoder-worker", version, about = "Transcode audio to MP3")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one job attempt, configured by TRANSCODER_API_URL, TRANSCODER_JOB,
    /// TRANSCODER_ATTEMPT and TRANSCODER_TOKEN.
    Run,
    /// Transcode a local audio file to MP3 and print the result as JSON.
    Transcode {
        /// Input audio file; the format is detected from its content.
        input: PathBuf,
        /// Output MP3 file; overwritten if it exists.
        output: PathBuf,
        /// Constant bitrate in kbit/s (default 192).
        #[arg(long, conflicts_with = "vbr_quality")]
        bitrate: Option<u32>,
        /// LAME VBR quality, 0 (best) to 9, instead of a constant bitrate.
        #[arg(long)]
        vbr_quality: Option<u8>,
        /// Output sample rate in Hz (an MP3 rate); default: the source rate or the nearest MP3 rate.
        #[arg(long)]
        sample_rate: Option<u32>,
        /// Output channels, 1 or 2; default: the source's, at most 2.
        #[arg(long)]
        channels: Option<u8>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,symphonia=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run => run_job(),
        Command::Transcode {
            input,
            output,
            bitrate,
            vbr_quality,
            sample_rate,
            channels,
        } => {
            let format = OutputFormat {
                bitrate_kbps: bitrate,
                vbr_quality,
                sample_rate_hz: sample_rate,
                channels,
            };
            run_transcode(input, output, &format)
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn run_job() -> i32 {
    let env = match JobEnv::from_env() {
        Ok(env) => env,
        Err(err) => {
            tracing::error!(error = %err, "job mode needs the controller's environment");
            return EXIT_USAGE;
        }
    };
    // The async side only moves bytes and posts callbacks; decoding and encoding have their own
    // threads, so one runtime thread keeps memory lowest.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!(error = %err, "failed to start the async runtime");
            return protocol::EXIT_RETRYABLE;
        }
    };
    runtime.block_on(job::run(env))
}

fn run_transcode(input: PathBuf, output: PathBuf, format: &OutputFormat) -> i32 {
    match transcode_file(&input, &output, format) {
        Ok(code) => code,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "transcode failed");
            protocol::EXIT_RETRYABLE
        }
    }
}

fn transcode_file(input: &PathBuf, output: &PathBuf, format: &OutputFormat) -> anyhow::Result<i32> {
    let source =
        File::open(input).with_context(|| format!("failed to open input {}", input.display()))?;
    // Truncating the output would destroy an input that is the same file.
    if let (Ok(from), Ok(to)) = (input.canonicalize(), output.canonicalize()) {
        anyhow::ensure!(
            from != to,
            "input and output are the same file ({}); choose another output path",
            from.display()
        );
    }
    let target = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(output)
        .with_context(|| format!("failed to create output {}", output.display()))?;

    match transcode(Input::File(source), target, format) {
        Ok((_, result)) => {
            println!("{}", serde_json::to_string(&result)?);
            Ok(protocol::EXIT_SUCCEEDED)
        }
        Err(err) => {
            let failure = classify_transcode(&err);
            // Leave no partial MP3 behind that could be taken for a result.
            let _ = std::fs::remove_file(output);
            eprintln!(
                "error: {} ({}): {}",
                input.display(),
                failure.reason,
                failure.message
            );
            Ok(failure.exit_code())
        }
    }
}
