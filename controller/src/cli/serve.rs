//! `transcoder serve`: the controller against Fly's Machines API and an S3-compatible store.
//!
//! Start-up checks the whole configuration first and exits with [`EXIT_CONFIG`] listing every
//! problem. On SIGTERM or SIGINT the API stops accepting connections and finishes the requests
//! in flight, the reconciler lets its passes in flight finish, and the job database is closed,
//! all within [`SHUTDOWN_GRACE`].

use anyhow::Context;
pub use controller::config::ServeArgs;
use controller::config::{ServeConfig, SHUTDOWN_GRACE};
use controller::local::{spawn_controller_with, ControllerOptions, ControllerParts};
use controller::objectstore::ObjectStore;
use controller::store::JobStore;
use fly_machines::client::FlyClient;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Exit code of a start with a missing or malformed setting.
pub const EXIT_CONFIG: i32 = 2;

pub async fn run(args: ServeArgs) -> anyhow::Result<i32> {
    let config = match ServeConfig::from_args(&args, |name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err}; fix these settings and start again:");
            for problem in &err.problems {
                eprintln!("  - {problem}");
            }
            return Ok(EXIT_CONFIG);
        }
    };

    let span = tracing::info_span!("serve", worker_app = %config.fly.app);
    serve(config).instrument(span).await
}

async fn serve(config: ServeConfig) -> anyhow::Result<i32> {
    tracing::info!(
        listen = %config.listen,
        data_dir = %config.data_dir.display(),
        machines_api = %config.fly.base_url,
        worker_image = %config.template.image,
        controller_url = %config.template.controller_url,
        store_endpoint = config.store.endpoint.as_deref().unwrap_or("AWS S3"),
        store_region = %config.store.region,
        bucket = %config.store.default_bucket,
        api_token = if config.api_token.is_some() { "set" } else { "none" },
        "controller starting"
    );

    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "failed to create the data directory {}",
            config.data_dir.display()
        )
    })?;
    let store = JobStore::open(&config.data_dir.join("jobs.db"))?;
    let fly = FlyClient::new(config.fly).context("failed to create the Machines API client")?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("failed to listen on {}", config.listen))?;

    let parts = ControllerParts {
        store: store.clone(),
        fly,
        objects: ObjectStore::new(&config.store),
        template: config.template,
        settings: config.reconciler,
    };
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let options = ControllerOptions {
        api_token: config.api_token,
        ..ControllerOptions::default()
    };
    spawn_controller_with(&tasks, parts, options, listener, shutdown.clone());
    tasks.close();
    tracing::info!(listen = %config.listen, "controller serving");

    super::shutdown_signal().await;
    tracing::info!(grace = ?SHUTDOWN_GRACE, "stop signal received; finishing requests and reconcile passes in flight");
    shutdown.cancel();
    if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?SHUTDOWN_GRACE, "work in flight did not finish in time; stopping anyway");
    }

    // Once the tasks are done this is the last handle, and closing it makes sled flush what it
    // still buffers (job events).
    drop(store);
    tracing::info!("controller stopped");
    Ok(0)
}
