//! The `transcoder` verbs as processes against a running local system: apply (broken files,
//! atomic, dry run, prune), diff, delete, get and wait.

mod support;
mod surface;

use std::time::Duration;

use controller::local::ControllerOptions;
use support::{sine_wav, upload, upload_spec};
use surface::{job_names, poll, start_with, suspended_spec, transcoder};

const TIMEOUT: Duration = Duration::from_secs(120);

/// A directory with one broken file among good ones: the good jobs apply, the broken file is
/// named with its document, line and field, and the exit code is 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_directory_skips_broken_file() {
    let data = tempfile::tempdir().expect("tempdir");
    let system = start_with(data.path(), ControllerOptions::default()).await;
    let api = system.api_url();
    let specs = tempfile::tempdir().expect("tempdir");
    std::fs::write(specs.path().join("a.yaml"), suspended_spec("a", "", 128)).expect("write");
    let broken = format!(
        "{}---\n{}",
        suspended_spec("b", "", 128),
        suspended_spec("c", "", 100)
    );
    std::fs::write(specs.path().join("b.yaml"), broken).expect("write");
    std::fs::create_dir(specs.path().join("nested")).expect("mkdir");
    std::fs::write(
        specs.path().join("nested/d.yaml"),
        suspended_spec("d", "", 64),
    )
    .expect("write");
    let dir = specs.path().to_str().expect("path");

    let run = transcoder(&api, &["apply", "-f", dir, "-R"]).await;

    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("transcodejob/a created"), "{run:?}");
    assert!(run.stdout.contains("transcodejob/b created"), "{run:?}");
    assert!(run.stdout.contains("transcodejob/d created"), "{run:?}");
    assert!(
        run.stderr
            .contains("b.yaml (document 2, line 14): spec.output.bitrateKbps"),
        "{run:?}"
    );
    assert_eq!(job_names(&api, None).await, ["a", "b", "d"]);

    system.shutdown().await;
}

/// `--atomic` applies nothing when one document is invalid; `--dry-run` reports what would
/// happen and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_atomic_and_dry_run_store_nothing() {
    let data = tempfile::tempdir().expect("tempdir");
    let system = start_with(data.path(), ControllerOptions::default()).await;
    let api = system.api_url();
    let specs = tempfile::tempdir().expect("tempdir");
    let good = specs.path().join("good.yaml");
    let bad = specs.path().join("bad.yaml");
    std::fs::write(&good, suspended_spec("good", "", 128)).expect("write");
    std::fs::write(&bad, suspended_spec("bad", "", 100)).expect("write");
    let (good, bad) = (good.to_str().expect("path"), bad.to_str().expect("path"));

    let atomic = transcoder(&api, &["apply", "--atomic", "-f", good, "-f", bad]).await;
    assert_eq!(atomic.code, 1, "{atomic:?}");
    assert!(atomic.stderr.contains("nothing applied"), "{atomic:?}");
    assert!(job_names(&api, None).await.is_empty());

    let dry = transcoder(&api, &["apply", "--dry-run", "-f", good]).await;
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(
        dry.stdout.contains("transcodejob/good created (dry run)"),
        "{dry:?}"
    );
    assert!(job_names(&api, None).await.is_empty());

    let real = transcoder(&api, &["apply", "-f", good]).await;
    assert_eq!(real.code, 0, "{real:?}");
    std::fs::write(good, suspended_spec("good", "", 160)).expect("write");
    let dry = transcoder(&api, &["apply", "--dry-run", "-f", good]).await;
    assert!(
        dry.stdout
            .contains("transcodejob/good configured (dry run)"),
        "{dry:?}"
    );
    let stored = reqwest::get(format!("{api}/v1/jobs/good"))
        .await
        .expect("get")
        .json::<serde_json::Value>()
        .await
        .expect("JSON");
    assert_eq!(stored["spec"]["output"]["bitrateKbps"], 128);
    assert_eq!(stored["metadata"]["generation"], 1);

    system.shutdown().await;
}

/// `diff` exits 0 without changes, 1 with changes (and names each field), 2 on errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_exit_codes_follow_changes() {
    let data = tempfile::tempdir().expect("tempdir");
    let system = start_with(data.path(), ControllerOptions::default()).await;
    let api = system.api_url();
    let specs = tempfile::tempdir().expect("tempdir");
    let file = specs.path().join("job.yaml");
    let path = file.to_str().expect("path");
    std::fs::write(&file, suspended_spec("job", "show: weekly", 128)).expect("write");

    let new = transcoder(&api, &["diff", "-f", path]).await;
    assert_eq!(new.code, 1, "{new:?}");
    assert!(new.stdout.contains("transcodejob/job created"), "{new:?}");

    assert_eq!(transcoder(&api, &["apply", "-f", path]).await.code, 0);
    let same = transcoder(&api, &["diff", "-f", path]).await;
    assert_eq!(same.code, 0, "{same:?}");
    assert_eq!(same.stdout, "");

    std::fs::write(&file, suspended_spec("job", "show: daily", 160)).expect("write");
    let changed = transcoder(&api, &["diff", "-f", path]).await;
    assert_eq!(changed.code, 1, "{changed:?}");
    assert!(
        changed.stdout.contains("transcodejob/job configured"),
        "{changed:?}"
    );
    assert!(
        changed
            .stdout
            .contains("~ spec.output.bitrateKbps: 128 -> 160"),
        "{changed:?}"
    );
    assert!(
        changed
            .stdout
            .contains("~ metadata.labels.show: \"weekly\" -> \"daily\""),
        "{changed:?}"
    );

    std::fs::write(&file, suspended_spec("job", "", 100)).expect("write");
    let invalid = transcoder(&api, &["diff", "-f", path]).await;
    assert_eq!(invalid.code, 2, "{invalid:?}");
    assert!(
        invalid.stderr.contains("spec.output.bitrateKbps"),
        "{invalid:?}"
    );

    system.shutdown().await;
}

/// `apply --prune -l` deletes only jobs that match the selector and left the files, and
/// refuses to prune every matching job without `--force`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_is_scoped_by_selector() {
    let data = tempfile::tempdir().expect("tempdir");
    let system = start_with(data.path(), ControllerOptions::default()).await;
    let api = system.api_url();
    let specs = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, labels: &str| {
        std::fs::write(
            specs.path().join(format!("{name}.yaml")),
            suspended_spec(name, labels, 128),
        )
        .expect("write");
    };
    write("keep", "show: weekly");
    write("drop", "show: weekly");
    write("other", "show: daily");
    let dir = specs.path().to_str().expect("path");
    assert_eq!(transcoder(&api, &["apply", "-f", dir]).await.code, 0);

    std::fs::remove_file(specs.path().join("drop.yaml")).expect("remove");
    std::fs::remove_file(specs.path().join("other.yaml")).expect("remove");
    let dry = transcoder(
        &api,
        &[
            "apply",
            "-f",
            dir,
            "--prune",
            "-l",
            "show=weekly",
            "--dry-run",
        ],
    )
    .await;
    assert!(
        dry.stdout.contains("transcodejob/drop pruned (dry run)"),
        "{dry:?}"
    );
    assert_eq!(job_names(&api, None).await, ["drop", "keep", "other"]);

    let run = transcoder(&api, &["apply", "-f", dir, "--prune", "-l", "show=weekly"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("transcodejob/drop pruned"), "{run:?}");
    assert!(!run.stdout.contains("other"), "{run:?}");
    poll(TIMEOUT, "pruned job to go", || {
        let api = api.clone();
        async move {
            let names = job_names(&api, None).await;
            (names == ["keep", "other"]).then_some(())
        }
    })
    .await;

    // Only "other" matches show=daily and it is not among the files: pruning would delete all.
    let refused = transcoder(&api, &["apply", "-f", dir, "--prune", "-l", "show=daily"]).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("refusing to prune"), "{refused:?}");
    assert_eq!(job_names(&api, None).await, ["keep", "other"]);

    let empty = tempfile::tempdir().expect("tempdir");
    let empty = empty.path().to_str().expect("path");
    let refused = transcoder(
        &api,
        &["apply", "-f", empty, "--prune", "-l", "show=weekly"],
    )
    .await;
    assert_eq!(refused.code, 1, "{refused:?}");
    let forced = transcoder(
        &api,
        &[
            "apply",
            "-f",
            empty,
            "--prune",
            "-l",
            "show=weekly",
            "--force",
        ],
    )
    .await;
    assert_eq!(forced.code, 0, "{forced:?}");
    assert!(
        forced.stdout.contains("transcodejob/keep pruned"),
        "{forced:?}"
    );

    system.shutdown().await;
}

/// `delete` removes jobs by name and by file, and fails on a missing job; `get -o json`
/// returns the stored job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_and_get_by_name_and_file() {
    let data = tempfile::tempdir().expect("tempdir");
    let system = start_with(data.path(), ControllerOptions::default()).await;
    let api = system.api_url();
    let specs = tempfile::tempdir().expect("tempdir");
    let file = specs.path().join("jobs.yaml");
    let text = format!(
        "{}---\n{}",
        suspended_spec("one", "tier: a", 128),
        suspended_spec("two", "tier: b", 128)
    );
    std::fs::write(&file, text).expect("write");
    let path = file.to_str().expect("path");
    std::fs::write(
        specs.path().join("three.yaml"),
        suspended_spec("three", "tier: a", 64),
    )
    .expect("write");
    let three = specs.path().join("three.yaml");
    assert_eq!(transcoder(&api, &["apply", "-f", path]).await.code, 0);
    assert_eq!(
        transcoder(&api, &["apply", "-f", three.to_str().expect("path")])
            .await
            .code,
        0
    );

    let get = transcoder(&api, &["get", "three", "-o", "json"]).await;
    assert_eq!(get.code, 0, "{get:?}");
    let job: serde_json::Value = serde_json::from_str(&get.stdout).expect("JSON output");
    assert_eq!(job["spec"]["output"]["bitrateKbps"], 64);
    let table = transcoder(&api, &["get", "-l", "tier=a"]).await;
    assert!(
        table.stdout.contains("one") && table.stdout.contains("three"),
        "{table:?}"
    );
    assert!(!table.stdout.contains("two"), "{table:?}");

    let by_name = transcoder(&api, &["delete", "three"]).await;
    assert_eq!(by_name.code, 0, "{by_name:?}");
    assert!(
        by_name.stdout.contains("transcodejob/three deleted"),
        "{by_name:?}"
    );
    let by_file = transcoder(&api, &["delete", "-f", path]).await;
    assert_eq!(by_file.code, 0, "{by_file:?}");
    assert!(
        by_file.stdout.contains("transcodejob/two deleted"),
        "{by_file:?}"
    );
    poll(TIMEOUT, "deleted jobs to go", || {
        let api = api.clone();
        async move {
            let response = reqwest::get(format!("{api}/v1/jobs")).await.ok()?;
            let list: serde_json::Value = response.json().await.ok()?;
            list["items"].as_array()?.is_empty().then_some(())
        }
    })
    .await;

    let missing = transcoder(&api, &["delete", "three"]).await;
    assert_eq!(missing.code, 1, "{missing:?}");
    assert!(missing.stderr.contains("not found"), "{missing:?}");

    system.shutdown().await;
}

/// `wait` exits 0 when the job succeeds, 1 when it fails instead, and 2 on a timeout or a
/// missing job, saying which.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wait_exit_codes_follow_the_outcome() {
    let data = tempfile::tempdir().expect("tempdir");
    let system = start_with(data.path(), ControllerOptions::default()).await;
    let api = system.api_url();
    let http = reqwest::Client::new();
    for name in ["good", "noise"] {
        let spec = upload_spec(name, "    bitrateKbps: 64\n");
        let response = http
            .put(format!("{api}/v1/jobs/{name}"))
            .body(spec)
            .send()
            .await
            .expect("apply");
        assert_eq!(response.status(), 201);
    }

    let timeout = transcoder(
        &api,
        &[
            "wait",
            "good",
            "--for",
            "phase=Succeeded",
            "--timeout",
            "1s",
        ],
    )
    .await;
    assert_eq!(timeout.code, 2, "{timeout:?}");
    assert!(timeout.stderr.contains("timed out after 1s"), "{timeout:?}");
    assert!(timeout.stderr.contains("it is Pending"), "{timeout:?}");

    upload(&api, "good", sine_wav(16000, 1, 1)).await;
    upload(&api, "noise", b"this is not audio at all".repeat(100)).await;

    let succeeded = transcoder(
        &api,
        &[
            "wait",
            "good",
            "--for",
            "phase=Succeeded",
            "--timeout",
            "2m",
        ],
    )
    .await;
    assert_eq!(succeeded.code, 0, "{succeeded:?}");
    assert!(
        succeeded.stdout.contains("reached phase Succeeded"),
        "{succeeded:?}"
    );

    let failed = transcoder(&api, &["wait", "noise", "--timeout", "2m"]).await;
    assert_eq!(failed.code, 1, "{failed:?}");
    assert!(
        failed.stderr.contains("finished in phase Failed"),
        "{failed:?}"
    );

    let missing = transcoder(&api, &["wait", "absent", "--timeout", "5s"]).await;
    assert_eq!(missing.code, 2, "{missing:?}");
    assert!(missing.stderr.contains("not found"), "{missing:?}");

    system.shutdown().await;
}

/// `get --watch` without a terminal prints a line per job change, from the watch stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_prints_a_line_per_change() {
    use tokio::io::AsyncBufReadExt;

    let data = tempfile::tempdir().expect("tempdir");
    let system = start_with(data.path(), ControllerOptions::default()).await;
    let api = system.api_url();
    let http = reqwest::Client::new();
    let put = |name: &'static str, bitrate: u32| {
        http.put(format!("{api}/v1/jobs/{name}"))
            .body(suspended_spec(name, "", bitrate))
            .send()
    };
    put("first", 128).await.expect("apply");

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_transcoder"))
        .args(["get", "--watch", "--server", &api])
        .env_remove("TRANSCODER_API_TOKEN")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("transcoder get --watch starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = next_line(&mut lines).await;
    assert!(line.starts_with("first"), "{line}");
    assert!(line.contains("Pending"), "{line}");

    put("second", 64).await.expect("apply");
    let line = next_line(&mut lines).await;
    assert!(line.starts_with("second"), "{line}");

    http.delete(format!("{api}/v1/jobs/first"))
        .send()
        .await
        .expect("delete");
    let mut seen = Vec::new();
    loop {
        let line = next_line(&mut lines).await;
        seen.push(line.clone());
        if line.starts_with("first") && line.contains("deleted") {
            break;
        }
        assert!(seen.len() < 20, "no deleted line: {seen:#?}");
    }

    child.kill().await.expect("kill watch");
    system.shutdown().await;
}

/// The next line of a running `get --watch`.
async fn next_line(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> String {
    tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("a watch line within 30 s")
        .expect("stdout readable")
        .expect("watch keeps running")
}
