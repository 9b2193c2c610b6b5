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

// A delivery allocates many short strings (a job's steps, names and labels); glibc's malloc
// took about 8 % of the service's CPU under webhook load, mimalloc's per-thread free lists
// less. Here, not in `main.rs`, so tests and benchmarks measure what runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
