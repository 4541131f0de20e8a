//! The [`Splicer`], the kernel splice's handle, with its whole surface in one impl:
//! load (with aya: sizes the maps from the configured capacity, attaches the verdict
//! to the sockhash, maps the per-connection state array into this process), self-test,
//! prepare a worker, read the counters, and the diagnostics tests use; and
//! [`WorkerPairs`], what one worker thread owns of the splice (its parked pairs and
//! sweeper, on the worker's poll ring), which splices a pair. The mechanics live
//! in their own files: `kernel` (maps, slots, insertion), `selftest`, `counters`,
//! and `worker`, the one owner of a spliced pair's states.
//!
//! Owns every map and program handle: nothing else in the gateway sees aya.
//! Must never be dropped while pairs are spliced (dropping detaches the program;
//! [`Splicer`] keeps it alive through an `Arc`).

use std::fmt::Write as _;
use std::os::fd::{AsFd, AsRawFd};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use aya::maps::{Map, MapData, SockHash};
use aya::programs::SkSkb;
use aya::{Ebpf, EbpfLoader};

use std::time::Duration;

use tokio_uring::net::TcpStream;

use super::counters::{Counters, SpliceCounts};
use super::handover::HandoverError;
use super::kernel::Inner;
use super::selftest::{self, SelfTestError};
use super::shared::Conn;
use super::worker::{self, Local, Owned, PassedKernel, SplicedPair};
use crate::drain::Pacer;
use crate::readiness::Ring;
use crate::shutdown::ShutdownRx;

/// The compiled `ebpf/splice.bpf.o`.
pub static SPLICE_BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/splice.bpf.o"));

/// Why the kernel fast path could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not permitted to load eBPF ({0}); run as root or grant CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON")]
    NoPermission(String),
    #[error("the kernel refused the splice program ({0}); needs Linux ≥ 5.15 with sockmap and BTF")]
    Refused(String),
    #[error("capacity must be between 1 and {max} pairs, got {got}")]
    Capacity { got: u32, max: u32 },
}

/// Largest supported number of spliced pairs (the sockhash holds two entries per pair).
pub const MAX_CAPACITY: u32 = 1 << 24;

/// Handle to the loaded fast path; cheap to clone, usable from every worker thread.
#[derive(Clone)]
pub struct Splicer {
    pub(super) inner: Arc<Inner>,
}

impl std::fmt::Debug for Splicer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Splicer")
            .field("capacity", &self.inner.capacity)
            .field("budget", &self.inner.budget)
            .finish_non_exhaustive()
    }
}

impl Splicer {
    /// Loads and attaches the program for `capacity` pairs and a per-direction budget.
    pub fn load(capacity: u32, budget: u64) -> Result<Self, LoadError> {
        if capacity == 0 || capacity > MAX_CAPACITY {
            return Err(LoadError::Capacity { got: capacity, max: MAX_CAPACITY });
        }
        let mut ebpf = EbpfLoader::new()
            .override_global("budget", &budget, true)
            .map_max_entries("sock_hash", capacity * 2)
            .map_max_entries("links", capacity * 2)
            .map_max_entries("conns", capacity)
            .load(SPLICE_BPF_OBJECT)
            .map_err(|e| classify(&e))?;
        let sock_hash: SockHash<MapData, u64> =
            SockHash::try_from(take(&mut ebpf, "sock_hash")?).map_err(|e| classify(&e))?;
        let links = map_data(take(&mut ebpf, "links")?)?;
        let conns = map_data(take(&mut ebpf, "conns")?)?;
        let attach_fd = sock_hash.fd().try_clone().map_err(|e| LoadError::Refused(e.to_string()))?;
        let prog: &mut SkSkb = ebpf
            .program_mut("splice_verdict")
            .ok_or_else(|| LoadError::Refused("program splice_verdict missing from the object".into()))?
            .try_into()
            .map_err(|e| classify(&e))?;
        prog.load().map_err(|e| classify(&e))?;
        prog.attach(&attach_fd).map_err(|e| classify(&e))?;
        let conns_map =
            crate::io::bpf::MapMmap::new(conns.fd().as_fd().as_raw_fd(), capacity as usize * size_of::<Conn>())
                .map_err(|e| LoadError::Refused(format!("mmap of the connection array: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                sock_hash_fd: sock_hash.fd().as_fd().as_raw_fd(),
                links_fd: links.fd().as_fd().as_raw_fd(),
                ebpf: Mutex::new(Some(ebpf)),
                upgrade: std::sync::atomic::AtomicU8::new(super::kernel::OWN),
                _sock_hash: sock_hash,
                _links: links,
                conns_data: conns,
                conns: conns_map,
                free: Mutex::new((0..capacity).collect()),
                capacity,
                budget,
                counters: Counters::default(),
            }),
        })
    }

    /// Runs the self-test (a loopback pair spliced, bytes checked both ways, half-close
    /// and close); returns how long it took.
    pub fn self_test(&self) -> Result<Duration, SelfTestError> {
        selftest::run(&self.inner)
    }

    /// Prepares a worker thread to splice: its table of parked pairs and its sweeper,
    /// waiting on the worker's poll `ring`, with the idle timeout and drain signal its
    /// pairs follow. Call once per worker thread, on that thread; the result must stay
    /// there (it is not `Send`).
    pub fn init_worker(&self, ring: &Ring, idle: Option<Duration>, shutdown: ShutdownRx) -> WorkerPairs {
        let local = Local::start(self.inner.clone(), ring, idle, shutdown);
        WorkerPairs { splicer: self.clone(), local }
    }

    /// Current counts of this splicer.
    pub fn counts(&self) -> SpliceCounts {
        self.inner.counters.snapshot()
    }

    /// Pairs that can be spliced at once.
    pub fn capacity(&self) -> u32 {
        self.inner.capacity
    }

    /// Bytes per direction the kernel may hold unacknowledged before the pair is relayed in userspace.
    pub fn budget(&self) -> u64 {
        self.inner.budget
    }

    /// Sockets currently in the sockhash (one syscall per entry: tests and diagnostics only).
    pub fn sockhash_entries(&self) -> std::io::Result<usize> {
        crate::io::bpf::keys(self.inner.sock_hash_fd).map(|k| k.len())
    }

    /// Entries in the peer-link map (one syscall per entry: tests and diagnostics only).
    pub fn link_entries(&self) -> std::io::Result<usize> {
        crate::io::bpf::keys(self.inner.links_fd).map(|k| k.len())
    }

    /// Whether the socket with this cookie is still in the sockhash (scans the map: tests and diagnostics only).
    pub fn contains(&self, cookie: u64) -> std::io::Result<bool> {
        Ok(crate::io::bpf::keys(self.inner.sock_hash_fd)?.contains(&cookie))
    }

    /// Whether a peer link for this cookie is still published (scans the map: tests and diagnostics only).
    pub fn linked(&self, cookie: u64) -> std::io::Result<bool> {
        Ok(crate::io::bpf::keys(self.inner.links_fd)?.contains(&cookie))
    }

    /// Slots free (for the "spliced" gauge and admission).
    pub fn free_slots(&self) -> usize {
        self.inner.free.lock().map_or(0, |f| f.len())
    }
}

/// The splice's maps as a binary upgrade offers them to the new process: the maps'
/// descriptors (sockhash, links, per-pair state), their sizes, which program they are
/// for, and the slots in use (the new process allocates only the others).
#[derive(Debug)]
pub struct Offer {
    pub fds: [std::os::fd::RawFd; 3],
    pub capacity: u32,
    pub budget: u64,
    /// A digest of the compiled program: the new process adopts the maps only when its
    /// own program is the same (else the pairs stay here and are drained).
    pub program: u64,
    pub used: Vec<u32>,
}

/// A digest of [`SPLICE_BPF_OBJECT`] (same build, same digest).
pub fn program_digest() -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    SPLICE_BPF_OBJECT.hash(&mut h);
    h.finish()
}

impl Splicer {
    /// A binary upgrade offers the maps to the new process: from now on no pair is
    /// spliced here (new ones relay in userspace, and are passed on).
    pub fn offer(&self) -> Offer {
        use std::sync::atomic::Ordering;
        let inner = &self.inner;
        inner.upgrade.store(super::kernel::FROZEN, Ordering::Release);
        let free: std::collections::HashSet<u32> =
            inner.free.lock().map(|f| f.iter().copied().collect()).unwrap_or_default();
        Offer {
            fds: [inner.sock_hash_fd, inner.links_fd, inner.conns_data.fd().as_fd().as_raw_fd()],
            capacity: inner.capacity,
            budget: inner.budget,
            program: program_digest(),
            used: (0..inner.capacity).filter(|s| !free.contains(s)).collect(),
        }
    }

    /// The new process took the maps: the program stays attached when this process
    /// exits (the new one splices with it), and parked pairs are passed on.
    pub fn handed(&self) {
        if let Ok(mut ebpf) = self.inner.ebpf.lock() {
            // Dropping it would detach the program from the sockhash both use.
            std::mem::forget(ebpf.take());
        }
        self.inner.upgrade.store(super::kernel::HANDING, std::sync::atomic::Ordering::Release);
    }

    /// The new process did not take the maps (or the upgrade failed): splice here again.
    pub fn kept(&self) {
        self.inner.upgrade.store(super::kernel::OWN, std::sync::atomic::Ordering::Release);
    }

    /// The maps an old process offered in a binary upgrade, with its program attached:
    /// pairs it passes keep their slots, and new pairs use the slots it did not.
    ///
    /// # Errors
    /// A descriptor that is not the expected map.
    pub fn adopt(fds: [std::os::fd::OwnedFd; 3], capacity: u32, budget: u64, used: &[u32]) -> Result<Self, LoadError> {
        let refused = |e: &dyn std::fmt::Display| LoadError::Refused(format!("adopting the old process's maps: {e}"));
        let [sock_hash, links, conns] = fds;
        let sock_hash: SockHash<MapData, u64> =
            SockHash::try_from(Map::SockHash(MapData::from_fd(sock_hash).map_err(|e| refused(&e))?))
                .map_err(|e| refused(&e))?;
        let links = MapData::from_fd(links).map_err(|e| refused(&e))?;
        let conns = MapData::from_fd(conns).map_err(|e| refused(&e))?;
        let conns_map =
            crate::io::bpf::MapMmap::new(conns.fd().as_fd().as_raw_fd(), capacity as usize * size_of::<Conn>())
                .map_err(|e| refused(&e))?;
        let used: std::collections::HashSet<u32> = used.iter().copied().collect();
        Ok(Self {
            inner: Arc::new(Inner {
                sock_hash_fd: sock_hash.fd().as_fd().as_raw_fd(),
                links_fd: links.fd().as_fd().as_raw_fd(),
                ebpf: Mutex::new(None),
                upgrade: std::sync::atomic::AtomicU8::new(super::kernel::OWN),
                _sock_hash: sock_hash,
                _links: links,
                conns_data: conns,
                conns: conns_map,
                free: Mutex::new((0..capacity).filter(|s| !used.contains(s)).collect()),
                capacity,
                budget,
                counters: Counters::default(),
            }),
        })
    }
}

/// What one worker thread owns of the splice: its poll ring, its table of parked
/// pairs and its sweeper. Cheap to clone; made by [`Splicer::init_worker`].
#[derive(Clone)]
pub struct WorkerPairs {
    splicer: Splicer,
    local: Rc<Local>,
}

impl std::fmt::Debug for WorkerPairs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPairs").field("parked", &self.parked()).finish_non_exhaustive()
    }
}

impl WorkerPairs {
    /// Hands a connection to the kernel after its 101.
    ///
    /// `client_early` are client bytes read after the request head and not yet
    /// forwarded; `upstream`'s receive queue must be untouched by reads or read to a
    /// short read (a socket must not enter the sockhash after a partial read). On
    /// success the pair is in the kernel; leave it there with [`SplicedPair::park`]. A
    /// pair is taken back out only by its end, reported to the park callback. Where
    /// its WebSocket frames end is not known: at its turn in the drain it gets FIN (see
    /// [`WorkerPairs::splice_frames`]).
    pub async fn splice(
        &self,
        client: TcpStream,
        upstream: TcpStream,
        client_early: Vec<u8>,
    ) -> Result<SplicedPair, HandoverError> {
        let frames = [crate::drain::FrameTracker::lost(); 2];
        worker::splice(&self.local, client, upstream, client_early, frames).await
    }

    /// [`WorkerPairs::splice`] of a WebSocket whose frames stand at `frames`
    /// (client→upstream before `client_early`, upstream→client at the first queued
    /// upstream byte): the program follows them from there, so at its turn in the
    /// drain the pair gets a Close 1001 at a frame boundary.
    pub async fn splice_frames(
        &self,
        client: TcpStream,
        upstream: TcpStream,
        client_early: Vec<u8>,
        frames: [crate::drain::FrameTracker; 2],
    ) -> Result<SplicedPair, HandoverError> {
        worker::splice(&self.local, client, upstream, client_early, frames).await
    }

    /// Takes on a pair an old process passed in a binary upgrade, spliced with the maps
    /// this process adopted from it: its sockets, its slot and cookies, and the client
    /// bytes forwarded during its handover. Park it as any other.
    pub fn adopt(
        &self,
        client: std::os::fd::OwnedFd,
        upstream: std::os::fd::OwnedFd,
        kernel: PassedKernel,
    ) -> SplicedPair {
        worker::adopt(&self.local, client, upstream, kernel)
    }

    /// The splicer these pairs belong to.
    pub fn splicer(&self) -> &Splicer {
        &self.splicer
    }

    /// This worker's pairs (parked or supervised) parked with `owner`.
    pub fn owned_by(&self, owner: usize) -> Vec<Owned> {
        self.local.owned_by(owner)
    }

    /// Ends `pair` as at its turn in the drain, with a Close 1001 at a frame boundary
    /// (`close=removed` in the access log: a reload removed its upstream server); false
    /// when it already ended.
    pub fn remove_owned(&self, pair: Owned) -> bool {
        self.local.remove_owned(pair)
    }

    /// Pairs parked on this worker (tests and diagnostics).
    pub fn parked(&self) -> usize {
        self.local.parked()
    }

    /// From the drain on, this worker's pairs close at their turns in `pacer`'s
    /// schedule (spread over `drain.window`) instead of all at `Stop`; each waits up
    /// to `close_timeout` for its frames in progress, then for the peers' Close.
    pub fn pace_drain(&self, pacer: Rc<Pacer>, close_timeout: Duration) {
        self.local.pace_drain(pacer, close_timeout);
    }
}

fn take(ebpf: &mut Ebpf, name: &str) -> Result<Map, LoadError> {
    ebpf.take_map(name).ok_or_else(|| LoadError::Refused(format!("map {name} missing from the object")))
}

fn map_data(map: Map) -> Result<MapData, LoadError> {
    match map {
        Map::HashMap(m) | Map::Array(m) => Ok(m),
        other => Err(LoadError::Refused(format!("unexpected map type {other:?}"))),
    }
}

/// Sorts a load failure into "not permitted" and "refused", keeping the whole cause chain.
fn classify(e: &(dyn std::error::Error + 'static)) -> LoadError {
    let mut text = e.to_string();
    let mut denied = false;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            denied |= matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES));
        }
        let part = err.to_string();
        if !text.contains(&part) {
            let _ = write!(text, ": {part}");
        }
        cur = err.source();
    }
    if denied { LoadError::NoPermission(text) } else { LoadError::Refused(text) }
}
