//! `transcoder get --watch`: a line per job change, or live progress bars on a terminal.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use controller::client::ApiClient;
use controller::spec::TranscodeJob;
use controller::status::Phase;
use controller::watch::{WatchEvent, WatchEventKind};
use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::get::OutputFormat;

/// Delay before a broken watch stream is opened again.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Prints job changes until interrupted. Returns 1 when the stream cannot be opened.
pub async fn run(
    client: &ApiClient,
    selector: Option<&str>,
    name: Option<&str>,
    format: OutputFormat,
) -> i32 {
    let bars = matches!(format, OutputFormat::Table | OutputFormat::Wide)
        && std::io::stdout().is_terminal();
    let mut printer = if bars {
        Printer::Bars(ProgressBars::default())
    } else {
        Printer::Lines {
            format,
            last: HashMap::new(),
        }
    };

    loop {
        let stream = match client.watch(selector, name).await {
            Ok(stream) => stream,
            Err(err) => {
                eprintln!("error: {}", super::error_chain(&err));
                return 1;
            }
        };
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => printer.show(&event),
                Err(err) => {
                    eprintln!("warning: {}; reconnecting", super::error_chain(&err));
                    break;
                }
            }
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

enum Printer {
    /// One line per change; a job's line is printed only when it differs from its last one.
    Lines {
        format: OutputFormat,
        last: HashMap<String, String>,
    },
    Bars(ProgressBars),
}

impl Printer {
    fn show(&mut self, event: &WatchEvent) {
        match self {
            Printer::Lines { format, last } => {
                let line = match format {
                    OutputFormat::Json => serde_json::to_string(event).unwrap_or_default(),
                    OutputFormat::Yaml => {
                        format!("---\n{}", serde_yaml::to_string(event).unwrap_or_default())
                    }
                    OutputFormat::Table | OutputFormat::Wide => change_line(event),
                };
                let name = event.object.metadata.name.clone();
                if last.get(&name) != Some(&line) {
                    println!("{}", line.trim_end());
                    last.insert(name, line);
                }
            }
            Printer::Bars(bars) => bars.show(event),
        }
    }
}

/// `NAME  PHASE  attempt N  P%  DETAIL`, or `NAME  deleted`.
pub fn change_line(event: &WatchEvent) -> String {
    let job = &event.object;
    let name = &job.metadata.name;
    if event.kind == WatchEventKind::Deleted {
        return format!("{name:<20} deleted");
    }
    let status = &job.status;
    format!(
        "{name:<20} {:<10} attempt {}  {:>3.0}%  {}",
        status.phase.as_str(),
        status.attempts,
        status.progress * 100.0,
        detail(job)
    )
    .trim_end()
    .to_owned()
}

/// The output URL of a finished job, else the reason of its latest condition.
fn detail(job: &TranscodeJob) -> String {
    let status = &job.status;
    if job.metadata.deletion_timestamp.is_some() {
        return "being deleted".to_owned();
    }
    if status.phase == Phase::Succeeded {
        if let Some(output) = &status.output {
            return output.url.clone();
        }
    }
    status
        .conditions
        .iter()
        .max_by_key(|c| c.last_transition_time)
        .map(|c| format!("{}: {}", c.reason, c.message))
        .unwrap_or_default()
}

/// A progress bar per job on a terminal.
#[derive(Default)]
struct ProgressBars {
    multi: MultiProgress,
    bars: HashMap<String, ProgressBar>,
}

impl ProgressBars {
    fn show(&mut self, event: &WatchEvent) {
        let job = &event.object;
        let name = job.metadata.name.clone();
        let bar = self
            .bars
            .entry(name.clone())
            .or_insert_with(|| {
                let bar = self.multi.add(ProgressBar::new(100));
                let style =
                    ProgressStyle::with_template("{prefix:20} {bar:30.cyan/blue} {pos:>3}% {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar());
                bar.set_style(style);
                bar.set_prefix(name.clone());
                bar
            })
            .clone();

        if event.kind == WatchEventKind::Deleted {
            bar.abandon_with_message("deleted");
            self.bars.remove(&name);
            return;
        }
        let status = &job.status;
        bar.set_position((status.progress.clamp(0.0, 1.0) * 100.0).round() as u64);
        let message = format!("{} {}", status.phase.as_str(), detail(job));
        if status.phase.is_finished() {
            if status.phase == Phase::Succeeded {
                bar.set_position(100);
            }
            bar.finish_with_message(message);
        } else {
            bar.set_message(message);
        }
    }
}
