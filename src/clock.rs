//! The one source of "now". Production code asks the system clock; tests that need exact
//! windows or ages inject a manual one through [`Clock`].

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// Wall-clock Unix seconds from the system clock.
pub fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Whole Unix seconds from the system clock.
pub fn now_secs() -> i64 {
    now_unix() as i64
}

/// An injectable clock in whole Unix seconds.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> i64 + Send + Sync>);

impl Clock {
    pub fn system() -> Clock {
        Clock(Arc::new(now_secs))
    }

    pub fn from_fn(f: impl Fn() -> i64 + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(f))
    }

    /// A clock that stands still until moved through the returned handle.
    pub fn manual(start: i64) -> (Clock, Arc<AtomicI64>) {
        let at = Arc::new(AtomicI64::new(start));
        let read = at.clone();
        (Clock::from_fn(move || read.load(Ordering::SeqCst)), at)
    }

    pub fn now(&self) -> i64 {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock({})", self.now())
    }
}
