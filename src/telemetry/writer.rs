//! A stderr writer that batches routine lines. Writing each request's log line with its own
//! `write` cost the serving thread ≈ 10 µs under load (profiled in `bench/RESULTS.md`), more
//! than formatting it. Lines at INFO and below are appended to a buffer that a small thread
//! writes out every [`FLUSH_EVERY`] (or at once when it passes [`FLUSH_AT`] bytes); a WARN or
//! ERROR line writes the buffer and itself immediately, so problems are never delayed and the
//! order of lines is kept. Dropping the [`BatchGuard`] writes what is left.

use parking_lot::Mutex;
use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// How often buffered lines reach stderr.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// A buffer this large is written at once.
pub const FLUSH_AT: usize = 64 * 1024;

#[derive(Default)]
struct Shared {
    buf: Mutex<Vec<u8>>,
    stopped: AtomicBool,
}

impl Shared {
    fn flush_locked(buf: &mut Vec<u8>) {
        if buf.is_empty() {
            return;
        }
        // Logging must never fail a request: a closed stderr loses lines, nothing else.
        let _ = io::stderr().write_all(buf);
        buf.clear();
    }
}

/// The `MakeWriter` handed to the fmt layer.
#[derive(Clone)]
pub struct BatchedStderr {
    shared: Arc<Shared>,
}

/// Flushes on drop and stops the flusher thread.
pub struct BatchGuard {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BatchedStderr {
    /// The writer and the guard that keeps its flusher running.
    pub fn new() -> (Self, BatchGuard) {
        let shared = Arc::new(Shared::default());
        let bg = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("tollgate-log".into())
            .spawn(move || {
                while !bg.stopped.load(Ordering::Acquire) {
                    std::thread::park_timeout(FLUSH_EVERY);
                    Shared::flush_locked(&mut bg.buf.lock());
                }
            })
            .ok();
        (
            Self {
                shared: Arc::clone(&shared),
            },
            BatchGuard { shared, thread },
        )
    }
}

impl Drop for BatchGuard {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        Shared::flush_locked(&mut self.shared.buf.lock());
    }
}

/// One line's writer.
pub struct LineWriter<'a> {
    shared: &'a Shared,
    immediate: bool,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut buf = self.shared.buf.lock();
        buf.extend_from_slice(data);
        // Without the flusher thread (it could not be spawned), every line goes out at once.
        if self.immediate || buf.len() >= FLUSH_AT || self.shared.stopped.load(Ordering::Acquire) {
            Shared::flush_locked(&mut buf);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.immediate {
            Shared::flush_locked(&mut self.shared.buf.lock());
        }
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchedStderr {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
            immediate: true,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
            // Level ordering: ERROR < WARN < INFO < DEBUG < TRACE.
            immediate: *meta.level() <= Level::WARN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routine_lines_wait_for_the_flusher_and_warnings_do_not() {
        let (w, guard) = BatchedStderr::new();
        {
            let mut line = LineWriter {
                shared: &w.shared,
                immediate: false,
            };
            line.write_all(b"{\"level\":\"INFO\"}\n").unwrap();
        }
        assert!(!w.shared.buf.lock().is_empty(), "an INFO line is buffered");
        {
            let mut line = LineWriter {
                shared: &w.shared,
                immediate: true,
            };
            line.write_all(b"{\"level\":\"WARN\"}\n").unwrap();
        }
        assert!(
            w.shared.buf.lock().is_empty(),
            "a WARN line writes the buffer and itself"
        );
        {
            let mut line = LineWriter {
                shared: &w.shared,
                immediate: false,
            };
            line.write_all(b"{\"level\":\"INFO\"}\n").unwrap();
        }
        drop(guard);
        assert!(w.shared.buf.lock().is_empty(), "dropping the guard flushes");
    }

    #[test]
    fn a_full_buffer_is_written_at_once() {
        let (w, _guard) = BatchedStderr::new();
        let mut line = LineWriter {
            shared: &w.shared,
            immediate: false,
        };
        let chunk = vec![b' '; FLUSH_AT / 4];
        for _ in 0..4 {
            line.write_all(&chunk).unwrap();
        }
        assert!(w.shared.buf.lock().len() < FLUSH_AT);
    }
}
