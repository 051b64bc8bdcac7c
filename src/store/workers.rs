//! SQLite runs each connection on a worker thread of its own (sqlx's design). Those threads
//! write spend batches and checkpoint the WAL — milliseconds of CPU at a time — and on a small
//! pod (one core, or a CPU limit of one) the request handlers would wait behind them: the
//! benchmark's p99 at 4 connections was 3–5 ms with the writer at the same priority, under
//! 1 ms without writes. So the workers run a few nice levels below the rest of the process:
//! request handling preempts them, and their share under full load (about a quarter of a core
//! at +5) stays far above what the writer needs, so the spend queue never starves.
//!
//! Linux applies `setpriority(PRIO_PROCESS, tid)` to one thread; elsewhere this does nothing.

/// Name prefix of the worker threads (at most 15 bytes of a name are visible in `/proc`).
pub(super) const THREAD_PREFIX: &str = "tg-sqlite-";
/// Nice levels below the process's own.
const LOWER_BY: i32 = 5;

/// The name of worker `id`.
pub(super) fn thread_name(id: u64) -> String {
    format!("{THREAD_PREFIX}{id}")
}

/// Lower every SQLite worker thread of this process (new ones included; idempotent).
pub(super) fn lower_priority() {
    use rustix::process::{Pid, getpriority_process, setpriority_process};
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    let target = getpriority_process(None)
        .map_or(LOWER_BY, |own| own + LOWER_BY)
        .min(19);
    for task in tasks.flatten() {
        let Some(pid) = task
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
            .and_then(Pid::from_raw)
        else {
            continue;
        };
        let is_worker = std::fs::read_to_string(task.path().join("comm"))
            .is_ok_and(|c| c.starts_with(THREAD_PREFIX));
        if is_worker && getpriority_process(Some(pid)).is_ok_and(|p| p < target) {
            // Raising a nice value needs no privilege; a failure only leaves it as it was.
            let _ = setpriority_process(Some(pid), target);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn workers_are_lowered_and_other_threads_are_not() {
        use rustix::process::getpriority_process;
        let own = getpriority_process(None).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::Builder::new()
            .name(thread_name(7))
            .spawn(move || {
                tx.send(()).unwrap();
                done_rx.recv().unwrap();
                getpriority_process(None).unwrap()
            })
            .unwrap();
        rx.recv().unwrap();
        lower_priority();
        done_tx.send(()).unwrap();
        assert_eq!(worker.join().unwrap(), (own + LOWER_BY).min(19));
        assert_eq!(
            getpriority_process(None).unwrap(),
            own,
            "the caller keeps its priority"
        );
    }
}
