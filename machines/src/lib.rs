//! Fly Machines for the transcoder: a rate-limited REST API client ([`FlyClient`]) and a local
//! server ([`LocalMachines`]) that serves the same endpoints with child processes as machines.

pub mod client;
pub mod local;
pub mod types;

pub use client::{
    Action, ClientError, FlyClient, FlyClientConfig, ListMachinesQuery, RateLimits, WaitOutcome,
    WaitState,
};
pub use local::{Faults, LocalMachines, LocalMachinesConfig};
pub use types::{
    CreateMachineRequest, ErrorResponse, ExitEvent, Machine, MachineConfig, MachineEvent,
    MachineGuest, MachineInit, MachineRestart, MachineState, RestartPolicy,
};
