//! How long library work (verify, inspect) reports progress. The library only counts; the
//! binary decides whether and how to draw it (a bar on a terminal's standard error).

/// Receives progress: the total work once, then each finished share (from any thread).
pub trait Progress: Sync {
    fn start(&self, total: u64);
    fn advance(&self, done: u64);
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {
    fn start(&self, _: u64) {}
    fn advance(&self, _: u64) {}
}
