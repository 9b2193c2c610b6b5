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

    /// Sets absolute values, each in its scope (created if needed). Later values of a series
    /// win, as they did in the transaction that produced them.
    pub fn set_values(&self, updated_at: f64, values: Vec<(String, FamilyId, Labels, Value)>) {
        let mut scopes = self.scopes.write();
        for (scope, family, labels, value) in values {
            let entry = match scopes.get_mut(scope.as_str()) {
                Some(e) => e,
                None => scopes.entry(Arc::from(scope.as_str())).or_insert_with(|| {
                    Arc::new(ScopeData {
                        name: Arc::from(scope.as_str()),
                        ..Default::default()
                    })
                }),
            };
            // Copies the scope only when a render still holds the old version; scopes are
            // kept small (one per repository for workflows) so the copy stays cheap.
            let data = Arc::make_mut(entry);
            data.encoded = Default::default();
            data.updated_at = updated_at;
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
