//! `transcoder get`: jobs as a table, YAML or JSON.

use chrono::Utc;
use controller::spec::TranscodeJob;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// A table with one job per line.
    Table,
    /// The table with more columns.
    Wide,
    Yaml,
    Json,
}

pub fn print_jobs(jobs: &[TranscodeJob], format: OutputFormat, single: bool) -> Result<(), String> {
    match format {
        OutputFormat::Json if single => print_json(&jobs[0]),
        OutputFormat::Json => print_json(&serde_json::json!({ "items": jobs })),
        OutputFormat::Yaml if single => print_yaml(&jobs[0]),
        OutputFormat::Yaml => print_yaml(&serde_json::json!({ "items": jobs })),
        OutputFormat::Table | OutputFormat::Wide => {
            print!("{}", table(jobs, format == OutputFormat::Wide));
            Ok(())
        }
    }
}

fn print_json(value: &impl serde::Serialize) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|err| format!("failed to encode JSON: {err}"))?;
    println!("{text}");
    Ok(())
}

fn print_yaml(value: &impl serde::Serialize) -> Result<(), String> {
    let text =
        serde_yaml::to_string(value).map_err(|err| format!("failed to encode YAML: {err}"))?;
    print!("{text}");
    Ok(())
}

/// Renders jobs as aligned columns.
pub fn table(jobs: &[TranscodeJob], wide: bool) -> String {
    let mut rows = vec![header(wide)];
    rows.extend(jobs.iter().map(|job| row(job, wide)));

    let columns = rows[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|row| row[c].len()).max().unwrap_or(0))
        .collect();
    let mut text = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| format!("{cell:<width$}", width = widths[c]))
            .collect();
        text.push_str(cells.join("   ").trim_end());
        text.push('\n');
    }
    text
}

fn header(wide: bool) -> Vec<String> {
    let mut columns = vec![
        "NAME", "PHASE", "ATTEMPTS", "PROGRESS", "DURATION", "AGE", "OUTPUT",
    ];
    if wide {
        columns.extend(["MACHINE", "REASON"]);
    }
    columns.into_iter().map(str::to_owned).collect()
}

fn row(job: &TranscodeJob, wide: bool) -> Vec<String> {
    let status = &job.status;
    let duration = status
        .output
        .as_ref()
        .map(|o| format!("{:.2}s", o.duration_seconds))
        .unwrap_or_else(|| "-".into());
    let output = status
        .output
        .as_ref()
        .map(|o| o.url.clone())
        .unwrap_or_else(|| "-".into());
    let age = job
        .metadata
        .creation_timestamp
        .map(|t| human_age(Utc::now() - t))
        .unwrap_or_else(|| "-".into());

    let mut cells = vec![
        job.metadata.name.clone(),
        status.phase.as_str().to_owned(),
        status.attempts.to_string(),
        format!("{:.0}%", status.progress * 100.0),
        duration,
        age,
        output,
    ];
    if wide {
        cells.push(status.machine_id.clone().unwrap_or_else(|| "-".into()));
        let reason = status
            .conditions
            .iter()
            .max_by_key(|c| c.last_transition_time)
            .map(|c| c.reason.clone());
        cells.push(reason.unwrap_or_else(|| "-".into()));
    }
    cells
}

fn human_age(age: chrono::Duration) -> String {
    let seconds = age.num_seconds().max(0);
    match seconds {
        0..=119 => format!("{seconds}s"),
        120..=7199 => format!("{}m", seconds / 60),
        7200..=172_799 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_age_picks_a_unit() {
        assert_eq!(human_age(chrono::Duration::seconds(5)), "5s");
        assert_eq!(human_age(chrono::Duration::seconds(600)), "10m");
        assert_eq!(human_age(chrono::Duration::hours(5)), "5h");
        assert_eq!(human_age(chrono::Duration::days(3)), "3d");
    }
}
