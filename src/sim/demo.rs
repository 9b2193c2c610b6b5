//! `devmetrics demo`: every fake started with live, changing activity, and the exporter
//! configured against them.

use std::sync::Arc;

use crate::config::Config;

/// The running fakes; dropping it stops them.
pub struct Demo {
    pub fakes: Vec<Arc<super::FakeServer>>,
    /// Stops the webhook sender when the demo is dropped.
    pub webhook_sender: Option<tokio_util::sync::DropGuard>,
    /// Stops the Jira incident sender when the demo is dropped.
    pub jira_sender: Option<tokio_util::sync::DropGuard>,
}

impl Demo {
    /// Starts every fake and points `config` at them.
    pub async fn start(config: &mut Config, seed: u64) -> std::io::Result<Demo> {
        let mut fakes: Vec<Arc<super::FakeServer>> = Vec::new();
        fakes.extend(super::github::demo(config, seed).await?);
        let webhook_sender = Some(webhook_sender(config, seed));
        let jira_sender = Some(jira_sender(config, seed));
        {
            let fake = super::spacelift::SpaceliftFake::start(seed, 24).await?;
            // Short-lived tokens so the demo shows refreshes, and a live account.
            fake.sim
                .token_ttl_secs
                .store(120, std::sync::atomic::Ordering::Relaxed);
            fake.animate(std::time::Duration::from_secs(2));
            // Show the per-stack families too, as an account that grants them would.
            fake.sim.gate_stacks(false);
            config.spacelift = Some(crate::sources::spacelift::config::demo_config(
                &fake.base_url(),
                super::spacelift::KEY_ID,
                super::spacelift::KEY_SECRET,
            ));
            fakes.push(fake.server.clone());
        }
        Ok(Demo {
            fakes,
            webhook_sender,
            jira_sender,
        })
    }
}

/// The address the exporter's webhook receivers listen on, as a client reaches it.
fn receiver_addr(config: &Config) -> std::net::SocketAddr {
    let mut addr = config
        .webhooks
        .listen_address
        .or_else(|| config.web.listen_addresses.first().copied())
        .expect("config has a listen address");
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    addr
}

/// Enables DORA for two teams (deployments arrive with the demo's CI deliveries) and posts live incidents to it.
fn jira_sender(config: &mut Config, seed: u64) -> tokio_util::sync::DropGuard {
    use crate::sources::dora::config::{DoraConfig, IncidentFilter, JiraConfig, Team, Teams};
    let secret = format!("demo-jira-secret-{seed}");
    if config.dora.is_none() {
        config.dora = Some(DoraConfig {
            teams: Teams(vec![
                Team {
                    name: "Payments".into(),
                    github_repositories: vec!["acme/api".into(), "acme/web".into()],
                    jira_projects: vec!["PAY".into()],
                },
                Team {
                    name: "Platform".into(),
                    github_repositories: vec!["acme/infra".into()],
                    jira_projects: vec!["OPS".into()],
                },
            ]),
            jira: Some(JiraConfig {
                secret: Some(crate::config::Secret::new(secret.clone())),
                url_token: None,
                insecure_skip_verify: false,
                filter: IncidentFilter {
                    issue_types: vec!["Incident".into()],
                    ..Default::default()
                },
            }),
            import_snapshot: None,
            production_environments: vec!["production".into()],
            deployments_api_token: None,
            backstage: None,
            failed_deployments_are_failures: true,
            github_incident_label: Some("incident".into()),
            four_keys_interval: std::time::Duration::from_secs(5),
        });
    }
    let sender = super::jira::Sender::new(
        format!("http://{}/webhooks/jira", receiver_addr(config)),
        secret,
    );
    let token = tokio_util::sync::CancellationToken::new();
    tokio::spawn(super::jira::drive(
        sender,
        vec!["PAY".into(), "OPS".into()],
        std::time::Duration::from_secs(5),
        token.clone(),
    ));
    token.drop_guard()
}

/// Enables the GitHub receiver with a demo secret and posts live CI activity to it.
fn webhook_sender(config: &mut Config, seed: u64) -> tokio_util::sync::DropGuard {
    use crate::sources::github::webhook::{HookConfig, config::GITHUB_MAX_BODY};
    let secret = format!("demo-secret-{seed}");
    let gh = config.webhooks.github.get_or_insert_with(|| HookConfig {
        secrets: Vec::new(),
        secret_files: Vec::new(),
        insecure_skip_verify: false,
        max_body_bytes: GITHUB_MAX_BODY,
        max_buffered_bytes: crate::sources::github::webhook::config::DEFAULT_MAX_BUFFERED,
        consumers: 4,
        workflows: Default::default(),
        series_budget: crate::sources::github::webhook::config::DEFAULT_SERIES_BUDGET,
        repos: Default::default(),
        runners: None,
        recovery: Vec::new(),
    });
    gh.secrets.push(crate::config::Secret::new(secret.clone()));
    gh.insecure_skip_verify = false;
    let addr = receiver_addr(config);
    let sender = super::webhooks::Sender::new(format!("http://{addr}/webhooks/github"), secret);
    let token = tokio_util::sync::CancellationToken::new();
    tokio::spawn(super::webhooks::drive(
        sender,
        seed,
        std::time::Duration::from_secs(4),
        token.clone(),
    ));
    token.drop_guard()
}
