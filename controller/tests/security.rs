//! API security: the user token, per-attempt worker tokens, body limits, names and source
//! URLs.

mod support;
mod surface;

use std::time::Duration;

use controller::local::ControllerOptions;
use reqwest::StatusCode;
use support::{sine_wav, upload_spec};
use surface::{start_with, suspended_spec, transcoder};

const TOKEN: &str = "test-token-7f3a";

/// With a token configured, user endpoints reject requests without it or with another one,
/// open endpoints stay open, and the CLI passes with `--token`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_endpoints_require_the_api_token() {
    let data = tempfile::tempdir().expect("tempdir");
    let options = ControllerOptions {
        api_token: Some(TOKEN.to_owned()),
        ..ControllerOptions::default()
    };
    let system = start_with(data.path(), options).await;
    let api = system.api_url();
    let http = reqwest::Client::new();

    let requests = [
        http.get(format!("{api}/v1/jobs")),
        http.get(format!("{api}/v1/jobs?watch=true")),
        http.get(format!("{api}/v1/jobs/a")),
        http.put(format!("{api}/v1/jobs/a"))
            .body(suspended_spec("a", "", 128)),
        http.delete(format!("{api}/v1/jobs/a")),
        http.post(format!("{api}/v1/jobs/a/upload-url")),
        http.get(format!("{api}/v1/sync")),
        http.post(format!("{api}/jobs/")).body("{}"),
        http.get(format!("{api}/jobs/a")),
    ];
    for request in requests {
        let without = request.try_clone().expect("clonable request");
        let wrong = request.bearer_auth("another-token");
        for request in [without, wrong] {
            let response = request.send().await.expect("request");
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{}",
                response.url()
            );
        }
    }
    for open in ["healthz", "metrics", "openapi.json"] {
        let response = http
            .get(format!("{api}/{open}"))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::OK, "{open}");
    }

    let response = http
        .put(format!("{api}/v1/jobs/a"))
        .bearer_auth(TOKEN)
        .body(suspended_spec("a", "", 128))
        .send()
        .await
        .expect("apply");
    assert_eq!(response.status(), StatusCode::CREATED);

    let denied = transcoder(&api, &["get", "a"]).await;
    assert_eq!(denied.code, 1, "{denied:?}");
    assert!(denied.stderr.contains("API token"), "{denied:?}");
    let allowed = transcoder(&api, &["get", "a", "--token", TOKEN]).await;
    assert_eq!(allowed.code, 0, "{allowed:?}");
    assert!(allowed.stdout.contains("Pending"), "{allowed:?}");

    system.shutdown().await;
}

/// A worker token opens its own job's worker endpoints only: not another job's, and the user
/// token does not open them at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_token_is_valid_for_its_own_job_only() {
    let data = tempfile::tempdir().expect("tempdir");
    let options = ControllerOptions {
        api_token: Some(TOKEN.to_owned()),
        ..ControllerOptions::default()
    };
    let system = start_with(data.path(), options).await;
    let api = system.api_url();
    let http = reqwest::Client::new();
    for name in ["left", "right"] {
        let response = http
            .put(format!("{api}/v1/jobs/{name}"))
            .bearer_auth(TOKEN)
            .body(upload_spec(name, "    bitrateKbps: 64\n"))
            .send()
            .await
            .expect("apply");
        assert_eq!(response.status(), StatusCode::CREATED);
        let target: serde_json::Value = http
            .post(format!("{api}/v1/jobs/{name}/upload-url"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("upload-url")
            .json()
            .await
            .expect("JSON");
        let mut upload = http.put(target["url"].as_str().expect("url"));
        for (header, value) in target["headers"].as_object().expect("headers") {
            upload = upload.header(header, value.as_str().expect("header"));
        }
        upload
            .body(sine_wav(8000, 1, 1))
            .send()
            .await
            .expect("upload");
    }

    // The fixture's poll sends no token, so read the attempts from the store.
    let token_of = |name: &str| {
        let stored = system.store().get(name).expect("store read");
        stored
            .and_then(|job| job.attempt)
            .map(|attempt| attempt.token)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while token_of("left").is_none() || token_of("right").is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no attempts started"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left = token_of("left").expect("left token");

    let own = http
        .get(format!("{api}/v1/jobs/left/assignment"))
        .bearer_auth(&left)
        .send()
        .await
        .expect("assignment");
    assert_eq!(own.status(), StatusCode::OK);
    let other = http
        .get(format!("{api}/v1/jobs/right/assignment"))
        .bearer_auth(&left)
        .send()
        .await
        .expect("assignment");
    assert_eq!(other.status(), StatusCode::UNAUTHORIZED);
    let report = http
        .post(format!("{api}/v1/jobs/right/callbacks"))
        .bearer_auth(&left)
        .json(&serde_json::json!({"type": "progress", "fraction": 0.5}))
        .send()
        .await
        .expect("callback");
    assert_eq!(report.status(), StatusCode::UNAUTHORIZED);
    let user = http
        .get(format!("{api}/v1/jobs/right/assignment"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("assignment");
    assert_eq!(user.status(), StatusCode::UNAUTHORIZED);

    system.shutdown().await;
}

/// Bodies over 1 MiB get 413, names that are not RFC 1123 labels never reach the store, and
/// sources other than s3:// and https:// are rejected with the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_bad_names_and_urls_are_rejected() {
    let data = tempfile::tempdir().expect("tempdir");
    let system = start_with(data.path(), ControllerOptions::default()).await;
    let api = system.api_url();
    let http = reqwest::Client::new();

    let mut big = suspended_spec("big", "", 128);
    big.push_str(&format!("# {}\n", "x".repeat(1024 * 1024)));
    let response = http
        .put(format!("{api}/v1/jobs/big"))
        .body(big)
        .send()
        .await
        .expect("apply");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

    for name in ["..%2F..%2Fetc", "a%00b", "UPPER", "a.b"] {
        for url in [
            format!("{api}/v1/jobs/{name}"),
            format!("{api}/v1/jobs/{name}/events"),
            format!("{api}/v1/jobs/{name}/assignment"),
        ] {
            let response = http.get(&url).send().await.expect("get");
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{url}");
        }
        let response = http
            .put(format!("{api}/v1/jobs/{name}"))
            .body(suspended_spec("x", "", 128))
            .send()
            .await
            .expect("apply");
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{name}"
        );
    }

    for url in [
        "http://127.0.0.1/a.wav",
        "file:///etc/passwd",
        "ftp://example.invalid/a.wav",
        "s3://transcoder/../escape.wav",
    ] {
        let spec = format!(
            "apiVersion: transcoder/v1\nkind: TranscodeJob\nmetadata: {{name: src}}\n\
             spec: {{source: {{url: \"{url}\"}}, output: {{codec: mp3}}}}\n"
        );
        let response = http
            .put(format!("{api}/v1/jobs/src"))
            .body(spec)
            .send()
            .await
            .expect("apply");
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY, "{url}");
        let body: serde_json::Value = response.json().await.expect("JSON");
        assert_eq!(
            body["details"][0]["field"], "spec.source.url",
            "{url}: {body}"
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
    assert_eq!(list["items"], serde_json::json!([]));

    system.shutdown().await;
}

/// `up` on an address other hosts can reach refuses to start without an API token.
#[tokio::test]
async fn up_on_public_address_needs_a_token() {
    let data = tempfile::tempdir().expect("tempdir");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_transcoder"))
        .args(["up", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(data.path())
        .env_remove("TRANSCODER_API_TOKEN")
        .output()
        .await
        .expect("transcoder up runs");

    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--api-token"), "{stderr}");
    assert!(std::fs::read_dir(data.path())
        .expect("data dir")
        .next()
        .is_none());
}
