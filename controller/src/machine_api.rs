//! `MachineApi`: the reconciler's view of the Fly Machines API, counting every call by action
//! and status for `/metrics`.

use std::sync::Arc;

use std::collections::BTreeMap;

use fly_machines::client::{ClientError, FlyClient, ListMachinesQuery};
use fly_machines::types::{CreateMachineRequest, Machine};

use crate::machine_template::META_JOB;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct MachineApi {
    client: FlyClient,
    metrics: Arc<Metrics>,
}

impl MachineApi {
    pub fn new(client: FlyClient, metrics: Arc<Metrics>) -> Self {
        Self { client, metrics }
    }

    pub async fn create(&self, request: &CreateMachineRequest) -> Result<Machine, ClientError> {
        let result = self.client.create_machine(request).await;
        self.count("create", result)
    }

    pub async fn list(&self) -> Result<Vec<Machine>, ClientError> {
        let result = self.client.list_machines().await;
        self.count("list", result)
    }

    /// Lists the machines whose metadata names `job`, destroyed ones too when asked.
    pub async fn list_for_job(
        &self,
        job: &str,
        include_deleted: bool,
    ) -> Result<Vec<Machine>, ClientError> {
        let query = ListMachinesQuery {
            include_deleted,
            metadata: BTreeMap::from([(META_JOB.to_owned(), job.to_owned())]),
            ..Default::default()
        };
        let result = self.client.list_machines_matching(&query).await;
        self.count("list", result)
    }

    pub async fn get(&self, id: &str) -> Result<Machine, ClientError> {
        let result = self.client.get_machine(id).await;
        self.count("get", result)
    }

    /// Destroys a machine, killing it first if it still runs.
    pub async fn destroy(&self, id: &str) -> Result<(), ClientError> {
        let result = self.client.destroy_machine(id, true).await;
        self.count("destroy", result)
    }

    fn count<T>(&self, action: &str, result: Result<T, ClientError>) -> Result<T, ClientError> {
        let status = match &result {
            Ok(_) => "200".to_owned(),
            Err(err) => err
                .status()
                .map_or_else(|| "error".to_owned(), |status| status.to_string()),
        };
        self.metrics.record_api_call(action, &status);
        result
    }
}
