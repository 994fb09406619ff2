//! `LocalMachines`: a local server for the Fly Machines REST API that runs each machine as a
//! child process, so code written against Fly can run and be tested on one host.
//!
//! It serves create, list, get, wait, stop and destroy for one app under `/v1`. A machine's
//! command comes from `config.init` (see [`LocalMachinesConfig::worker_bin`]), its environment
//! is `config.env` plus the `FLY_*` variables Fly sets, and its output goes to
//! `{log_dir}/{machine_id}.log`. Destroyed machines leave the list but can be fetched by id for
//! [`DESTROYED_RETENTION`]. [`Faults`] make the server fail on purpose. Every child process is
//! killed when the server shuts down or is dropped.

mod api;
mod faults;
mod fleet;
mod ids;
mod lifecycle;
mod process;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{info, warn};

use faults::FaultInjector;
pub use faults::{Faults, RequestRecord};
use fleet::Fleet;
pub use fleet::DESTROYED_RETENTION;
pub use lifecycle::WORKER_PROGRAM;

/// Settings of a [`LocalMachines`] server.
#[derive(Debug, Clone)]
pub struct LocalMachinesConfig {
    /// The only app the server serves; requests for other app names get 404 `app not found`.
    pub app: String,
    /// Program that replaces a first command word of `transcoder-worker`, and runs as
    /// `worker_bin run` for machines without a command.
    pub worker_bin: PathBuf,
    /// Directory of the machines' output logs; created when missing.
    pub log_dir: PathBuf,
}

/// State shared by the HTTP handlers and the machine supervisors.
pub(crate) struct Shared {
    config: LocalMachinesConfig,
    fleet: Arc<Fleet>,
    supervisors: Mutex<JoinSet<()>>,
    /// Set to true to make every supervisor kill its process and return.
    shutdown: watch::Sender<bool>,
    faults: FaultInjector,
}

impl Shared {
    fn spawn_supervisor(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut supervisors = self
            .supervisors
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Drop the results of finished supervisors so the set does not grow without bound.
        while supervisors.try_join_next().is_some() {}
        supervisors.spawn(task);
    }

    fn take_supervisors(&self) -> JoinSet<()> {
        let mut supervisors = self
            .supervisors
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        std::mem::take(&mut *supervisors)
    }
}

/// Maximum time [`LocalMachines::shutdown`] lets open connections finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running local Machines API server.
pub struct LocalMachines {
    shared: Arc<Shared>,
    address: SocketAddr,
    server: JoinHandle<()>,
}

impl LocalMachines {
    /// Serves the API on `listener` until [`LocalMachines::shutdown`] or drop.
    pub async fn start(
        listener: TcpListener,
        config: LocalMachinesConfig,
    ) -> std::io::Result<LocalMachines> {
        tokio::fs::create_dir_all(&config.log_dir).await?;
        let address = listener.local_addr()?;
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            config,
            fleet: Arc::new(Fleet::default()),
            supervisors: Mutex::new(JoinSet::new()),
            shutdown,
            faults: FaultInjector::default(),
        });

        let router = api::router(Arc::clone(&shared));
        let mut stopping = shared.shutdown.subscribe();
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
                process::shutdown_requested(&mut stopping).await
            });
            if let Err(error) = serve.await {
                warn!(error = %error, "local machines server stopped serving");
            }
        });
        info!(address = %address, app = %shared.config.app, "local machines server started");
        Ok(LocalMachines {
            shared,
            address,
            server,
        })
    }

    /// Returns the API root for a client, such as `http://127.0.0.1:4280/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.address)
    }

    /// Returns the address the server listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The API requests received so far, in order; only the latest 100,000 at most.
    pub fn request_log(&self) -> Vec<RequestRecord> {
        self.shared.faults.request_log()
    }

    /// Replaces the faults the server injects.
    pub fn set_faults(&self, faults: Faults) {
        self.shared.faults.set(faults);
    }

    /// Stops serving, kills every machine process and waits until they are reaped.
    ///
    /// Pending waits end with 503, and open connections close once their current request has
    /// its response, or after 5 seconds at the latest.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.send_replace(true);
        let mut supervisors = self.shared.take_supervisors();
        while supervisors.join_next().await.is_some() {}

        if tokio::time::timeout(SHUTDOWN_GRACE, &mut self.server)
            .await
            .is_err()
        {
            warn!(address = %self.address, "local machines server connections outlived the grace period");
            self.server.abort();
        }
        info!(address = %self.address, "local machines server shut down");
    }
}

impl Drop for LocalMachines {
    /// Starts a graceful stop of serving and kills every machine process, without waiting.
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
        // Aborting drops each supervisor's process handle, which SIGKILLs its process group.
        self.shared.take_supervisors().abort_all();
    }
}
