//! The create request of a worker machine, built from a production configuration: the image is
//! the controller's own, the worker reaches the controller at its Flycast address, and the only
//! secret in the request is the attempt's own token.

use std::collections::BTreeSet;

use controller::config::{ServeArgs, ServeConfig, ENV_FLY_APP_NAME, ENV_FLY_IMAGE_REF};
use controller::machine_template::MachineTemplate;
use controller::spec;
use controller::store::StoredJob;
use fly_machines::types::CreateMachineRequest;

const FLY_TOKEN: &str = "FlyV1 fm2_fly-token-do-not-leak";
const ACCESS_KEY_ID: &str = "R2ACCESSKEYDONOTLEAK";
const SECRET_ACCESS_KEY: &str = "r2-secret-key-do-not-leak";
const ATTEMPT_TOKEN: &str = "attempt-token-3f9a";
const IMAGE: &str = "registry.fly.io/transcoder:deployment-01JABCDEF";

/// Builds the template that `transcoder serve` uses on a Fly machine of the app `transcoder`.
fn production_template() -> MachineTemplate {
    let args = ServeArgs {
        fly_api_token: Some(FLY_TOKEN.to_owned()),
        worker_app: Some("transcoder-workers".to_owned()),
        worker_region: Some("ord".to_owned()),
        s3_endpoint: Some("https://account.r2.cloudflarestorage.com".to_owned()),
        s3_bucket: Some("media".to_owned()),
        access_key_id: Some(ACCESS_KEY_ID.to_owned()),
        secret_access_key: Some(SECRET_ACCESS_KEY.to_owned()),
        ..ServeArgs::default()
    };
    let env = |name: &str| match name {
        ENV_FLY_IMAGE_REF => Some(IMAGE.to_owned()),
        ENV_FLY_APP_NAME => Some("transcoder".to_owned()),
        _ => None,
    };
    ServeConfig::from_args(&args, env)
        .expect("production configuration is valid")
        .template
}

/// Builds a stored job with its first attempt from the stored JSON form.
fn job_with_attempt() -> StoredJob {
    let job = spec::parse(
        "apiVersion: transcoder/v1\nkind: TranscodeJob\nmetadata:\n  name: weekly-42\nspec:\n  \
         source:\n    url: s3://media/in/42.wav\n  output:\n    codec: mp3\n    bitrateKbps: 192\n",
    )
    .expect("valid spec");
    let mut job = serde_json::to_value(job).expect("job serializes");
    job["metadata"]["uid"] = serde_json::json!("6f1c2d3e-0000-4000-8000-000000000042");
    job["metadata"]["generation"] = serde_json::json!(1);

    serde_json::from_value(serde_json::json!({
        "job": job,
        "attempt": {
            "number": 1,
            "generation": 1,
            "token": ATTEMPT_TOKEN,
            "machineName": "weekly-42-g1-a1",
            "createdAt": "2026-01-01T00:00:00Z",
        },
    }))
    .expect("stored job decodes")
}

fn create_request() -> CreateMachineRequest {
    let job = job_with_attempt();
    let attempt = job.attempt.clone().expect("attempt");
    production_template().create_request(&job, &attempt)
}

/// The machine's environment contains the four TRANSCODER_* variables of the worker protocol and
/// nothing else.
#[test]
fn worker_env_has_only_transcoder_variables() {
    let request = create_request();
    let env = request.config.env.clone().expect("env is set");

    let keys: BTreeSet<&str> = env.keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> = [
        protocol::ENV_API_URL,
        protocol::ENV_JOB,
        protocol::ENV_ATTEMPT,
        protocol::ENV_TOKEN,
    ]
    .into_iter()
    .collect();
    assert_eq!(keys, expected);
    assert!(keys.iter().all(|key| key.starts_with("TRANSCODER_")));

    assert_eq!(env[protocol::ENV_API_URL], "http://transcoder.flycast");
    assert_eq!(env[protocol::ENV_JOB], "weekly-42");
    assert_eq!(env[protocol::ENV_ATTEMPT], "1");
    assert_eq!(env[protocol::ENV_TOKEN], ATTEMPT_TOKEN);
}

/// Neither the Fly token nor the store's keys appear anywhere in the request Fly receives.
#[test]
fn create_request_carries_no_controller_secret() {
    let body = serde_json::to_string(&create_request()).expect("request serializes");

    for secret in [FLY_TOKEN, "fm2_fly-token", ACCESS_KEY_ID, SECRET_ACCESS_KEY] {
        assert!(
            !body.contains(secret),
            "{secret:?} leaked into the create request: {body}"
        );
    }
    assert!(
        body.contains(ATTEMPT_TOKEN),
        "attempt token missing: {body}"
    );
}

/// Worker machines run the controller's own image with the worker's job command, once.
#[test]
fn worker_machine_runs_controller_image_once() {
    let request = create_request();
    let config = &request.config;

    assert_eq!(config.image.as_deref(), Some(IMAGE));
    let command = config.init.as_ref().and_then(|init| init.cmd.clone());
    assert_eq!(
        command,
        Some(vec!["transcoder-worker".to_owned(), "run".to_owned()])
    );
    assert_eq!(config.auto_destroy, Some(true));
    assert_eq!(request.region.as_deref(), Some("ord"));
}
