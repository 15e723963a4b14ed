//! The open connections of one listener: counted against its cap, and
//! reachable to close an idle one for room or to tell all to finish.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use super::ListenerState;
use super::conn::{ConnState, Signal};

#[derive(Default)]
struct Slots {
    conns: Vec<Option<Arc<ConnState>>>,
    free: Vec<usize>,
    /// Where the next search for an idle connection starts.
    cursor: usize,
}

/// The open connections (a lock taken when one opens or closes, never per
/// request).
#[derive(Default)]
pub(crate) struct Registry {
    slots: Mutex<Slots>,
    len: AtomicUsize,
}

impl Registry {
    /// Open connections.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub(crate) fn insert(&self, conn: ConnState) -> Arc<ConnState> {
        let conn = Arc::new(conn);
        let mut s = self.slots.lock();
        let i = match s.free.pop() {
            Some(i) => i,
            None => {
                s.conns.push(None);
                s.conns.len() - 1
            }
        };
        conn.slot.store(i as u64, Ordering::Relaxed);
        s.conns[i] = Some(conn.clone());
        self.len.fetch_add(1, Ordering::Relaxed);
        conn
    }

    fn remove(&self, conn: &ConnState) {
        let i = usize::try_from(conn.slot.load(Ordering::Relaxed)).unwrap_or(usize::MAX);
        let mut s = self.slots.lock();
        let mine =
            s.conns.get(i).and_then(Option::as_ref).is_some_and(|c| std::ptr::eq(&**c, conn));
        if mine {
            s.conns[i] = None;
            s.free.push(i);
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Closes one connection with no request in flight to make room: one
    /// that has not finished its first head (or, HTTP/1.1, its next one)
    /// if there is one, else one that is only kept alive. False if every
    /// connection has a request in flight.
    pub(crate) fn evict_one(&self) -> bool {
        let mut s = self.slots.lock();
        let n = s.conns.len();
        let mut kept_alive = None;
        for k in 0..n {
            let i = (s.cursor + k) % n;
            let Some(c) = &s.conns[i] else { continue };
            if !c.is_idle() {
                continue;
            }
            if c.before_request() {
                if c.signal(Signal::Evict) {
                    s.cursor = i + 1;
                    self.len.fetch_sub(1, Ordering::Relaxed);
                    s.conns[i] = None;
                    s.free.push(i);
                    return true;
                }
            } else if kept_alive.is_none() {
                kept_alive = Some(i);
            }
        }
        if let Some(i) = kept_alive
            && let Some(c) = s.conns[i].take()
        {
            if c.signal(Signal::Evict) {
                s.cursor = i + 1;
                s.free.push(i);
                self.len.fetch_sub(1, Ordering::Relaxed);
                return true;
            }
            s.conns[i] = Some(c);
        }
        false
    }

    /// Sends `signal` to every open connection.
    pub(crate) fn signal_all(&self, signal: Signal) {
        let s = self.slots.lock();
        for c in s.conns.iter().flatten() {
            c.signal(signal);
        }
    }
}

/// A connection's place in its listener's registry, given back when the
/// connection's task ends (or is aborted).
pub(crate) struct Slot {
    listener: Arc<ListenerState>,
    conn: Arc<ConnState>,
}

impl Slot {
    pub(crate) fn new(listener: Arc<ListenerState>, conn: Arc<ConnState>) -> Self {
        listener.meters.connections.inc();
        Self { listener, conn }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.listener.registry.remove(&self.conn);
        self.listener.meters.connections.dec();
    }
}
