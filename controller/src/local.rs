//! `LocalSystem`: the whole product on one machine, as `transcoder up` runs it.
//!
//! It starts, in this process: the embedded S3-compatible store, a local implementation of the
//! Fly Machines REST API that runs each machine as a `transcoder-worker` child process (or a
//! client of another Machines API server), the reconciler and the HTTP API. Everything talks
//! over real HTTP on loopback, through the same code paths as a deployment on Fly.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fly_machines::client::{FlyClient, FlyClientConfig, RateLimits};
use fly_machines::local::{LocalMachines, LocalMachinesConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, AppState};
use crate::machine_template::MachineTemplate;
use crate::metrics::Metrics;
use crate::objectstore::{EmbeddedObjectStore, ObjectStore, ObjectStoreError};
use crate::reconciler::{JobReconciler, ReconcilerSettings};
use crate::store::{JobStore, StoreError};
use crate::sync::{DirectorySync, SyncSettings, SyncStatus};

/// Fly app name the local Machines API serves.
pub const LOCAL_APP: &str = "transcoder-local";
/// Bucket of the embedded store.
pub const LOCAL_BUCKET: &str = "transcoder";

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("failed to create the data directory {}", path.display())]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to listen on {address}")]
    Listen {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "worker binary not found at {}; build it with `cargo build --release -p worker` or set --worker-bin",
        path.display()
    )]
    WorkerMissing { path: PathBuf },
    #[error("failed to open the job store")]
    Store(#[from] StoreError),
    #[error("failed to start the object store")]
    Objects(#[from] ObjectStoreError),
    #[error("failed to start the local Machines API")]
    Machines(#[source] std::io::Error),
    #[error("failed to create the Machines API client")]
    FlyClient(#[source] fly_machines::client::ClientError),
}

/// How to run the local system.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Address of the HTTP API; port 0 picks a free port.
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Use this Machines API server instead of starting the local one.
    pub machines_api_url: Option<String>,
    /// `transcoder-worker` to run on local machines.
    pub worker_bin: PathBuf,
    pub reconciler: ReconcilerSettings,
}

pub struct LocalSystem {
    api_address: SocketAddr,
    data_dir: PathBuf,
    store: JobStore,
    objects: EmbeddedObjectStore,
    machines: Option<LocalMachines>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl LocalSystem {
    pub async fn start(options: LocalOptions) -> Result<Self, StartError> {
        Self::start_with(options, ControllerOptions::default()).await
    }

    /// Starts the local system with an API token or a sync directory.
    pub async fn start_with(
        options: LocalOptions,
        controller: ControllerOptions,
    ) -> Result<Self, StartError> {
        let data_dir = options.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(|source| StartError::DataDir {
            path: data_dir.clone(),
            source,
        })?;

        let api_listener = bind(options.listen).await?;
        let api_address = api_listener
            .local_addr()
            .map_err(|source| StartError::Listen {
                address: options.listen.to_string(),
                source,
            })?;
        let store = JobStore::open(&data_dir.join("jobs.db"))?;
        let objects = EmbeddedObjectStore::start(
            bind_object_store(&data_dir).await?,
            &data_dir.join("objects"),
            LOCAL_BUCKET,
        )
        .await?;
        let (machines, machines_url) = start_machines(&options, &data_dir).await?;

        let fly = FlyClient::new(FlyClientConfig {
            base_url: machines_url,
            app: LOCAL_APP.to_owned(),
            token: None,
            limits: machines_limits(&options),
        })
        .map_err(StartError::FlyClient)?;
        let object_client = ObjectStore::new(objects.settings());
        let template = MachineTemplate {
            image: "transcoder:local".to_owned(),
            controller_url: format!("http://{api_address}"),
            default_region: None,
            fallback_regions: Vec::new(),
        };

        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let parts = ControllerParts {
            store: store.clone(),
            fly,
            objects: object_client,
            template,
            settings: options.reconciler.clone(),
        };
        spawn_controller_with(&tasks, parts, controller, api_listener, shutdown.clone());
        tasks.close();

        tracing::info!(api = %api_address, data_dir = %data_dir.display(), "local system started");
        Ok(Self {
            api_address,
            data_dir,
            store,
            objects,
            machines,
            shutdown,
            tasks,
        })
    }

    /// Base URL of the HTTP API.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.api_address)
    }

    pub fn store(&self) -> &JobStore {
        &self.store
    }

    /// The file that contains `s3://BUCKET/KEY` in the embedded store.
    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.data_dir.join("objects").join(bucket).join(key)
    }

    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tasks.wait().await;
        if let Some(machines) = self.machines {
            machines.shutdown().await;
        }
        self.objects.shutdown().await;
        tracing::info!("local system stopped");
    }
}

/// Rate limits for the Machines API: Fly's own for a remote server, and generous ones for the
/// local server, which has no limits to respect and would otherwise make jobs wait for no
/// reason.
fn machines_limits(options: &LocalOptions) -> RateLimits {
    if options.machines_api_url.is_some() {
        return RateLimits::default();
    }
    RateLimits {
        create_per_second: 50,
        create_burst: 50,
        get_per_second: 200,
        get_burst: 200,
        other_per_second: 50,
        other_burst: 50,
    }
}

/// Binds the embedded store to the port it had before, kept in the data directory, so that
/// presigned URLs handed out before a restart keep working after it. A new port is taken
/// when the old one is in use or unknown.
async fn bind_object_store(data_dir: &Path) -> Result<TcpListener, StartError> {
    let port_file = data_dir.join("object-store-port");
    let previous = std::fs::read_to_string(&port_file)
        .ok()
        .and_then(|text| text.trim().parse::<u16>().ok());
    if let Some(port) = previous {
        match TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await {
            Ok(listener) => return Ok(listener),
            Err(err) => {
                tracing::warn!(port, error = %err, "previous object store port is taken; presigned URLs from before the restart will not work")
            }
        }
    }

    let listener = bind(loopback()).await?;
    if let Ok(address) = listener.local_addr() {
        if let Err(err) = std::fs::write(&port_file, address.port().to_string()) {
            tracing::warn!(path = %port_file.display(), error = %err, "failed to record the object store port");
        }
    }
    Ok(listener)
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn bind(address: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| StartError::Listen {
            address: address.to_string(),
            source,
        })
}

async fn start_machines(
    options: &LocalOptions,
    data_dir: &Path,
) -> Result<(Option<LocalMachines>, String), StartError> {
    if let Some(url) = &options.machines_api_url {
        return Ok((None, url.clone()));
    }
    if !options.worker_bin.is_file() {
        return Err(StartError::WorkerMissing {
            path: options.worker_bin.clone(),
        });
    }

    let config = LocalMachinesConfig {
        app: LOCAL_APP.to_owned(),
        worker_bin: options.worker_bin.clone(),
        log_dir: data_dir.join("machines"),
    };
    let machines = LocalMachines::start(bind(loopback()).await?, config)
        .await
        .map_err(StartError::Machines)?;
    let url = machines.base_url();
    Ok((Some(machines), url))
}

/// The store, clients and settings that the reconciler and the API run on.
pub struct ControllerParts {
    pub store: JobStore,
    pub fly: FlyClient,
    pub objects: ObjectStore,
    pub template: MachineTemplate,
    pub settings: ReconcilerSettings,
}

/// Options of the user-facing parts of a controller.
#[derive(Debug, Clone, Default)]
pub struct ControllerOptions {
    /// Bearer token the user endpoints require; `None` leaves them open.
    pub api_token: Option<String>,
    /// Directory whose spec files the store is kept equal to.
    pub sync_dir: Option<PathBuf>,
    /// Time between full sync passes; default [`DEFAULT_SYNC_INTERVAL`].
    pub sync_interval: Option<Duration>,
}

/// Time between full sync passes when none is set.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(30);

/// Spawns the reconciler and the HTTP API on `tasks`; both stop when `shutdown` is cancelled.
pub fn spawn_controller(
    tasks: &TaskTracker,
    parts: ControllerParts,
    listener: TcpListener,
    shutdown: CancellationToken,
) {
    spawn_controller_with(
        tasks,
        parts,
        ControllerOptions::default(),
        listener,
        shutdown,
    );
}

/// Spawns the reconciler, the HTTP API and, with a sync directory, the directory sync on
/// `tasks`; all stop when `shutdown` is cancelled.
pub fn spawn_controller_with(
    tasks: &TaskTracker,
    parts: ControllerParts,
    options: ControllerOptions,
    listener: TcpListener,
    shutdown: CancellationToken,
) {
    let metrics = Arc::new(Metrics::default());
    let mut state = AppState::new(
        parts.store.clone(),
        parts.objects.clone(),
        Arc::clone(&metrics),
    );
    state.api_token = options.api_token.map(Arc::from);
    state.shutdown = shutdown.clone();
    if let Some(dir) = options.sync_dir {
        let settings = SyncSettings {
            dir,
            interval: options.sync_interval.unwrap_or(DEFAULT_SYNC_INTERVAL),
        };
        let status = SyncStatus::new(&settings);
        state.sync = Some(status.clone());
        let sync = DirectorySync::new(parts.store.clone(), settings, status);
        tasks.spawn(sync.run(shutdown.clone()));
    }

    let reconciler = JobReconciler::new(
        parts.store,
        parts.fly,
        parts.objects,
        parts.template,
        parts.settings,
        metrics,
    );
    tasks.spawn(Arc::clone(&reconciler).run(shutdown.clone()));
    tasks.spawn(serve_api(listener, api::router(state), shutdown));
}

async fn serve_api(listener: TcpListener, router: axum::Router, shutdown: CancellationToken) {
    let result = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    if let Err(err) = result {
        tracing::error!(error = %err, "API server failed");
    }
}
