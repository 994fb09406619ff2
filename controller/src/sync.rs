//! `DirectorySync`: GitOps for jobs. It keeps the job store equal to the spec files of a
//! directory, typically a git checkout that something else pulls.
//!
//! Design:
//! - A pass is triggered by a file change under the directory (through `notify`) and by a
//!   periodic timer, which also retries whatever the last pass could not do.
//! - A pass reads every spec file, applies each valid job and requests deletion of the jobs it
//!   manages that no file defines any more. Applying an unchanged spec is a no-op, so a pass
//!   is idempotent.
//! - Jobs the sync applies carry the label [`MANAGED_LABEL`]`=`[`MANAGED_VALUE`]; only those are
//!   ever pruned, so jobs applied by hand stay.
//! - A bad file is reported and skipped. The jobs it defined, by the name still readable in it
//!   or by what it defined in an earlier pass, are kept rather than pruned. When neither names
//!   them, the pass prunes nothing.
//! - The last pass's result (git revision, jobs applied, jobs pruned, errors by file) is
//!   served at `GET /v1/sync`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::documents::{self, Document};
use crate::store::{ApplyOutcome, JobStore};

/// Label key that marks jobs applied by the sync.
pub const MANAGED_LABEL: &str = "managed-by";
/// Value of [`MANAGED_LABEL`] on jobs applied by the sync.
pub const MANAGED_VALUE: &str = "transcoder-sync";
/// How long a pass waits after a file change for more changes, so that one `git pull` causes
/// one pass.
const SETTLE_TIME: Duration = Duration::from_millis(200);

/// Directory and period of the sync.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    pub dir: PathBuf,
    /// Time between full passes when no file changes.
    pub interval: Duration,
}

/// The shared, readable state of the sync, as `GET /v1/sync` returns it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncState {
    pub dir: String,
    pub interval_seconds: u64,
    /// Passes finished since the controller started.
    pub passes: u64,
    #[serde(default)]
    pub last_sync: Option<SyncReport>,
}

/// The result of one pass.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncReport {
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The commit checked out in the directory, when it is inside a git work tree.
    #[serde(default)]
    pub revision: Option<String>,
    /// Spec files read.
    pub files: usize,
    /// Every valid job of the directory and what applying it did.
    pub applied: Vec<SyncedJob>,
    /// Jobs whose deletion the pass requested.
    pub pruned: Vec<String>,
    pub errors: Vec<SyncError>,
    /// Reason the pass skipped pruning, if it did.
    #[serde(default)]
    pub prune_skipped: Option<String>,
}

/// One job of the directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncedJob {
    pub name: String,
    pub file: String,
    pub outcome: ApplyOutcome,
}

/// One problem with one file, or with one document or field in it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncError {
    pub file: String,
    #[serde(default)]
    pub document: Option<usize>,
    #[serde(default)]
    pub line: Option<usize>,
    #[serde(default)]
    pub field: Option<String>,
    pub message: String,
}

/// A handle to the sync's state that the API reads.
#[derive(Debug, Clone)]
pub struct SyncStatus(Arc<RwLock<SyncState>>);

impl SyncStatus {
    pub fn new(settings: &SyncSettings) -> Self {
        Self(Arc::new(RwLock::new(SyncState {
            dir: settings.dir.display().to_string(),
            interval_seconds: settings.interval.as_secs(),
            passes: 0,
            last_sync: None,
        })))
    }

    pub fn snapshot(&self) -> SyncState {
        match self.0.read() {
            Ok(state) => state.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn record(&self, report: SyncReport) {
        let mut state = match self.0.write() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        };
        state.passes += 1;
        state.last_sync = Some(report);
    }
}

/// The sync loop of one directory.
pub struct DirectorySync {
    store: JobStore,
    settings: SyncSettings,
    status: SyncStatus,
    /// Job names each file defined in the last pass that read it.
    names_by_file: HashMap<PathBuf, BTreeSet<String>>,
}

impl DirectorySync {
    pub fn new(store: JobStore, settings: SyncSettings, status: SyncStatus) -> Self {
        Self {
            store,
            settings,
            status,
            names_by_file: HashMap::new(),
        }
    }

    /// Runs passes until `shutdown` is cancelled.
    pub async fn run(mut self, shutdown: CancellationToken) {
        tracing::info!(dir = %self.settings.dir.display(), interval = ?self.settings.interval, "directory sync started");
        let (changed, mut changes) = mpsc::channel(1);
        let mut watcher = None;
        let start = tokio::time::Instant::now() + self.settings.interval;
        let mut ticker = tokio::time::interval_at(start, self.settings.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            if watcher.is_none() {
                watcher = watch_directory(&self.settings.dir, changed.clone());
            }
            self.pass().await;

            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
                Some(()) = changes.recv() => settle(&mut changes).await,
            }
        }
        tracing::info!("directory sync stopped");
    }

    /// Runs one pass: reads the files, applies, prunes and records the report.
    pub async fn pass(&mut self) -> SyncReport {
        let mut report = SyncReport {
            started_at: Some(Utc::now()),
            revision: git_revision(&self.settings.dir),
            ..SyncReport::default()
        };

        match documents::spec_files(&self.settings.dir, true) {
            Ok(files) => {
                let desired = self.apply_files(&files, &mut report).await;
                self.prune(&desired, &mut report).await;
            }
            Err(err) => {
                report.errors.push(file_error(&self.settings.dir, &err));
                report.prune_skipped = Some("the directory could not be read".to_owned());
            }
        }

        report.finished_at = Some(Utc::now());
        log_report(&report);
        self.status.record(report.clone());
        report
    }

    /// Applies the valid jobs of every file and returns the names to keep: the valid jobs
    /// and the jobs of files that have errors.
    async fn apply_files(&mut self, files: &[PathBuf], report: &mut SyncReport) -> Desired {
        let mut desired = Desired::default();
        let mut names_by_file = HashMap::new();
        report.files = files.len();

        for file in files {
            let documents = match documents::read_file(file) {
                Ok(documents) => documents,
                Err(err) => {
                    report.errors.push(file_error(file, &err));
                    if !self.keep_earlier_names(file, &mut desired, &mut names_by_file) {
                        desired.unknown_files.push(file.display().to_string());
                    }
                    continue;
                }
            };
            let before = report.errors.len();
            let (names, unnamed) = self
                .apply_documents(file, &documents, &mut desired, report)
                .await;
            let failed = report.errors.len() > before;
            let kept = failed && self.keep_earlier_names(file, &mut desired, &mut names_by_file);
            if unnamed && !kept {
                desired.unknown_files.push(file.display().to_string());
            }

            names_by_file.entry(file.clone()).or_default().extend(names);
        }

        self.names_by_file = names_by_file;
        desired
    }

    /// Applies the documents of one file. Returns the names they define, invalid ones included
    /// where the name is readable, and whether an invalid document's name is unreadable.
    async fn apply_documents(
        &self,
        file: &Path,
        documents: &[Document],
        desired: &mut Desired,
        report: &mut SyncReport,
    ) -> (BTreeSet<String>, bool) {
        let mut names = BTreeSet::new();
        let mut unnamed = false;
        for document in documents {
            let mut job = match document.parse() {
                Ok(job) => job,
                Err(err) => {
                    report
                        .errors
                        .extend(err.errors.iter().map(|e| document_error(document, e)));
                    match document.name_hint() {
                        Some(name) => {
                            desired.kept.insert(name.clone());
                            names.insert(name);
                        }
                        None => unnamed = true,
                    }
                    continue;
                }
            };

            let name = job.metadata.name.clone();
            if let Some(first) = desired.applied.get(&name) {
                report.errors.push(SyncError {
                    message: format!(
                        "job {name:?} is already defined in {first}; this document is skipped"
                    ),
                    ..document_error(document, &field_error("metadata.name"))
                });
                continue;
            }
            desired
                .applied
                .insert(name.clone(), file.display().to_string());
            names.insert(name.clone());

            job.metadata
                .labels
                .insert(MANAGED_LABEL.to_owned(), MANAGED_VALUE.to_owned());
            match self.store.apply(job).await {
                Ok((_, outcome)) => report.applied.push(SyncedJob {
                    name,
                    file: file.display().to_string(),
                    outcome,
                }),
                Err(err) => report.errors.push(SyncError {
                    message: format!("failed to apply job {name:?}: {}", error_chain(&err)),
                    ..document_error(document, &field_error("."))
                }),
            }
        }
        (names, unnamed)
    }

    /// Keeps the jobs a file defined in the last pass, for a file that is unreadable or has
    /// errors now. Returns false when no earlier pass read the file.
    fn keep_earlier_names(
        &self,
        file: &Path,
        desired: &mut Desired,
        names_by_file: &mut HashMap<PathBuf, BTreeSet<String>>,
    ) -> bool {
        let Some(earlier) = self.names_by_file.get(file) else {
            return false;
        };
        desired.kept.extend(earlier.iter().cloned());
        names_by_file
            .entry(file.to_path_buf())
            .or_default()
            .extend(earlier.iter().cloned());
        true
    }

    /// Requests deletion of the managed jobs that the directory no longer defines.
    async fn prune(&self, desired: &Desired, report: &mut SyncReport) {
        if !desired.unknown_files.is_empty() {
            report.prune_skipped = Some(format!(
                "cannot tell which jobs {} define; fix them to resume pruning",
                desired.unknown_files.join(", ")
            ));
            return;
        }
        let jobs = match self.store.list() {
            Ok(jobs) => jobs,
            Err(err) => {
                report.prune_skipped = Some(format!("failed to list jobs: {}", error_chain(&err)));
                return;
            }
        };

        for stored in jobs {
            let name = stored.name();
            let managed = stored
                .job
                .metadata
                .labels
                .get(MANAGED_LABEL)
                .map(String::as_str)
                == Some(MANAGED_VALUE);
            let deleting = stored.job.metadata.deletion_timestamp.is_some();
            if !managed || deleting || desired.contains(name) {
                continue;
            }
            match self.store.request_deletion(name).await {
                Ok(_) => report.pruned.push(name.to_owned()),
                Err(err) => report.errors.push(SyncError {
                    file: self.settings.dir.display().to_string(),
                    document: None,
                    line: None,
                    field: None,
                    message: format!("failed to prune job {name:?}: {}", error_chain(&err)),
                }),
            }
        }
    }
}

/// Jobs a pass found in the directory.
#[derive(Debug, Default)]
struct Desired {
    /// Valid jobs and the file that defines each.
    applied: BTreeMap<String, String>,
    /// Jobs of files with errors, kept as they are.
    kept: BTreeSet<String>,
    /// Files with errors whose jobs are unknown.
    unknown_files: Vec<String>,
}

impl Desired {
    fn contains(&self, name: &str) -> bool {
        self.applied.contains_key(name) || self.kept.contains(name)
    }
}

/// Starts a recursive watch of `dir` that sends on `changed` for every event; `None` when the
/// directory cannot be watched now (the next pass tries again).
fn watch_directory(dir: &Path, changed: mpsc::Sender<()>) -> Option<RecommendedWatcher> {
    let handler = move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            // A full channel already contains a pending change.
            let _ = changed.try_send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(watcher) => watcher,
        Err(err) => {
            tracing::warn!(error = %err, "failed to create a file watcher; syncing on the timer only");
            return None;
        }
    };
    if let Err(err) = watcher.watch(dir, RecursiveMode::Recursive) {
        tracing::warn!(dir = %dir.display(), error = %err, "failed to watch the sync directory; syncing on the timer only");
        return None;
    }
    Some(watcher)
}

/// Waits until no change arrived for [`SETTLE_TIME`].
async fn settle(changes: &mut mpsc::Receiver<()>) {
    while let Ok(Some(())) = tokio::time::timeout(SETTLE_TIME, changes.recv()).await {}
}

fn log_report(report: &SyncReport) {
    let changed = report
        .applied
        .iter()
        .filter(|job| job.outcome != ApplyOutcome::Unchanged)
        .count();
    if changed > 0 || !report.pruned.is_empty() || !report.errors.is_empty() {
        tracing::info!(
            revision = report.revision.as_deref().unwrap_or("-"),
            jobs = report.applied.len(),
            changed,
            pruned = report.pruned.len(),
            errors = report.errors.len(),
            "sync pass finished"
        );
    }
    for error in &report.errors {
        tracing::warn!(file = %error.file, field = error.field.as_deref().unwrap_or("-"), error = %error.message, "sync error");
    }
}

fn file_error(file: &Path, err: &dyn std::error::Error) -> SyncError {
    SyncError {
        file: file.display().to_string(),
        document: None,
        line: None,
        field: None,
        message: error_chain(err),
    }
}

fn field_error(field: &str) -> crate::spec::FieldError {
    crate::spec::FieldError {
        field: field.to_owned(),
        message: String::new(),
    }
}

fn document_error(document: &Document, error: &crate::spec::FieldError) -> SyncError {
    SyncError {
        file: document.path.display().to_string(),
        document: Some(document.index),
        line: Some(document.line),
        field: Some(error.field.clone()),
        message: error.message.clone(),
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Reads the commit checked out in the git work tree that contains `dir`, read from `.git/HEAD` and
/// the ref it names (a loose ref file or `packed-refs`).
pub fn git_revision(dir: &Path) -> Option<String> {
    let git_dir = find_git_dir(dir)?;
    let head = std::fs::read_to_string(git_dir.join("HEAD")).ok()?;
    let head = head.trim();
    let Some(reference) = head.strip_prefix("ref:").map(str::trim) else {
        return is_object_id(head).then(|| head.to_owned());
    };

    // A linked work tree keeps its refs in the main repository's directory.
    let common_dir = std::fs::read_to_string(git_dir.join("commondir"))
        .map(|path| git_dir.join(path.trim()))
        .unwrap_or_else(|_| git_dir.clone());
    for base in [&git_dir, &common_dir] {
        if let Ok(text) = std::fs::read_to_string(base.join(reference)) {
            let id = text.trim();
            if is_object_id(id) {
                return Some(id.to_owned());
            }
        }
    }
    let packed = std::fs::read_to_string(common_dir.join("packed-refs")).ok()?;
    packed.lines().find_map(|line| {
        let (id, name) = line.split_once(' ')?;
        (name.trim() == reference && is_object_id(id)).then(|| id.to_owned())
    })
}

/// Finds the `.git` directory of the work tree that contains `dir`. A `.git` file points to it
/// with `gitdir: PATH`.
fn find_git_dir(dir: &Path) -> Option<PathBuf> {
    let start = dir.canonicalize().ok()?;
    for candidate in start.ancestors().map(|path| path.join(".git")) {
        if candidate.is_dir() {
            return Some(candidate);
        }
        if let Ok(text) = std::fs::read_to_string(&candidate) {
            let target = text.trim().strip_prefix("gitdir:")?.trim().to_owned();
            let parent = candidate.parent()?;
            return Some(parent.join(target));
        }
    }
    None
}

fn is_object_id(text: &str) -> bool {
    matches!(text.len(), 40 | 64) && text.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn revision_comes_from_the_loose_ref() {
        let repo = tempfile::tempdir().expect("tempdir");
        let git = repo.path().join(".git");
        std::fs::create_dir_all(git.join("refs/heads")).expect("mkdir");
        std::fs::write(git.join("HEAD"), "ref: refs/heads/main\n").expect("write");
        std::fs::write(git.join("refs/heads/main"), format!("{COMMIT}\n")).expect("write");
        std::fs::create_dir(repo.path().join("jobs")).expect("mkdir");

        assert_eq!(
            git_revision(&repo.path().join("jobs")).as_deref(),
            Some(COMMIT)
        );
    }

    #[test]
    fn revision_comes_from_packed_refs_and_detached_heads() {
        let repo = tempfile::tempdir().expect("tempdir");
        let git = repo.path().join(".git");
        std::fs::create_dir_all(&git).expect("mkdir");
        std::fs::write(git.join("HEAD"), "ref: refs/heads/main\n").expect("write");
        std::fs::write(
            git.join("packed-refs"),
            format!("# pack-refs with: peeled fully-peeled sorted\n{COMMIT} refs/heads/main\n"),
        )
        .expect("write");
        assert_eq!(git_revision(repo.path()).as_deref(), Some(COMMIT));

        let detached = COMMIT.replace('0', "f");
        std::fs::write(git.join("HEAD"), format!("{detached}\n")).expect("write");
        assert_eq!(git_revision(repo.path()), Some(detached));
    }

    #[test]
    fn directory_outside_git_has_no_revision() {
        let dir = tempfile::tempdir().expect("tempdir");

        assert_eq!(git_revision(dir.path()), None);
    }
}
