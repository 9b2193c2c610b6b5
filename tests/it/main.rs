//! The integration test binary: one binary, a module per area.

mod backlog;
mod cli;
mod compat;
mod contract;
mod copilot;
mod crash;
mod demo;
mod deploy;
mod docs;
mod doctor;
mod dora;
mod exposition;
mod faults;
mod fuzz;
mod github;
mod ha;
mod hostile;
mod push;
mod secrets;
mod server;
mod soak;
mod spacelift;
mod status;
mod support;
mod wal;
mod webhooks;
