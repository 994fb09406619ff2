//! fly.toml against the controller it deploys: its environment passes serve's configuration
//! check, the volume, service, checks and listen address agree, and Fly's stop signal leaves
//! serve time to drain.

use std::collections::BTreeMap;

use controller::config::{
    ServeArgs, ServeConfig, ENV_FLY_APP_NAME, ENV_FLY_IMAGE_REF, SHUTDOWN_GRACE,
};
use toml::Table;

mod support;

fn fly_toml() -> Table {
    let text = std::fs::read_to_string(support::repo_root().join("fly.toml")).expect("fly.toml");
    text.parse().expect("fly.toml is valid TOML")
}

fn string<'a>(table: &'a Table, key: &str) -> &'a str {
    table
        .get(key)
        .and_then(toml::Value::as_str)
        .unwrap_or_else(|| panic!("{key} is not a string in {table:#?}"))
}

fn table<'a>(table: &'a Table, key: &str) -> &'a Table {
    table
        .get(key)
        .and_then(toml::Value::as_table)
        .unwrap_or_else(|| panic!("[{key}] is missing"))
}

fn env_of(config: &Table) -> BTreeMap<String, String> {
    table(config, "env")
        .iter()
        .map(|(key, value)| {
            let value = value.as_str().expect("env values are strings");
            (key.clone(), value.to_owned())
        })
        .collect()
}

/// Parses a duration of whole seconds such as "30s".
fn seconds(text: &str) -> u64 {
    text.strip_suffix('s')
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("{text:?} is not a number of seconds"))
}

/// Returns the controller's configuration from fly.toml's [env], the secrets the README sets,
/// and the variables Fly sets on the machine.
fn deployed_config(config: &Table) -> ServeConfig {
    let mut args = ServeArgs {
        fly_api_token: Some("FlyV1 fm2_deploy-token".to_owned()),
        worker_app: Some("transcoder-workers".to_owned()),
        s3_endpoint: Some("https://account.r2.cloudflarestorage.com".to_owned()),
        s3_bucket: Some("media".to_owned()),
        access_key_id: Some("r2-key-id".to_owned()),
        secret_access_key: Some("r2-secret".to_owned()),
        api_token: Some("user-token".to_owned()),
        ..ServeArgs::default()
    };
    let mut process_env = BTreeMap::from([
        (
            ENV_FLY_APP_NAME.to_owned(),
            string(config, "app").to_owned(),
        ),
        (
            ENV_FLY_IMAGE_REF.to_owned(),
            "registry.fly.io/transcoder:deployment-1".to_owned(),
        ),
    ]);
    for (key, value) in env_of(config) {
        match key.as_str() {
            "TRANSCODER_LISTEN" => args.listen = Some(value),
            "TRANSCODER_DATA_DIR" => args.data_dir = Some(value),
            "FLY_MACHINES_API_URL" => args.machines_api_url = Some(value),
            "S3_REGION" => args.s3_region = Some(value),
            "TRANSCODER_LOG_FORMAT" | "RUST_LOG" => {
                process_env.insert(key, value);
            }
            other => panic!("fly.toml sets {other}, which this test does not map to a setting"),
        }
    }

    match ServeConfig::from_args(&args, |name| process_env.get(name).cloned()) {
        Ok(config) => config,
        Err(err) => panic!("fly.toml's environment is rejected: {:#?}", err.problems),
    }
}

/// With fly.toml's environment and the documented secrets, serve's configuration check passes,
/// and workers call back at the app's Flycast address through the private Machines API.
#[test]
fn fly_toml_environment_passes_serve_checks() {
    let config = fly_toml();

    let serve = deployed_config(&config);

    assert_eq!(
        serve.template.controller_url,
        format!("http://{}.flycast", string(&config, "app"))
    );
    assert_eq!(serve.fly.base_url, "http://_api.internal:4280/v1");
    assert_eq!(serve.store.region, "auto");
    assert_eq!(
        env_of(&config)
            .get("TRANSCODER_LOG_FORMAT")
            .map(String::as_str),
        Some("json")
    );
}

/// The volume is mounted where serve keeps its database, and the service, its Flycast port and
/// both health checks reach the address serve listens on.
#[test]
fn volume_service_and_checks_match_serve() {
    let config = fly_toml();
    let serve = deployed_config(&config);

    let mounts = table(&config, "mounts");
    assert_eq!(serve.data_dir.to_str(), Some(string(mounts, "destination")));
    assert!(!string(mounts, "source").is_empty());

    // Flycast needs the app to listen on 0.0.0.0.
    assert!(serve.listen.is_ipv4(), "{}", serve.listen);
    assert!(serve.listen.ip().is_unspecified(), "{}", serve.listen);
    let port = i64::from(serve.listen.port());

    let services = config["services"].as_array().expect("[[services]]");
    assert_eq!(services.len(), 1);
    let service = services[0].as_table().expect("service table");
    assert_eq!(service["internal_port"].as_integer(), Some(port));
    assert_eq!(service["min_machines_running"].as_integer(), Some(1));
    assert_eq!(string(service, "auto_stop_machines"), "off");

    // Workers call http://APP.flycast, which is port 80 and plain HTTP.
    let ports = service["ports"].as_array().expect("[[services.ports]]");
    assert_eq!(ports.len(), 1);
    let flycast = ports[0].as_table().expect("port table");
    assert_eq!(flycast["port"].as_integer(), Some(80));
    assert_eq!(flycast["handlers"].as_array().map(Vec::len), Some(1));
    assert_eq!(flycast["handlers"][0].as_str(), Some("http"));
    assert!(!flycast.contains_key("force_https"));

    let service_check = service["http_checks"][0].as_table().expect("http check");
    assert_eq!(string(service_check, "path"), "/healthz");

    let machine_check = table(table(&config, "checks"), "healthz");
    assert_eq!(string(machine_check, "type"), "http");
    assert_eq!(string(machine_check, "path"), "/healthz");
    assert_eq!(machine_check["port"].as_integer(), Some(port));
}

/// Fly sends a signal serve stops on, and waits longer than serve's drain before SIGKILL.
#[test]
fn kill_timeout_covers_serve_shutdown() {
    let config = fly_toml();

    assert!(matches!(
        string(&config, "kill_signal"),
        "SIGTERM" | "SIGINT"
    ));
    let timeout = seconds(string(&config, "kill_timeout"));
    assert!(
        timeout > SHUTDOWN_GRACE.as_secs(),
        "kill_timeout {timeout} s must exceed serve's {SHUTDOWN_GRACE:?} drain"
    );
}

/// One modest controller VM: the sled database takes one writer, and transcoding runs on the
/// worker machines.
#[test]
fn controller_vm_is_sized() {
    let config = fly_toml();

    let vms = config["vm"].as_array().expect("[[vm]]");
    assert_eq!(vms.len(), 1);
    let vm = vms[0].as_table().expect("vm table");
    assert!(string(vm, "size").starts_with("shared-cpu-"));
    let memory = string(vm, "memory");
    let megabytes: u64 = memory
        .strip_suffix("mb")
        .and_then(|number| number.parse().ok())
        .expect("memory in mb");
    assert!(megabytes >= 256, "{memory}");
}
