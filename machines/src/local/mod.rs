//! `LocalMachines`: a local server for the Fly Machines REST API that runs each machine as a
//! child process, so code written against Fly can run and be tested on one host.
//!
//! It serves create, list, get, wait, stop and destroy for one app under `/v1`. A machine's
//! command comes from `config.init` (see [`LocalMachinesConfig::worker_bin`]), its environment
//! is `config.env` plus the `FLY_*` variables Fly sets, and its output goes to
//! `{log_dir}/{machine_id}.log`. Every child process is killed when the server shuts down or is
//! dropped.

mod api;
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

use fleet::Fleet;
pub use fleet::DESTROYED_RETENTION;
pub use lifecycle::WORKER_PROGRAM;

/// Settings of a [`LocalMachines`] server.
#[derive(Debug, Clone)]
pub struct LocalMachinesConfig {
    /// The one app name the server answers for; other names get 404 `app not found`.
    pub app: String,
    /// Program that replaces a first command word of `transcoder-worker`, and runs as
    /// `worker_bin run` for machines without a command.
    pub worker_bin: PathBuf,
    /// Directory of the machines' output logs; created when missing.
    pub log_dir: PathBuf,
}

/// Failures the local server can be told to inject, to exercise a client's error handling.
///
/// TODO-correctness: these switches are stored but not acted on yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Answer every n-th API request with 429 and `Retry-After: 1`; 0 turns it off.
    pub rate_limit_every: u32,
    /// Answer every n-th API request with 503; 0 turns it off.
    pub server_error_every: u32,
    /// Create the machine but answer this many create requests with 500, as if the response
    /// was lost on the way.
    pub lose_create_responses: u32,
    /// Delay before each state change of a machine.
    pub state_change_delay: Duration,
}

/// State shared by the HTTP handlers and the machine supervisors.
pub(crate) struct Shared {
    config: LocalMachinesConfig,
    fleet: Arc<Fleet>,
    supervisors: Mutex<JoinSet<()>>,
    /// Set to true to make every supervisor kill its process and return.
    shutdown: watch::Sender<bool>,
    faults: Mutex<Faults>,
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
            faults: Mutex::new(Faults::default()),
        });

        let router = api::router(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
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

    /// Replaces the faults the server injects.
    pub fn set_faults(&self, faults: Faults) {
        *self
            .shared
            .faults
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = faults;
    }

    /// Stops serving, kills every machine process and waits until they are reaped.
    pub async fn shutdown(self) {
        self.server.abort();
        self.shared.shutdown.send_replace(true);
        let mut supervisors = self.shared.take_supervisors();
        while supervisors.join_next().await.is_some() {}
        info!(address = %self.address, "local machines server shut down");
    }
}

impl Drop for LocalMachines {
    /// Stops serving and kills every machine process without waiting for them.
    fn drop(&mut self) {
        self.server.abort();
        self.shared.shutdown.send_replace(true);
        // Aborting drops each supervisor's process handle, which SIGKILLs its process group.
        self.shared.take_supervisors().abort_all();
    }
}
