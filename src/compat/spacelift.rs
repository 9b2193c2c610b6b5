//! spacelift-io/prometheus-exporter (`spacelift-promex`).

use std::collections::BTreeMap;

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde_yaml::Value;

use super::{Body, Endpoint, Error, Family, Kind, Launch, Mapping, Plan, Response, Status, Tool};

pub static TOOL: Tool = Tool {
    name: "spacelift-promex",
    title: "the Spacelift Prometheus exporter (`spacelift-promex`)",
    readme: "spacelift-prometheus-exporter.md",
    default_port: 9953,
    usage: "spacelift-promex serve [--api-endpoint URL] [--api-key-id ID] [--api-key-secret SECRET] [--listen-address ADDR] [--scrape-timeout DURATION] [--is-development]\nspacelift-promex --version | help",
    flags: &[
        Mapping {
            old: "serve --api-endpoint, -e",
            new: "spacelift.api_endpoint",
            note: "",
        },
        Mapping {
            old: "serve --api-key-id, -k",
            new: "spacelift.api_key_id",
            note: "",
        },
        Mapping {
            old: "serve --api-key-secret, -s",
            new: "spacelift.api_key_secret",
            note: "or spacelift.api_key_secret_file, re-read on every token exchange",
        },
        Mapping {
            old: "serve --listen-address, -l",
            new: "web.listen_addresses",
            note: "default :9953",
        },
        Mapping {
            old: "serve --scrape-timeout, -t",
            new: "spacelift.scrape_timeout",
            note: "default 5s; the deadline of one whole scrape, token exchange included",
        },
        Mapping {
            old: "serve --is-development, -d",
            new: "log.level",
            note: "debug",
        },
        Mapping {
            old: "--version, -v",
            new: "devmetrics version",
            note: "prints `spacelift-promex version …`",
        },
        Mapping {
            old: "--help, -h, help",
            new: "",
            note: "the tool's help, with this mapping under it",
        },
    ],
    env: &[
        Mapping {
            old: "SPACELIFT_PROMEX_API_ENDPOINT",
            new: "spacelift.api_endpoint",
            note: "",
        },
        Mapping {
            old: "SPACELIFT_PROMEX_API_KEY_ID",
            new: "spacelift.api_key_id",
            note: "",
        },
        Mapping {
            old: "SPACELIFT_PROMEX_API_KEY_SECRET",
            new: "spacelift.api_key_secret",
            note: "never logged or shown",
        },
        Mapping {
            old: "SPACELIFT_PROMEX_API_KEY_SECRET_FILE",
            new: "spacelift.api_key_secret_file",
            note: "devmetrics addition: a mounted Secret file",
        },
        Mapping {
            old: "SPACELIFT_PROMEX_LISTEN_ADDRESS",
            new: "web.listen_addresses",
            note: "",
        },
        Mapping {
            old: "SPACELIFT_PROMEX_SCRAPE_TIMEOUT",
            new: "spacelift.scrape_timeout",
            note: "",
        },
        Mapping {
            old: "SPACELIFT_PROMEX_IS_DEVELOPMENT",
            new: "log.level",
            note: "debug",
        },
    ],
    config_keys: &[],
    endpoints: &[
        super::METRICS,
        Endpoint {
            method: "GET",
            path: "/health",
            responses: &[Response {
                status: 200,
                when: "always (the readiness probe of the README's Deployment)",
                body: Body::Text(crate::sources::spacelift::HEALTH_BODY),
            }],
        },
    ],
    families: &[
        Family {
            name: "spacelift_public_worker_pool_runs_pending",
            kind: Kind::Gauge,
            labels: &[],
            status: Status::Served,
        },
        Family {
            name: "spacelift_public_worker_pool_workers_busy",
            kind: Kind::Gauge,
            labels: &[],
            status: Status::Served,
        },
        Family {
            name: "spacelift_public_worker_pool_parallelism",
            kind: Kind::Gauge,
            labels: &[],
            status: Status::Served,
        },
        Family {
            name: "spacelift_worker_pool_runs_pending",
            kind: Kind::Gauge,
            labels: &["worker_pool_id", "worker_pool_name"],
            status: Status::Served,
        },
        Family {
            name: "spacelift_worker_pool_workers_busy",
            kind: Kind::Gauge,
            labels: &["worker_pool_id", "worker_pool_name"],
            status: Status::Served,
        },
        Family {
            name: "spacelift_worker_pool_workers",
            kind: Kind::Gauge,
            labels: &["worker_pool_id", "worker_pool_name"],
            status: Status::Served,
        },
        Family {
            name: "spacelift_worker_pool_workers_drained",
            kind: Kind::Gauge,
            labels: &["worker_pool_id", "worker_pool_name"],
            status: Status::Served,
        },
        Family {
            name: "spacelift_current_billing_period_start_timestamp_seconds",
            kind: Kind::Gauge,
            labels: &[],
            status: Status::Served,
        },
        Family {
            name: "spacelift_current_billing_period_end_timestamp_seconds",
            kind: Kind::Gauge,
            labels: &[],
            status: Status::Served,
        },
        Family {
            name: "spacelift_current_billing_period_used_private_seconds",
            kind: Kind::Gauge,
            labels: &[],
            status: Status::Served,
        },
        Family {
            name: "spacelift_current_billing_period_used_public_seconds",
            kind: Kind::Gauge,
            labels: &[],
            status: Status::Served,
        },
        Family {
            name: "spacelift_current_billing_period_used_seats",
            kind: Kind::Gauge,
            labels: &[],
            status: Status::Served,
        },
        Family {
            name: "spacelift_current_stacks_count_by_state",
            kind: Kind::Gauge,
            labels: &["state", "stack", "space"],
            status: Status::Served,
        },
        Family {
            name: "spacelift_current_resources_count_by_drift",
            kind: Kind::Gauge,
            labels: &["state", "stack", "space"],
            status: Status::Served,
        },
        Family {
            name: "spacelift_current_avg_stack_size_by_resource_count",
            kind: Kind::Gauge,
            labels: &[],
            status: Status::Served,
        },
        Family {
            name: "spacelift_current_average_run_duration",
            kind: Kind::Gauge,
            labels: &[],
            status: Status::Served,
        },
        Family {
            name: "spacelift_current_median_run_duration",
            kind: Kind::Gauge,
            labels: &[],
            status: Status::Served,
        },
        Family {
            name: "spacelift_scrape_duration",
            kind: Kind::Gauge,
            labels: &[],
            status: Status::ServedAs(
                "spacelift_scrape_duration_seconds",
                "the exporter's own code emits this name, so its users' queries use it",
            ),
        },
        Family {
            name: "spacelift_build_info",
            kind: Kind::Gauge,
            labels: &["version", "commit", "goversion"],
            status: Status::Served,
        },
    ],
    events: &[],
    changes: r#"
- **One failing query no longer blanks the page.** The exporter asked everything in one GraphQL query, so one field an API key may not read failed the whole scrape. devmetrics asks in query groups, each its own scope: a failing group keeps its last values and is reported in `spacelift_scrape_collector_supported` and `devmetrics_source_*`, the rest stay fresh.
- **Scrapes do not call Spacelift.** Polling runs in the background at `spacelift.interval`; a Prometheus scrape reads memory, so a slow API never times a scrape out and two Prometheus servers do not double the API load.
- **`spacelift_current_stacks_count_by_state` and `spacelift_current_resources_count_by_drift`** carry `state`, `stack` and `space`, one series per stack where the key can list stacks, and account-wide series with empty `stack` and `space` otherwise, so `sum by (state)` is the same either way.
- **`spacelift_build_info`** is always present, not only after a successful scrape, so dashboards that join on it do not go blank during an outage.
- **Richer families beside the documented ones:** `spacelift_stack_*` per stack (state, drift, resources, last run), named in `docs/metrics.md`.
- `--api-key-secret` can come from a file (`SPACELIFT_PROMEX_API_KEY_SECRET_FILE`), re-read on every token exchange, so a rotated Secret needs no restart.
"#,
    parse,
};

/// spacelift-promex's command line, as its README documents it; each flag also reads its
/// `SPACELIFT_PROMEX_*` variable.
#[derive(Parser)]
#[command(
    name = "spacelift-promex",
    about = "Exports metrics from your Spacelift account to Prometheus (served by devmetrics)",
    disable_version_flag = true
)]
struct Cli {
    /// print the version
    #[arg(short = 'v', long = "version")]
    version: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Starts the Prometheus exporter
    Serve(Serve),
}

#[derive(Args)]
struct Serve {
    /// Your spacelift API endpoint (e.g. https://myaccount.app.spacelift.io)
    #[arg(
        short = 'e',
        long = "api-endpoint",
        env = "SPACELIFT_PROMEX_API_ENDPOINT"
    )]
    api_endpoint: Option<String>,
    /// Your spacelift API key ID
    #[arg(short = 'k', long = "api-key-id", env = "SPACELIFT_PROMEX_API_KEY_ID")]
    api_key_id: Option<String>,
    /// Your spacelift API key secret
    #[arg(
        short = 's',
        long = "api-key-secret",
        env = "SPACELIFT_PROMEX_API_KEY_SECRET",
        hide_env_values = true
    )]
    api_key_secret: Option<String>,
    /// Uses settings appropriate during local development
    #[arg(
        short = 'd',
        long = "is-development",
        env = "SPACELIFT_PROMEX_IS_DEVELOPMENT"
    )]
    is_development: bool,
    /// The address to listen on for HTTP requests
    #[arg(
        short = 'l',
        long = "listen-address",
        env = "SPACELIFT_PROMEX_LISTEN_ADDRESS",
        default_value = ":9953"
    )]
    listen_address: String,
    /// The maximum duration to wait for a response from the Spacelift API during scraping
    #[arg(
        short = 't',
        long = "scrape-timeout",
        env = "SPACELIFT_PROMEX_SCRAPE_TIMEOUT",
        default_value = "5s"
    )]
    scrape_timeout: String,
}

/// The command line with the mapping table under every help text.
fn cli_command() -> clap::Command {
    Cli::command()
        .after_help(TOOL.mapping_text())
        .mut_subcommand("serve", |c| c.after_help(TOOL.mapping_text()))
}

fn parse(args: &[String], env: &BTreeMap<String, String>) -> Result<Launch, Error> {
    let command = cli_command();
    let argv = std::iter::once(TOOL.name.to_string()).chain(args.iter().cloned());
    let matches = match command.try_get_matches_from(argv) {
        Ok(m) => m,
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            return Ok(Launch::Print(e.render().to_string()));
        }
        Err(e) => {
            return Err(Error::Usage {
                tool: TOOL.name,
                message: e.render().to_string(),
            });
        }
    };
    let cli = Cli::from_arg_matches(&matches).map_err(|e| Error::Usage {
        tool: TOOL.name,
        message: e.to_string(),
    })?;
    if cli.version {
        return Ok(Launch::Print(format!(
            "spacelift-promex version {} (devmetrics)\n",
            env!("CARGO_PKG_VERSION")
        )));
    }
    let Some(Command::Serve(flags)) = cli.command else {
        let mut command = cli_command();
        return Ok(Launch::Print(command.render_help().to_string()));
    };
    let mut plan = Plan {
        env: TOOL.own_env(env),
        ..Plan::default()
    };
    let o = &mut plan.overrides;
    for (key, value, flag) in [
        ("spacelift.api_endpoint", flags.api_endpoint, "api-endpoint"),
        ("spacelift.api_key_id", flags.api_key_id, "api-key-id"),
        (
            "spacelift.api_key_secret",
            flags.api_key_secret,
            "api-key-secret",
        ),
        (
            "spacelift.scrape_timeout",
            Some(flags.scrape_timeout),
            "scrape-timeout",
        ),
    ] {
        if let Some(v) = value {
            o.set(key, Value::String(v), flag);
        }
    }
    o.set(
        "web.listen_addresses",
        Value::Sequence(vec![Value::String(flags.listen_address)]),
        "listen-address",
    );
    if flags.is_development {
        o.set("log.level", Value::String("debug".into()), "is-development");
    }
    Ok(Launch::Serve(plan))
}
