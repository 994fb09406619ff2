//! Every file of the audio corpus (`../shared/corpus/audio` beside the repository, or
//! `$TRANSCODER_CORPUS_DIR`) run through `transcoder-worker transcode`, checked against the
//! outcome its MANIFEST.md row expects.
//!
//! Each row's "expected outcome" allows a transcode (its text contains "transcode", "decode
//! the" or "either") and/or a rejection (its text contains "REJECT"). Where both are allowed, the
//! test expects what ffmpeg did (its column): a rejection when ffmpeg failed, else a transcode.
//! A transcode must decode to the expected duration within one MP3 frame, at the MP3 rate
//! nearest the source rate, with the source's channels (at most two).

mod audio;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use audio::{decode_mp3, mp3_frame_samples};
use protocol::{TranscodeResult, EXIT_PERMANENT};
use regex_lite::Regex;

const PER_FILE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Transcode,
    Reject,
}

#[derive(Debug)]
struct Row {
    file: String,
    properties: String,
    expected: String,
    ffmpeg: String,
}

impl Row {
    fn outcome(&self) -> Outcome {
        let transcode = self.expected.contains("transcode")
            || self.expected.contains("decode the")
            || self.expected.contains("either");
        let reject = self.expected.contains("REJECT");
        match (transcode, reject) {
            (true, true) if self.ffmpeg.starts_with("fails") => Outcome::Reject,
            (true, _) => Outcome::Transcode,
            (false, _) => Outcome::Reject,
        }
    }

    fn source_rate(&self) -> Option<f64> {
        let hz = Regex::new(r"(\d+) Hz").expect("regex");
        let khz = Regex::new(r"(\d+(?:\.\d+)?) kHz").expect("regex");
        if let Some(found) = hz.captures(&self.properties) {
            return found[1].parse().ok();
        }
        khz.captures(&self.properties)
            .and_then(|found| found[1].parse::<f64>().ok())
            .map(|k| k * 1000.0)
    }

    fn source_channels(&self) -> Option<u8> {
        let count = Regex::new(r"(\d+) ch\b").expect("regex");
        if let Some(found) = count.captures(&self.properties) {
            return found[1].parse().ok();
        }
        if self.properties.contains("mono") {
            return Some(1);
        }
        self.properties.contains("stereo").then_some(2)
    }

    /// Returns the duration to expect: the first "N s" of the expected outcome or the properties, else
    /// a sample count over the source rate (or `output_rate` when the row gives none), else the
    /// duration ffmpeg produced.
    fn expected_seconds(&self, output_rate: f64) -> Option<f64> {
        let seconds = Regex::new(r"(\d+(?:\.\d+)?) s\b").expect("regex");
        let count = Regex::new(r"(\d+) (?:samples?|frames?)\b").expect("regex");
        for text in [&self.expected, &self.properties] {
            if let Some(found) = seconds.captures(text) {
                return found[1].parse().ok();
            }
        }
        for text in [&self.expected, &self.properties] {
            if let Some(found) = count.captures(text) {
                let frames: f64 = found[1].parse().ok()?;
                return Some(frames / self.source_rate().unwrap_or(output_rate));
            }
        }
        let found = seconds.captures(&self.ffmpeg)?;
        found[1].parse().ok()
    }
}

fn corpus_dir() -> PathBuf {
    match std::env::var_os("TRANSCODER_CORPUS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/audio"),
    }
}

/// Reads the file rows of every table in MANIFEST.md.
fn manifest_rows(dir: &Path) -> Vec<Row> {
    let text = std::fs::read_to_string(dir.join("MANIFEST.md")).expect("read MANIFEST.md");
    text.lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| {
            let cells: Vec<String> = line
                .split(" | ")
                .map(|cell| cell.trim_matches(['|', ' ', '`']).to_string())
                .collect();
            assert!(
                cells.len() >= 8,
                "MANIFEST row has {} cells: {line}",
                cells.len()
            );
            Row {
                file: cells[0].clone(),
                properties: cells[4].clone(),
                expected: cells[5].clone(),
                ffmpeg: cells[7].clone(),
            }
        })
        .collect()
}

fn locate(dir: &Path, file: &str) -> PathBuf {
    let direct = dir.join(file);
    if direct.exists() {
        direct
    } else {
        dir.join("real").join(file)
    }
}

struct Run {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
    mp3: Option<Vec<u8>>,
}

async fn run_worker(input: &Path, output: &Path) -> Run {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_transcoder-worker"))
        .arg("transcode")
        .arg(input)
        .arg(output)
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start transcoder-worker");
    let result = tokio::time::timeout(PER_FILE_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("worker hung on {}", input.display()))
        .expect("wait for worker");
    Run {
        code: result.status.code(),
        stdout: result.stdout,
        stderr: String::from_utf8_lossy(&result.stderr).into_owned(),
        mp3: std::fs::read(output).ok(),
    }
}

/// Checks one row and returns a description of each way it failed.
async fn check(dir: &Path, scratch: &Path, row: &Row) -> Vec<String> {
    let input = locate(dir, &row.file);
    let output = scratch.join(format!("{}.mp3", row.file));
    let run = run_worker(&input, &output).await;
    let mut problems = Vec::new();

    match row.outcome() {
        Outcome::Reject => {
            if run.code != Some(EXIT_PERMANENT) {
                problems.push(format!(
                    "expected a rejection (exit 3), got exit {:?}",
                    run.code
                ));
            }
            if !run.stderr.contains("error:") {
                problems.push(format!(
                    "rejection without an error message: {}",
                    run.stderr
                ));
            }
            if run.mp3.is_some() {
                problems.push("a rejected input left an output file".into());
            }
        }
        Outcome::Transcode => check_transcode(row, &run, &mut problems),
    }
    problems
}

fn check_transcode(row: &Row, run: &Run, problems: &mut Vec<String>) {
    if run.code != Some(0) {
        problems.push(format!(
            "expected a transcode, got exit {:?}: {}",
            run.code,
            run.stderr.trim()
        ));
        return;
    }
    let result: TranscodeResult = match serde_json::from_slice(&run.stdout) {
        Ok(result) => result,
        Err(err) => return problems.push(format!("stdout is not a TranscodeResult: {err}")),
    };
    let Some(mp3) = &run.mp3 else {
        return problems.push("no output file".into());
    };
    let decoded = match decode_mp3(mp3) {
        Ok(decoded) => decoded,
        Err(err) => return problems.push(format!("output does not decode: {err}")),
    };

    if decoded.sample_rate != result.sample_rate_hz {
        problems.push(format!(
            "decoded rate {} differs from reported {}",
            decoded.sample_rate, result.sample_rate_hz
        ));
    }
    if let Some(rate) = row.source_rate() {
        let expected = worker::output_format::nearest_mp3_rate(rate as u32);
        if result.sample_rate_hz != expected {
            problems.push(format!(
                "output rate {} Hz, expected {expected} Hz",
                result.sample_rate_hz
            ));
        }
    }
    if let Some(channels) = row.source_channels() {
        if result.channels != channels.min(2) || decoded.channels != usize::from(channels.min(2)) {
            problems.push(format!(
                "output has {} channels for a {channels}-channel source",
                decoded.channels
            ));
        }
    }

    let Some(expected) = row.expected_seconds(f64::from(decoded.sample_rate)) else {
        return problems.push("MANIFEST row states no duration".into());
    };
    let rate = f64::from(decoded.sample_rate);
    let allowance = mp3_frame_samples(decoded.sample_rate);
    let seconds = decoded.frames as f64 / rate;
    if (seconds - expected).abs() > allowance as f64 / rate + 1e-4 {
        problems.push(format!(
            "decoded {seconds:.4} s, expected {expected} s within {allowance} frames"
        ));
    }
}

/// Every corpus file transcodes to the expected length, or is rejected with a clear error.
#[tokio::test(flavor = "multi_thread")]
async fn corpus_files_meet_manifest() {
    let dir = corpus_dir();
    if !dir.join("MANIFEST.md").exists() {
        eprintln!(
            "audio corpus not found at {}; skipping the corpus test",
            dir.display()
        );
        return;
    }
    let scratch = tempfile::tempdir().expect("tempdir");
    let rows = manifest_rows(&dir);
    assert!(
        rows.len() > 50,
        "MANIFEST.md lists only {} files",
        rows.len()
    );

    let mut failures = Vec::new();
    for row in &rows {
        let problems = check(&dir, scratch.path(), row).await;
        if !problems.is_empty() {
            failures.push(format!(
                "{} ({:?}): {}",
                row.file,
                row.outcome(),
                problems.join("; ")
            ));
        }
    }

    assert!(
        failures.is_empty(),
        "{} of {} corpus files failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}
