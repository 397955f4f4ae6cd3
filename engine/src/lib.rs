//! `switchboard-engine` runs shards on cores: one glommio executor pinned
//! per core, each owning the users whose `home_shard` it is; a full mesh of
//! bounded channels between them; the timers; the listeners; the bridge
//! from HTTP calls to shards (answering typed `io::Reply` values: `io`
//! picks every status and writes every body); and start and stop in
//! dependency order ([`Server`], errors as [`Error`]). The state machine
//! itself is in `switchboard-shards`; this crate only carries inputs and
//! outputs.
//!
//! Roles: the **conn shard** holds a socket (where the kernel's
//! SO_REUSEPORT put it); the **home shard** owns the user. A call whose user
//! is homed elsewhere is forwarded through the mesh and its answer comes
//! back the same way; a call for a local user takes the local path.

pub mod claim;
pub mod cluster;
pub mod cores;
pub mod demo;
pub mod error;
pub mod handler;
pub mod handover;
pub mod limits;
pub mod logger;
pub mod mesh;
pub mod metrics;
pub mod notify;
pub mod runtime;
pub mod server;
pub mod settings;
pub mod signals;
pub mod stop;
pub mod supervise;
pub mod tune;

pub use error::Error;
pub use server::{run, Server};
pub use stop::StopHandle;
