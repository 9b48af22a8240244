//! The Watch stream of one database in this process, and its read lease.
//!
//! A background task ([`run`], in `task.rs`) keeps one stream per database while
//! readers use it. It hears of every commit (`Invalidate` when a round begins,
//! `RoundEnd` with the new state and changed pages when it ends) and, for strongly
//! consistent readers, holds a read lease. What it learned is kept in a
//! [`WatchView`] (`view.rs`) under the database's state lock, and
//! [`WatchView::serves`] decides when a read transaction may start with no round
//! trip:
//! - strong (default): the lease is valid (measured here from when we asked, minus a
//!   margin, so it ends here before it ends on the server), no round is under way, and
//!   the cache holds the newest state we heard of. The server publishes no commit
//!   before every lease holder acknowledged its Invalidate, so that state is current.
//! - snapshot: the stream is up and the cache holds the newest state we heard of;
//!   possibly a commit behind, and commits never wait for us.
//!
//! A broken stream voids the lease at once; readers fall back to BeginRead.

mod task;
mod view;

pub use task::run;
pub use view::WatchView;
