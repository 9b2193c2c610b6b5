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
        let _ = (&config, seed);
        #[allow(unused_mut)]
        let mut fakes: Vec<Arc<super::FakeServer>> = Vec::new();
        // github (issue 4)
        fakes.push(super::github::demo(config, seed).await?);
        // webhook sender (issue 5)
        //
        // spacelift (issue 6)
        {
            let fake = super::spacelift::SpaceliftFake::start(seed, 24).await?;
            // Short-lived tokens so the demo shows refreshes, and a live account.
            fake.sim
                .token_ttl_secs
                .store(120, std::sync::atomic::Ordering::Relaxed);
            fake.animate(std::time::Duration::from_secs(2));
            config.spacelift = Some(crate::sources::spacelift::config::demo_config(
                &fake.base_url(),
            ));
            fakes.push(fake.server.clone());
        }
        Ok(Demo { fakes })
    }
}
