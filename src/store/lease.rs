//! Leader leases: one holder at a time per name, with a fencing number that grows with every
//! change of holder, so a write made under an old grant can be told apart and refused.

use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;

use super::Error;

/// A held lease: valid until `expires_at` (Unix seconds) unless renewed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Grant {
    /// Greater than the fence of every earlier holder of the same name.
    pub fence: u64,
    pub expires_at: f64,
}

/// What every backend guarantees: at most one live grant per name; a grant lapses at its
/// expiry unless renewed by its holder with its fence; a new holder's fence is greater than
/// every fence handed out before for that name; all of it atomic across processes.
#[async_trait]
pub trait Lease: Send + Sync {
    /// Takes `name` for `holder` unless another holder's grant is live. The current holder
    /// asking again renews its grant and keeps its fence.
    async fn acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Grant>, Error>;

    /// Extends the grant `fence` of `holder`; `None` when it was lost (expired and taken, or
    /// released).
    async fn renew(
        &self,
        name: &str,
        holder: &str,
        fence: u64,
        ttl: Duration,
    ) -> Result<Option<Grant>, Error>;

    /// Gives the lease up at once; `false` when `holder` no longer held grant `fence`.
    async fn release(&self, name: &str, holder: &str, fence: u64) -> Result<bool, Error>;

    /// The live holder of `name` and its grant, if any.
    async fn holder(&self, name: &str) -> Result<Option<(String, Grant)>, Error>;

    /// Writes the kv entry `(ns, key)` (as [`super::Store::kv_put`]) only while `holder` holds
    /// the live grant `fence` of `name`, checked and written in one step. A leader that lost
    /// its grant without noticing yet (a pause, a partition) has its scheduling writes refused
    /// (`false`, nothing written) instead of racing its successor's.
    #[allow(clippy::too_many_arguments)]
    async fn kv_put_fenced(
        &self,
        name: &str,
        holder: &str,
        fence: u64,
        ns: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<bool, Error>;
}

pub type SharedLease = Arc<dyn Lease>;
