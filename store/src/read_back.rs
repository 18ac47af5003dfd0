//! The whole log read back once, in the background, at a gentle pace: what
//! `shoplog serve` does at start, so that damage in records no read has met (the
//! open checks the tail, the read models go on from their checkpoints) is found
//! within seconds, not when some read meets it weeks later. A read that finds
//! damage stops the log's appends (`EventLog::noted`), and `/readyz` says so; the
//! data directory is then to be restored from a backup. EventStoreDB verifies its
//! chunks at start the same way.
//!
//! It reads pages of [`PAGE_LEN`] events through `EventLog::scan` (the hash chain,
//! each record's envelope, its unsealing), checks that the stream index names
//! each one where it is, and after each page rests three times as long as the
//! page took: about a quarter of one core, so serving goes first.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::StoreError;
use crate::log::EventLog;

/// Events read at a time, between checks for a stop.
const PAGE_LEN: usize = 4096;

/// The rest after a page, as a multiple of the time the page took.
const REST_PER_WORK: u32 = 3;

/// The longest sleep at a time, so that a stop is quick.
const SLEEP_SLICE: Duration = Duration::from_millis(20);

/// A read-back running in the background; stopped (and waited for) when dropped.
#[derive(Debug)]
pub struct ReadBack {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ReadBack {
    /// Start reading `log` back from position 1 up to its head as it is now, on a
    /// thread of its own (`shoplog-readback`). `None` if no thread could start
    /// (said in the log: the server serves without the check).
    pub fn start(log: &EventLog) -> Option<ReadBack> {
        let stop = Arc::new(AtomicBool::new(false));
        let (log, stopping) = (log.clone(), Arc::clone(&stop));
        let started = std::thread::Builder::new().name("shoplog-readback".to_owned()).spawn(move || {
            match read_back(&log, &stopping) {
                Ok(Some(events @ 1..)) => tracing::info!(events, "read the whole log back: sound"),
                Ok(_) => {}
                Err(error) => tracing::error!(%error, "reading the log back found it damaged or unreadable"),
            }
        });
        match started {
            Ok(thread) => Some(ReadBack { stop, thread: Some(thread) }),
            Err(error) => {
                tracing::warn!(%error, "cannot start the thread that reads the log back");
                None
            }
        }
    }

    /// Whether it has read the whole log back (or stopped at damage).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stop it at the next page, and wait for it.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the thread reading the log back panicked");
        }
    }
}

impl Drop for ReadBack {
    fn drop(&mut self) {
        self.halt();
    }
}

/// What stopped a page: the scan's own error (which it has noted), or damage
/// the index check found (a scan notes only what it meets itself).
enum ReadError {
    Log(StoreError),
    Index(StoreError),
}

impl From<StoreError> for ReadError {
    fn from(error: StoreError) -> Self {
        ReadError::Log(error)
    }
}

/// Read `log` back up to its head now; the events read, or `None` when stopped.
fn read_back(log: &EventLog, stop: &AtomicBool) -> Result<Option<u64>, StoreError> {
    let head = log.head();
    let mut next = 1;
    while next <= head {
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let started = Instant::now();
        let limit = usize::try_from(head - next + 1).unwrap_or(usize::MAX).min(PAGE_LEN);
        let read = log.scan(next, limit, |event| {
            log.check_indexed(&event.stream, event.version, event.position).map_err(ReadError::Index)
        });
        let read = match read {
            Ok(read) => read,
            Err(ReadError::Log(error)) => return Err(error),
            Err(ReadError::Index(error)) => return log.noted(Err(error)),
        };
        if read == 0 {
            // The scan reads to the head, which only grows: never here.
            return Err(StoreError::corrupt(next, "missing from the log"));
        }
        next += read as u64;
        let mut rest = started.elapsed() * REST_PER_WORK;
        while !rest.is_zero() && !stop.load(Ordering::Relaxed) {
            let slice = rest.min(SLEEP_SLICE);
            std::thread::sleep(slice);
            rest -= slice;
        }
    }
    Ok(Some(head))
}
