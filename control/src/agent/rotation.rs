//! Rotating this node's WireGuard key: on a schedule (`--key-rotation-interval`)
//! or when asked (`node rotate-key`), and telling the tunnels when the old
//! key's grace period is over.

use super::{keys, Agent, AgentError};
use std::time::Duration;

/// How long after a failed key rotation the next is tried.
const ROTATION_RETRY: Duration = Duration::from_secs(5);

impl Agent {
    /// Timed work between store changes: key rotation when scheduled or asked
    /// for (`node rotate-key`, retried every [`ROTATION_RETRY`] while the store
    /// cannot take it), and telling the tunnels when the previous key's grace
    /// period is over.
    pub(super) async fn housekeeping(&self) {
        let now = std::time::Instant::now();
        let held_off = self
            .rotation_retry
            .lock()
            .map(|r| r.is_some_and(|t| now < t))
            .unwrap_or(false);
        let scheduled = self.rotation_interval.is_some_and(|i| {
            self.last_rotation
                .lock()
                .map(|t| t.elapsed() >= i)
                .unwrap_or(false)
        });
        let asked = self
            .last_state()
            .nodes
            .get(&self.node)
            .filter(|n| n.rotate_requested > n.key_epoch)
            .map(|n| n.rotate_requested)
            .filter(|e| {
                *e > self
                    .rotated_epoch
                    .load(std::sync::atomic::Ordering::Relaxed)
            });
        if !held_off && (scheduled || asked.is_some()) {
            let retry = match self.rotate(asked).await {
                Ok(()) => None,
                Err(e) => {
                    tracing::error!(error = %e, "key rotation failed; the current key stays in use");
                    Some(now + ROTATION_RETRY)
                }
            };
            if let Ok(mut r) = self.rotation_retry.lock() {
                *r = retry;
            }
        }
        let had_previous = self.keys.lock().map(|k| k.has_previous()).unwrap_or(false);
        if had_previous {
            self.publish_tunnels(&self.last_state());
        }
    }

    /// Replaces this node's static key (see [`keys::rotate`]: on disk, then in
    /// the store, then in the tunnels, which accept the old one a while longer).
    pub async fn rotate(&self, requested: Option<u64>) -> Result<(), AgentError> {
        let (ring, store, node) = (self.keys.clone(), self.store.clone(), self.node.clone());
        tokio::task::spawn_blocking(move || keys::rotate(&ring, &*store, &node, requested))
            .await
            .map_err(|e| AgentError::Join(e.to_string()))??;
        if let Some(e) = requested {
            self.rotated_epoch
                .fetch_max(e, std::sync::atomic::Ordering::Relaxed);
        }
        if let Ok(mut t) = self.last_rotation.lock() {
            *t = std::time::Instant::now();
        }
        self.publish_tunnels(&self.last_state());
        tracing::info!(node = %self.node, "static key rotated");
        Ok(())
    }
}
