//! Wake-ups for a SQLite outbox: the kernel (inotify) says when the database file, its WAL or
//! its rollback journal is written, by any process. No polling, no CPU while idle.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use inotify::{EventStream, Inotify, WatchMask};

/// Writes to one database file, as the kernel reports them.
pub struct FileWrites {
    /// The file names that count: the database, `-wal`, `-journal`.
    names: Vec<OsString>,
    events: EventStream<Vec<u8>>,
    /// A write seen and not yet reported: kept here, not in [`Self::wait`]'s future, so that a
    /// wait dropped after it consumed the kernel's event (the relay's `select!` drops the wait
    /// when a batch finishes first) does not lose the wake-up.
    seen: bool,
}

impl std::fmt::Debug for FileWrites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWrites").field("names", &self.names).finish_non_exhaustive()
    }
}

impl FileWrites {
    /// Watches `file` (which need not exist yet) through its directory.
    pub fn watch(file: &Path) -> std::io::Result<Self> {
        let file = std::path::absolute(file)?;
        let dir: PathBuf = file.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        let name = file.file_name().map(OsString::from).unwrap_or_default();
        let names = ["", "-wal", "-journal"]
            .iter()
            .map(|suffix| {
                let mut with = name.clone();
                with.push(suffix);
                with
            })
            .collect();
        let inotify = Inotify::init()?;
        inotify
            .watches()
            .add(&dir, WatchMask::MODIFY | WatchMask::CLOSE_WRITE | WatchMask::CREATE | WatchMask::MOVED_TO)?;
        let events = inotify.into_event_stream(vec![0u8; 4096])?;
        Ok(Self { names, events, seen: false })
    }

    /// Returns `true` when the database was written since the last call (at once when a
    /// write is already queued), `false` after `timeout` without one. The writes queued by
    /// then are consumed (at most [`DRAIN_AT_MOST`] events): a burst of writes is one
    /// wake-up, and a stream of them (an application committing every millisecond, each
    /// commit a few events) does not keep the wait draining. Cancel-safe: a write consumed by
    /// a wait that was dropped is reported by the next one.
    pub async fn wait(&mut self, timeout: Duration) -> std::io::Result<bool> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.seen {
            match tokio::time::timeout_at(deadline, self.events.next()).await {
                Err(_) | Ok(None) => return Ok(false),
                Ok(Some(event)) => self.note(event?),
            }
        }
        for _ in 0..DRAIN_AT_MOST {
            match self.events.next().now_or_never() {
                Some(Some(event)) => self.note(event?),
                _ => break,
            }
        }
        Ok(std::mem::take(&mut self.seen))
    }

    /// Notes `event` if it is a write to the database.
    fn note(&mut self, event: inotify::Event<std::ffi::OsString>) {
        tracing::trace!(name = ?event.name, mask = ?event.mask, "file event");
        if event.name.is_some_and(|name| self.names.contains(&name)) {
            self.seen = true;
        }
    }
}

/// The most events one wait consumes after the first write it sees.
pub const DRAIN_AT_MOST: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_write_to_the_file_or_its_wal_wakes_and_other_files_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("outbox.db");
        let mut writes = FileWrites::watch(&db).unwrap();
        assert!(!writes.wait(Duration::from_millis(50)).await.unwrap(), "nothing written yet");
        std::fs::write(dir.path().join("other.txt"), "x").unwrap();
        assert!(!writes.wait(Duration::from_millis(50)).await.unwrap(), "another file does not count");
        std::fs::write(dir.path().join("outbox.db-wal"), "x").unwrap();
        std::fs::write(&db, "x").unwrap();
        assert!(writes.wait(Duration::from_secs(5)).await.unwrap());
        assert!(!writes.wait(Duration::from_millis(50)).await.unwrap(), "a burst is one wake-up");
    }
}
