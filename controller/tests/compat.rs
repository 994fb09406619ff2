//! The original service's job flow: create, upload, start, poll, download.

mod support;
mod surface;

use std::time::Duration;

use controller::local::ControllerOptions;
use serde_json::{json, Value};
use support::{decode_mp3, sine_wav};
use surface::{poll, start_with};

/// A job created with `POST /jobs/` waits until it is started, then transcodes the uploaded
/// WAV to the requested MP3 format, which downloads from `transcode.download_url`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compat_flow_reaches_completed() {
    let data = tempfile::tempdir().expect("tempdir");
    let system = start_with(data.path(), ControllerOptions::default()).await;
    let api = system.api_url();
    let http = reqwest::Client::new();

    let request = json!({"transcode": {"format": {
        "extension": "mp3", "bit_depth": 16, "bit_rate": 192, "sample_rate": 44100
    }}});
    let response = http
        .post(format!("{api}/jobs/"))
        .json(&request)
        .send()
        .await
        .expect("create");
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.expect("JSON");
    let id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(created["status"], "created");
    assert_eq!(created["transcode"]["format"]["bit_rate"], 192);
    assert_eq!(created["source"]["upload_method"], "PUT");

    let mut upload = http.put(
        created["source"]["upload_url"]
            .as_str()
            .expect("upload_url"),
    );
    for (header, value) in created["source"]["upload_headers"]
        .as_object()
        .expect("headers")
    {
        upload = upload.header(header, value.as_str().expect("header value"));
    }
    let uploaded = upload
        .body(sine_wav(22050, 2, 2))
        .send()
        .await
        .expect("upload");
    assert!(uploaded.status().is_success(), "{}", uploaded.status());

    // Not started yet: the upload alone does not run it.
    let waiting: Value = http
        .get(format!("{api}/jobs/{id}"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("JSON");
    assert_eq!(waiting["status"], "created");

    let started = http
        .post(format!("{api}/jobs/{id}/status/started/"))
        .send()
        .await
        .expect("start");
    assert_eq!(started.status(), 200);
    let started: Value = started.json().await.expect("JSON");
    assert_ne!(started["status"], "created");
    assert!(started["source"]["upload_url"].is_null());

    let done = poll(Duration::from_secs(120), "the job to finish", || {
        let (http, url) = (http.clone(), format!("{api}/jobs/{id}"));
        async move {
            let job: Value = http.get(url).send().await.ok()?.json().await.ok()?;
            matches!(job["status"].as_str(), Some("completed" | "failed")).then_some(job)
        }
    })
    .await;
    assert_eq!(done["status"], "completed", "{done:#}");

    let mp3 = http
        .get(
            done["transcode"]["download_url"]
                .as_str()
                .expect("download_url"),
        )
        .send()
        .await
        .expect("download")
        .bytes()
        .await
        .expect("MP3 bytes")
        .to_vec();
    let decoded = decode_mp3(mp3);
    assert_eq!(decoded.sample_rate, 44100);
    assert_eq!(decoded.channels, 2);
    assert!((decoded.seconds() - 2.0).abs() < 0.1, "{decoded:?}");

    let completed = http
        .post(format!("{api}/jobs/{id}/status/completed/"))
        .send()
        .await
        .expect("completed");
    assert_eq!(completed.status(), 202);

    system.shutdown().await;
}

/// Unsupported formats and unknown jobs get FastAPI-style errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_rejects_bad_formats_and_unknown_jobs() {
    let data = tempfile::tempdir().expect("tempdir");
    let system = start_with(data.path(), ControllerOptions::default()).await;
    let api = system.api_url();
    let http = reqwest::Client::new();

    for (format, field) in [
        (json!({"extension": "wav"}), "extension"),
        (json!({"extension": "mp3", "bit_rate": 100}), "bit_rate"),
        (json!({"extension": "mp3", "bit_depth": 24}), "bit_depth"),
    ] {
        let response = http
            .post(format!("{api}/jobs/"))
            .json(&json!({"transcode": {"format": format}}))
            .send()
            .await
            .expect("create");
        assert_eq!(response.status(), 422, "{field}");
        let body: Value = response.json().await.expect("JSON");
        assert!(
            body["detail"].as_str().expect("detail").contains(field),
            "{body}"
        );
    }

    let missing = http
        .get(format!("{api}/jobs/job-000000000000"))
        .send()
        .await
        .expect("get");
    assert_eq!(missing.status(), 404);

    system.shutdown().await;
}
