//! devmetrics: delivery telemetry (GitHub activity, CI, DORA, Copilot, Spacelift) as
//! Prometheus/OpenMetrics. See ARCHITECTURE.md for the map.

pub mod app;
pub mod clock;
pub mod compat;
pub mod config;
pub mod db;
pub mod doctor;
pub mod exposition;
pub mod ha;
pub mod metrics;
pub mod processors;
pub mod queue;
pub mod server;
pub mod sim;
pub mod sources;
pub mod storage;
pub mod store;
pub mod telemetry;
pub mod timestamp;
