//! Crash safety of `transcoder up`: a `kill -9` mid-job loses no job, and the unfinished one
//! completes after a restart with the same data directory.

mod support;

use std::time::Duration;

use controller::status::Phase;
use rand::{Rng, SeedableRng};
use support::{
    assert_no_machine_left, assert_one_machine_per_attempt, free_port, sine_wav, spawn_up,
    start_machines, upload, upload_spec, wait_for_job, wait_healthy,
};

const TIMEOUT: Duration = Duration::from_secs(180);

/// Killing `up` while a long job runs keeps both jobs; after a restart the finished one is
/// still Succeeded and the unfinished one completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_during_job_keeps_jobs_and_finishes_them() {
    let root = tempfile::tempdir().expect("tempdir");
    let data_dir = root.path().join("data");
    let port = free_port();
    let api = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();

    let mut first = spawn_up(port, &data_dir, None, "up-first.log");
    wait_healthy(&api).await;
    for (name, seconds) in [("short", 1), ("long", 240)] {
        let response = http
            .put(format!("{api}/v1/jobs/{name}"))
            .body(upload_spec(name, ""))
            .send()
            .await
            .expect("apply");
        assert_eq!(response.status(), 201, "apply {name}");
        upload(&api, name, sine_wav(44100, 2, seconds)).await;
    }
    wait_for_job(&api, "short", TIMEOUT, |job| {
        job.status.phase == Phase::Succeeded
    })
    .await;
    let running = wait_for_job(&api, "long", TIMEOUT, |job| {
        job.status.phase != Phase::Pending
    })
    .await;
    assert_eq!(
        running.status.phase,
        Phase::Running,
        "the long job must still run when the controller is killed"
    );

    first.kill().expect("kill -9 transcoder up");
    first.wait().expect("reap transcoder up");

    let mut second = spawn_up(port, &data_dir, None, "up-second.log");
    wait_healthy(&api).await;
    let short = wait_for_job(&api, "short", TIMEOUT, |_| true).await;
    let long = wait_for_job(&api, "long", TIMEOUT, |job| job.status.phase.is_finished()).await;

    assert_eq!(short.status.phase, Phase::Succeeded);
    assert_eq!(
        long.status.phase,
        Phase::Succeeded,
        "status: {:#?}",
        long.status
    );
    let output = long.status.output.expect("output of the long job");
    assert!(
        (output.duration_seconds - 240.0).abs() < 0.05,
        "duration {}",
        output.duration_seconds
    );

    second.kill().expect("stop transcoder up");
    second.wait().expect("reap transcoder up");
}

/// `kill -9` of the controller at random moments during a run of many jobs, each time
/// followed by a restart against the same Machines API, loses no job and never gives one
/// attempt two machines; in the end every job succeeds and no machine is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_kills_during_many_jobs_lose_nothing() {
    let root = tempfile::tempdir().expect("tempdir");
    let data_dir = root.path().join("data");
    let machines = start_machines(&root.path().join("machines")).await;
    let machines_url = machines.base_url();
    let port = free_port();
    let api = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let seed: u64 = rand::random();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let mut controller = spawn_up(port, &data_dir, Some(&machines_url), "up-0.log");
    wait_healthy(&api).await;
    let names: Vec<String> = (0..12).map(|n| format!("job-{n}")).collect();
    for (n, name) in names.iter().enumerate() {
        let response = http
            .put(format!("{api}/v1/jobs/{name}"))
            .body(upload_spec(name, ""))
            .send()
            .await
            .expect("apply");
        assert_eq!(response.status(), 201, "apply {name}");
        upload(&api, name, sine_wav(22050, 1, 1 + (n % 3) as u32 * 10)).await;
    }

    for round in 1..=4 {
        // The kill moments are what is random here; nothing waits on this sleep.
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..1500))).await;
        controller.kill().expect("kill -9 transcoder up");
        controller.wait().expect("reap transcoder up");
        controller = spawn_up(
            port,
            &data_dir,
            Some(&machines_url),
            &format!("up-{round}.log"),
        );
        wait_healthy(&api).await;
    }

    for name in &names {
        let job = wait_for_job(&api, name, TIMEOUT, |job| job.status.phase.is_finished()).await;
        assert_eq!(
            job.status.phase,
            Phase::Succeeded,
            "seed {seed}, job {name}: {:#?}",
            job.status
        );
    }
    assert_one_machine_per_attempt(&machines_url).await;
    assert_no_machine_left(&machines_url).await;

    controller.kill().expect("stop transcoder up");
    controller.wait().expect("reap transcoder up");
    machines.shutdown().await;
}
