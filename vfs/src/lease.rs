//! The write lease: how this process gets it, keeps it and gives it back.
//!
//! - One lease per database per process ([`WriteLease`], kept under the database's
//!   state lock), shared by its connections, and sticky: kept across transactions.
//! - A connection taking RESERVED needs a valid one (`Database::ensure_lease`, then
//!   [`obtain`]): a lease held here is renewed; when there is none, or the server
//!   refuses the renewal (`FAILED_PRECONDITION`: it lapsed or another epoch took
//!   over), one is acquired; `ABORTED` (another client holds it) is `SQLITE_BUSY`.
//! - It is valid here until a fifth of its TTL before the server's expiry, measured
//!   from when it was asked for ([`lease_deadline`]), so it always ends here first. A
//!   server's TTL is taken up to a day ([`MAX_TTL_MS`]). A commit renews it on the
//!   server, so an applied commit moves the local end too.
//! - A heartbeat task per epoch ([`heartbeat`]) renews it every `heartbeat` (the
//!   server's interval from Open) while it is the one installed. It gives it back
//!   once no connection holds RESERVED and none has written for `lease_idle`, so other
//!   clients can write; and when the server says it is lost, drops everything this
//!   process believed about the database (another writer may have committed).
//! - The last connection closing gives it back too. Giving back is best effort
//!   ([`release`]): a lease not given back runs out on the server.

use std::{
    sync::Weak,
    time::{Duration, Instant},
};

use pagewire_proto::{
    ids::{Incarnation, LeaseId, Version},
    v1 as pb,
};

use crate::{
    client::Client,
    error::VfsError,
    state::{MAX_TTL_MS, bad_id, lease_deadline},
    status::Class,
};

/// A write lease the server granted.
#[derive(Clone, Debug)]
pub struct Lease {
    pub id: LeaseId,
    pub epoch: u64,
    ttl: Duration,
    /// Local deadline: the server's expiry minus a margin, measured from when we
    /// asked, so it always ends here first.
    valid_until: Instant,
}

impl Lease {
    /// A grant or renewal, checked: a 16-byte id, and a TTL taken up to a day.
    pub fn from_response(r: &pb::LeaseResponse, asked_at: Instant) -> Result<Self, VfsError> {
        let id = LeaseId::from_wire(&r.lease_id).map_err(bad_id)?;
        let ttl = clamp_ttl(r.ttl_ms);
        Ok(Self {
            id,
            epoch: r.epoch,
            ttl,
            valid_until: lease_deadline(asked_at, ttl),
        })
    }

    pub fn valid(&self) -> bool {
        Instant::now() < self.valid_until
    }
}

/// A TTL from the server: not trusted to overflow our clock arithmetic.
fn clamp_ttl(ms: u64) -> Duration {
    Duration::from_millis(ms.min(MAX_TTL_MS))
}

/// The write lease of one database in this process, and when it was last written
/// under.
#[derive(Debug)]
pub struct WriteLease {
    held: Option<Lease>,
    /// Last time a connection took RESERVED or committed: the lease is given
    /// back once it has been idle for `lease_idle`.
    last_write: Instant,
    /// The id the next AcquireLease asks to be granted under, drawn anew once a lease
    /// is granted: an acquire that failed without an answer (a timeout, a dropped
    /// connection) may have been granted, and asking again under the same id gets that
    /// lease back instead of `SQLITE_BUSY` until it runs out.
    ask_as: LeaseId,
}

/// What a connection about to write needs of the server.
#[derive(Debug)]
pub enum ForWrite {
    /// Nothing: the lease held is valid.
    Valid,
    /// A lease: renew this one, or acquire one (under this id) when there is none.
    Obtain(Option<Lease>, LeaseId),
}

/// What the heartbeat does with its lease.
#[derive(Debug)]
pub enum Idle {
    /// Renew it: someone writes, or wrote within `lease_idle`.
    Busy,
    /// Stop: it is no longer the lease installed.
    Gone,
    /// Give it back (taken out: this process no longer holds it).
    Release(Lease),
}

impl Default for WriteLease {
    fn default() -> Self {
        Self {
            held: None,
            last_write: Instant::now(),
            ask_as: LeaseId(rand::random()),
        }
    }
}

impl WriteLease {
    /// A connection takes RESERVED: notes the write, and says what it needs.
    pub fn for_write(&mut self) -> ForWrite {
        self.last_write = Instant::now();
        match &self.held {
            Some(l) if l.valid() => ForWrite::Valid,
            other => ForWrite::Obtain(other.clone(), self.ask_as),
        }
    }

    pub fn is_held(&self) -> bool {
        self.held.is_some()
    }

    /// Held and valid: this process is the only writer until it ends.
    pub fn valid(&self) -> bool {
        self.held.as_ref().is_some_and(Lease::valid)
    }

    /// The lease held, valid or not (a commit sends it: the server decides).
    pub fn held(&self) -> Option<Lease> {
        self.held.clone()
    }

    /// The lease of `epoch`, if it is still the one installed.
    pub fn current(&self, epoch: u64) -> Option<&Lease> {
        self.held.as_ref().filter(|l| l.epoch == epoch)
    }

    /// Installs a lease the server granted or renewed. True when it is of a new
    /// epoch: a heartbeat starts for it (the one of the old epoch stops by itself).
    pub fn install(&mut self, lease: Lease) -> bool {
        let new_epoch = self.current(lease.epoch).is_none();
        if lease.id == self.ask_as {
            self.ask_as = LeaseId(rand::random());
        }
        self.held = Some(lease);
        new_epoch
    }

    /// Forgets the lease (lost, replaced, or a commit's outcome unknown) without
    /// giving it back.
    pub fn forget(&mut self) {
        self.held = None;
    }

    /// Takes the lease out to give it back.
    pub fn take(&mut self) -> Option<Lease> {
        self.held.take()
    }

    /// A heartbeat renewal of `epoch` answered: it is valid until `renewed`'s end.
    pub fn renewed(&mut self, epoch: u64, renewed: &Lease) {
        if let Some(l) = self.held.as_mut().filter(|l| l.epoch == epoch) {
            l.valid_until = renewed.valid_until;
        }
    }

    /// A commit under lease `epoch`, sent at `asked_at`, applied: the server renewed
    /// the lease when it took the commit.
    pub fn committed(&mut self, epoch: u64, asked_at: Instant) {
        self.last_write = Instant::now();
        if let Some(l) = self.held.as_mut().filter(|l| l.epoch == epoch) {
            l.valid_until = l.valid_until.max(lease_deadline(asked_at, l.ttl));
        }
    }

    /// The heartbeat of `epoch` asks whether to go on; `writing`: a connection holds
    /// RESERVED now. Idle for `lease_idle` without writes: it is taken out to be given
    /// back.
    pub fn idle(&mut self, epoch: u64, writing: bool, lease_idle: Duration) -> Idle {
        if self.current(epoch).is_none() {
            return Idle::Gone;
        }
        if writing || self.last_write.elapsed() < lease_idle {
            return Idle::Busy;
        }
        self.take().map_or(Idle::Gone, Idle::Release)
    }
}

/// Who asks for the lease: the database (its name and the incarnation opened) and
/// this process (`host:pid`, shown to other clients the lease keeps waiting).
#[derive(Clone, Debug)]
pub struct Holder {
    pub name: String,
    pub incarnation: Incarnation,
    pub client_id: String,
}

impl Holder {
    pub fn new(name: &str, incarnation: Incarnation) -> Self {
        Self {
            name: name.to_owned(),
            incarnation,
            client_id: format!("{}:{}", hostname(), std::process::id()),
        }
    }
}

/// Renews `held`, or acquires a lease when there is none or the server says the one
/// held is lost (lapsed, or another epoch since). Another client's lease is
/// [`VfsError::Busy`].
pub async fn obtain(
    client: Client,
    who: Holder,
    held: Option<Lease>,
    ask_as: LeaseId,
) -> Result<pb::LeaseResponse, VfsError> {
    if let Some(lease) = held {
        match renew(client.clone(), &who, &lease).await {
            Err(e) if e.class() == Some(Class::Fenced) => {}
            answered => return answered,
        }
    }
    let req = pb::AcquireLeaseRequest {
        name: who.name,
        client_id: who.client_id,
        incarnation: who.incarnation.to_wire(),
        lease_id: ask_as.to_wire(),
    };
    match client.acquire_lease(req).await {
        Err(VfsError::Status(s)) if Class::of(&s) == Class::Busy => {
            Err(VfsError::Busy(s.message().to_owned()))
        }
        answered => answered,
    }
}

/// One RenewLease of `lease`.
async fn renew(client: Client, who: &Holder, lease: &Lease) -> Result<pb::LeaseResponse, VfsError> {
    let req = pb::RenewLeaseRequest {
        name: who.name.clone(),
        lease_id: lease.id.to_wire(),
        epoch: lease.epoch,
        incarnation: who.incarnation.to_wire(),
    };
    client.renew_lease(req).await
}

/// The call that gives `lease` back to the server: best effort, 2 s at most (if the
/// server is unreachable the lease simply expires).
pub fn release(
    client: Client,
    name: String,
    lease: Lease,
) -> impl Future<Output = ()> + Send + 'static {
    let req = pb::ReleaseLeaseRequest {
        name,
        lease_id: lease.id.to_wire(),
        epoch: lease.epoch,
    };
    async move {
        let name = req.name.clone();
        if let Ok(Err(e)) =
            tokio::time::timeout(Duration::from_secs(2), client.release_lease(req)).await
        {
            tracing::debug!(db = %name, error = %e, "lease release failed; it will expire");
        }
    }
}

/// What the heartbeat needs of the database whose lease it keeps (the `Database`,
/// which holds the lease under its state lock; a trait, so this module needs nothing
/// else of it).
pub trait LeaseOwner: Send + Sync + 'static {
    /// Who asks (the database's name, incarnation, this process).
    fn holder(&self) -> &Holder;
    fn client(&self) -> Client;
    /// How often to renew: the server's interval, announced at Open.
    fn heartbeat(&self) -> Duration;
    /// [`WriteLease::idle`] for `epoch`, with whether a connection holds RESERVED.
    fn idle_check(&self, epoch: u64) -> Idle;
    /// Lease `epoch`, if still installed, with the newest version seen (a renewal
    /// answer below it means history went back).
    fn to_renew(&self, epoch: u64) -> Option<(Lease, Version)>;
    /// A renewal answered: check it (and the state it carries) and install it; an
    /// answer that cannot be right drops the lease.
    fn renewed(
        &self,
        epoch: u64,
        resp: &pb::LeaseResponse,
        asked_at: Instant,
        seen: Version,
    ) -> Result<(), VfsError>;
    /// An error of a call that named the incarnation (`NOT_FOUND`: replaced).
    fn failed(&self, e: VfsError) -> VfsError;
    /// The server says lease `epoch` is lost: if it is still the one installed,
    /// another writer may have committed, so everything believed here goes.
    fn lost(&self, epoch: u64);
}

/// Renews lease `epoch` every heartbeat while it is the one installed, and gives it
/// back when idle.
pub async fn heartbeat<D: LeaseOwner>(db: Weak<D>, epoch: u64) {
    loop {
        let Some(interval) = db.upgrade().map(|db| db.heartbeat()) else {
            return;
        };
        tokio::time::sleep(interval).await;
        let Some(db) = db.upgrade() else { return };
        match db.idle_check(epoch) {
            Idle::Busy => {}
            Idle::Gone => return,
            Idle::Release(lease) => {
                let name = db.holder().name.clone();
                tracing::debug!(db = %name, "write lease idle: releasing it");
                return release(db.client(), name, lease).await;
            }
        }
        if !renew_once(&*db, epoch).await {
            return;
        }
    }
}

/// One heartbeat renewal of lease `epoch`; false when the heartbeat ends (the lease
/// is gone, lost, or was answered badly).
async fn renew_once(db: &impl LeaseOwner, epoch: u64) -> bool {
    let Some((lease, seen)) = db.to_renew(epoch) else {
        return false;
    };
    let name = &db.holder().name;
    let asked_at = Instant::now();
    let answer = renew(db.client(), db.holder(), &lease).await;
    match answer.map_err(|e| db.failed(e)) {
        Ok(resp) => match db.renewed(epoch, &resp, asked_at, seen) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(db = %name, error = %e, "write lease renewal answered badly; dropping the lease");
                false
            }
        },
        Err(e) if !e.is_retryable() => {
            tracing::warn!(db = %name, error = %e, "write lease lost");
            db.lost(epoch);
            false
        }
        Err(e) => {
            tracing::debug!(db = %name, error = %e, "lease renewal failed; retrying");
            true
        }
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn grant(epoch: u64, ttl_ms: u64) -> pb::LeaseResponse {
        pb::LeaseResponse {
            lease_id: Bytes::from_static(&[1; 16]),
            epoch,
            ttl_ms,
            state: None,
        }
    }

    fn lease(epoch: u64, ttl_ms: u64, asked_at: Instant) -> Lease {
        Lease::from_response(&grant(epoch, ttl_ms), asked_at).expect("valid grant")
    }

    #[test]
    fn lease_ttls_are_clamped() {
        let at = Instant::now();
        assert_eq!(
            Lease::from_response(&grant(1, u64::MAX), at)
                .expect("clamped")
                .ttl,
            Duration::from_millis(MAX_TTL_MS)
        );
        assert!(
            !Lease::from_response(&grant(1, 0), at)
                .expect("zero")
                .valid()
        );
        let short = pb::LeaseResponse {
            lease_id: Bytes::from_static(&[1; 3]),
            ..grant(1, 1000)
        };
        assert!(
            Lease::from_response(&short, at)
                .expect_err("short id")
                .to_string()
                .contains("a lease id of 3 bytes")
        );
    }

    #[test]
    fn a_lease_is_valid_here_until_a_fifth_of_its_ttl_before_the_server() {
        let asked = Instant::now();
        let l = lease(1, 10_000, asked);
        assert_eq!(l.valid_until - asked, Duration::from_millis(8_000));
        assert_eq!(l.id, LeaseId([1; 16]));
        assert!(l.valid());
        // Asked for long ago: over here although the server may still hold it.
        let old = asked - Duration::from_secs(9);
        assert!(!lease(1, 10_000, old).valid());
    }

    #[test]
    fn writes_renew_or_acquire_only_when_the_lease_is_not_valid() {
        let mut w = WriteLease::default();
        let ForWrite::Obtain(None, ask_as) = w.for_write() else {
            panic!("none held")
        };
        assert!(matches!(w.for_write(), ForWrite::Obtain(None, again) if again == ask_as));
        let mut granted = lease(3, 10_000, Instant::now());
        granted.id = ask_as;
        assert!(w.install(granted), "a new epoch");
        assert!(matches!(w.for_write(), ForWrite::Valid));
        assert!(w.valid() && w.is_held());
        // The same epoch again (a renewal) starts no second heartbeat.
        let stale = Instant::now() - Duration::from_secs(20);
        assert!(!w.install(lease(3, 10_000, stale)));
        match w.for_write() {
            ForWrite::Obtain(Some(l), next) => {
                assert_eq!(l.epoch, 3, "renew the one held");
                assert_ne!(next, ask_as, "a granted id is never asked for again");
            }
            other => panic!("{other:?}"),
        }
        assert!(!w.valid() && w.is_held());
        assert!(w.install(lease(4, 10_000, Instant::now())), "another epoch");
        w.forget();
        assert!(!w.is_held() && w.held().is_none());
    }

    #[test]
    fn renewals_and_commits_move_only_their_own_epochs_deadline() {
        let mut w = WriteLease::default();
        let long_ago = Instant::now() - Duration::from_secs(20);
        w.install(lease(2, 10_000, long_ago));
        assert!(!w.valid());
        // A renewal of another epoch changes nothing; of this one, moves the end.
        w.renewed(1, &lease(1, 10_000, Instant::now()));
        assert!(!w.valid());
        w.renewed(2, &lease(2, 10_000, Instant::now()));
        assert!(w.valid());
        // A commit sent now extends it from now, and never shortens it.
        let mut w = WriteLease::default();
        w.install(lease(5, 10_000, long_ago));
        w.committed(4, Instant::now());
        assert!(!w.valid(), "another epoch's commit");
        w.committed(5, Instant::now());
        assert!(w.valid());
        let end = w.current(5).expect("held").valid_until;
        w.committed(5, long_ago);
        assert_eq!(w.current(5).expect("held").valid_until, end);
    }

    #[test]
    fn an_idle_lease_is_given_back_and_a_replaced_one_ends_its_heartbeat() {
        let idle = Duration::from_secs(10);
        let mut w = WriteLease::default();
        w.install(lease(7, 10_000, Instant::now()));
        assert!(matches!(w.idle(6, false, idle), Idle::Gone), "an old epoch");
        assert!(matches!(w.idle(7, false, idle), Idle::Busy), "just written");
        assert!(
            matches!(w.idle(7, true, Duration::ZERO), Idle::Busy),
            "RESERVED held"
        );
        match w.idle(7, false, Duration::ZERO) {
            Idle::Release(l) => assert_eq!(l.epoch, 7),
            other => panic!("{other:?}"),
        }
        assert!(!w.is_held(), "given back: no longer held here");
        assert!(matches!(w.idle(7, false, Duration::ZERO), Idle::Gone));
    }
}
