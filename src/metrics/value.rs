//! Metric values as the store keeps them and the encoders read them: numbers, histograms,
//! a poller's samples, an event's updates, and a scope's series.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{FamilyId, Kind, Labels};

/// An update whose operation does not fit its family's kind: a processor bug, refused at the
/// edge rather than stored as a corrupt series.
#[derive(Debug, thiserror::Error)]
#[error("family {family} is a {kind}; {op} does not apply")]
pub struct WrongKind {
    pub family: &'static str,
    pub kind: &'static str,
    pub op: &'static str,
}

/// A histogram's state: per-bucket (non-cumulative) counts, the last one for +Inf.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramValue {
    pub counts: Box<[u64]>,
    pub sum: f64,
}

impl HistogramValue {
    pub fn new(bounds: &[f64]) -> Self {
        HistogramValue {
            counts: vec![0; bounds.len() + 1].into_boxed_slice(),
            sum: 0.0,
        }
    }

    pub fn observe(&mut self, bounds: &[f64], v: f64) {
        let i = bounds.partition_point(|b| *b < v);
        self.counts[i] += 1;
        self.sum += v;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Gauges and counters alike: the family's kind decides how it is exposed.
    Number(f64),
    Histogram(Box<HistogramValue>),
}

impl Value {
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(v) => Some(*v),
            Value::Histogram(_) => None,
        }
    }
}

/// One series of a poller's result.
#[derive(Clone, Debug)]
pub struct Sample {
    pub family: FamilyId,
    pub labels: Labels,
    pub value: Value,
}

impl Sample {
    pub fn number(family: FamilyId, labels: Labels, v: f64) -> Self {
        Sample {
            family,
            labels,
            value: Value::Number(v),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Counter increment (must be ≥ 0).
    Inc(f64),
    /// Histogram observation.
    Observe(f64),
    /// Gauge set (event-driven gauges such as jobs in progress).
    Set(f64),
    /// Gauge move by a signed delta.
    Add(f64),
    /// Gauge +1 for a member (a job in a state), whose scope and series the store remembers.
    Enter(String),
    /// Gauge −1 on the series the member entered; the update's own scope and labels are not
    /// used, so a renamed repository or a changed runner group cannot leave one series at +1
    /// and another at −1.
    Leave(String),
}

#[derive(Clone, Debug)]
pub struct Update {
    pub family: FamilyId,
    pub labels: Labels,
    pub op: Op,
}

impl Update {
    /// Checks the operation fits the family's kind, so a processor bug is an error at the
    /// edge rather than a corrupt series.
    pub fn validate(&self) -> Result<(), WrongKind> {
        let def = super::family(self.family);
        let ok = match (&self.op, def.kind) {
            (Op::Inc(v), Kind::Counter | Kind::LegacyCounter) => *v >= 0.0,
            // A NaN or infinite observation would poison the sum forever.
            (Op::Observe(v), Kind::Histogram) => v.is_finite(),
            (Op::Set(_) | Op::Add(_) | Op::Enter(_) | Op::Leave(_), Kind::Gauge) => true,
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(WrongKind {
                family: def.name,
                kind: def.kind.as_str(),
                op: match self.op {
                    Op::Inc(_) => "inc",
                    Op::Observe(_) => "observe",
                    Op::Set(_) => "set",
                    Op::Add(_) => "add",
                    Op::Enter(_) => "enter",
                    Op::Leave(_) => "leave",
                },
            })
        }
    }
}

/// All series of one scope, grouped by family and sorted by labels so output is stable.
#[derive(Clone, Debug, Default)]
pub struct ScopeData {
    pub name: Arc<str>,
    pub updated_at: f64,
    /// The version of the last conditional write (`Store::replace_scope_if_newer`); 0 for a
    /// scope only ever written unconditionally.
    pub version: i64,
    pub families: BTreeMap<FamilyId, BTreeMap<Labels, Value>>,
    /// The scope's compressed exposition, kept until the scope changes. A clone starts
    /// empty; whoever changes a scope in place resets it.
    pub encoded: crate::exposition::Encoded,
}

impl ScopeData {
    pub fn series_count(&self) -> usize {
        self.families.values().map(|m| m.len()).sum()
    }
}

/// An immutable view of every scope at one moment: cloning scopes' `Arc`s, not their data.
#[derive(Clone, Default)]
pub struct Snapshot {
    pub scopes: Vec<Arc<ScopeData>>,
}

impl Snapshot {
    pub fn scope(&self, name: &str) -> Option<&Arc<ScopeData>> {
        self.scopes.iter().find(|s| &*s.name == name)
    }

    pub fn get(&self, scope: &str, family: FamilyId, labels: &Labels) -> Option<&Value> {
        self.scope(scope)?.families.get(&family)?.get(labels)
    }

    /// Every series of `family` across scopes, for tests and sinks.
    pub fn family(&self, family: FamilyId) -> impl Iterator<Item = (&Labels, &Value)> {
        self.scopes
            .iter()
            .filter_map(move |s| s.families.get(&family))
            .flat_map(|m| m.iter())
    }
}
