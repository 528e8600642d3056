//! Signals that end a run. SIGINT and SIGTERM remove the hidden temporary files of the output
//! being written (registered in `eoi::interrupt`) and exit with 128 + the signal, 130 or 143,
//! as a shell reports a process killed by it. SIGXFSZ, sent when a write crosses the
//! file-size limit (`ulimit -f`), is ignored, so the write fails with EFBIG and the run ends
//! through the ordinary error path (message, cleanup, exit 1) instead of dying with a core.

/// Installs the handlers; called once, first thing in `main`.
#[cfg(unix)]
pub fn install() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    use signal_hook::iterator::Signals;

    #[cfg(target_os = "linux")]
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code, and no
    // other thread exists yet to race with.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }

    // A signal handler may only do async-signal-safe work: no allocation, no locks, no file
    // removal. signal-hook's iterator turns each signal into a byte on a self-pipe that an
    // ordinary thread reads, and that thread does the cleanup.
    let handled = Signals::new([SIGINT, SIGTERM]).and_then(|mut signals| {
        std::thread::Builder::new()
            .name("eoi-signals".into())
            .spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    eoi::interrupt::clean_up_then(|| std::process::exit(128 + signal))
                }
            })
            .map(drop)
    });
    if let Err(e) = handled {
        eprintln!(
            "warning: cannot handle interruptions ({e}); an interrupted run may leave .eoi-* files behind"
        );
    }
}

#[cfg(not(unix))]
pub fn install() {}
