//! `transcoder serve`: the controller against Fly's Machines API and an S3-compatible store.

use std::net::SocketAddr;
use std::path::PathBuf;

use controller::local::{spawn_controller, ControllerParts};
use controller::machine_template::MachineTemplate;
use controller::objectstore::{ObjectStore, StoreSettings};
use controller::reconciler::ReconcilerSettings;
use controller::store::JobStore;
use fly_machines::client::{FlyClient, FlyClientConfig, RateLimits};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address of the HTTP API.
    #[arg(long, default_value = "0.0.0.0:8080", env = "TRANSCODER_LISTEN")]
    pub listen: SocketAddr,
    /// Directory of the job database (a Fly volume in production).
    #[arg(long, default_value = "/data", env = "TRANSCODER_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Base URL of the Fly Machines API.
    #[arg(
        long,
        default_value = "https://api.machines.dev/v1",
        env = "FLY_MACHINES_API_URL"
    )]
    pub machines_api_url: String,
    /// Fly API token.
    #[arg(long, env = "FLY_API_TOKEN", hide_env_values = true)]
    pub fly_api_token: Option<String>,
    /// Fly app whose machines run the workers.
    #[arg(long, env = "FLY_WORKER_APP_NAME")]
    pub worker_app: Option<String>,
    /// Image of worker machines. Default: this machine's own image (FLY_IMAGE_REF).
    #[arg(long, env = "FLY_WORKER_IMAGE")]
    pub worker_image: Option<String>,
    /// URL at which workers reach this controller, e.g. http://transcoder.flycast:8080.
    #[arg(long, env = "TRANSCODER_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Region for jobs that name none.
    #[arg(long, env = "FLY_WORKER_REGION")]
    pub region: Option<String>,
    /// Endpoint of an S3-compatible store; unset for AWS S3.
    #[arg(long, env = "S3_ENDPOINT_URL")]
    pub s3_endpoint: Option<String>,
    /// Region of the store; `auto` for Cloudflare R2.
    #[arg(long, default_value = "auto", env = "S3_REGION")]
    pub s3_region: String,
    /// Bucket for uploads and default outputs.
    #[arg(long, env = "S3_BUCKET")]
    pub bucket: Option<String>,
    #[arg(long, env = "AWS_ACCESS_KEY_ID", hide_env_values = true)]
    pub access_key_id: Option<String>,
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub secret_access_key: Option<String>,
    /// Live worker machines allowed at once.
    #[arg(long, default_value_t = 20, env = "TRANSCODER_MAX_CONCURRENT_MACHINES")]
    pub max_concurrent_machines: usize,
}

/// Settings checked all at once, so that one start-up names every problem.
struct Checked {
    token: String,
    app: String,
    image: String,
    public_url: String,
    store: StoreSettings,
}

fn check(args: &ServeArgs) -> Result<Checked, Vec<String>> {
    let mut problems = Vec::new();
    let mut require = |value: Option<String>, what: &str| {
        if value.as_deref().is_none_or(str::is_empty) {
            problems.push(what.to_owned());
        }
        value.unwrap_or_default()
    };

    let token = require(
        args.fly_api_token.clone(),
        "FLY_API_TOKEN (--fly-api-token) is not set",
    );
    let app = require(
        args.worker_app.clone(),
        "FLY_WORKER_APP_NAME (--worker-app) is not set",
    );
    let image = require(
        args.worker_image
            .clone()
            .or_else(|| std::env::var("FLY_IMAGE_REF").ok()),
        "FLY_WORKER_IMAGE (--worker-image) is not set and FLY_IMAGE_REF is absent",
    );
    let public_url = require(
        args.public_url.clone(),
        "TRANSCODER_PUBLIC_URL (--public-url) is not set",
    );
    let bucket = require(args.bucket.clone(), "S3_BUCKET (--bucket) is not set");
    let access_key_id = require(args.access_key_id.clone(), "AWS_ACCESS_KEY_ID is not set");
    let secret_access_key = require(
        args.secret_access_key.clone(),
        "AWS_SECRET_ACCESS_KEY is not set",
    );
    if args.max_concurrent_machines == 0 {
        problems.push("TRANSCODER_MAX_CONCURRENT_MACHINES must be at least 1".to_owned());
    }

    if !problems.is_empty() {
        return Err(problems);
    }
    let store = StoreSettings {
        endpoint: args.s3_endpoint.clone(),
        region: args.s3_region.clone(),
        access_key_id,
        secret_access_key,
        default_bucket: bucket,
    };
    Ok(Checked {
        token,
        app,
        image,
        public_url,
        store,
    })
}

pub async fn run(args: ServeArgs) -> anyhow::Result<i32> {
    let checked = match check(&args) {
        Ok(checked) => checked,
        Err(problems) => {
            eprintln!("error: invalid configuration:");
            for problem in problems {
                eprintln!("  - {problem}");
            }
            return Ok(2);
        }
    };

    std::fs::create_dir_all(&args.data_dir)?;
    let store = JobStore::open(&args.data_dir.join("jobs.db"))?;
    let fly = FlyClient::new(FlyClientConfig {
        base_url: args.machines_api_url.clone(),
        app: checked.app,
        token: Some(checked.token),
        limits: RateLimits::default(),
    })?;
    let template = MachineTemplate {
        image: checked.image,
        controller_url: checked.public_url,
        default_region: args.region.clone(),
        fallback_regions: Vec::new(),
    };
    let settings = ReconcilerSettings {
        max_concurrent_machines: args.max_concurrent_machines,
        ..ReconcilerSettings::default()
    };
    let parts = ControllerParts {
        store,
        fly,
        objects: ObjectStore::new(&checked.store),
        template,
        settings,
    };

    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    spawn_controller(&tasks, parts, listener, shutdown.clone());
    tasks.close();
    tracing::info!(listen = %args.listen, "controller serving");

    super::shutdown_signal().await;
    tracing::info!("shutting down");
    shutdown.cancel();
    tasks.wait().await;
    Ok(0)
}
