//! `transcoder`: the command line of the transcoding controller.

mod cli;

use clap::Parser;
use controller::config::{LogFormat, ENV_LOG_FORMAT};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    exit_quietly_on_closed_stdout();
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

/// Ends the process with 141 (128 + SIGPIPE), as a shell tool would, when stdout is closed
/// early, for example by `transcoder get -o json | head`. Rust ignores SIGPIPE, so `println!`
/// panics on the broken pipe instead; every other panic keeps the default report.
fn exit_quietly_on_closed_stdout() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default_hook(info);
    }));
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
