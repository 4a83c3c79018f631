//! Publishing with confirms on a channel that many tasks share.
//!
//! lapin 4's `basic_publish` takes the message's delivery tag (under the
//! channel's acknowledgement lock) and then queues the message's frames
//! (under the frame queue's lock): two steps, and no lock is held between
//! them. Two tasks publishing on one channel from two threads can queue
//! their frames in the other order than they took their tags. The broker
//! numbers a channel's messages in the order their frames arrive, so each
//! publish is then told the other's confirm, and a `basic.return` (which
//! lapin hands to the confirm that follows it) reaches the wrong caller: a
//! call to a live service reported as `UnknownService`, while the call to
//! the missing one waits for a reply; a nack blamed on the wrong reply.
//!
//! [`OrderedChannel`] holds a lock of its own across both steps. Both
//! happen on the publish's first poll, before it waits on anything, so the
//! lock is held for that poll only, never across an `await`.

use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, PublisherConfirm};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// A channel whose publishes keep their tags in frame order; cheap to
/// clone, and clones share the order.
#[derive(Clone)]
pub(crate) struct OrderedChannel {
    channel: Channel,
    order: Arc<Mutex<()>>,
}

impl OrderedChannel {
    pub(crate) fn new(channel: Channel) -> Self {
        OrderedChannel {
            channel,
            order: Arc::new(Mutex::new(())),
        }
    }

    /// The channel, for everything but publishing.
    pub(crate) fn channel(&self) -> &Channel {
        &self.channel
    }

    /// `basic_publish`, its tag and frames taken together (module docs).
    pub(crate) fn basic_publish<'a>(
        &'a self,
        exchange: ShortString,
        routing_key: ShortString,
        options: BasicPublishOptions,
        payload: &'a [u8],
        properties: BasicProperties,
    ) -> impl Future<Output = lapin::Result<PublisherConfirm>> + 'a {
        FirstPollLocked {
            order: &self.order,
            publish: self.channel.basic_publish(
                exchange,
                routing_key,
                options,
                payload,
                properties,
            ),
            first: true,
        }
    }
}

/// Polls `publish` under `order` the first time.
struct FirstPollLocked<'a, F> {
    order: &'a Mutex<()>,
    publish: F,
    first: bool,
}

impl<F: Future> Future for FirstPollLocked<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `publish` is never moved out of the pinned struct (only
        // polled in place, and dropped with it); `first` and `order` are
        // not structurally pinned.
        let this = unsafe { self.get_unchecked_mut() };
        let publish = unsafe { Pin::new_unchecked(&mut this.publish) };
        if this.first {
            this.first = false;
            // The guard protects no data: a panic while it was held leaves
            // nothing half-done to see.
            let _in_order = this
                .order
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            publish.poll(cx)
        } else {
            publish.poll(cx)
        }
    }
}
