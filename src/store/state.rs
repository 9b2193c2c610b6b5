use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::metrics::{FamilyId, Labels, ScopeData, Snapshot, Value};

/// The in-memory mirror of a store backend. Writers replace or copy-on-write one scope at a
/// time; a scrape holds `Arc`s to the scopes it renders, so a long render never blocks writers
/// and never sees a half-applied scope.
#[derive(Default)]
pub struct State {
    scopes: RwLock<BTreeMap<Arc<str>, Arc<ScopeData>>>,
}

impl State {
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            scopes: self.scopes.read().values().cloned().collect(),
        }
    }

    pub fn get(&self, scope: &str, family: FamilyId, labels: &Labels) -> Option<Value> {
        self.scopes
            .read()
            .get(scope)?
            .families
            .get(&family)?
            .get(labels)
            .cloned()
    }

    pub fn replace(&self, data: ScopeData) {
        // An empty result is kept too: it records when the scope was last known to be empty.
        self.scopes
            .write()
            .insert(data.name.clone(), Arc::new(data));
    }

    pub fn remove(&self, scope: &str) {
        self.scopes.write().remove(scope);
    }

    /// Sets absolute values in one scope (creating it if needed).
    pub fn set_values(&self, scope: &str, updated_at: f64, values: Vec<(FamilyId, Labels, Value)>) {
        let mut scopes = self.scopes.write();
        let entry = scopes.entry(Arc::from(scope)).or_insert_with(|| {
            Arc::new(ScopeData {
                name: Arc::from(scope),
                ..Default::default()
            })
        });
        // Copies the scope only when a render still holds the old version.
        let data = Arc::make_mut(entry);
        data.updated_at = updated_at;
        for (family, labels, value) in values {
            data.families
                .entry(family)
                .or_default()
                .insert(labels, value);
        }
    }

    pub fn series_count(&self) -> usize {
        self.scopes.read().values().map(|s| s.series_count()).sum()
    }

    pub fn scope_count(&self) -> usize {
        self.scopes.read().len()
    }
}
