//! Policies: `policies/*.yaml` → models, pools, bindings and roles, validated as a whole
//! (every problem reported as `file:line: reason`), hot-reloaded without a restart. A broken
//! edit never replaces a good policy: the last good set keeps serving and the problem is
//! logged once per distinct broken content. The format is documented in docs/POLICIES.md.

mod load;
mod model;
mod raw;

pub use load::{load_dir, load_str};
pub use model::*;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A validated policy.
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    models: BTreeMap<String, Model>,
    pools: BTreeMap<String, Pool>,
    bindings: Vec<Binding>,
    roles: Vec<RoleGrant>,
    rotations: Vec<RotationSchedule>,
    digest: String,
}

impl PolicySet {
    /// A model by the name clients send.
    pub fn model(&self, name: &str) -> Option<&Model> {
        self.models.get(name)
    }
    /// Every model.
    pub fn models(&self) -> impl Iterator<Item = &Model> {
        self.models.values()
    }
    /// A pool.
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.get(name)
    }
    /// Every pool.
    pub fn pools(&self) -> impl Iterator<Item = &Pool> {
        self.pools.values()
    }
    /// A binding by name.
    pub fn binding(&self, name: &str) -> Option<&Binding> {
        self.bindings.iter().find(|b| b.name == name)
    }
    /// Bindings in order (files by name, entries in file order).
    pub fn bindings(&self) -> &[Binding] {
        &self.bindings
    }
    /// The first binding whose `match` accepts the workload.
    pub fn binding_for(&self, w: &WorkloadRef<'_>) -> Option<&Binding> {
        self.bindings.iter().find(|b| b.matcher.accepts(w))
    }
    /// Role grants.
    pub fn roles(&self) -> &[RoleGrant] {
        &self.roles
    }
    /// Rotation schedules in order (files by name, entries in file order).
    pub fn rotation_schedules(&self) -> &[RotationSchedule] {
        &self.rotations
    }
    /// The first schedule covering key `id` billed to `owner`.
    pub fn rotation_schedule_for(&self, id: &str, owner: &str) -> Option<&RotationSchedule> {
        self.rotations.iter().find(|s| s.covers(id, owner))
    }
    /// Issuer names bindings refer to (the server checks them against its config).
    pub fn issuers_referenced(&self) -> BTreeSet<&str> {
        self.bindings
            .iter()
            .filter_map(|b| b.matcher.issuer.as_deref())
            .collect()
    }
    /// Provider ids models refer to.
    pub fn providers_referenced(&self) -> BTreeSet<&str> {
        self.models.values().flat_map(Model::providers).collect()
    }
    /// SHA-256 of the files it was loaded from.
    pub fn digest(&self) -> &str {
        &self.digest
    }
}

/// One problem in a policy directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// File.
    pub file: PathBuf,
    /// 1-based line (0 when the file itself could not be read).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Every problem found; `Display` prints one `file:line: reason` per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<Diagnostic>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{}: {}", d.file.display(), d.line, d.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

/// The live policy, swapped atomically on reload.
pub struct PolicyStore {
    dir: PathBuf,
    current: ArcSwap<PolicySet>,
    last_bad: Mutex<Option<String>>,
}

impl PolicyStore {
    /// Load `dir`; an invalid policy at start is an error.
    pub fn open(dir: &Path) -> Result<PolicyStore, PolicyErrors> {
        let set = load_dir(dir)?;
        Ok(PolicyStore {
            dir: dir.to_owned(),
            current: ArcSwap::from_pointee(set),
            last_bad: Mutex::new(None),
        })
    }

    /// The current policy (lock-free).
    pub fn current(&self) -> Arc<PolicySet> {
        self.current.load_full()
    }

    /// Re-read the directory: `Ok(true)` swapped, `Ok(false)` unchanged, `Err` kept the old.
    pub fn reload(&self) -> Result<bool, PolicyErrors> {
        let digest = load::digest_dir(&self.dir)?;
        if digest == self.current.load().digest {
            return Ok(false);
        }
        let set = load_dir(&self.dir)?;
        self.current.store(Arc::new(set));
        Ok(true)
    }

    /// Poll for changes every `interval` until cancelled. Content digests, not mtimes:
    /// Kubernetes ConfigMap updates swap symlinks.
    pub fn spawn_watcher(
        self: Arc<Self>,
        interval: Duration,
        cancel: CancellationToken,
    ) -> JoinHandle<()> {
        crate::tasks::every(interval, cancel, move || {
            let this = Arc::clone(&self);
            async move { this.poll() }
        })
    }

    fn poll(&self) {
        let digest = match load::digest_dir(&self.dir) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "policy directory unreadable; keeping the current policy");
                return;
            }
        };
        if digest == self.current.load().digest
            || self.last_bad.lock().as_deref() == Some(digest.as_str())
        {
            return;
        }
        match self.reload() {
            Ok(true) => {
                *self.last_bad.lock() = None;
                tracing::info!(digest = %self.current.load().digest, "policy reloaded");
            }
            Ok(false) => {}
            Err(e) => {
                *self.last_bad.lock() = Some(digest);
                tracing::warn!(problems = %e, "policy change rejected; keeping the last good policy");
            }
        }
    }
}

#[cfg(test)]
mod tests;
