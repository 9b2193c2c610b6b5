//! Pushing every family over OTLP (HTTP/protobuf or gRPC) to backends that do not scrape: the
//! same scopes `/metrics` renders, encoded by `otlp_metrics`, sent every `push.otlp.interval`
//! by the leader (replicas share one store, so one pusher suffices). It runs as a poller, so
//! a failing backend shows in `devmetrics_source_up{source="push/otlp"}` and `/healthz`.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::otlp::{Otlp, Signal};
use crate::config::Error;
use crate::sources::github::webhook::config::{OtlpConfig, RawOtlp};
use crate::sources::{BuildError, Component, Context, PollError, Poller, ScopeResult};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPush {
    pub otlp: Option<RawPushOtlp>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPushOtlp {
    pub endpoint: Option<String>,
    pub protocol: Option<String>,
    pub headers: Option<std::collections::BTreeMap<String, String>>,
    pub service_name: Option<String>,
    pub interval: Option<String>,
}

#[derive(Clone, Debug)]
pub struct PushConfig {
    pub otlp: OtlpConfig,
    pub interval: Duration,
}

impl RawPush {
    pub fn resolve(self) -> Result<Option<PushConfig>, Error> {
        let Some(o) = self.otlp else {
            return Ok(None);
        };
        let interval = crate::config::raw::duration(
            "push.otlp.interval",
            o.interval.as_ref(),
            Duration::from_secs(60),
        )?;
        if interval < Duration::from_secs(1) {
            return Err(Error::invalid(
                "push.otlp.interval",
                o.interval.as_deref(),
                "must be at least 1s",
            ));
        }
        let otlp = RawOtlp {
            endpoint: o.endpoint,
            protocol: o.protocol,
            headers: o.headers,
            service_name: o.service_name,
        }
        .resolve("push.otlp", "devmetrics")?;
        Ok(Some(PushConfig { otlp, interval }))
    }
}

pub const SCOPE: &str = "push/otlp";

struct Pusher {
    otlp: Otlp,
    interval: Duration,
    store: crate::store::SharedStore,
    telemetry: Arc<crate::telemetry::Telemetry>,
}

#[async_trait::async_trait]
impl Poller for Pusher {
    fn name(&self) -> &str {
        SCOPE
    }

    fn scopes(&self) -> Vec<String> {
        vec![SCOPE.to_string()]
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(30)
    }

    async fn poll(&self) -> Vec<ScopeResult> {
        let mut scopes = self.store.snapshot().scopes;
        scopes.push(Arc::new(self.telemetry.scope().await));
        let body = super::otlp_metrics::encode(
            &scopes,
            self.otlp.service_name(),
            self.telemetry.started_at(),
            crate::clock::now_unix(),
        );
        let sent = self.otlp.post(body).await;
        if let Err(e) = &sent {
            tracing::warn!(error = %e, "OTLP metrics push failed; the next interval sends the whole state again");
        }
        vec![ScopeResult::new(
            SCOPE,
            sent.map(|()| Vec::new())
                .map_err(|e| PollError::new("otlp_push", e.to_string())),
        )]
    }
}

/// The pusher, when `push.otlp` is configured.
pub fn component(ctx: &Context) -> Result<Option<Component>, BuildError> {
    let Some(cfg) = &ctx.config.push else {
        return Ok(None);
    };
    let o = &cfg.otlp;
    let otlp = Otlp::for_signal(
        &o.endpoint,
        o.protocol,
        o.headers
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_string()))
            .collect(),
        o.service_name.clone(),
        Signal::Metrics,
    );
    let pusher = Pusher {
        otlp,
        interval: cfg.interval,
        store: ctx.store.clone(),
        telemetry: ctx.telemetry.clone(),
    };
    let mut c = Component::default();
    c.scopes.push(SCOPE.to_string());
    c.pollers.push(Arc::new(pusher));
    Ok(Some(c))
}
