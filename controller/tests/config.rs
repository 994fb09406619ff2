//! Start-up of `transcoder serve` with a broken configuration: the process prints every problem
//! at once, names each variable, keeps secrets out of the output, and exits with code 2 before
//! it touches the data directory or the network.

use std::path::Path;
use std::process::{Command, Output};

/// Exit code of `transcoder serve` for a missing or malformed setting.
const EXIT_CONFIG: i32 = 2;

/// Runs `transcoder serve` with only `PATH` and `vars` in its environment.
fn serve_with(vars: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_transcoder"));
    command
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for (name, value) in vars {
        command.env(name, value);
    }
    command.output().expect("transcoder runs")
}

/// Returns the `  - VARIABLE ...` lines of the problem list.
fn problem_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|line| line.starts_with("  - "))
        .collect()
}

fn line_naming<'a>(lines: &[&'a str], variable: &str) -> &'a str {
    let prefix = format!("  - {variable} ");
    let colon = format!("  - {variable}:");
    lines
        .iter()
        .find(|line| line.starts_with(&prefix) || line.starts_with(&colon))
        .copied()
        .unwrap_or_else(|| panic!("no problem names {variable}; problems: {lines:#?}"))
}

/// An empty environment: every required setting is reported, each on its own line.
#[test]
fn empty_environment_lists_every_missing_setting() {
    let output = serve_with(&[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines = problem_lines(&stderr);

    assert_eq!(output.status.code(), Some(EXIT_CONFIG), "stderr: {stderr}");
    assert!(
        stderr.starts_with("error: invalid configuration: 8 problem(s)"),
        "stderr: {stderr}"
    );
    for variable in [
        "FLY_API_TOKEN",
        "FLY_WORKER_APP_NAME",
        "FLY_WORKER_IMAGE",
        "TRANSCODER_PUBLIC_URL",
        "S3_REGION",
        "S3_BUCKET",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ] {
        line_naming(&lines, variable);
    }
    assert_eq!(lines.len(), 8, "problems: {lines:#?}");
    assert!(
        line_naming(&lines, "FLY_API_TOKEN").ends_with("is not set"),
        "{lines:#?}"
    );
}

/// Malformed values next to missing ones: each is named with the value and what is allowed,
/// and the process stops before it creates the data directory.
#[test]
fn malformed_values_are_reported_with_missing_ones() {
    let root = tempfile::tempdir().expect("tempdir");
    let data_dir = root.path().join("never-created");
    let data_dir_text = data_dir.to_string_lossy().into_owned();

    let output = serve_with(&[
        ("TRANSCODER_DATA_DIR", &data_dir_text),
        ("TRANSCODER_LISTEN", "localhost:eighty"),
        ("FLY_API_TOKEN", "FlyV1 fm2_token-value"),
        ("FLY_MACHINES_API_URL", "api.machines.dev/v1"),
        ("FLY_WORKER_APP_NAME", "transcoder-workers"),
        ("FLY_IMAGE_REF", "registry.fly.io/transcoder:deployment-1"),
        ("FLY_APP_NAME", "transcoder"),
        ("FLY_WORKER_REGION", "Chicago"),
        ("S3_ENDPOINT_URL", "r2 endpoint"),
        ("S3_REGION", "EU West"),
        ("S3_BUCKET", "Media_Files"),
        ("AWS_SECRET_ACCESS_KEY", "hidden value"),
        ("TRANSCODER_MAX_CONCURRENT_MACHINES", "0"),
        ("TRANSCODER_FLY_CREATE_PER_SECOND", "fast"),
        ("TRANSCODER_LOG_FORMAT", "yaml"),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines = problem_lines(&stderr);

    assert_eq!(output.status.code(), Some(EXIT_CONFIG), "stderr: {stderr}");
    let expected = [
        ("TRANSCODER_LISTEN", "\"localhost:eighty\""),
        ("FLY_MACHINES_API_URL", "\"api.machines.dev/v1\""),
        ("FLY_WORKER_REGION", "three-letter Fly region"),
        ("S3_ENDPOINT_URL", "\"r2 endpoint\""),
        ("S3_REGION", "\"EU West\""),
        ("S3_BUCKET", "\"Media_Files\""),
        ("AWS_ACCESS_KEY_ID", "is not set"),
        ("AWS_SECRET_ACCESS_KEY", "invalid key"),
        ("TRANSCODER_MAX_CONCURRENT_MACHINES", "at least 1"),
        ("TRANSCODER_FLY_CREATE_PER_SECOND", "\"fast\""),
        ("TRANSCODER_LOG_FORMAT", "text or json"),
    ];
    for (variable, fragment) in expected {
        let line = line_naming(&lines, variable);
        assert!(line.contains(fragment), "{variable}: {line}");
    }
    assert_eq!(lines.len(), expected.len(), "problems: {lines:#?}");

    assert!(
        !stderr.contains("hidden value"),
        "secret key leaked: {stderr}"
    );
    assert!(
        !stderr.contains("fm2_token-value"),
        "token leaked: {stderr}"
    );
    assert!(
        !Path::new(&data_dir).exists(),
        "a rejected start must not create {}",
        data_dir.display()
    );
}

/// Flags count like their variables: a bad flag value is reported under both names.
#[test]
fn flag_values_are_checked_like_variables() {
    let output = Command::new(env!("CARGO_BIN_EXE_transcoder"))
        .args(["serve", "--listen", "300.1.1.1:80", "--s3-region=-bad-"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .expect("transcoder runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines = problem_lines(&stderr);

    assert_eq!(output.status.code(), Some(EXIT_CONFIG), "stderr: {stderr}");
    assert!(
        line_naming(&lines, "TRANSCODER_LISTEN").contains("(--listen)"),
        "{lines:#?}"
    );
    assert!(
        line_naming(&lines, "S3_REGION").contains("\"-bad-\""),
        "{lines:#?}"
    );
}
