//! Settings of `transcoder serve`, read from flags and the environment and checked together, so
//! that one failed start names every missing or malformed variable instead of the first one.
//!
//! Parsing is left to [`ServeConfig::from_args`] rather than to clap: clap stops at the first
//! value it cannot parse, and an operator fixing a deployment wants the whole list.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use fly_machines::client::{FlyClientConfig, RateLimits};
use reqwest::header::HeaderValue;
use url::Url;

use crate::machine_template::MachineTemplate;
use crate::objectstore::{ObjectUrl, StoreSettings};
use crate::reconciler::ReconcilerSettings;

/// API address when `TRANSCODER_LISTEN` is unset.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// Job database directory when `TRANSCODER_DATA_DIR` is unset: the volume's mount point.
pub const DEFAULT_DATA_DIR: &str = "/data";
/// Machines API when `FLY_MACHINES_API_URL` is unset. Inside Fly the private
/// `http://_api.internal:4280/v1` avoids the public internet.
pub const DEFAULT_MACHINES_API_URL: &str = "https://api.machines.dev/v1";
/// Store region when `S3_REGION` is unset, as Cloudflare R2 expects.
pub const DEFAULT_S3_REGION: &str = "auto";
/// Time `serve` gives the API and the reconciler to finish after a stop signal. Every job write
/// is flushed when it is made, so stopping at the deadline loses no accepted job. fly.toml's
/// `kill_timeout` leaves a margin above it.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Environment variables that Fly sets on every machine. They supply defaults and are never required.
pub const ENV_FLY_IMAGE_REF: &str = "FLY_IMAGE_REF";
pub const ENV_FLY_APP_NAME: &str = "FLY_APP_NAME";
/// `text` (the default) or `json`. `main` reads it before any command runs.
pub const ENV_LOG_FORMAT: &str = "TRANSCODER_LOG_FORMAT";

/// Flags of `transcoder serve`. Every value is kept as text here and checked by
/// [`ServeConfig::from_args`].
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// Address of the HTTP API [default: 0.0.0.0:8080].
    #[arg(long, env = "TRANSCODER_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Directory of the job database, a Fly volume in production [default: /data].
    #[arg(long, env = "TRANSCODER_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<String>,
    /// Bearer token that the user endpoints require [default: none, the endpoints are open].
    #[arg(
        long,
        env = "TRANSCODER_API_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub api_token: Option<String>,

    /// Fly API token allowed to manage machines of the worker app.
    #[arg(
        long,
        env = "FLY_API_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub fly_api_token: Option<String>,
    /// Base URL of the Fly Machines API [default: https://api.machines.dev/v1].
    #[arg(long, env = "FLY_MACHINES_API_URL", value_name = "URL")]
    pub machines_api_url: Option<String>,
    /// Fly app in which worker machines are created.
    #[arg(long, env = "FLY_WORKER_APP_NAME", value_name = "APP")]
    pub worker_app: Option<String>,
    /// Image of worker machines [default: this machine's own image, FLY_IMAGE_REF].
    #[arg(long, env = "FLY_WORKER_IMAGE", value_name = "IMAGE")]
    pub worker_image: Option<String>,
    /// Fly region for jobs that name none [default: Fly chooses].
    #[arg(long, env = "FLY_WORKER_REGION", value_name = "REGION")]
    pub worker_region: Option<String>,
    /// Comma-separated regions tried in turn when the first one has no capacity.
    #[arg(long, env = "FLY_WORKER_FALLBACK_REGIONS", value_name = "REGIONS")]
    pub worker_fallback_regions: Option<String>,
    /// URL at which workers reach this controller [default: http://$FLY_APP_NAME.flycast].
    #[arg(long, env = "TRANSCODER_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,

    /// Endpoint of an S3-compatible store such as R2. Leave it unset for AWS S3.
    #[arg(long, env = "S3_ENDPOINT_URL", value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// Region of the store: `auto` for R2, the bucket's region for AWS [default: auto].
    #[arg(long, env = "S3_REGION", value_name = "REGION")]
    pub s3_region: Option<String>,
    /// Bucket for uploads and default outputs.
    #[arg(long, env = "S3_BUCKET", value_name = "BUCKET")]
    pub s3_bucket: Option<String>,
    /// Access key of the store. Prefer the environment variable, since flags show in `ps`.
    #[arg(
        long,
        env = "AWS_ACCESS_KEY_ID",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub access_key_id: Option<String>,
    /// Secret key of the store. Prefer the environment variable, since flags show in `ps`.
    #[arg(
        long,
        env = "AWS_SECRET_ACCESS_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub secret_access_key: Option<String>,

    /// Live worker machines allowed at once [default: 20].
    #[arg(long, env = "TRANSCODER_MAX_CONCURRENT_MACHINES", value_name = "N")]
    pub max_concurrent_machines: Option<String>,
    /// Reconcile passes running at once [default: 8].
    #[arg(long, env = "TRANSCODER_MAX_PARALLEL_RECONCILES", value_name = "N")]
    pub max_parallel_reconciles: Option<String>,
    /// Machine create requests per second [default: 1].
    #[arg(long, env = "TRANSCODER_FLY_CREATE_PER_SECOND", value_name = "N")]
    pub fly_create_per_second: Option<String>,
    /// Machine create requests allowed in one burst [default: 3].
    #[arg(long, env = "TRANSCODER_FLY_CREATE_BURST", value_name = "N")]
    pub fly_create_burst: Option<String>,
    /// Machine get and list requests per second [default: 5].
    #[arg(long, env = "TRANSCODER_FLY_GET_PER_SECOND", value_name = "N")]
    pub fly_get_per_second: Option<String>,
    /// Machine get and list requests allowed in one burst [default: 10].
    #[arg(long, env = "TRANSCODER_FLY_GET_BURST", value_name = "N")]
    pub fly_get_burst: Option<String>,
    /// Other Machines API requests (stop, destroy, wait) per second [default: 1].
    #[arg(long, env = "TRANSCODER_FLY_OTHER_PER_SECOND", value_name = "N")]
    pub fly_other_per_second: Option<String>,
    /// Other Machines API requests allowed in one burst [default: 3].
    #[arg(long, env = "TRANSCODER_FLY_OTHER_BURST", value_name = "N")]
    pub fly_other_burst: Option<String>,
}

/// A setting as operators see it: its environment variable and, where there is one, its flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub variable: &'static str,
    pub flag: Option<&'static str>,
}

impl Setting {
    const fn new(variable: &'static str, flag: &'static str) -> Self {
        Self {
            variable,
            flag: Some(flag),
        }
    }

    const fn env_only(variable: &'static str) -> Self {
        Self {
            variable,
            flag: None,
        }
    }
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.flag {
            Some(flag) => write!(f, "{} ({flag})", self.variable),
            None => f.write_str(self.variable),
        }
    }
}

const LISTEN: Setting = Setting::new("TRANSCODER_LISTEN", "--listen");
const API_TOKEN: Setting = Setting::new("TRANSCODER_API_TOKEN", "--api-token");
const FLY_API_TOKEN: Setting = Setting::new("FLY_API_TOKEN", "--fly-api-token");
const MACHINES_API_URL: Setting = Setting::new("FLY_MACHINES_API_URL", "--machines-api-url");
const WORKER_APP: Setting = Setting::new("FLY_WORKER_APP_NAME", "--worker-app");
const WORKER_IMAGE: Setting = Setting::new("FLY_WORKER_IMAGE", "--worker-image");
const WORKER_REGION: Setting = Setting::new("FLY_WORKER_REGION", "--worker-region");
const FALLBACK_REGIONS: Setting =
    Setting::new("FLY_WORKER_FALLBACK_REGIONS", "--worker-fallback-regions");
const PUBLIC_URL: Setting = Setting::new("TRANSCODER_PUBLIC_URL", "--public-url");
const FLY_APP_NAME: Setting = Setting::env_only(ENV_FLY_APP_NAME);
const S3_ENDPOINT: Setting = Setting::new("S3_ENDPOINT_URL", "--s3-endpoint");
const S3_REGION: Setting = Setting::new("S3_REGION", "--s3-region");
const S3_BUCKET: Setting = Setting::new("S3_BUCKET", "--s3-bucket");
const ACCESS_KEY_ID: Setting = Setting::new("AWS_ACCESS_KEY_ID", "--access-key-id");
const SECRET_ACCESS_KEY: Setting = Setting::new("AWS_SECRET_ACCESS_KEY", "--secret-access-key");
const MAX_MACHINES: Setting = Setting::new(
    "TRANSCODER_MAX_CONCURRENT_MACHINES",
    "--max-concurrent-machines",
);
const MAX_RECONCILES: Setting = Setting::new(
    "TRANSCODER_MAX_PARALLEL_RECONCILES",
    "--max-parallel-reconciles",
);
const CREATE_PER_SECOND: Setting = Setting::new(
    "TRANSCODER_FLY_CREATE_PER_SECOND",
    "--fly-create-per-second",
);
const CREATE_BURST: Setting = Setting::new("TRANSCODER_FLY_CREATE_BURST", "--fly-create-burst");
const GET_PER_SECOND: Setting =
    Setting::new("TRANSCODER_FLY_GET_PER_SECOND", "--fly-get-per-second");
const GET_BURST: Setting = Setting::new("TRANSCODER_FLY_GET_BURST", "--fly-get-burst");
const OTHER_PER_SECOND: Setting =
    Setting::new("TRANSCODER_FLY_OTHER_PER_SECOND", "--fly-other-per-second");
const OTHER_BURST: Setting = Setting::new("TRANSCODER_FLY_OTHER_BURST", "--fly-other-burst");
const LOG_FORMAT: Setting = Setting::env_only(ENV_LOG_FORMAT);

/// One missing or malformed setting. Messages never contain the value of a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub setting: Setting,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.setting, self.message)
    }
}

/// Every problem found in one configuration.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {} problem(s)", problems.len())]
pub struct ConfigError {
    pub problems: Vec<ConfigProblem>,
}

impl ConfigError {
    /// True when a problem names `variable`.
    pub fn mentions(&self, variable: &str) -> bool {
        self.problems
            .iter()
            .any(|problem| problem.setting.variable == variable)
    }
}

/// Log line format of every command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    /// Reads a `TRANSCODER_LOG_FORMAT` value, where `None` is an unset variable.
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        match value.map(str::trim) {
            None | Some("") | Some("text") => Ok(Self::Text),
            Some("json") => Ok(Self::Json),
            Some(other) => Err(format!("invalid value {other:?}; expected text or json")),
        }
    }
}

/// The checked settings of `transcoder serve`.
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Bearer token of the user endpoints; `None` leaves them open.
    pub api_token: Option<String>,
    pub fly: FlyClientConfig,
    pub template: MachineTemplate,
    pub store: StoreSettings,
    pub reconciler: ReconcilerSettings,
}

impl fmt::Debug for ServeConfig {
    /// Leaves out the Fly token and the store's secret key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServeConfig")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("api_token", &self.api_token.as_ref().map(|_| "(set)"))
            .field("machines_api_url", &self.fly.base_url)
            .field("worker_app", &self.fly.app)
            .field("template", &self.template)
            .field("store", &self.store)
            .field("reconciler", &self.reconciler)
            .finish_non_exhaustive()
    }
}

impl ServeConfig {
    /// Checks every setting of `args`, with `env` standing for the process environment (for the
    /// variables Fly sets, which have no flag). Returns every problem at once.
    pub fn from_args(
        args: &ServeArgs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut checker = Checker::default();

        let server = check_server(args, &mut checker);
        let fly = check_fly(args, &env, &mut checker);
        let store = check_store(args, &mut checker);
        let limits = check_limits(args, &mut checker);
        checker.parse(LOG_FORMAT, env(ENV_LOG_FORMAT).as_deref(), |value| {
            LogFormat::parse(Some(value))
        });

        let (
            Some((listen, data_dir, api_token)),
            Some(fly),
            Some(store),
            Some((reconciler, rate_limits)),
        ) = (server, fly, store, limits)
        else {
            return Err(checker.into_error());
        };
        if !checker.problems.is_empty() {
            return Err(checker.into_error());
        }

        Ok(Self {
            listen,
            data_dir,
            api_token,
            fly: FlyClientConfig {
                base_url: fly.machines_api_url,
                app: fly.worker_app,
                token: Some(fly.token),
                limits: rate_limits,
            },
            template: fly.template,
            store,
            reconciler,
        })
    }
}

/// Collects problems while each setting is checked.
#[derive(Default)]
struct Checker {
    problems: Vec<ConfigProblem>,
}

impl Checker {
    fn report(&mut self, setting: Setting, message: impl Into<String>) {
        self.problems.push(ConfigProblem {
            setting,
            message: message.into(),
        });
    }

    /// Returns the value of a setting that must be present and not blank.
    fn required(&mut self, setting: Setting, value: Option<&str>) -> Option<String> {
        match value.map(str::trim) {
            Some(value) if !value.is_empty() => Some(value.to_owned()),
            _ => {
                self.report(setting, "is not set");
                None
            }
        }
    }

    /// Parses a value and reports it when `parse` rejects it. An absent value is parsed as "".
    fn parse<T>(
        &mut self,
        setting: Setting,
        value: Option<&str>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let value = value.map(str::trim).unwrap_or_default();
        match parse(value) {
            Ok(parsed) => Some(parsed),
            Err(message) => {
                self.report(setting, message);
                None
            }
        }
    }

    /// Parses a value that may be absent. `Some(None)` means unset.
    fn optional<T>(
        &mut self,
        setting: Setting,
        value: Option<&str>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<Option<T>> {
        match value.map(str::trim) {
            None | Some("") => Some(None),
            Some(value) => self.parse(setting, Some(value), parse).map(Some),
        }
    }

    fn into_error(self) -> ConfigError {
        ConfigError {
            problems: self.problems,
        }
    }
}

fn or_default<'a>(value: Option<&'a str>, default: &'a str) -> Option<&'a str> {
    match value.map(str::trim) {
        None | Some("") => Some(default),
        present => present,
    }
}

fn check_server(
    args: &ServeArgs,
    checker: &mut Checker,
) -> Option<(SocketAddr, PathBuf, Option<String>)> {
    let listen = checker.parse(
        LISTEN,
        or_default(args.listen.as_deref(), DEFAULT_LISTEN),
        parse_listen,
    );
    let data_dir = or_default(args.data_dir.as_deref(), DEFAULT_DATA_DIR).map(PathBuf::from);
    let api_token = checker.optional(API_TOKEN, args.api_token.as_deref(), check_token);
    Some((listen?, data_dir?, api_token?))
}

/// The Fly half of the settings, before it is split into client and template.
struct FlySettings {
    token: String,
    machines_api_url: String,
    worker_app: String,
    template: MachineTemplate,
}

fn check_fly(
    args: &ServeArgs,
    env: &impl Fn(&str) -> Option<String>,
    checker: &mut Checker,
) -> Option<FlySettings> {
    let token = checker
        .required(FLY_API_TOKEN, args.fly_api_token.as_deref())
        .and_then(|token| checker.parse(FLY_API_TOKEN, Some(&token), check_token));
    let machines_api_url = checker.parse(
        MACHINES_API_URL,
        or_default(args.machines_api_url.as_deref(), DEFAULT_MACHINES_API_URL),
        |value| parse_http_url(value, "https://api.machines.dev/v1"),
    );
    let worker_app = checker
        .required(WORKER_APP, args.worker_app.as_deref())
        .and_then(|app| checker.parse(WORKER_APP, Some(&app), check_app_name));
    let image = worker_image(args, env, checker);
    let public_url = public_url(args, env, checker);
    let default_region = checker.optional(
        WORKER_REGION,
        args.worker_region.as_deref(),
        parse_fly_region,
    );
    let fallback_regions = checker.optional(
        FALLBACK_REGIONS,
        args.worker_fallback_regions.as_deref(),
        parse_region_list,
    );

    Some(FlySettings {
        token: token?,
        machines_api_url: machines_api_url?,
        worker_app: worker_app?,
        template: MachineTemplate {
            image: image?,
            controller_url: public_url?,
            default_region: default_region?,
            fallback_regions: fallback_regions?.unwrap_or_default(),
        },
    })
}

/// `FLY_WORKER_IMAGE`, else the controller's own image: both apps then run the same build.
fn worker_image(
    args: &ServeArgs,
    env: &impl Fn(&str) -> Option<String>,
    checker: &mut Checker,
) -> Option<String> {
    let configured = args
        .worker_image
        .clone()
        .filter(|image| !image.trim().is_empty());
    let Some(image) = configured.or_else(|| env(ENV_FLY_IMAGE_REF)) else {
        checker.report(
            WORKER_IMAGE,
            "is not set, and FLY_IMAGE_REF (set by Fly on its machines) is absent",
        );
        return None;
    };
    checker.parse(WORKER_IMAGE, Some(&image), check_image)
}

/// `TRANSCODER_PUBLIC_URL`, else the Flycast address of the controller's app.
fn public_url(
    args: &ServeArgs,
    env: &impl Fn(&str) -> Option<String>,
    checker: &mut Checker,
) -> Option<String> {
    let example = "http://transcoder.flycast";
    if let Some(url) = args.public_url.as_deref().filter(|u| !u.trim().is_empty()) {
        return checker.parse(PUBLIC_URL, Some(url), |value| {
            parse_http_url(value, example)
        });
    }
    let Some(app) = env(ENV_FLY_APP_NAME).filter(|app| !app.trim().is_empty()) else {
        checker.report(
            PUBLIC_URL,
            "is not set, and FLY_APP_NAME (set by Fly on its machines) is absent",
        );
        return None;
    };
    let app = checker.parse(FLY_APP_NAME, Some(&app), check_app_name)?;
    Some(format!("http://{app}.flycast"))
}

fn check_store(args: &ServeArgs, checker: &mut Checker) -> Option<StoreSettings> {
    let endpoint = checker.optional(S3_ENDPOINT, args.s3_endpoint.as_deref(), |value| {
        parse_http_url(value, "https://ACCOUNT_ID.r2.cloudflarestorage.com")
    });
    let region = checker.parse(
        S3_REGION,
        or_default(args.s3_region.as_deref(), DEFAULT_S3_REGION),
        parse_s3_region,
    );
    if let (Some(None), Some("auto")) = (&endpoint, region.as_deref()) {
        checker.report(
            S3_REGION,
            "auto (the default) works only with S3_ENDPOINT_URL, as for Cloudflare R2; \
             for AWS S3 set the bucket's region, such as us-east-1",
        );
    }
    let bucket = checker
        .required(S3_BUCKET, args.s3_bucket.as_deref())
        .and_then(|bucket| checker.parse(S3_BUCKET, Some(&bucket), check_bucket));
    let access_key_id = checker
        .required(ACCESS_KEY_ID, args.access_key_id.as_deref())
        .and_then(|key| checker.parse(ACCESS_KEY_ID, Some(&key), check_key));
    let secret_access_key = checker
        .required(SECRET_ACCESS_KEY, args.secret_access_key.as_deref())
        .and_then(|key| checker.parse(SECRET_ACCESS_KEY, Some(&key), check_key));

    Some(StoreSettings {
        endpoint: endpoint?,
        region: region?,
        access_key_id: access_key_id?,
        secret_access_key: secret_access_key?,
        default_bucket: bucket?,
    })
}

fn check_limits(
    args: &ServeArgs,
    checker: &mut Checker,
) -> Option<(ReconcilerSettings, RateLimits)> {
    let defaults = ReconcilerSettings::default();
    let rate_defaults = RateLimits::default();
    let mut count = |setting: Setting, value: &Option<String>, default: u32| {
        let default = default.to_string();
        checker.parse(
            setting,
            or_default(value.as_deref(), &default),
            parse_positive,
        )
    };

    let max_machines = count(
        MAX_MACHINES,
        &args.max_concurrent_machines,
        saturating_u32(defaults.max_concurrent_machines),
    );
    let max_reconciles = count(
        MAX_RECONCILES,
        &args.max_parallel_reconciles,
        saturating_u32(defaults.max_parallel_reconciles),
    );
    let limits = [
        count(
            CREATE_PER_SECOND,
            &args.fly_create_per_second,
            rate_defaults.create_per_second,
        ),
        count(
            CREATE_BURST,
            &args.fly_create_burst,
            rate_defaults.create_burst,
        ),
        count(
            GET_PER_SECOND,
            &args.fly_get_per_second,
            rate_defaults.get_per_second,
        ),
        count(GET_BURST, &args.fly_get_burst, rate_defaults.get_burst),
        count(
            OTHER_PER_SECOND,
            &args.fly_other_per_second,
            rate_defaults.other_per_second,
        ),
        count(
            OTHER_BURST,
            &args.fly_other_burst,
            rate_defaults.other_burst,
        ),
    ];

    let [Some(create_per_second), Some(create_burst), Some(get_per_second), Some(get_burst), Some(other_per_second), Some(other_burst)] =
        limits
    else {
        return None;
    };
    let reconciler = ReconcilerSettings {
        max_concurrent_machines: usize::try_from(max_machines?).ok()?,
        max_parallel_reconciles: usize::try_from(max_reconciles?).ok()?,
        ..defaults
    };
    let rate_limits = RateLimits {
        create_per_second,
        create_burst,
        get_per_second,
        get_burst,
        other_per_second,
        other_burst,
    };
    Some((reconciler, rate_limits))
}

fn saturating_u32(value: usize) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

fn parse_listen(value: &str) -> Result<SocketAddr, String> {
    value.parse().map_err(|_| {
        format!("invalid address {value:?}; expected IP:PORT such as 0.0.0.0:8080 or [::]:8080")
    })
}

/// Accepts an absolute `http` or `https` URL with a host and without query or fragment, and
/// returns it as given.
fn parse_http_url(value: &str, example: &str) -> Result<String, String> {
    let expected = format!("expected an http:// or https:// URL such as {example}");
    let url =
        Url::parse(value).map_err(|err| format!("invalid URL {value:?} ({err}); {expected}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "invalid URL {value:?}: scheme {:?} is not supported; {expected}",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("invalid URL {value:?}: missing host; {expected}"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "invalid URL {value:?}: a query or fragment is not allowed; {expected}"
        ));
    }
    Ok(value.to_owned())
}

/// Fly region codes are three lowercase letters, such as `ord` or `ams`.
fn parse_fly_region(value: &str) -> Result<String, String> {
    if value.len() == 3 && value.bytes().all(|b| b.is_ascii_lowercase()) {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "invalid region {value:?}; expected a three-letter Fly region code such as ord or ams"
        ))
    }
}

fn parse_region_list(value: &str) -> Result<Vec<String>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|region| !region.is_empty())
        .map(parse_fly_region)
        .collect()
}

/// S3 regions are lowercase words joined by dashes, such as `us-east-1`. R2 takes `auto`.
fn parse_s3_region(value: &str) -> Result<String, String> {
    let valid_chars = value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !value.is_empty() && valid_chars && !value.starts_with('-') && !value.ends_with('-') {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "invalid region {value:?}; expected auto (Cloudflare R2) or a region such as us-east-1"
        ))
    }
}

fn parse_positive(value: &str) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(number) if number >= 1 => Ok(number),
        _ => Err(format!(
            "invalid value {value:?}; expected a whole number of at least 1"
        )),
    }
}

/// Checks that the token fits an `Authorization` header. The message never shows the token.
fn check_token(value: &str) -> Result<String, String> {
    HeaderValue::from_str(&format!("Bearer {value}"))
        .map(|_| value.to_owned())
        .map_err(|_| {
            "invalid token: it contains characters not allowed in an HTTP header".to_owned()
        })
}

/// Checks a store key without showing it: keys are single words of visible characters.
fn check_key(value: &str) -> Result<String, String> {
    if value.chars().all(|c| c.is_ascii_graphic()) {
        Ok(value.to_owned())
    } else {
        Err("invalid key: it contains spaces, control or non-ASCII characters".to_owned())
    }
}

/// Fly app names are lowercase letters, digits and dashes.
fn check_app_name(value: &str) -> Result<String, String> {
    let valid_chars = value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if valid_chars && !value.starts_with('-') && value.len() <= 63 {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "invalid app name {value:?}; expected up to 63 lowercase letters, digits and '-'"
        ))
    }
}

fn check_image(value: &str) -> Result<String, String> {
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "invalid image {value:?}; expected a reference such as registry.fly.io/transcoder:TAG"
        ));
    }
    Ok(value.to_owned())
}

fn check_bucket(value: &str) -> Result<String, String> {
    ObjectUrl::parse(&format!("s3://{value}/key"))
        .map(|object| object.bucket)
        .map_err(|_| {
            format!(
                "invalid bucket {value:?}; expected 3 to 63 characters of a-z, 0-9, '-' and '.'"
            )
        })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Builds a configuration that passes every check, with an R2 endpoint.
    fn complete_args() -> ServeArgs {
        ServeArgs {
            fly_api_token: Some("FlyV1 fm2_secret".to_owned()),
            worker_app: Some("transcoder-workers".to_owned()),
            s3_endpoint: Some("https://account.r2.cloudflarestorage.com".to_owned()),
            s3_bucket: Some("media".to_owned()),
            access_key_id: Some("key-id".to_owned()),
            secret_access_key: Some("s3cr3t-value".to_owned()),
            ..ServeArgs::default()
        }
    }

    fn fly_env(name: &str) -> Option<String> {
        let env = BTreeMap::from([
            (ENV_FLY_IMAGE_REF, "registry.fly.io/transcoder:deployment-1"),
            (ENV_FLY_APP_NAME, "transcoder"),
        ]);
        env.get(name).map(|value| (*value).to_owned())
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn problems_of(args: &ServeArgs, env: impl Fn(&str) -> Option<String>) -> ConfigError {
        match ServeConfig::from_args(args, env) {
            Ok(config) => panic!("configuration must be rejected, got {config:?}"),
            Err(err) => err,
        }
    }

    #[test]
    fn complete_config_uses_fly_defaults() {
        let config = ServeConfig::from_args(&complete_args(), fly_env).expect("valid");

        assert_eq!(config.listen, "0.0.0.0:8080".parse().expect("address"));
        assert_eq!(config.data_dir, PathBuf::from("/data"));
        assert_eq!(config.fly.base_url, DEFAULT_MACHINES_API_URL);
        assert_eq!(config.fly.app, "transcoder-workers");
        assert_eq!(
            config.template.image,
            "registry.fly.io/transcoder:deployment-1"
        );
        assert_eq!(config.template.controller_url, "http://transcoder.flycast");
        assert_eq!(config.store.region, "auto");
        assert_eq!(config.reconciler.max_concurrent_machines, 20);
        assert_eq!(config.fly.limits.create_per_second, 1);
        assert_eq!(config.api_token, None);
    }

    #[test]
    fn explicit_settings_override_fly_defaults() {
        let args = ServeArgs {
            worker_image: Some("registry.fly.io/other:v2".to_owned()),
            public_url: Some("http://10.0.0.1:8080".to_owned()),
            worker_region: Some("ams".to_owned()),
            worker_fallback_regions: Some("fra, cdg".to_owned()),
            max_concurrent_machines: Some("5".to_owned()),
            fly_get_burst: Some("4".to_owned()),
            api_token: Some("user-token".to_owned()),
            ..complete_args()
        };

        let config = ServeConfig::from_args(&args, fly_env).expect("valid");

        assert_eq!(config.template.image, "registry.fly.io/other:v2");
        assert_eq!(config.template.controller_url, "http://10.0.0.1:8080");
        assert_eq!(config.template.default_region.as_deref(), Some("ams"));
        assert_eq!(config.template.fallback_regions, ["fra", "cdg"]);
        assert_eq!(config.reconciler.max_concurrent_machines, 5);
        assert_eq!(config.fly.limits.get_burst, 4);
        assert_eq!(config.api_token.as_deref(), Some("user-token"));
    }

    #[test]
    fn empty_config_names_every_required_variable() {
        let err = problems_of(&ServeArgs::default(), no_env);

        for variable in [
            "FLY_API_TOKEN",
            "FLY_WORKER_APP_NAME",
            "FLY_WORKER_IMAGE",
            "TRANSCODER_PUBLIC_URL",
            "S3_BUCKET",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "S3_REGION",
        ] {
            assert!(err.mentions(variable), "{variable} missing from {err:#?}");
        }
        assert_eq!(err.problems.len(), 8, "{err:#?}");
    }

    #[test]
    fn malformed_values_are_all_reported() {
        let args = ServeArgs {
            listen: Some("localhost".to_owned()),
            machines_api_url: Some("ftp://api".to_owned()),
            worker_region: Some("Chicago".to_owned()),
            s3_endpoint: Some("not a url".to_owned()),
            s3_region: Some("us east".to_owned()),
            s3_bucket: Some("No_Such".to_owned()),
            max_concurrent_machines: Some("0".to_owned()),
            fly_create_burst: Some("-3".to_owned()),
            ..complete_args()
        };

        let err = problems_of(&args, fly_env);

        for variable in [
            "TRANSCODER_LISTEN",
            "FLY_MACHINES_API_URL",
            "FLY_WORKER_REGION",
            "S3_ENDPOINT_URL",
            "S3_REGION",
            "S3_BUCKET",
            "TRANSCODER_MAX_CONCURRENT_MACHINES",
            "TRANSCODER_FLY_CREATE_BURST",
        ] {
            assert!(err.mentions(variable), "{variable} missing from {err:#?}");
        }
        assert_eq!(err.problems.len(), 8, "{err:#?}");
    }

    #[test]
    fn region_auto_without_endpoint_is_rejected() {
        let args = ServeArgs {
            s3_endpoint: None,
            ..complete_args()
        };

        let err = problems_of(&args, fly_env);

        assert_eq!(err.problems.len(), 1, "{err:#?}");
        assert_eq!(err.problems[0].setting.variable, "S3_REGION");
    }

    #[test]
    fn aws_region_without_endpoint_is_accepted() {
        let args = ServeArgs {
            s3_endpoint: None,
            s3_region: Some("eu-west-1".to_owned()),
            ..complete_args()
        };

        let config = ServeConfig::from_args(&args, fly_env).expect("valid");

        assert_eq!(config.store.endpoint, None);
        assert_eq!(config.store.region, "eu-west-1");
    }

    #[test]
    fn secret_values_never_appear_in_problems() {
        let args = ServeArgs {
            fly_api_token: Some("tok\nen-value-7f3a".to_owned()),
            secret_access_key: Some("hidden key-value-9c1e".to_owned()),
            api_token: Some("user\ttok\u{7f}en-5d2b".to_owned()),
            ..complete_args()
        };

        let err = problems_of(&args, fly_env);
        let text: Vec<String> = err.problems.iter().map(ToString::to_string).collect();

        assert_eq!(text.len(), 3, "{text:#?}");
        for line in &text {
            assert!(!line.contains("5d2b"), "API token leaked: {line}");
            assert!(!line.contains("7f3a"), "token leaked: {line}");
            assert!(!line.contains("9c1e"), "secret key leaked: {line}");
        }
    }

    #[test]
    fn bad_fly_app_name_is_reported() {
        let env = |name: &str| match name {
            ENV_FLY_APP_NAME => Some("Bad App".to_owned()),
            ENV_FLY_IMAGE_REF => Some("registry.fly.io/transcoder:1".to_owned()),
            _ => None,
        };

        let err = problems_of(&complete_args(), env);

        assert!(err.mentions("FLY_APP_NAME"), "{err:#?}");
    }

    #[test]
    fn unknown_log_format_is_rejected() {
        let env = |name: &str| match name {
            ENV_LOG_FORMAT => Some("jsno".to_owned()),
            other => fly_env(other),
        };

        let err = problems_of(&complete_args(), env);

        assert!(err.mentions(ENV_LOG_FORMAT), "{err:#?}");
        assert_eq!(LogFormat::parse(Some("json")), Ok(LogFormat::Json));
        assert_eq!(LogFormat::parse(None), Ok(LogFormat::Text));
    }
}
