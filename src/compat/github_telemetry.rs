//! Aymalla/github-telemetry: its webhook frontend and queue backend, as one process.

use std::collections::BTreeMap;

use serde_yaml::Value;

use super::{Body, Endpoint, Error, Event, Launch, Mapping, Plan, Response, Tool};

/// Variables that name the Azure Storage queue or tune its polling: events wait in
/// devmetrics' own durable queue instead, so these have nothing to set.
const MEANINGLESS: &[&str] = &[
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_QUEUE_NAME",
    "BACKEND_AZURE_STORAGE_ACCOUNT_NAME",
    "BACKEND_AZURE_STORAGE_QUEUE_NAME",
    "BACKEND_POLL_INTERVAL_SECONDS",
    "BACKEND_MAX_MESSAGES_PER_BATCH",
    "BACKEND_VISIBILITY_TIMEOUT_SECONDS",
];

const QUEUE_NOTE: &str = "events wait in devmetrics' durable queue (queue.*), not Azure Storage";

pub static TOOL: Tool = Tool {
    name: "github-telemetry",
    title: "github-telemetry (webhook frontend and backend)",
    readme: "github-telemetry.md",
    default_port: 8080,
    usage: "github-telemetry [-m MODULE] [APP] [--host HOST] [--port PORT]\n\nThe frontend and the backend in one process: receives GitHub's signed workflow_run and\nworkflow_job webhooks at POST /webhook, queues them durably, and turns them into\nworkflow, job and step telemetry for Application Insights (and devmetrics' CI metrics at\n/metrics). The README's commands work verbatim apart from the binary: the module and app\narguments of `python -m uvicorn src.frontend.app:app` and `python -m src.backend.app` are\naccepted and ignored.",
    flags: &[
        Mapping {
            old: "--host",
            new: "web.listen_addresses",
            note: "overrides HOST",
        },
        Mapping {
            old: "--port",
            new: "web.listen_addresses",
            note: "overrides PORT",
        },
        Mapping {
            old: "-m MODULE, APP",
            new: "",
            note: "one process is the frontend and the backend; a separate backend process is not needed",
        },
    ],
    env: &[
        Mapping {
            old: "HOST",
            new: "web.listen_addresses",
            note: "default 0.0.0.0",
        },
        Mapping {
            old: "PORT",
            new: "web.listen_addresses",
            note: "default 8080",
        },
        Mapping {
            old: "GITHUB_WEBHOOK_SECRET",
            new: "webhooks.github.secret",
            note: "required: devmetrics refuses unsigned deliveries",
        },
        Mapping {
            old: "FRONTEND_GITHUB_WEBHOOK_SECRET",
            new: "webhooks.github.secret",
            note: "the name the README's webhook section uses",
        },
        Mapping {
            old: "APPLICATIONINSIGHTS_CONNECTION_STRING",
            new: "webhooks.sinks.appinsights.connection_string",
            note: "",
        },
        Mapping {
            old: "BACKEND_APPLICATIONINSIGHTS_CONNECTION_STRING",
            new: "webhooks.sinks.appinsights.connection_string",
            note: "",
        },
        Mapping {
            old: "AZURE_STORAGE_ACCOUNT_NAME",
            new: "",
            note: QUEUE_NOTE,
        },
        Mapping {
            old: "AZURE_STORAGE_QUEUE_NAME",
            new: "",
            note: QUEUE_NOTE,
        },
        Mapping {
            old: "BACKEND_AZURE_STORAGE_ACCOUNT_NAME",
            new: "",
            note: QUEUE_NOTE,
        },
        Mapping {
            old: "BACKEND_AZURE_STORAGE_QUEUE_NAME",
            new: "",
            note: QUEUE_NOTE,
        },
        Mapping {
            old: "BACKEND_POLL_INTERVAL_SECONDS",
            new: "",
            note: "consumers are woken by each delivery; there is no polling interval",
        },
        Mapping {
            old: "BACKEND_MAX_MESSAGES_PER_BATCH",
            new: "",
            note: "consumers take one delivery at a time; webhooks.github.consumers sets how many run",
        },
        Mapping {
            old: "BACKEND_VISIBILITY_TIMEOUT_SECONDS",
            new: "",
            note: "a delivery in hand is released at once when its process stops; on Redis streams see queue.redis.visibility_timeout",
        },
    ],
    config_keys: &[],
    endpoints: &[
        Endpoint {
            method: "GET",
            path: "/health",
            responses: &[Response {
                status: 200,
                when: "always",
                body: Body::Json(r#"{"status": "healthy"}"#),
            }],
        },
        Endpoint {
            method: "POST",
            path: "/webhook",
            responses: &[
                Response {
                    status: 202,
                    when: "a workflow_run or workflow_job event, signature valid: queued durably",
                    body: Body::JsonHas(r#"{"message": "Event received and queued"}"#),
                },
                Response {
                    status: 200,
                    when: "an event type that is not processed",
                    body: Body::JsonHas(r#"{"message": "Event type not processed"}"#),
                },
                Response {
                    status: 401,
                    when: "a missing or invalid X-Hub-Signature-256",
                    body: Body::JsonHas(r#"{"detail": "Invalid signature"}"#),
                },
                Response {
                    status: 400,
                    when: "a payload that is not JSON (also a missing X-GitHub-Event, which the old frontend answered 200 as event `unknown`)",
                    body: Body::JsonHas(r#"{"detail": "Invalid JSON payload"}"#),
                },
            ],
        },
    ],
    families: &[],
    events: &[
        Event {
            name: "WorkflowRun",
            properties: &[
                "workflow_run_id",
                "workflow_name",
                "repository_full_name",
                "status",
                "conclusion",
                "triggered_by",
            ],
            measurements: &["duration_seconds"],
        },
        Event {
            name: "WorkflowJob",
            properties: &[
                "job_id",
                "job_name",
                "workflow_run_id",
                "workflow_name",
                "repository_full_name",
                "runner_name",
                "labels",
            ],
            measurements: &["duration_seconds"],
        },
        Event {
            name: "WorkflowStep",
            properties: &[
                "step_name",
                "step_number",
                "step_status",
                "step_conclusion",
                "job_id",
                "job_name",
                "workflow_run_id",
                "workflow_name",
                "repository_full_name",
            ],
            measurements: &["duration_seconds"],
        },
    ],
    changes: r#"
- **One process, no Azure Storage.** The frontend answers 202 only once the delivery is durable in devmetrics' own queue (the SQLite file, or RabbitMQ or Redis streams when replicas share work), and the same process processes it. A crash between the two loses nothing, and a redelivery of the same `X-GitHub-Delivery` is recognised (200, `duplicate delivery`) instead of being counted twice.
- **Signatures are required.** The old frontend accepted every delivery when `GITHUB_WEBHOOK_SECRET` was empty; devmetrics refuses to start without a secret, compares signatures in constant time and accepts several secrets during a rotation (`webhooks.github.secrets`).
- **`/health`** answers `{"status": "healthy"}` on the webhook listener. When the Spacelift source shares the main listener its `/health` keeps the Spacelift exporter's text there, and the JSON answer moves to a separate webhook listener (`webhooks.listen_address`) if one is set.
- **Telemetry beyond Application Insights:** the same runs, jobs and steps become Prometheus families (`github_workflow_*`, `github_job_*`, queue time by runner labels, see docs/sources/webhooks.md) and, optionally, OTLP traces (`webhooks.sinks.otlp`).
- **Events keep the README's names, properties and measurements,** with more properties beside them (run attempt, queue duration, runner group, timestamps, URLs).
"#,
    parse,
};

fn parse(args: &[String], env: &BTreeMap<String, String>) -> Result<Launch, Error> {
    // uvicorn's and python's own arguments from the README's commands: `-m MODULE` and the
    // `module:app` positional carry no setting here.
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-m" => {
                it.next();
            }
            "--host" | "--port" => {
                rest.push(a.clone());
                rest.extend(it.next().cloned());
            }
            _ if a.starts_with('-') => rest.push(a.clone()),
            _ => {}
        }
    }
    let flags = super::go_flags(TOOL.name, &rest, &["host", "port"], &[])?;
    if flags.contains_key("help") {
        return Ok(Launch::Print(TOOL.help()));
    }
    let usage = |message: String| Error::Usage {
        tool: TOOL.name,
        message,
    };
    let host = flags
        .get("host")
        .or_else(|| env.get("HOST"))
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "0.0.0.0".into());
    let port = flags
        .get("port")
        .or_else(|| env.get("PORT"))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| TOOL.default_port.to_string());
    let port: u16 = port
        .parse()
        .map_err(|_| usage(format!("PORT {port:?} is not a port number")))?;
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host
    };
    let mut plan = Plan {
        env: TOOL.own_env(env),
        ..Plan::default()
    };
    plan.overrides.set_from(
        "web.listen_addresses",
        Value::Sequence(vec![Value::String(format!("{host}:{port}"))]),
        "HOST and PORT (or --host and --port)",
    );
    let first = |names: &[&'static str]| -> Option<(&'static str, String)> {
        names.iter().find_map(|n| {
            env.get(*n)
                .filter(|v| !v.trim().is_empty())
                .map(|v| (*n, v.clone()))
        })
    };
    match first(&["GITHUB_WEBHOOK_SECRET", "FRONTEND_GITHUB_WEBHOOK_SECRET"]) {
        Some((var, secret)) => {
            plan.overrides.set_from(
                "webhooks.github.secret",
                Value::String(secret),
                &format!("environment variable {var}"),
            );
        }
        None => {
            return Err(usage(
                "GITHUB_WEBHOOK_SECRET is empty: devmetrics verifies every delivery's signature, so set it to the webhook's secret".into(),
            ));
        }
    }
    if let Some((var, conn)) = first(&[
        "APPLICATIONINSIGHTS_CONNECTION_STRING",
        "BACKEND_APPLICATIONINSIGHTS_CONNECTION_STRING",
    ]) {
        plan.overrides.set_from(
            "webhooks.sinks.appinsights.connection_string",
            Value::String(conn),
            &format!("environment variable {var}"),
        );
    }
    let ignored: Vec<&str> = MEANINGLESS
        .iter()
        .copied()
        .filter(|v| env.contains_key(*v))
        .collect();
    if !ignored.is_empty() {
        plan.warnings.push(format!(
            "{} accepted and ignored: {QUEUE_NOTE}; one process receives and processes",
            ignored.join(", ")
        ));
    }
    Ok(Launch::Serve(plan))
}
