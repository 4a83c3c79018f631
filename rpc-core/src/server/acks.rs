//! Acknowledgements of one session's consume channel, batched with
//! `multiple = true`.
//!
//! Every delivery is registered in delivery-tag order when it is handed to
//! a worker. A call that is done (its reply confirmed, or nothing to reply)
//! marks its tag done; the acks then go out as one `basic.ack` with
//! `multiple = true` for the highest tag whose lower tags are all done:
//! "reply confirmed before ack" holds for every message that ack covers,
//! and one frame (one broker operation) settles a burst of calls instead of
//! one each.
//!
//! What must not be covered by a multiple ack:
//! * a delivery still running: it is below the prefix's end, so the prefix
//!   stops before it;
//! * a delivery that is requeued: its `basic.reject` goes out first (under
//!   the same ordering lock), and only then is it counted as settled, so a
//!   later multiple ack finds it no longer outstanding;
//! * a delivery whose call was dropped (abandoned at the stop's deadline)
//!   or whose reply was never confirmed: it must return to the queue. From
//!   the first such tag on, the session acks each later delivery singly
//!   (`multiple = false`), as before batching.
//!
//! The broker refuses (closing the channel) an ack for a tag it no longer
//! holds, so acks are sent one at a time, in order, under [`Acks::order`].

use lapin::options::BasicAckOptions;
use lapin::Acker;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

/// Where a registered delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// Its call is running.
    Open,
    /// Done: to be acked.
    Done,
    /// Settled otherwise (rejected): a multiple ack may cover it.
    Settled,
    /// Must stay unacked (returned to the queue when the channel closes).
    Kept,
}

struct Entry<A> {
    tag: u64,
    acker: A,
    slot: Slot,
}

/// The book itself, generic over the acker so that its rules are tested
/// without a channel.
struct State<A> {
    /// Registered deliveries not yet acked, in tag order.
    pending: VecDeque<Entry<A>>,
    /// A kept delivery reached the front: no more multiple acks.
    single: bool,
}

/// One ack to send: the acker of its highest tag, and whether it covers
/// the lower ones too.
struct Send<A> {
    acker: A,
    multiple: bool,
    tags: usize,
}

impl<A> Default for State<A> {
    fn default() -> Self {
        State {
            pending: VecDeque::new(),
            single: false,
        }
    }
}

impl<A> State<A> {
    /// Settles `tag` if its call was still running; true if it was.
    fn mark(&mut self, tag: u64, slot: Slot) -> bool {
        match self.pending.iter_mut().find(|e| e.tag == tag) {
            Some(e) if e.slot == Slot::Open => {
                e.slot = slot;
                true
            }
            _ => false,
        }
    }

    /// The acks that may go out now, in order.
    fn take(&mut self) -> Vec<Send<A>> {
        let mut out = Vec::new();
        if !self.single {
            let mut last: Option<A> = None;
            let mut tags = 0;
            while let Some(front) = self.pending.front() {
                match front.slot {
                    Slot::Open => break,
                    Slot::Done | Slot::Settled => {
                        if let Some(e) = self.pending.pop_front() {
                            if e.slot == Slot::Done {
                                last = Some(e.acker);
                            }
                            tags += 1;
                        }
                    }
                    Slot::Kept => {
                        self.pending.pop_front();
                        self.single = true;
                        break;
                    }
                }
            }
            if let Some(acker) = last {
                out.push(Send {
                    acker,
                    multiple: true,
                    tags,
                });
            }
            if !self.single {
                return out;
            }
        }
        // Past a kept delivery: each done one singly, wherever it is.
        let mut i = 0;
        while i < self.pending.len() {
            match self.pending[i].slot {
                Slot::Open => i += 1,
                Slot::Done => {
                    if let Some(e) = self.pending.remove(i) {
                        out.push(Send {
                            acker: e.acker,
                            multiple: false,
                            tags: 1,
                        });
                    }
                }
                Slot::Settled | Slot::Kept => {
                    self.pending.remove(i);
                }
            }
        }
        out
    }
}

/// The session's acknowledgement book; see the module docs.
#[derive(Default)]
pub(super) struct Acks {
    state: Mutex<State<Acker>>,
    /// Held while acks (and rejects) are handed to the channel, so that
    /// they leave in the order they were decided.
    order: tokio::sync::Mutex<()>,
}

impl Acks {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Acks::default())
    }

    fn lock(&self) -> MutexGuard<'_, State<Acker>> {
        // Every change is a single assignment or a pop: a panic elsewhere
        // cannot leave the book half-changed.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a delivery; called in delivery order. Dropping the guard
    /// before the delivery is settled keeps it unacked.
    pub(super) fn register(self: &Arc<Self>, tag: u64, acker: Acker) -> Registered {
        self.lock().pending.push_back(Entry {
            tag,
            acker,
            slot: Slot::Open,
        });
        Registered {
            acks: Arc::clone(self),
            tag,
        }
    }

    /// Marks `tag` done and sends what may be acked now (the outcome of
    /// the acks this call sent, which may cover others). A tag that is
    /// never marked done (its reply was not confirmed) stays unacked when
    /// its [`Registered`] guard drops.
    pub(super) async fn done(&self, tag: u64) -> Result<(), lapin::Error> {
        self.lock().mark(tag, Slot::Done);
        // Let the other calls woken by the same burst of confirms mark
        // theirs first: one ack then covers them all.
        tokio::task::yield_now().await;
        self.flush().await
    }

    /// Rejects `tag` (with `requeue`) in order with the acks, then counts
    /// it settled.
    pub(super) async fn reject(
        &self,
        tag: u64,
        acker: &Acker,
        requeue: bool,
    ) -> Result<bool, lapin::Error> {
        let sent = {
            let _order = self.order.lock().await;
            acker
                .reject(lapin::options::BasicRejectOptions { requeue })
                .await
        };
        let mark = match sent {
            Ok(true) => Slot::Settled,
            _ => Slot::Kept,
        };
        self.lock().mark(tag, mark);
        self.flush().await?;
        sent
    }

    /// Sends the acks that may go out now.
    pub(super) async fn flush(&self) -> Result<(), lapin::Error> {
        let _order = self.order.lock().await;
        let sends = self.lock().take();
        let mut result = Ok(());
        for send in sends {
            let options = BasicAckOptions {
                multiple: send.multiple,
            };
            tracing::trace!(tags = send.tags, multiple = send.multiple, "ack");
            if let Err(e) = send.acker.ack(options).await {
                result = Err(e);
            }
        }
        result
    }
}

/// A registered delivery; see [`Acks::register`].
pub(super) struct Registered {
    acks: Arc<Acks>,
    tag: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        // A call that ended without settling (dropped at the deadline):
        // its message must go back to the queue, so no multiple ack may
        // cover it. The acks it was holding back go out singly.
        let waiting = {
            let mut state = self.acks.lock();
            state.mark(self.tag, Slot::Kept) && state.pending.iter().any(|e| e.slot == Slot::Done)
        };
        if waiting {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let acks = Arc::clone(&self.acks);
                handle.spawn(async move {
                    let _ = acks.flush().await;
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(slots: &[(u64, Slot)]) -> State<u64> {
        let mut s = State::default();
        for &(tag, slot) in slots {
            s.pending.push_back(Entry {
                tag,
                acker: tag,
                slot,
            });
        }
        s
    }

    /// (highest tag, multiple, tags covered) of each ack.
    fn shape(sends: &[Send<u64>]) -> Vec<(u64, bool, usize)> {
        sends
            .iter()
            .map(|s| (s.acker, s.multiple, s.tags))
            .collect()
    }

    #[test]
    fn a_done_prefix_is_one_multiple_ack() {
        let mut s = state(&[
            (1, Slot::Done),
            (2, Slot::Done),
            (3, Slot::Open),
            (4, Slot::Done),
        ]);
        assert_eq!(shape(&s.take()), vec![(2, true, 2)]);
        assert_eq!(s.pending.len(), 2);
        assert!(s.mark(3, Slot::Done));
        assert!(!s.mark(3, Slot::Kept), "a settled tag stays settled");
        assert_eq!(shape(&s.take()), vec![(4, true, 2)]);
        assert!(s.pending.is_empty());
    }

    #[test]
    fn nothing_goes_out_behind_a_running_call() {
        let mut s = state(&[(1, Slot::Open), (2, Slot::Done)]);
        assert!(s.take().is_empty());
    }

    #[test]
    fn a_rejected_tag_does_not_stop_the_prefix() {
        let mut s = state(&[(1, Slot::Settled), (2, Slot::Done)]);
        assert_eq!(shape(&s.take()), vec![(2, true, 2)]);
        let mut s = state(&[(1, Slot::Done), (2, Slot::Settled)]);
        assert_eq!(shape(&s.take()), vec![(1, true, 2)]);
        let mut s = state(&[(1, Slot::Settled), (2, Slot::Open)]);
        assert!(s.take().is_empty());
        assert_eq!(s.pending.len(), 1);
    }

    #[test]
    fn a_kept_tag_behind_a_running_one_waits_for_it() {
        let mut s = state(&[(1, Slot::Open), (2, Slot::Kept), (3, Slot::Done)]);
        assert!(s.take().is_empty());
        s.mark(1, Slot::Done);
        assert_eq!(shape(&s.take()), vec![(1, true, 1), (3, false, 1)]);
        assert!(s.pending.is_empty());
    }

    #[test]
    fn past_a_kept_tag_acks_are_single() {
        let mut s = state(&[
            (1, Slot::Done),
            (2, Slot::Kept),
            (3, Slot::Done),
            (4, Slot::Open),
            (5, Slot::Done),
        ]);
        assert_eq!(
            shape(&s.take()),
            vec![(1, true, 1), (3, false, 1), (5, false, 1)]
        );
        assert!(s.single);
        s.mark(4, Slot::Done);
        assert_eq!(shape(&s.take()), vec![(4, false, 1)]);
        assert!(s.pending.is_empty());
    }
}
