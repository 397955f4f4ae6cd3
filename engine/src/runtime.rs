//! One shard's runtime on its executor: the [`Shard`] state machine, the
//! requests this executor is waiting on (as conn shard), the outboxes to
//! the other shards, and the storage jobs in flight.
//!
//! Everything here is single-threaded (`Rc`, `RefCell`, `Cell`): a shard
//! owns its users outright, and other shards reach them only through the
//! mesh. No `RefCell` borrow is held across an `.await`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_channel::oneshot;
use glommio::channels::local_channel::{self, LocalSender};
use log::{error, warn};
use switchboard_io::deadline;
use switchboard_shards::model::{
    ErrorCode, ReplyTo, Request, Response, ShardId, StorageError, StorageJob,
};
use switchboard_shards::{home_shard, Input, Output, PeerMsg, Shard};
use switchboard_storage::Store;

use crate::limits;

/// What travels between shards.
#[derive(Debug)]
pub enum MeshMsg {
    /// A request for a user homed on the receiving shard.
    Request { reply: ReplyTo, request: Request },
    /// The answer to a request the receiving shard forwarded.
    Reply { req: u64, response: Response },
    /// Shard-to-shard traffic of the state machine.
    Peer(PeerMsg),
}

/// Counters of the runtime (the shard's own are in `Shard::stats`).
#[derive(Default, Debug)]
pub struct RuntimeStats {
    /// Requests shed because the outbox to their home shard was full.
    pub shed_requests: Cell<u64>,
    /// Peer messages or replies dropped on a full outbox (never expected:
    /// logged at error).
    pub dropped_mesh: Cell<u64>,
    /// Storage jobs that timed out.
    pub storage_timeouts: Cell<u64>,
    /// Storage jobs submitted whose result (or timeout) is not yet fed
    /// back to the shard. A stopping shard waits for this to reach zero.
    pub storage_jobs_waiting: Cell<u64>,
    /// Connections refused at accept for `CONNECTIONS_MAX`.
    pub refused_connections: Cell<u64>,
    /// Open client connections.
    pub connections: Cell<u64>,
}

/// The clock every shard reads: unix milliseconds, but advancing with the
/// monotonic clock so deadlines never go backwards.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base_unix_ms: u64,
    base: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        let base_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis() as u64;
        Clock {
            base_unix_ms,
            base: Instant::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.base_unix_ms + self.base.elapsed().as_millis() as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// One executor's shard and its plumbing.
pub struct ShardRuntime {
    /// This shard's index (= its mesh peer id).
    pub id: ShardId,
    /// How many shards there are.
    pub count: usize,
    /// The state machine. Borrowed only inside [`ShardRuntime::feed`].
    shard: RefCell<Shard>,
    /// Requests this shard (as conn shard) waits on, by request number.
    waiting: RefCell<HashMap<u64, oneshot::Sender<Response>>>,
    next_req: Cell<u64>,
    /// Bounded outboxes to the other shards (`None` at our own index); a
    /// task per peer drains each into the mesh.
    outboxes: Vec<Option<LocalSender<MeshMsg>>>,
    /// Storage.
    pub store: Store,
    /// Deadline of each storage job.
    pub storage_timeout: Duration,
    pub clock: Clock,
    pub stats: RuntimeStats,
    /// Reused output buffer (taken while feeding).
    outputs: RefCell<Vec<Output>>,
}

impl ShardRuntime {
    /// Builds the runtime; returns it with the receiving ends of the
    /// outboxes, which the caller drains into the mesh.
    pub fn new(
        shard: Shard,
        store: Store,
        storage_timeout: Duration,
        clock: Clock,
    ) -> (
        Rc<ShardRuntime>,
        Vec<(ShardId, local_channel::LocalReceiver<MeshMsg>)>,
    ) {
        let id = shard.config().shard;
        let count = shard.config().shard_count;
        let mut outboxes = Vec::with_capacity(count);
        let mut receivers = Vec::new();
        for peer in 0..count {
            if peer == id {
                outboxes.push(None);
            } else {
                let (tx, rx) = local_channel::new_bounded(limits::OUTBOX_DEPTH_MAX);
                outboxes.push(Some(tx));
                receivers.push((peer, rx));
            }
        }
        let rt = Rc::new(ShardRuntime {
            id,
            count,
            shard: RefCell::new(shard),
            waiting: RefCell::new(HashMap::new()),
            next_req: Cell::new(0),
            outboxes,
            store,
            storage_timeout,
            clock,
            stats: RuntimeStats::default(),
            outputs: RefCell::new(Vec::new()),
        });
        (rt, receivers)
    }

    /// Reads the shard's state (for health and metrics). Never held across
    /// an await.
    pub fn with_shard<R>(&self, f: impl FnOnce(&Shard) -> R) -> R {
        f(&self.shard.borrow())
    }

    /// Feeds one input to the state machine and carries out what it asks.
    pub fn feed(self: &Rc<Self>, input: Input) {
        let mut queue = vec![input];
        while let Some(input) = queue.pop() {
            let mut outputs = std::mem::take(&mut *self.outputs.borrow_mut());
            self.shard
                .borrow_mut()
                .handle(self.clock.now_ms(), input, &mut outputs);
            for output in outputs.drain(..) {
                match output {
                    Output::Reply { to, response } => self.deliver_reply(to, response),
                    Output::Peer { shard, msg } => self.to_peer(shard, MeshMsg::Peer(msg)),
                    Output::Storage { job, request } => {
                        if let Err(e) = self.start_job(job, request) {
                            queue.push(Input::Storage {
                                job,
                                result: Err(e),
                            });
                        }
                    }
                }
            }
            *self.outputs.borrow_mut() = outputs;
        }
    }

    /// Handles a message from another shard.
    pub fn on_mesh(self: &Rc<Self>, from: ShardId, msg: MeshMsg) {
        match msg {
            MeshMsg::Request { reply, request } => self.feed(Input::Request { reply, request }),
            MeshMsg::Reply { req, response } => self.complete(req, response),
            MeshMsg::Peer(p) => self.feed(Input::Peer(p)),
        }
        let _ = from;
    }

    fn deliver_reply(&self, to: ReplyTo, response: Response) {
        if to.shard == self.id {
            self.complete(to.req, response);
        } else {
            self.to_peer(
                to.shard,
                MeshMsg::Reply {
                    req: to.req,
                    response,
                },
            );
        }
    }

    fn complete(&self, req: u64, response: Response) {
        if let Some(tx) = self.waiting.borrow_mut().remove(&req) {
            // The caller may have gone (connection closed): nothing to do.
            let _ = tx.send(response);
        }
    }

    fn to_peer(&self, shard: ShardId, msg: MeshMsg) {
        let outbox = self.outboxes[shard].as_ref().expect("no outbox to self");
        if let Err(e) = outbox.try_send(msg) {
            // Requests are admitted only below the outbox's admission mark,
            // so a full outbox here means a peer stopped draining.
            self.stats
                .dropped_mesh
                .set(self.stats.dropped_mesh.get() + 1);
            error!(
                "shard-{}: outbox to shard-{shard} full, dropped: {e:?}",
                self.id
            );
        }
    }

    /// Starts a storage job; its result is fed back when it completes or
    /// its deadline passes.
    fn start_job(self: &Rc<Self>, job: u64, request: StorageJob) -> Result<(), StorageError> {
        let deadline = Instant::now() + self.storage_timeout;
        let what = request.name();
        let user = request.user();
        let pending = self.store.submit(request, deadline)?;
        let rt = self.clone();
        let timeout = self.storage_timeout;
        let waiting = &self.stats.storage_jobs_waiting;
        waiting.set(waiting.get() + 1);
        glommio::spawn_local(async move {
            log::debug!("shard-{}: job {job} {what} for user {user} waiting", rt.id);
            let result = deadline::within(glommio::timer::sleep(timeout), pending)
                .await
                .unwrap_or(Err(StorageError::TimedOut));
            log::debug!("shard-{}: job {job} {what} done: {}", rt.id, result.is_ok());
            if let Err(e) = &result {
                if *e == StorageError::TimedOut {
                    rt.stats
                        .storage_timeouts
                        .set(rt.stats.storage_timeouts.get() + 1);
                }
                warn!(
                    "shard-{}: storage job {what} for user {user} failed: {e}",
                    rt.id
                );
            }
            rt.feed(Input::Storage { job, result });
            let waiting = &rt.stats.storage_jobs_waiting;
            waiting.set(waiting.get() - 1);
        })
        .detach();
        Ok(())
    }

    /// Sends `request` to `shard` (this one or a peer) and waits for the
    /// answer. A full outbox sheds the request with `unavailable` at once.
    pub async fn call_on(self: &Rc<Self>, shard: ShardId, request: Request) -> Response {
        let req = self.next_req.get() + 1;
        self.next_req.set(req);
        let (tx, rx) = oneshot::channel();
        self.waiting.borrow_mut().insert(req, tx);
        let reply = ReplyTo {
            shard: self.id,
            req,
        };
        if shard == self.id {
            self.feed(Input::Request { reply, request });
        } else {
            let outbox = self.outboxes[shard].as_ref().expect("peer outbox");
            if outbox.len() >= limits::OUTBOX_ADMIT_MAX {
                self.waiting.borrow_mut().remove(&req);
                self.stats
                    .shed_requests
                    .set(self.stats.shed_requests.get() + 1);
                return Response::fail(ErrorCode::Unavailable, "server busy: try again");
            }
            self.to_peer(shard, MeshMsg::Request { reply, request });
        }
        match rx.await {
            Ok(response) => response,
            Err(_) => Response::fail(ErrorCode::Unavailable, "request dropped: try again"),
        }
    }

    /// Sends `request` to its user's home shard and waits for the answer.
    pub async fn call(self: &Rc<Self>, request: Request) -> Response {
        let user = request.home_user().expect("call() needs a user's request");
        self.call_on(home_shard(user, self.count), request).await
    }

    /// Requests waiting for an answer on this conn shard.
    pub fn waiting_count(&self) -> usize {
        self.waiting.borrow().len()
    }
}
