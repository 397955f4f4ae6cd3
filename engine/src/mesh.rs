//! The shard mesh: one bounded, lock-free SPSC channel (glommio's
//! `shared_channel`) for every ordered pair of shards.
//!
//! Built here rather than with glommio's `MeshBuilder`: that builder shares
//! an `Rc` between threads behind an `unsafe impl Send` and orders peers by
//! executor id. Here all channels are made up front on the starting thread,
//! each shard receives exactly its own ends (moving unconnected ends to
//! another executor is `shared_channel`'s documented use), and a shard's
//! index is simply its position.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use glommio::channels::shared_channel::{
    self, ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};

/// One shard's unconnected ends of the mesh.
pub struct MeshEnds<T: Send + 'static> {
    /// This shard's index.
    shard: usize,
    /// `senders[to]`: the channel from this shard to `to` (`None` at our
    /// own index).
    senders: Vec<Option<SharedSender<T>>>,
    /// `receivers[from]`: the channel from `from` to this shard.
    receivers: Vec<Option<SharedReceiver<T>>>,
}

/// A shard's connected ends.
pub struct Mesh<T: Send + 'static> {
    /// `senders[to]` (`None` at our own index).
    pub senders: Vec<Option<ConnectedSender<T>>>,
    /// `(from, receiver)` for every other shard.
    pub receivers: Vec<(usize, ConnectedReceiver<T>)>,
}

/// Makes the channels of a full mesh of `shards` shards, each `depth`
/// deep; element `i` holds shard `i`'s ends.
pub fn build<T: Send + 'static>(shards: usize, depth: usize) -> Vec<MeshEnds<T>> {
    let mut ends: Vec<MeshEnds<T>> = (0..shards)
        .map(|shard| MeshEnds {
            shard,
            senders: (0..shards).map(|_| None).collect(),
            receivers: (0..shards).map(|_| None).collect(),
        })
        .collect();
    for from in 0..shards {
        for to in 0..shards {
            if from != to {
                let (tx, rx) = shared_channel::new_bounded(depth);
                ends[from].senders[to] = Some(tx);
                ends[to].receivers[from] = Some(rx);
            }
        }
    }
    ends
}

impl<T: Send + 'static> MeshEnds<T> {
    /// This shard's index.
    pub fn shard(&self) -> usize {
        self.shard
    }

    /// Connects every end on the calling executor. Each connection waits
    /// for the other side's executor to connect its end, so all of them are
    /// started at once (sequential connects would deadlock two shards each
    /// waiting on the other's next end). A 1 ms timer stays armed until
    /// done: a wakeup lost across executors during connection then costs a
    /// millisecond instead of parking the executor for good.
    pub async fn connect(self) -> Mesh<T> {
        let done = Rc::new(Cell::new(false));
        {
            let done = done.clone();
            glommio::spawn_local(async move {
                while !done.get() {
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
            })
            .detach();
        }
        let senders: Vec<_> = self
            .senders
            .into_iter()
            .map(|s| s.map(|s| glommio::spawn_local(s.connect())))
            .collect();
        let receivers: Vec<_> = self
            .receivers
            .into_iter()
            .enumerate()
            .filter_map(|(from, r)| r.map(|r| (from, glommio::spawn_local(r.connect()))))
            .collect();
        let mut mesh = Mesh {
            senders: Vec::with_capacity(senders.len()),
            receivers: Vec::with_capacity(receivers.len()),
        };
        for s in senders {
            mesh.senders.push(match s {
                Some(task) => Some(task.await),
                None => None,
            });
        }
        for (from, task) in receivers {
            mesh.receivers.push((from, task.await));
        }
        done.set(true);
        mesh
    }
}
