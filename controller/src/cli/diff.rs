//! `transcoder diff`: what applying spec files would change, field by field.

use std::collections::BTreeMap;
use std::path::PathBuf;

use controller::client::ApiClient;
use controller::spec::TranscodeJob;
use serde_json::{json, Value};

use super::apply::{read_jobs, ApplyReport};

/// Exit code when nothing would change.
pub const NO_CHANGES: i32 = 0;
/// Exit code when some job would be created or changed.
pub const CHANGES: i32 = 1;
/// Exit code when a document is invalid or the server could not be asked.
pub const ERRORS: i32 = 2;

/// One field that differs between the stored job and the document.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldChange {
    Added(String, Value),
    Removed(String, Value),
    Changed(String, Value, Value),
}

impl std::fmt::Display for FieldChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FieldChange::Added(path, value) => write!(f, "+ {path}: {value}"),
            FieldChange::Removed(path, value) => write!(f, "- {path}: {value}"),
            FieldChange::Changed(path, old, new) => write!(f, "~ {path}: {old} -> {new}"),
        }
    }
}

/// Prints the changes of every document and returns the exit code.
pub async fn run(client: &ApiClient, paths: &[PathBuf], recursive: bool) -> i32 {
    let mut report = ApplyReport::default();
    let jobs = read_jobs(paths, recursive, &mut report);
    let mut errors = report.failures;
    let mut changed = 0;

    for (document, job) in &jobs {
        let name = &job.metadata.name;
        let live = match client.find(name).await {
            Ok(live) => live,
            Err(err) => {
                eprintln!(
                    "error: {}: {}",
                    document.location(),
                    super::error_chain(&err)
                );
                errors += 1;
                continue;
            }
        };
        let changes = field_changes(live.as_ref(), job);
        if changes.is_empty() {
            continue;
        }
        changed += 1;
        let verb = if live.is_some() {
            "configured"
        } else {
            "created"
        };
        println!("transcodejob/{name} {verb}");
        for change in changes {
            println!("  {change}");
        }
    }

    if errors > 0 {
        ERRORS
    } else if changed > 0 {
        CHANGES
    } else {
        NO_CHANGES
    }
}

/// Lists the fields that applying `desired` changes: its labels and spec against the stored ones.
pub fn field_changes(live: Option<&TranscodeJob>, desired: &TranscodeJob) -> Vec<FieldChange> {
    let before = live.map(user_fields).unwrap_or_default();
    let after = user_fields(desired);

    let mut changes = Vec::new();
    for (path, new) in &after {
        match before.get(path) {
            None => changes.push(FieldChange::Added(path.clone(), new.clone())),
            Some(old) if old != new => {
                changes.push(FieldChange::Changed(path.clone(), old.clone(), new.clone()))
            }
            Some(_) => {}
        }
    }
    for (path, old) in &before {
        if !after.contains_key(path) {
            changes.push(FieldChange::Removed(path.clone(), old.clone()));
        }
    }
    changes.sort_by(|a, b| change_path(a).cmp(change_path(b)));
    changes
}

fn change_path(change: &FieldChange) -> &str {
    match change {
        FieldChange::Added(path, _)
        | FieldChange::Removed(path, _)
        | FieldChange::Changed(path, _, _) => path,
    }
}

/// Collects the fields an apply sets, flattened to dotted paths: `metadata.labels` and `spec`.
fn user_fields(job: &TranscodeJob) -> BTreeMap<String, Value> {
    let value = json!({
        "metadata": { "labels": job.metadata.labels },
        "spec": job.spec,
    });
    let mut fields = BTreeMap::new();
    flatten("", &value, &mut fields);
    fields
}

fn flatten(prefix: &str, value: &Value, fields: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&path, child, fields);
            }
        }
        leaf => {
            fields.insert(prefix.to_owned(), leaf.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(output: &str, labels: &str) -> TranscodeJob {
        let text = format!(
            "apiVersion: transcoder/v1\nkind: TranscodeJob\nmetadata: {{name: a, labels: {{{labels}}}}}\n\
             spec: {{source: {{upload: true}}, output: {{codec: mp3, {output}}}}}\n"
        );
        controller::spec::parse(&text).expect("valid test spec")
    }

    #[test]
    fn same_job_has_no_changes() {
        let live = job("bitrateKbps: 192", "show: weekly");

        assert_eq!(field_changes(Some(&live), &live), []);
    }

    #[test]
    fn changes_name_each_field() {
        let live = job("bitrateKbps: 192", "show: weekly");
        let desired = job("bitrateKbps: 128, channels: 1", "");

        let changes = field_changes(Some(&live), &desired);

        assert_eq!(
            changes,
            [
                FieldChange::Removed("metadata.labels.show".into(), json!("weekly")),
                FieldChange::Changed("spec.output.bitrateKbps".into(), json!(192), json!(128)),
                FieldChange::Added("spec.output.channels".into(), json!(1)),
            ]
        );
        assert_eq!(
            changes[1].to_string(),
            "~ spec.output.bitrateKbps: 192 -> 128"
        );
    }

    #[test]
    fn new_job_adds_every_field() {
        let desired = job("bitrateKbps: 192", "");

        let changes = field_changes(None, &desired);

        assert!(changes.contains(&FieldChange::Added(
            "spec.source.upload".into(),
            json!(true)
        )));
        assert!(changes
            .iter()
            .all(|change| matches!(change, FieldChange::Added(..))));
    }
}
