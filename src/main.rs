//! The binary's edge: parse the command line, load config, start the app. The only place
//! errors meet the user.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

use devmetrics::{app, config, metrics, storage};

#[derive(Parser)]
#[command(
    name = "devmetrics",
    version,
    about = "Delivery metrics (GitHub activity, CI, DORA, Copilot, Spacelift) for Prometheus and OpenTelemetry"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the exporter.
    Serve(Common),
    /// Run the exporter against built-in simulated upstreams with live activity.
    Demo {
        #[command(flatten)]
        common: Common,
        /// Seed for the simulated data.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Validate a configuration and exit (status 2 when invalid).
    CheckConfig(Common),
    /// Try each configured credential against its upstream and print what works, which
    /// permission or scope a configured feature lacks, and the rate-limit budget against the
    /// configured intervals; exit 0 only when everything configured can work.
    Doctor(Common),
    /// Probe this host's running service for a container HEALTHCHECK: exit 0 when its
    /// /readyz answers 200 (or 401: serving, behind basic auth), 1 otherwise.
    Healthcheck {
        #[command(flatten)]
        common: Common,
        /// The URL to probe (default: /readyz on the first web.listen_addresses, loopback).
        #[arg(long)]
        url: Option<String>,
    },
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        what: ConfigCommand,
    },
    /// Inspect, replay and purge the queue's dead letters (beside a running service too).
    Queue {
        #[command(subcommand)]
        what: QueueCommand,
    },
    /// Print version information.
    Version,
    /// Run as a replaced tool, with its own command line, environment and port
    /// (`devmetrics compat spacelift-promex serve -e … -k … -s …`); the binary started under
    /// that tool's name (a link) does the same.
    Compat {
        /// spacelift-promex, github-stats-exporter, github-telemetry or dora-exporter
        tool: String,
        /// The tool's own arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Generated documentation.
    #[command(hide = true)]
    Docs {
        #[command(subcommand)]
        what: DocsCommand,
    },
    /// Load generators for the crash tests: they drive the real store and queue and print
    /// each operation once it is durable, so a test can SIGKILL them at any point.
    #[command(hide = true)]
    Debug {
        #[command(subcommand)]
        what: DebugCommand,
    },
}

#[derive(Subcommand)]
enum DebugCommand {
    /// apply_once keys k0..k<keys> (concurrently), printing "applied <key>" or "duplicate <key>".
    StoreLoad {
        #[arg(long = "storage.path")]
        storage_path: PathBuf,
        #[arg(long, default_value_t = 10_000)]
        keys: u64,
    },
    /// publish messages m0..m<messages> with dedupe keys, printing "published <key>" or
    /// "duplicate <key>".
    QueueLoad {
        #[arg(long = "storage.path")]
        storage_path: PathBuf,
        #[arg(long, default_value_t = 10_000)]
        messages: u64,
    },
}

#[derive(Subcommand)]
enum QueueCommand {
    /// List dead letters: id, topic, attempts, when, and why.
    DeadLetters {
        #[command(flatten)]
        db: QueueDb,
        /// Only this topic (e.g. webhooks/github, sink/otlp, github/backfill).
        #[arg(long)]
        topic: Option<String>,
    },
    /// Print one dead letter with its payload.
    Show {
        #[command(flatten)]
        db: QueueDb,
        id: i64,
    },
    /// Put dead letters back on their topics with fresh attempts. A running service takes
    /// them in within seconds; a stopped one when it starts.
    Replay {
        #[command(flatten)]
        db: QueueDb,
        #[command(flatten)]
        select: QueueSelect,
    },
    /// Delete dead letters for good.
    Purge {
        #[command(flatten)]
        db: QueueDb,
        #[command(flatten)]
        select: QueueSelect,
    },
}

/// Where the queue lives: the configuration's `storage.path`, or the file itself.
#[derive(Args)]
struct QueueDb {
    /// YAML configuration file (its storage.path is used).
    #[arg(long = "config.file", value_name = "PATH")]
    config_file: Option<PathBuf>,
    /// The SQLite file (overrides the configuration).
    #[arg(long = "storage.path", value_name = "PATH")]
    storage_path: Option<PathBuf>,
}

impl QueueDb {
    /// The SQLite file and the queue backend the configuration names.
    fn path(&self) -> Result<(PathBuf, config::QueueBackend), config::Error> {
        let common = Common {
            config_file: self.config_file.clone(),
            storage_path: self.storage_path.clone(),
            ..Default::default()
        };
        let config = common.load()?;
        Ok((config.storage.path, config.queue.backend))
    }
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct QueueSelect {
    /// Every dead letter of this topic.
    #[arg(long)]
    topic: Option<String>,
    /// Every dead letter.
    #[arg(long)]
    all: bool,
    /// These dead letters (ids from `devmetrics queue dead-letters`).
    ids: Vec<i64>,
}

impl QueueSelect {
    fn select(&self) -> devmetrics::queue::dead_letters::Select {
        use devmetrics::queue::dead_letters::Select;
        match (&self.topic, self.all) {
            (Some(t), _) => Select::Topic(t.clone()),
            (None, true) => Select::All,
            (None, false) => Select::Ids(self.ids.clone()),
        }
    }
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print an annotated example configuration.
    Example,
}

#[derive(Subcommand)]
enum DocsCommand {
    /// The metrics reference (docs/metrics.md).
    Metrics,
    /// A replaced tool's migration page (docs/migrate/TOOL.md).
    Migrate { tool: String },
    /// The configuration reference (docs/config-reference.md).
    Config,
}

#[derive(Args, Clone, Default)]
struct Common {
    /// YAML configuration file.
    #[arg(long = "config.file", value_name = "PATH")]
    config_file: Option<PathBuf>,
    /// Address to listen on (repeatable). Default :10477.
    #[arg(long = "web.listen-address", value_name = "HOST:PORT")]
    listen_address: Vec<String>,
    /// Path under which to expose metrics.
    #[arg(long = "web.telemetry-path", value_name = "PATH")]
    telemetry_path: Option<String>,
    /// Exporter-toolkit web configuration file (TLS, basic auth).
    #[arg(long = "web.config.file", value_name = "PATH")]
    web_config_file: Option<PathBuf>,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long = "log.level", value_name = "LEVEL")]
    log_level: Option<String>,
    /// Log format: logfmt or json.
    #[arg(long = "log.format", value_name = "FORMAT")]
    log_format: Option<String>,
    /// Separate address for the webhook receivers, so /metrics can stay private.
    #[arg(long = "web.webhook-listen-address", value_name = "HOST:PORT")]
    webhook_listen_address: Option<String>,
    /// SQLite file holding state, queue and keys.
    #[arg(long = "storage.path", value_name = "PATH")]
    storage_path: Option<PathBuf>,
    /// Spacelift API endpoint, e.g. https://ACCOUNT.app.spacelift.io (enables the source).
    #[arg(long = "spacelift.api-endpoint", value_name = "URL")]
    spacelift_api_endpoint: Option<String>,
    /// Spacelift admin API key id.
    #[arg(long = "spacelift.api-key-id", value_name = "ID")]
    spacelift_api_key_id: Option<String>,
    /// Spacelift API key secret (prefer --spacelift.api-key-secret-file).
    #[arg(
        long = "spacelift.api-key-secret",
        value_name = "SECRET",
        hide_env_values = true
    )]
    spacelift_api_key_secret: Option<String>,
    /// File holding the Spacelift API key secret, re-read on every token exchange.
    #[arg(long = "spacelift.api-key-secret-file", value_name = "PATH")]
    spacelift_api_key_secret_file: Option<PathBuf>,
    /// Deadline for one whole Spacelift scrape (token exchange included). Default 5s.
    #[arg(long = "spacelift.scrape-timeout", value_name = "DURATION")]
    spacelift_scrape_timeout: Option<String>,
}

impl Common {
    fn overrides(&self) -> config::Overrides {
        use serde_yaml::Value;
        let mut o = config::Overrides::default();
        if !self.listen_address.is_empty() {
            let seq = self
                .listen_address
                .iter()
                .cloned()
                .map(Value::String)
                .collect();
            o.set(
                "web.listen_addresses",
                Value::Sequence(seq),
                "web.listen-address",
            );
        }
        let s = |v: &Option<String>| v.clone().map(Value::String);
        // Relative paths in the file resolve from the file's directory; on the command line
        // they mean the working directory, so they are made absolute here.
        let p = |v: &Option<PathBuf>| {
            v.as_ref().map(|p| {
                let abs = std::env::current_dir()
                    .map(|d| d.join(p))
                    .unwrap_or_else(|_| p.clone());
                Value::String(abs.display().to_string())
            })
        };
        for (key, flag, v) in [
            (
                "web.telemetry_path",
                "web.telemetry-path",
                s(&self.telemetry_path),
            ),
            (
                "web.config_file",
                "web.config.file",
                p(&self.web_config_file),
            ),
            ("log.level", "log.level", s(&self.log_level)),
            ("log.format", "log.format", s(&self.log_format)),
            ("storage.path", "storage.path", p(&self.storage_path)),
            (
                "spacelift.api_endpoint",
                "spacelift.api-endpoint",
                s(&self.spacelift_api_endpoint),
            ),
            (
                "spacelift.api_key_id",
                "spacelift.api-key-id",
                s(&self.spacelift_api_key_id),
            ),
            (
                "spacelift.api_key_secret",
                "spacelift.api-key-secret",
                s(&self.spacelift_api_key_secret),
            ),
            (
                "spacelift.api_key_secret_file",
                "spacelift.api-key-secret-file",
                p(&self.spacelift_api_key_secret_file),
            ),
            (
                "spacelift.scrape_timeout",
                "spacelift.scrape-timeout",
                s(&self.spacelift_scrape_timeout),
            ),
            (
                "webhooks.listen_address",
                "web.webhook-listen-address",
                s(&self.webhook_listen_address),
            ),
        ] {
            if let Some(v) = v {
                o.set(key, v, flag);
            }
        }
        o
    }

    fn load(&self) -> Result<config::Config, config::Error> {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        config::load(self.config_file.as_deref(), &env, &self.overrides())
    }
}

fn init_logging(cfg: &config::Config) {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_new(format!(
        "{},hyper=warn,h2=warn,rustls=warn",
        cfg.log_level
    ))
    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    match cfg.log_format {
        config::LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .init(),
        config::LogFormat::Logfmt => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(tracing_logfmt::EventsFormatter::default())
                    .fmt_fields(tracing_logfmt::FieldsFormatter::default())
                    .with_writer(std::io::stderr),
            )
            .init(),
    }
}

/// Runs as the replaced tool `tool` with its own arguments.
fn persona(tool: &str, args: Vec<String>) -> ExitCode {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let plan = match devmetrics::compat::invoke(tool, &args, &env) {
        Ok(devmetrics::compat::Launch::Print(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Ok(devmetrics::compat::Launch::Serve(plan)) => plan,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(config::EXIT_INVALID as u8);
        }
    };
    let cfg = match config::load(plan.file.as_deref(), &plan.env, &plan.overrides) {
        Ok(c) => c,
        Err(e) => return invalid(e),
    };
    init_logging(&cfg);
    for w in &plan.warnings {
        tracing::warn!("{w}");
    }
    run(serve(cfg))
}

fn invalid(e: config::Error) -> ExitCode {
    eprintln!("devmetrics: invalid configuration: {e}");
    ExitCode::from(config::EXIT_INVALID as u8)
}

fn main() -> ExitCode {
    let argv0 = std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    if devmetrics::compat::tool(&argv0).is_some() {
        return persona(&argv0, std::env::args().skip(1).collect());
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Compat { tool, args } => persona(&tool, args),
        Command::Version => {
            println!(
                "devmetrics {} (revision {})",
                env!("CARGO_PKG_VERSION"),
                option_env!("DEVMETRICS_REVISION").unwrap_or("unknown")
            );
            ExitCode::SUCCESS
        }
        Command::Config {
            what: ConfigCommand::Example,
        } => {
            print!("{}", config::EXAMPLE);
            ExitCode::SUCCESS
        }
        Command::Docs {
            what: DocsCommand::Metrics,
        } => {
            print!("{}", metrics::docs::markdown());
            ExitCode::SUCCESS
        }
        Command::Docs {
            what: DocsCommand::Config,
        } => {
            print!("{}", config::reference::markdown());
            ExitCode::SUCCESS
        }
        Command::Docs {
            what: DocsCommand::Migrate { tool },
        } => match devmetrics::compat::tool(&tool) {
            Some(t) => {
                print!("{}", t.migration_page());
                ExitCode::SUCCESS
            }
            None => {
                eprintln!("{}", devmetrics::compat::Error::Unknown(tool));
                ExitCode::from(2)
            }
        },
        Command::Debug { what } => run(debug(what)),
        Command::Queue { what } => queue(what),
        Command::CheckConfig(common) => match common.load() {
            Ok(cfg) => {
                // Sections of the replaced tools that are accepted but ignored.
                for w in cfg.github.iter().flat_map(|g| &g.compat_warnings) {
                    eprintln!("warning: {w}");
                }
                println!(
                    "configuration is valid: listening on {:?}, storage {}",
                    cfg.web.listen_addresses,
                    cfg.storage.path.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => invalid(e),
        },
        Command::Doctor(common) => {
            let cfg = match common.load() {
                Ok(c) => c,
                Err(e) => return invalid(e),
            };
            run(async move {
                let report = devmetrics::doctor::run(&cfg).await;
                print!("{}", report.table());
                anyhow::ensure!(report.ok(), "something configured cannot work");
                Ok(())
            })
        }
        Command::Healthcheck { common, url } => {
            let url = match url {
                Some(u) => u,
                None => match common.load() {
                    Ok(cfg) => readyz_url(&cfg),
                    Err(e) => return invalid(e),
                },
            };
            run(healthcheck(url))
        }
        Command::Serve(common) => {
            let cfg = match common.load() {
                Ok(c) => c,
                Err(e) => return invalid(e),
            };
            init_logging(&cfg);
            run(serve(cfg))
        }
        Command::Demo { common, seed } => {
            let mut common = common;
            let demo_dir = tempfile::tempdir().ok();
            if common.storage_path.is_none() {
                common.storage_path = demo_dir.as_ref().map(|d| d.path().join("demo.db"));
            }
            let cfg = match common.load() {
                Ok(c) => c,
                Err(e) => return invalid(e),
            };
            init_logging(&cfg);
            run(demo(cfg, seed))
        }
    }
}

fn queue(what: QueueCommand) -> ExitCode {
    use devmetrics::queue::dead_letters::{DeadLetters, Select};
    let (QueueCommand::DeadLetters { db, .. }
    | QueueCommand::Show { db, .. }
    | QueueCommand::Replay { db, .. }
    | QueueCommand::Purge { db, .. }) = &what;
    let path = match db.path() {
        Ok((_, config::QueueBackend::RabbitMq)) => {
            // The dead letters read here are rows of the SQLite file; on RabbitMQ they are
            // messages of the broker's queues.
            eprintln!(
                "devmetrics queue: queue.backend is rabbitmq, and this command reads the SQLite queue only; \
                 on RabbitMQ the dead letters are the queues {{prefix}}.{{topic}}.dead, handled with the broker's tools (see docs/ha.md)"
            );
            return ExitCode::FAILURE;
        }
        Ok((_, config::QueueBackend::Redis)) => {
            // On Redis the dead letters are entries of streams, read with redis-cli.
            eprintln!(
                "devmetrics queue: queue.backend is redis, and this command reads the SQLite queue only; \
                 on Redis the dead letters are the streams {{prefix}}:q:{{topic}}:dead, read with redis-cli (see docs/ha.md)"
            );
            return ExitCode::FAILURE;
        }
        Ok((p, config::QueueBackend::Sqlite)) => p,
        Err(e) => return invalid(e),
    };
    let letters = match DeadLetters::open(&path) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("devmetrics: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let when = |t: f64| devmetrics::timestamp::format_rfc3339(t);
    let result = match &what {
        QueueCommand::DeadLetters { topic, .. } => {
            let select = topic.clone().map_or(Select::All, Select::Topic);
            letters.list(&select).map(|list| {
                println!("{:>8}  {:<20} {:>8}  {:<20}  reason", "id", "topic", "attempts", "dead since");
                for d in &list {
                    let pending = if d.replay_pending { " (replay pending)" } else { "" };
                    println!(
                        "{:>8}  {:<20} {:>8}  {:<20}  {}{pending}",
                        d.id,
                        d.topic,
                        d.attempts,
                        when(d.dead_at),
                        d.reason
                    );
                }
                println!("{} dead letters", list.len());
            })
        }
        QueueCommand::Show { id, .. } => letters.show(*id).map(|found| match found {
            None => println!("no dead letter {id}"),
            Some((d, payload)) => {
                println!("id:         {}", d.id);
                println!("topic:      {}", d.topic);
                println!("attempts:   {}", d.attempts);
                println!("published:  {}", when(d.published_at));
                println!("dead since: {}", when(d.dead_at));
                println!("reason:     {}", d.reason);
                match payload {
                    None => println!("payload:    unreadable ({} bytes stored)", d.stored_bytes),
                    Some(p) => match devmetrics::processors::Envelope::decode(&bytes::Bytes::from(p.clone())) {
                        Some(env) => {
                            println!("event:      {}", env.event);
                            println!("delivery:   {}", env.delivery);
                            println!("{}", String::from_utf8_lossy(&env.body));
                        }
                        None => println!("{}", String::from_utf8_lossy(&p)),
                    },
                }
            }
        }),
        QueueCommand::Replay { select, .. } => letters.replay(&select.select()).map(|n| {
            println!(
                "{n} dead letters queued for replay: a running service takes them in within seconds, a stopped one when it starts"
            )
        }),
        QueueCommand::Purge { select, .. } => letters
            .purge(&select.select())
            .map(|n| println!("{n} dead letters purged")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("devmetrics: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `/readyz` on the first listen address, reached over loopback when it listens on every
/// address; https when the web config file is set (it may enable TLS).
fn readyz_url(cfg: &config::Config) -> String {
    let addr = cfg
        .web
        .listen_addresses
        .first()
        .copied()
        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 10477)));
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v) if v.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(v) if v.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    let scheme = if cfg.web.config_file.is_some() {
        "https"
    } else {
        "http"
    };
    format!(
        "{scheme}://{}/readyz",
        std::net::SocketAddr::new(ip, addr.port())
    )
}

async fn healthcheck(url: String) -> anyhow::Result<()> {
    // The probe reaches this host's own listener; its certificate names the service, not
    // loopback.
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .danger_accept_invalid_certs(true)
        .build()?;
    let mut answer = client.get(&url).send().await;
    if answer.is_err() && url.starts_with("https://") {
        // A web config file without TLS (basic auth only) serves plain http.
        answer = client
            .get(url.replacen("https://", "http://", 1))
            .send()
            .await;
    }
    let status = answer
        .map_err(|e| anyhow::anyhow!("{url}: {}", e.without_url()))?
        .status();
    anyhow::ensure!(
        status.is_success() || status == reqwest::StatusCode::UNAUTHORIZED,
        "{url} answered {status}"
    );
    Ok(())
}

fn run(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("devmetrics: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("devmetrics: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(cfg: config::Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn(app::signals(shutdown.clone()));
    let listeners = app::bind(&cfg).await?;
    let launched = app::launch(cfg, listeners, shutdown).await?;
    launched.wait().await;
    Ok(())
}

async fn demo(mut cfg: config::Config, seed: u64) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn(app::signals(shutdown.clone()));
    let fakes = devmetrics::sim::demo::Demo::start(&mut cfg, seed)
        .await
        .context("starting the simulated upstreams")?;
    let listeners = app::bind(&cfg).await?;
    let path = cfg.web.telemetry_path.clone();
    let launched = app::launch(cfg, listeners, shutdown).await?;
    println!("devmetrics demo is running against simulated upstreams. Open:");
    for addr in &launched.addrs {
        let host = if addr.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            addr.ip().to_string()
        };
        println!("  http://{host}:{}/          status page", addr.port());
        println!("  http://{host}:{}{path}   metrics", addr.port());
    }
    for f in &fakes.fakes {
        println!("  simulated {} at {}", f.name, f.base_url());
    }
    println!("Press Ctrl-C to stop.");
    launched.wait().await;
    drop(fakes);
    Ok(())
}

async fn debug(what: DebugCommand) -> anyhow::Result<()> {
    use devmetrics::metrics::{Labels, Op, Update};
    use devmetrics::queue::{Published, RetryPolicy};
    use devmetrics::store::Applied;
    use std::io::Write;
    use std::sync::Arc;

    const CONCURRENCY: u64 = 64;
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let print = move |line: String| {
        let mut o = out.lock().expect("stdout lock");
        let _ = writeln!(o, "{line}");
        let _ = o.flush();
    };
    match what {
        DebugCommand::StoreLoad { storage_path, keys } => {
            let store =
                storage::open_sqlite(&storage_path, RetryPolicy::default(), u64::MAX)?.store;
            let fam = metrics::DEVMETRICS_STORE_DUPLICATE_UPDATES_TOTAL;
            let mut tasks = tokio::task::JoinSet::new();
            for w in 0..CONCURRENCY {
                let (store, print) = (store.clone(), print.clone());
                tasks.spawn(async move {
                    let mut i = w;
                    while i < keys {
                        let key = format!("k{i}");
                        let update = Update {
                            family: fam,
                            labels: Labels::empty(),
                            op: Op::Inc(1.0),
                        };
                        match store.apply_once(&key, "crash-test", vec![update]).await? {
                            Applied::Applied => print(format!("applied {key}")),
                            Applied::Duplicate => print(format!("duplicate {key}")),
                        }
                        i += CONCURRENCY;
                    }
                    anyhow::Ok(())
                });
            }
            while let Some(r) = tasks.join_next().await {
                r??;
            }
        }
        DebugCommand::QueueLoad {
            storage_path,
            messages,
        } => {
            let queue =
                storage::open_sqlite(&storage_path, RetryPolicy::default(), u64::MAX)?.queue;
            let mut tasks = tokio::task::JoinSet::new();
            for w in 0..CONCURRENCY {
                let (queue, print) = (queue.clone(), print.clone());
                tasks.spawn(async move {
                    let mut i = w;
                    while i < messages {
                        let key = format!("m{i}");
                        let body = bytes::Bytes::from(key.clone().into_bytes());
                        match queue.publish("crash-test", Some(&key), body).await? {
                            Published::Published => print(format!("published {key}")),
                            Published::Duplicate => print(format!("duplicate {key}")),
                            Published::Conflict => {
                                anyhow::bail!("{key}: a publish without a fingerprint conflicted")
                            }
                        }
                        i += CONCURRENCY;
                    }
                    anyhow::Ok(())
                });
            }
            while let Some(r) = tasks.join_next().await {
                r??;
            }
        }
    }
    Ok(())
}
