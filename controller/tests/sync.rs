//! GitOps: `--sync-dir` keeps the jobs equal to a directory of spec files.

mod support;
mod surface;

use std::path::Path;
use std::time::Duration;

use controller::local::ControllerOptions;
use serde_json::Value;
use surface::{job_names, poll, start_with, suspended_spec};

const TIMEOUT: Duration = Duration::from_secs(30);

async fn sync_state(api: &str) -> Value {
    reqwest::get(format!("{api}/v1/sync"))
        .await
        .expect("sync request")
        .json()
        .await
        .expect("sync JSON")
}

async fn job(api: &str, name: &str) -> Value {
    reqwest::get(format!("{api}/v1/jobs/{name}"))
        .await
        .expect("get request")
        .json()
        .await
        .expect("job JSON")
}

/// Waits until the stored jobs are exactly `names`.
async fn converge(api: &str, names: &[&str]) {
    let what = format!("jobs {names:?}");
    poll(TIMEOUT, &what, || async move {
        (job_names(api, None).await == names).then_some(())
    })
    .await;
}

fn write(dir: &Path, file: &str, text: &str) {
    let path = dir.join(file);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write spec");
}

/// Files added, changed and removed reach the store; a malformed file is reported by name and
/// does not stop the others, and its job is kept, not pruned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_converges_and_survives_a_malformed_file() {
    let data = tempfile::tempdir().expect("tempdir");
    let repo = tempfile::tempdir().expect("tempdir");
    let dir = repo.path().join("jobs");
    write(&dir, "a.yaml", &suspended_spec("a", "", 128));
    let options = ControllerOptions {
        sync_dir: Some(dir.clone()),
        sync_interval: Some(Duration::from_secs(1)),
        ..ControllerOptions::default()
    };
    let system = start_with(data.path(), options).await;
    let api = system.api_url();
    converge(&api, &["a"]).await;
    assert_eq!(
        job(&api, "a").await["metadata"]["labels"]["managed-by"],
        "transcoder-sync"
    );

    write(&dir, "nested/b.yaml", &suspended_spec("b", "", 64));
    converge(&api, &["a", "b"]).await;

    write(&dir, "a.yaml", &suspended_spec("a", "", 192));
    poll(TIMEOUT, "a's new bitrate", || {
        let api = api.clone();
        async move {
            let job = job(&api, "a").await;
            (job["spec"]["output"]["bitrateKbps"] == 192).then_some(())
        }
    })
    .await;

    // b becomes malformed YAML and c is added: c applies, b stays, the error names b.yaml.
    write(&dir, "nested/b.yaml", "metadata: [unclosed\n");
    write(
        &dir,
        "c.json",
        &serde_json::to_string(
            &serde_yaml::from_str::<Value>(&suspended_spec("c", "", 32)).expect("yaml"),
        )
        .expect("json"),
    );
    converge(&api, &["a", "b", "c"]).await;
    let state = poll(TIMEOUT, "an error for b.yaml", || {
        let api = api.clone();
        async move {
            let state = sync_state(&api).await;
            let errors = state["lastSync"]["errors"].as_array()?.clone();
            errors
                .iter()
                .any(|error| {
                    error["file"]
                        .as_str()
                        .is_some_and(|f| f.ends_with("nested/b.yaml"))
                })
                .then_some(state)
        }
    })
    .await;
    let applied: Vec<&str> = state["lastSync"]["applied"]
        .as_array()
        .expect("applied")
        .iter()
        .filter_map(|job| job["name"].as_str())
        .collect();
    assert_eq!(applied, ["a", "c"]);
    assert_eq!(state["lastSync"]["files"], 3);

    // Removing a file prunes its job; a job applied by hand is never pruned.
    let http = reqwest::Client::new();
    http.put(format!("{api}/v1/jobs/manual"))
        .body(suspended_spec("manual", "", 128))
        .send()
        .await
        .expect("apply by hand");
    std::fs::remove_file(dir.join("a.yaml")).expect("remove");
    converge(&api, &["b", "c", "manual"]).await;
    let state = sync_state(&api).await;
    assert!(state["passes"].as_u64().expect("passes") >= 2);

    system.shutdown().await;
}

/// The sync reports the checked-out git commit, read from the work tree's `.git`, and retries
/// a directory that appears after the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_reports_git_revision_of_late_directory() {
    let data = tempfile::tempdir().expect("tempdir");
    let repo = tempfile::tempdir().expect("tempdir");
    let options = ControllerOptions {
        sync_dir: Some(repo.path().join("jobs")),
        sync_interval: Some(Duration::from_millis(300)),
        ..ControllerOptions::default()
    };
    let system = start_with(data.path(), options).await;
    let api = system.api_url();
    poll(TIMEOUT, "an error for the missing directory", || {
        let api = api.clone();
        async move {
            let state = sync_state(&api).await;
            (state["lastSync"]["errors"].as_array()?.len() == 1).then_some(())
        }
    })
    .await;

    let commit = "89abcdef0123456789abcdef0123456789abcdef";
    write(repo.path(), ".git/HEAD", "ref: refs/heads/main\n");
    write(repo.path(), ".git/refs/heads/main", &format!("{commit}\n"));
    write(
        &repo.path().join("jobs"),
        "a.yaml",
        &suspended_spec("a", "", 128),
    );
    converge(&api, &["a"]).await;

    let state = poll(TIMEOUT, "a report with the revision", || {
        let api = api.clone();
        async move {
            let state = sync_state(&api).await;
            (state["lastSync"]["revision"] == commit).then_some(state)
        }
    })
    .await;
    assert_eq!(state["lastSync"]["errors"], serde_json::json!([]));

    system.shutdown().await;
}
