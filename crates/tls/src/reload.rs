//! A value built from files, rebuilt when they change.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::TlsError;

/// How often, at most, the files are looked at again.
pub(crate) const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// What identifies one version of a file: a rewrite in place, a rename over it and a
/// symlink swap (Kubernetes' secret volumes) all change one of these.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &PathBuf) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode,
    })
}

type Build<T> = Box<dyn Fn() -> Result<T, TlsError> + Send + Sync>;

struct State<T> {
    current: Arc<T>,
    /// The files' stamps `current` was built from.
    built_from: Vec<Option<Stamp>>,
    /// The stamps of the last failed rebuild, so that it is logged once, not every second.
    failed_at: Option<Vec<Option<Stamp>>>,
    checked: Instant,
}

/// A value built from `paths`, rebuilt by [`Reloading::current`] when one of them changed.
pub(crate) struct Reloading<T> {
    what: &'static str,
    paths: Vec<PathBuf>,
    build: Build<T>,
    state: Mutex<State<T>>,
}

impl<T> Reloading<T> {
    /// Builds the value once.
    ///
    /// # Errors
    /// The first build's error.
    pub(crate) fn new(
        what: &'static str,
        paths: Vec<PathBuf>,
        build: impl Fn() -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Self, TlsError> {
        // Stamps first: a file changed while it is read is then read again at the next check.
        let built_from = paths.iter().map(stamp).collect();
        let current = Arc::new(build()?);
        Ok(Self {
            what,
            paths,
            build: Box::new(build),
            state: Mutex::new(State {
                current,
                built_from,
                failed_at: None,
                checked: Instant::now(),
            }),
        })
    }

    /// The value, rebuilt first if a file changed since it was built (looked at no more than
    /// once per [`RELOAD_CHECK_INTERVAL`]). A rebuild that fails keeps the previous value.
    pub(crate) fn current(&self) -> Arc<T> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.checked.elapsed() < RELOAD_CHECK_INTERVAL {
            return state.current.clone();
        }
        state.checked = Instant::now();
        let stamps: Vec<Option<Stamp>> = self.paths.iter().map(stamp).collect();
        if stamps == state.built_from {
            return state.current.clone();
        }
        match (self.build)() {
            Ok(value) => {
                state.current = Arc::new(value);
                state.built_from = stamps;
                state.failed_at = None;
                tracing::info!(what = self.what, files = ?self.paths, "reloaded TLS files");
            }
            Err(e) => {
                if state.failed_at.as_ref() != Some(&stamps) {
                    tracing::warn!(what = self.what, error = %e, "changed TLS files do not load; still using the previous ones");
                    state.failed_at = Some(stamps);
                }
            }
        }
        state.current.clone()
    }

    /// Forces the next [`Reloading::current`] to look at the files (tests).
    #[cfg(test)]
    pub(crate) fn expire_check(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.checked = Instant::now()
            .checked_sub(RELOAD_CHECK_INTERVAL)
            .unwrap_or(state.checked);
    }
}
