//! Work a request leaves behind when its client has gone (reading a JSON
//! body on for its usage): tracked, so that shutdown can cut it and its
//! reservations end before the process exits.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};

/// Background work of the gateway's requests.
#[derive(Debug)]
pub struct Background {
    cut: watch::Sender<bool>,
    running: AtomicUsize,
    idle: Notify,
}

impl Default for Background {
    fn default() -> Self {
        Self { cut: watch::Sender::new(false), running: AtomicUsize::new(0), idle: Notify::new() }
    }
}

impl Background {
    /// Runs `work` until it ends or [`Background::cut`] (which drops it).
    /// Outside a runtime (the process is ending), `work` is dropped at once.
    pub fn spawn(self: &std::sync::Arc<Self>, work: impl Future<Output = ()> + Send + 'static) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let mut cut = self.cut.subscribe();
        if *cut.borrow() {
            return;
        }
        self.running.fetch_add(1, Ordering::Relaxed);
        let this = self.clone();
        rt.spawn(async move {
            tokio::select! {
                () = work => {}
                _ = cut.wait_for(|c| *c) => {}
            }
            if this.running.fetch_sub(1, Ordering::Relaxed) == 1 {
                this.idle.notify_waiters();
            }
        });
    }

    /// Work running now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// Cuts all work (it is dropped where it stands), and waits up to
    /// `within` for it to be gone.
    pub async fn cut(&self, within: Duration) {
        self.cut.send_replace(true);
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let idle = self.idle.notified();
            if self.running() == 0 || tokio::time::Instant::now() >= deadline {
                return;
            }
            let _ = tokio::time::timeout_at(deadline, idle).await;
        }
    }
}
