//! The encoder pool: CPU-heavy image work (encoding, decoding) of every session runs on the blocking pool
//! behind one semaphore as wide as the machine, so 100 sessions do not mean 100 encoding threads. The
//! bottom of the display path: the display core and the metrics read it, it reads neither.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Jobs waiting for a slot of the encoder pool.
static ENCODER_WAITING: AtomicUsize = AtomicUsize::new(0);

/// A slot of the encoder pool (counted while waiting for it); `None` only if the pool were closed.
pub async fn encoder_permit() -> Option<OwnedSemaphorePermit> {
    ENCODER_WAITING.fetch_add(1, Ordering::Relaxed);
    let permit = encode_pool().clone().acquire_owned().await.ok();
    ENCODER_WAITING.fetch_sub(1, Ordering::Relaxed);
    permit
}

/// The encoder pool now (process-wide: every session of every bridge in the process shares it).
#[derive(Debug, Clone, Copy)]
pub struct PoolStats {
    pub waiting: usize,
    pub busy: usize,
    pub width: usize,
}

pub fn encoder_pool_stats() -> PoolStats {
    let pool = encode_pool();
    let width = pool_width();
    PoolStats {
        waiting: ENCODER_WAITING.load(Ordering::Relaxed),
        busy: width.saturating_sub(pool.available_permits()),
        width,
    }
}

fn pool_width() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

fn encode_pool() -> &'static Arc<Semaphore> {
    static POOL: OnceLock<Arc<Semaphore>> = OnceLock::new();
    POOL.get_or_init(|| Arc::new(Semaphore::new(pool_width())))
}
