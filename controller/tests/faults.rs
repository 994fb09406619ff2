//! The reconciler against a Machines API that misbehaves on purpose: rate limits, 5xx, lost
//! create responses, crashing and out-of-memory machines. Every scenario checks the end
//! state: each job finished with the right phase and reason, no attempt got two machines, no
//! machine is left, and the client stayed within the rate limits.

mod support;

use std::time::Duration;

use controller::spec::TranscodeJob;
use controller::status::Phase;
use fly_machines::local::{Faults, LocalMachines, RequestRecord};
use support::{
    assert_no_machine_left, assert_one_machine_per_attempt, fast_settings, sine_wav,
    start_machines, start_system_configured, start_system_with, upload, upload_spec, wait_for_job,
};

const TIMEOUT: Duration = Duration::from_secs(180);

/// Applies an upload job with `backoffLimit` and uploads `wav` for it.
async fn submit(api: &str, name: &str, backoff_limit: u32, wav: Vec<u8>) {
    let spec = format!(
        "{}  backoffLimit: {backoff_limit}\n",
        upload_spec(name, "    bitrateKbps: 128\n")
    );
    let response = reqwest::Client::new()
        .put(format!("{api}/v1/jobs/{name}"))
        .body(spec)
        .send()
        .await
        .expect("apply");
    assert_eq!(response.status(), 201, "apply {name}");
    upload(api, name, wav).await;
}

async fn wait_all_finished(api: &str, names: &[String]) -> Vec<TranscodeJob> {
    let mut jobs = Vec::new();
    for name in names {
        jobs.push(wait_for_job(api, name, TIMEOUT, |job| job.status.phase.is_finished()).await);
    }
    jobs
}

/// Fails when more than `burst + rate × window` of the selected requests fall in any window
/// that starts at one of them, for windows of 1, 2 and 5 seconds.
fn assert_rate_within(
    log: &[RequestRecord],
    select: impl Fn(&RequestRecord) -> bool,
    rate: f64,
    burst: f64,
    what: &str,
) {
    let times: Vec<_> = log
        .iter()
        .filter(|record| select(record))
        .map(|record| record.at)
        .collect();
    for window in [1.0, 2.0, 5.0] {
        let allowed = burst + rate * window;
        for (i, start) in times.iter().enumerate() {
            let end = *start + Duration::from_secs_f64(window);
            let count = times[i..].iter().take_while(|time| **time < end).count();
            assert!(
                count as f64 <= allowed,
                "{count} {what} requests within {window} s; at most {allowed} allowed"
            );
        }
    }
}

fn is_create(record: &RequestRecord) -> bool {
    record.method == "POST" && record.path.ends_with("/machines")
}

fn is_read(record: &RequestRecord) -> bool {
    record.method == "GET" && !record.path.ends_with("/wait")
}

/// Polls the request log until the server has received `count` create requests. The next
/// create comes only after the machine exited and the retry backoff passed, so a fault
/// switched right after this returns applies to it.
async fn wait_for_creates(machines: &LocalMachines, count: usize) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while machines
        .request_log()
        .iter()
        .filter(|record| is_create(record))
        .count()
        < count
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "fewer than {count} creates arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn names(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|n| format!("{prefix}-{n}")).collect()
}

/// 429s and 503s on a share of all requests slow the jobs down but every one succeeds, on its
/// first attempt, within the rate limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limits_and_server_errors_still_finish_every_job() {
    let root = tempfile::tempdir().expect("tempdir");
    let machines = start_machines(&root.path().join("machines")).await;
    machines.set_faults(Faults {
        rate_limit_every: 7,
        server_error_every: 5,
        ..Faults::default()
    });
    let system = start_system_with(&root.path().join("data"), Some(machines.base_url())).await;
    let api = system.api_url();

    let jobs = names("flaky-api", 6);
    for name in &jobs {
        submit(&api, name, 3, sine_wav(44100, 2, 1)).await;
    }
    let finished = wait_all_finished(&api, &jobs).await;

    for job in &finished {
        assert_eq!(
            job.status.phase,
            Phase::Succeeded,
            "{}: {:#?}",
            job.metadata.name,
            job.status
        );
        assert_eq!(
            job.status.attempts, 1,
            "{}: API errors must not cost attempts",
            job.metadata.name
        );
    }
    machines.set_faults(Faults::default());
    assert_one_machine_per_attempt(&machines.base_url()).await;
    assert_no_machine_left(&machines.base_url()).await;
    let log = machines.request_log();
    assert_rate_within(&log, is_create, 1.0, 3.0, "create");
    assert_rate_within(&log, is_read, 5.0, 10.0, "get and list");

    system.shutdown().await;
    machines.shutdown().await;
}

/// Create requests whose responses are lost still made their machines; the reconciler finds
/// them by metadata instead of creating a second machine for the same attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_create_responses_never_double_a_machine() {
    let root = tempfile::tempdir().expect("tempdir");
    let machines = start_machines(&root.path().join("machines")).await;
    machines.set_faults(Faults {
        lose_create_responses: 3,
        ..Faults::default()
    });
    let system = start_system_with(&root.path().join("data"), Some(machines.base_url())).await;
    let api = system.api_url();

    let jobs = names("lost-create", 4);
    for name in &jobs {
        submit(&api, name, 3, sine_wav(22050, 1, 1)).await;
    }
    let finished = wait_all_finished(&api, &jobs).await;

    for job in &finished {
        assert_eq!(
            job.status.phase,
            Phase::Succeeded,
            "{}: {:#?}",
            job.metadata.name,
            job.status
        );
        assert_eq!(job.status.attempts, 1, "{}", job.metadata.name);
    }
    let creates = machines
        .request_log()
        .iter()
        .filter(|record| is_create(record))
        .count();
    assert_eq!(
        creates,
        jobs.len(),
        "one create per job: lost responses must be adopted, not retried"
    );
    assert_one_machine_per_attempt(&machines.base_url()).await;
    assert_no_machine_left(&machines.base_url()).await;

    system.shutdown().await;
    machines.shutdown().await;
}

/// Machines that crash or run out of memory fail their attempt; the job is retried with
/// backoff and succeeds, and the events record why each attempt failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crashed_and_oom_machines_are_retried() {
    let root = tempfile::tempdir().expect("tempdir");
    let machines = start_machines(&root.path().join("machines")).await;
    // The first create runs out of memory and the second crashes; later ones are healthy.
    machines.set_faults(Faults {
        out_of_memory_every: 1,
        ..Faults::default()
    });
    let system = start_system_with(&root.path().join("data"), Some(machines.base_url())).await;
    let api = system.api_url();

    submit(&api, "unlucky", 4, sine_wav(44100, 1, 1)).await;
    wait_for_creates(&machines, 1).await;
    machines.set_faults(Faults {
        crash_every: 1,
        ..Faults::default()
    });
    wait_for_creates(&machines, 2).await;
    machines.set_faults(Faults::default());
    let job = wait_for_job(&api, "unlucky", TIMEOUT, |job| {
        job.status.phase.is_finished()
    })
    .await;

    assert_eq!(job.status.phase, Phase::Succeeded, "{:#?}", job.status);
    assert!(
        job.status.attempts >= 3,
        "attempts: {}",
        job.status.attempts
    );
    let events: serde_json::Value = reqwest::get(format!("{api}/v1/jobs/unlucky/events"))
        .await
        .expect("events")
        .json()
        .await
        .expect("JSON");
    let messages: Vec<&str> = events["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert!(
        messages.iter().any(|m| m.contains("OOMKilled")),
        "events: {messages:#?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("WorkerExited") && m.contains("137")),
        "events: {messages:#?}"
    );
    assert_one_machine_per_attempt(&machines.base_url()).await;
    assert_no_machine_left(&machines.base_url()).await;

    system.shutdown().await;
    machines.shutdown().await;
}

/// A failing machine on every attempt exhausts `backoffLimit`: the job fails with reason
/// BackoffLimitExceeded after exactly `backoffLimit + 1` attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backoff_limit_ends_a_job_that_always_fails() {
    let root = tempfile::tempdir().expect("tempdir");
    let machines = start_machines(&root.path().join("machines")).await;
    machines.set_faults(Faults {
        crash_every: 1,
        ..Faults::default()
    });
    let system = start_system_with(&root.path().join("data"), Some(machines.base_url())).await;
    let api = system.api_url();

    submit(&api, "doomed", 2, sine_wav(44100, 1, 1)).await;
    let job = wait_for_job(&api, "doomed", TIMEOUT, |job| {
        job.status.phase.is_finished()
    })
    .await;

    assert_eq!(job.status.phase, Phase::Failed);
    assert_eq!(job.status.attempts, 3);
    let complete = job
        .status
        .condition("Complete")
        .expect("Complete condition");
    assert_eq!(complete.reason, "BackoffLimitExceeded", "{complete:#?}");
    assert_one_machine_per_attempt(&machines.base_url()).await;
    assert_no_machine_left(&machines.base_url()).await;

    system.shutdown().await;
    machines.shutdown().await;
}

/// Input that is not audio fails the job at once: the worker reports a permanent failure and
/// no second attempt is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn permanent_worker_failure_is_not_retried() {
    let root = tempfile::tempdir().expect("tempdir");
    let machines = start_machines(&root.path().join("machines")).await;
    let system = start_system_with(&root.path().join("data"), Some(machines.base_url())).await;
    let api = system.api_url();

    submit(
        &api,
        "not-audio",
        3,
        b"<html><body>404 Not Found</body></html>".to_vec(),
    )
    .await;
    let job = wait_for_job(&api, "not-audio", TIMEOUT, |job| {
        job.status.phase.is_finished()
    })
    .await;

    assert_eq!(job.status.phase, Phase::Failed);
    assert_eq!(job.status.attempts, 1);
    let complete = job
        .status
        .condition("Complete")
        .expect("Complete condition");
    assert_ne!(complete.reason, "BackoffLimitExceeded", "{complete:#?}");
    assert_no_machine_left(&machines.base_url()).await;

    system.shutdown().await;
    machines.shutdown().await;
}

/// A job past `activeDeadlineSeconds` fails with DeadlineExceeded and its machine is
/// destroyed; slow state changes keep the machine from finishing in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deadline_destroys_the_machine() {
    let root = tempfile::tempdir().expect("tempdir");
    let machines = start_machines(&root.path().join("machines")).await;
    machines.set_faults(Faults {
        state_change_delay: Duration::from_secs(3),
        ..Faults::default()
    });
    let system = start_system_with(&root.path().join("data"), Some(machines.base_url())).await;
    let api = system.api_url();

    let spec = format!("{}  activeDeadlineSeconds: 1\n", upload_spec("late", ""));
    reqwest::Client::new()
        .put(format!("{api}/v1/jobs/late"))
        .body(spec)
        .send()
        .await
        .expect("apply");
    upload(&api, "late", sine_wav(44100, 1, 1)).await;
    let job = wait_for_job(&api, "late", TIMEOUT, |job| job.status.phase.is_finished()).await;

    assert_eq!(job.status.phase, Phase::Failed);
    assert_eq!(
        job.status.condition("Complete").map(|c| c.reason.as_str()),
        Some("DeadlineExceeded")
    );
    assert_no_machine_left(&machines.base_url()).await;

    system.shutdown().await;
    machines.shutdown().await;
}

/// Deleting a job with a live machine destroys the machine first, then removes the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delete_destroys_machines_then_removes_the_job() {
    let root = tempfile::tempdir().expect("tempdir");
    let machines = start_machines(&root.path().join("machines")).await;
    machines.set_faults(Faults {
        state_change_delay: Duration::from_secs(2),
        ..Faults::default()
    });
    let system = start_system_with(&root.path().join("data"), Some(machines.base_url())).await;
    let api = system.api_url();
    let http = reqwest::Client::new();

    submit(&api, "doomed-job", 3, sine_wav(44100, 1, 1)).await;
    wait_for_job(&api, "doomed-job", TIMEOUT, |job| {
        job.status.machine_id.is_some()
    })
    .await;
    let response = http
        .delete(format!("{api}/v1/jobs/doomed-job"))
        .send()
        .await
        .expect("delete");
    assert_eq!(response.status(), 200);

    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let status = http
            .get(format!("{api}/v1/jobs/doomed-job"))
            .send()
            .await
            .expect("get")
            .status();
        if status == 404 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job still present after delete"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_no_machine_left(&machines.base_url()).await;

    system.shutdown().await;
    machines.shutdown().await;
}

/// A machine whose metadata names no live attempt is destroyed by the resync sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resync_destroys_orphan_machines() {
    let root = tempfile::tempdir().expect("tempdir");
    let machines = start_machines(&root.path().join("machines")).await;
    let system = start_system_with(&root.path().join("data"), Some(machines.base_url())).await;

    let orphan = serde_json::json!({
        "name": "ghost-g1-a1",
        "config": {
            "image": "transcoder:local",
            "init": {"cmd": ["sh", "-c", "sleep 60"]},
            "metadata": {"transcoder_job": "ghost", "transcoder_uid": "gone", "transcoder_generation": "1", "transcoder_attempt": "1"}
        }
    });
    let url = format!(
        "{}/apps/{}/machines",
        machines.base_url(),
        controller::local::LOCAL_APP
    );
    let response = reqwest::Client::new()
        .post(&url)
        .json(&orphan)
        .send()
        .await
        .expect("create orphan");
    assert!(
        response.status().is_success(),
        "orphan create: {}",
        response.status()
    );

    assert_no_machine_left(&machines.base_url()).await;

    system.shutdown().await;
    machines.shutdown().await;
}

/// With `max_concurrent_machines` at 2, six jobs applied at once queue: no more than two
/// machines are ever created, starting or started at once, and all six succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn machine_limit_queues_jobs_instead_of_creating_machines() {
    let root = tempfile::tempdir().expect("tempdir");
    let machines = start_machines(&root.path().join("machines")).await;
    machines.set_faults(Faults {
        state_change_delay: Duration::from_millis(300),
        ..Faults::default()
    });
    let settings = controller::reconciler::ReconcilerSettings {
        max_concurrent_machines: 2,
        ..fast_settings()
    };
    let system = start_system_configured(
        &root.path().join("data"),
        Some(machines.base_url()),
        settings,
    )
    .await;
    let api = system.api_url();

    let jobs = names("queued", 6);
    for name in &jobs {
        submit(&api, name, 3, sine_wav(22050, 1, 1)).await;
    }
    let mut max_live = 0;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let machines_now = support::all_machines(&machines.base_url()).await;
        let live = machines_now
            .iter()
            .filter(|m| {
                use fly_machines::types::MachineState::{Created, Started, Starting};
                matches!(m.state, Created | Starting | Started)
            })
            .count();
        max_live = max_live.max(live);
        let list: serde_json::Value = reqwest::get(format!("{api}/v1/jobs"))
            .await
            .expect("list")
            .json()
            .await
            .expect("JSON");
        let items = list["items"].as_array().expect("items");
        if items
            .iter()
            .all(|job| job["status"]["phase"] == "Succeeded")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "jobs did not finish: {list}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    assert!(max_live <= 2, "{max_live} machines were live at once");
    assert!(max_live >= 1);
    assert_one_machine_per_attempt(&machines.base_url()).await;

    system.shutdown().await;
    machines.shutdown().await;
}
