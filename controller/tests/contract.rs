//! The published descriptions of the API: the spec's JSON Schema and the OpenAPI document
//! agree with the code and with the example specs.

mod support;
mod surface;

use std::collections::BTreeSet;

use controller::api::OPENAPI_JSON;
use controller::documents::read_documents;
use controller::local::ControllerOptions;
use controller::spec;
use serde_json::{json, Value};
use support::repo_root;
use surface::start_with;

fn schema() -> Value {
    let text = std::fs::read_to_string(repo_root().join("specs/transcodejob.schema.json"))
        .expect("schema file");
    serde_json::from_str(&text).expect("schema is JSON")
}

fn validator() -> jsonschema::Validator {
    jsonschema::draft202012::new(&schema()).expect("schema compiles")
}

/// A document of a spec file as JSON.
fn as_json(text: &str) -> Value {
    serde_yaml::from_str(text).expect("spec is YAML or JSON")
}

/// Every example spec under specs/ validates against the schema, and the code accepts it.
#[test]
fn example_specs_match_the_schema() {
    let validator = validator();
    let documents = read_documents(&repo_root().join("specs"), true).expect("specs readable");
    assert!(
        documents.len() >= 3,
        "found {} example specs",
        documents.len()
    );

    for document in &documents {
        let errors: Vec<String> = validator
            .iter_errors(&as_json(&document.text))
            .map(|error| format!("{} at {}", error, error.instance_path()))
            .collect();
        assert_eq!(errors, Vec::<String>::new(), "{}", document.location());
        assert!(document.parse().is_ok(), "{}", document.location());
    }
}

/// The schema's enums and constants are the ones spec.rs checks.
#[test]
fn schema_enums_match_the_code() {
    let schema = schema();
    let properties = &schema["properties"];
    let output = &properties["spec"]["properties"]["output"]["properties"];

    assert_eq!(properties["apiVersion"]["const"], spec::API_VERSION);
    assert_eq!(properties["kind"]["const"], spec::KIND);
    assert_eq!(
        output["bitrateKbps"]["enum"],
        json!(spec::MP3_BITRATES_KBPS)
    );
    assert_eq!(
        output["sampleRateHz"]["enum"],
        json!(spec::MP3_SAMPLE_RATES_HZ)
    );
    assert_eq!(
        properties["spec"]["properties"]["machine"]["properties"]["size"]["enum"],
        json!(spec::MACHINE_SIZES)
    );
    assert_eq!(output["codec"]["enum"], json!(["mp3"]));
}

/// Specs the code rejects for a reason the schema can state are rejected by the schema too,
/// and the limits on both sides of each bound agree.
#[test]
fn schema_rejects_what_the_code_rejects() {
    let validator = validator();
    let base = "apiVersion: transcoder/v1\nkind: TranscodeJob\nmetadata: {name: a}\n";
    let cases = [
        ("spec: {source: {upload: true}, output: {codec: mp3, bitrateKbps: 100}}", false),
        ("spec: {source: {upload: true}, output: {codec: ogg}}", false),
        ("spec: {source: {upload: true}, output: {codec: mp3, bitrate: 1}}", false),
        ("spec: {source: {upload: true, url: \"s3://b-1/k\"}, output: {codec: mp3}}", false),
        ("spec: {source: {upload: false}, output: {codec: mp3}}", false),
        ("spec: {source: {url: \"http://example.invalid/a\"}, output: {codec: mp3}}", false),
        ("spec: {source: {upload: true}, output: {codec: mp3, bitrateKbps: 128, vbrQuality: 2}}", false),
        ("spec: {source: {upload: true}, output: {codec: mp3, vbrQuality: 10}}", false),
        ("spec: {source: {upload: true}, output: {codec: mp3, channels: 3}}", false),
        ("spec: {source: {upload: true}, output: {codec: mp3}, backoffLimit: 101}", false),
        ("spec: {source: {upload: true}, output: {codec: mp3}, backoffLimit: 100}", true),
        ("spec: {source: {upload: true}, output: {codec: mp3}, activeDeadlineSeconds: 0}", false),
        ("spec: {source: {upload: true}, output: {codec: mp3}, machine: {region: ORD}}", false),
        ("spec: {source: {url: \"https://example.invalid/a.wav\"}, output: {codec: mp3, vbrQuality: 9}}", true),
        ("spec: {source: {url: \"s3://media/in/a.wav\"}, output: {codec: mp3, url: \"s3://media/out/a.mp3\"}}", true),
    ];
    for (spec_text, valid) in cases {
        let text = format!("{base}{spec_text}\n");

        assert_eq!(
            validator.is_valid(&as_json(&text)),
            valid,
            "schema: {spec_text}"
        );
        assert_eq!(spec::parse(&text).is_ok(), valid, "code: {spec_text}");
    }

    let bad_name = "apiVersion: transcoder/v1\nkind: TranscodeJob\nmetadata: {name: Bad_Name}\n\
                    spec: {source: {upload: true}, output: {codec: mp3}}\n";
    assert!(!validator.is_valid(&as_json(bad_name)));
}

/// The OpenAPI document embeds the spec schema unchanged and describes every route.
#[test]
fn openapi_embeds_the_spec_schema() {
    let document: Value = serde_json::from_str(OPENAPI_JSON).expect("OpenAPI is JSON");

    assert_eq!(document["openapi"], "3.1.0");
    assert_eq!(document["components"]["schemas"]["TranscodeJob"], schema());
    let paths: BTreeSet<&str> = document["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .map(String::as_str)
        .collect();
    let expected = BTreeSet::from([
        "/healthz",
        "/metrics",
        "/openapi.json",
        "/v1/jobs",
        "/v1/jobs/{name}",
        "/v1/jobs/{name}/events",
        "/v1/jobs/{name}/upload-url",
        "/v1/jobs/{name}/assignment",
        "/v1/jobs/{name}/callbacks",
        "/v1/sync",
        "/jobs/",
        "/jobs/{id}",
        "/jobs/{id}/status/started/",
        "/jobs/{id}/status/completed/",
    ]);
    assert_eq!(paths, expected);
}

/// The server serves the document, and every operation in it reaches a handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_routed() {
    let data = tempfile::tempdir().expect("tempdir");
    let system = start_with(data.path(), ControllerOptions::default()).await;
    let api = system.api_url();
    let http = reqwest::Client::new();

    let served: Value = http
        .get(format!("{api}/openapi.json"))
        .send()
        .await
        .expect("openapi request")
        .json()
        .await
        .expect("openapi JSON");
    let document: Value = serde_json::from_str(OPENAPI_JSON).expect("OpenAPI is JSON");
    assert_eq!(served, document);

    for (path, item) in document["paths"].as_object().expect("paths") {
        let url = format!(
            "{api}{}",
            path.replace("{name}", "absent").replace("{id}", "absent")
        );
        for method in ["get", "put", "post", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            let method =
                reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let response = http
                .request(method.clone(), &url)
                .send()
                .await
                .expect("request");
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            assert_ne!(status, 405, "{method} {path}");
            assert!(
                !(status == 404 && body.is_empty()),
                "{method} {path} has no route"
            );
        }
    }

    system.shutdown().await;
}
