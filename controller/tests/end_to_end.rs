//! The main job end to end through the HTTP API: spec, upload, machine, worker, MP3.

mod support;

use std::time::Duration;

use controller::spec::TranscodeJob;
use controller::status::Phase;
use sha2::{Digest, Sha256};
use support::{
    decode_mp3, mp3_frame_samples, repo_root, start_system, upload, upload_spec, wait_for_job,
};

const JOB_TIMEOUT: Duration = Duration::from_secs(120);

/// An upload job for the shipped speech sample succeeds, and its MP3 at the download URL
/// decodes to the input's duration, rate and channel count.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploaded_wav_becomes_mp3_of_same_duration() {
    let data = tempfile::tempdir().expect("tempdir");
    let system = start_system(data.path()).await;
    let api = system.api_url();
    let http = reqwest::Client::new();

    let spec = upload_spec("speech", "    bitrateKbps: 64\n");
    let response = http
        .put(format!("{api}/v1/jobs/speech"))
        .body(spec)
        .send()
        .await
        .expect("apply");
    assert_eq!(response.status(), 201, "first apply creates the job");

    let wav = std::fs::read(repo_root().join("samples/speech.wav")).expect("sample WAV");
    upload(&api, "speech", wav).await;
    let job = wait_for_job(&api, "speech", JOB_TIMEOUT, |job| {
        job.status.phase.is_finished()
    })
    .await;

    assert_eq!(
        job.status.phase,
        Phase::Succeeded,
        "status: {:#?}",
        job.status
    );
    assert_eq!(job.status.attempts, 1);
    let output = job.status.output.clone().expect("output status");
    assert_eq!(output.url, "s3://transcoder/outputs/speech.mp3");
    assert_eq!(output.sample_rate_hz, 22050);
    assert_eq!(output.channels, 1);

    let download = output.download_url.clone().expect("download URL");
    let mp3 = http
        .get(&download)
        .send()
        .await
        .expect("download")
        .bytes()
        .await
        .expect("MP3 bytes")
        .to_vec();
    assert_eq!(mp3.len() as u64, output.bytes);
    assert_eq!(hex::encode(Sha256::digest(&mp3)), output.sha256);

    let decoded = decode_mp3(mp3);
    let input_frames = 4 * 22050;
    assert_eq!(decoded.sample_rate, 22050);
    assert_eq!(decoded.channels, 1);
    assert!(
        decoded.frames.abs_diff(input_frames) <= mp3_frame_samples(22050),
        "decoded {} frames, input has {input_frames}",
        decoded.frames
    );

    system.shutdown().await;
}

/// Bad specs get 422 with the field path and the allowed values, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_are_rejected_with_field_paths() {
    let data = tempfile::tempdir().expect("tempdir");
    let system = start_system(data.path()).await;
    let api = system.api_url();
    let http = reqwest::Client::new();

    let cases = [
        (
            "bad-bitrate",
            upload_spec("bad-bitrate", "    bitrateKbps: 100\n"),
            "spec.output.bitrateKbps",
            "320",
        ),
        (
            "unknown-field",
            upload_spec("unknown-field", "    bitrate: 1\n"),
            "spec.output.bitrate",
            "bitrateKbps",
        ),
        (
            "Bad_Name",
            upload_spec("Bad_Name", ""),
            "metadata.name",
            "RFC 1123",
        ),
    ];
    for (name, spec, field, allowed) in cases {
        let response = http
            .put(format!("{api}/v1/jobs/{name}"))
            .body(spec)
            .send()
            .await
            .expect("apply");
        assert_eq!(response.status(), 422, "case {name}");

        let body: serde_json::Value = response.json().await.expect("error JSON");
        let details = body["details"].as_array().expect("details");
        assert_eq!(details[0]["field"], field, "case {name}: {body}");
        assert!(
            details[0]["message"]
                .as_str()
                .expect("message")
                .contains(allowed),
            "case {name}: {body}"
        );
    }

    let list: serde_json::Value = http
        .get(format!("{api}/v1/jobs"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        list["items"].as_array().expect("items").len(),
        0,
        "nothing stored: {list}"
    );

    system.shutdown().await;
}

/// Applying the same spec twice changes nothing; a changed spec gets a new generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reapplying_same_spec_is_unchanged() {
    let data = tempfile::tempdir().expect("tempdir");
    let system = start_system(data.path()).await;
    let api = system.api_url();
    let http = reqwest::Client::new();
    let spec = upload_spec("again", "    bitrateKbps: 128\n");

    let first = http
        .put(format!("{api}/v1/jobs/again"))
        .body(spec.clone())
        .send()
        .await
        .expect("apply");
    let second = http
        .put(format!("{api}/v1/jobs/again"))
        .body(spec.clone())
        .send()
        .await
        .expect("apply");
    let changed = http
        .put(format!("{api}/v1/jobs/again"))
        .body(spec.replace("128", "160"))
        .send()
        .await
        .expect("apply");

    assert_eq!(first.status(), 201);
    assert_eq!(second.status(), 200);
    let second: serde_json::Value = second.json().await.expect("JSON");
    assert_eq!(second["outcome"], "unchanged");
    let changed: serde_json::Value = changed.json().await.expect("JSON");
    assert_eq!(changed["outcome"], "configured");
    let job: TranscodeJob = serde_json::from_value(changed["job"].clone()).expect("job");
    assert_eq!(job.metadata.generation, Some(2));

    system.shutdown().await;
}
