//! `transcoder`: the command line of the transcoding controller.

mod cli;

use clap::Parser;
use controller::config::{LogFormat, ENV_LOG_FORMAT};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    init_tracing();

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: failed to start the async runtime: {err}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => std::process::ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(err) => {
            let causes: Vec<String> = err.chain().map(ToString::to_string).collect();
            eprintln!("error: {}", causes.join(": "));
            std::process::ExitCode::from(1)
        }
    }
}

/// Logs go to stderr; `RUST_LOG` sets the filter and `TRANSCODER_LOG_FORMAT=json` switches to
/// JSON lines with the fields of the enclosing spans. An unknown format falls back to text with a
/// warning here, and `serve` rejects it as a configuration problem.
fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("warn,controller=info,transcoder=info,fly_machines=info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);

    let requested = std::env::var(ENV_LOG_FORMAT).ok();
    match LogFormat::parse(requested.as_deref()) {
        Ok(LogFormat::Json) => builder.json().flatten_event(true).init(),
        Ok(LogFormat::Text) => builder.init(),
        Err(message) => {
            builder.init();
            tracing::warn!("{ENV_LOG_FORMAT}: {message}; logging as text");
        }
    }
}
