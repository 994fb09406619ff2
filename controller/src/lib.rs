//! The transcoder controller: job specs, their store, the reconciler that runs them on Fly
//! Machines, the HTTP API, and the all-in-one local system.

pub mod api;
pub mod auth;
pub mod client;
pub mod compat;
pub mod config;
pub mod documents;
pub mod local;
pub mod machine_api;
pub mod machine_template;
pub mod metrics;
pub mod objectstore;
pub mod queue;
pub mod reconciler;
pub mod selector;
pub mod slots;
pub mod sources;
pub mod spec;
pub mod status;
pub mod store;
pub mod sync;
pub mod watch;
