//! Webhook receivers. A receiver verifies, durably queues and answers; it never processes
//! (processing happens in `crate::processors`, fed from the queue).

pub mod config;
pub mod github;

pub use config::{GithubConfig, WebhooksConfig};
