//! `transcoder apply`: sends spec files to the API, prunes jobs that left them, and uploads
//! local sources.

use std::collections::BTreeSet;
use std::path::PathBuf;

use controller::client::{ApiClient, ClientError};
use controller::selector::LabelSelector;
use controller::spec::TranscodeJob;
use controller::store::ApplyOutcome;

use controller::documents::{read_documents, Document};

/// A local file to upload as the source of an `upload: true` job: `NAME=FILE`, or `FILE` when
/// exactly one applied job takes an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadArg {
    pub job: Option<String>,
    pub path: PathBuf,
}

impl std::str::FromStr for UploadArg {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.is_empty() {
            return Err("expected NAME=FILE or FILE".to_owned());
        }
        match text.split_once('=') {
            Some((job, path)) if !job.is_empty() && !path.is_empty() => Ok(Self {
                job: Some(job.to_owned()),
                path: PathBuf::from(path),
            }),
            Some(_) => Err(format!(
                "invalid upload {text:?}; expected NAME=FILE or FILE"
            )),
            None => Ok(Self {
                job: None,
                path: PathBuf::from(text),
            }),
        }
    }
}

/// Options of `apply`.
#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    /// Read subdirectories too.
    pub recursive: bool,
    /// Ask the server what each apply would do, and store nothing.
    pub dry_run: bool,
    /// Check every document, locally and with the server, before applying any.
    pub atomic: bool,
    pub prune: Option<PruneOptions>,
}

/// Deletion of jobs that match a selector but are not among the applied documents.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    pub selector: String,
    /// Prune even when the applied set is empty or no matching job is in it.
    pub force: bool,
}

/// Result of one `apply`.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// Names of the jobs applied, in order.
    pub applied: Vec<String>,
    /// Names of applied jobs that take an upload.
    pub upload_jobs: Vec<String>,
    /// Names of applied upload jobs whose source is not stored yet.
    pub sourceless_jobs: Vec<String>,
    /// Names of the jobs pruned.
    pub pruned: Vec<String>,
    pub failures: usize,
}

/// Applies every document under `paths`. An invalid document is reported with its file,
/// position and field; without `atomic` the valid ones still apply.
pub async fn apply_paths(
    client: &ApiClient,
    paths: &[PathBuf],
    options: &ApplyOptions,
) -> ApplyReport {
    let mut report = ApplyReport::default();
    let jobs = read_jobs(paths, options.recursive, &mut report);
    if options.atomic && report.failures == 0 {
        check_with_server(client, &jobs, &mut report).await;
    }
    if options.atomic && report.failures > 0 {
        eprintln!(
            "error: nothing applied: {} problem(s) found and --atomic is set",
            report.failures
        );
        return report;
    }

    let mut prune_plan = Vec::new();
    if let Some(prune) = &options.prune {
        match plan_prune(client, prune, &jobs, report.failures).await {
            Ok(plan) => prune_plan = plan,
            Err(message) => {
                eprintln!("error: {message}");
                report.failures += 1;
                return report;
            }
        }
    }

    for (document, job) in &jobs {
        apply_document(client, document, job, options.dry_run, &mut report).await;
    }
    prune_jobs(client, &prune_plan, options.dry_run, &mut report).await;
    report
}

/// Reads and validates every document; reports and counts the invalid ones and jobs defined
/// twice.
pub fn read_jobs(
    paths: &[PathBuf],
    recursive: bool,
    report: &mut ApplyReport,
) -> Vec<(Document, TranscodeJob)> {
    let mut jobs: Vec<(Document, TranscodeJob)> = Vec::new();
    for path in paths {
        let documents = match read_documents(path, recursive) {
            Ok(documents) => documents,
            Err(err) => {
                eprintln!("error: {}", super::error_chain(&err));
                report.failures += 1;
                continue;
            }
        };
        if documents.is_empty() {
            eprintln!("warning: no spec documents in {}", path.display());
        }
        for document in documents {
            let job = match document.parse() {
                Ok(job) => job,
                Err(err) => {
                    print_field_errors(&document.location(), &err.errors);
                    report.failures += 1;
                    continue;
                }
            };
            let name = &job.metadata.name;
            if let Some((first, _)) = jobs.iter().find(|(_, other)| other.metadata.name == *name) {
                eprintln!(
                    "error: {}: metadata.name: job {name:?} is already defined in {}; each job may appear once",
                    document.location(),
                    first.location()
                );
                report.failures += 1;
                continue;
            }
            jobs.push((document, job));
        }
    }
    jobs
}

/// Asks the server to validate every job without storing it.
async fn check_with_server(
    client: &ApiClient,
    jobs: &[(Document, TranscodeJob)],
    report: &mut ApplyReport,
) {
    for (document, job) in jobs {
        let result = client
            .apply(&job.metadata.name, document.text.clone(), true)
            .await;
        if let Err(err) = result {
            print_client_error(document, &err);
            report.failures += 1;
        }
    }
}

/// Returns the jobs to prune: those that match the selector and are not applied now. Rejects a prune
/// that looks like a mistake: an empty applied set, or one that shares no job with the
/// selection.
async fn plan_prune(
    client: &ApiClient,
    prune: &PruneOptions,
    jobs: &[(Document, TranscodeJob)],
    failures: usize,
) -> Result<Vec<String>, String> {
    LabelSelector::parse(&prune.selector)?;
    if failures > 0 {
        eprintln!("warning: not pruning, because {failures} document(s) failed and their jobs would look removed");
        return Ok(Vec::new());
    }
    let matched = client
        .list(Some(&prune.selector))
        .await
        .map_err(|err| format!("failed to list jobs to prune: {}", super::error_chain(&err)))?;

    let applied: BTreeSet<&str> = jobs
        .iter()
        .map(|(_, job)| job.metadata.name.as_str())
        .collect();
    let candidates: Vec<String> = matched
        .iter()
        .filter(|job| !applied.contains(job.metadata.name.as_str()))
        .filter(|job| job.metadata.deletion_timestamp.is_none())
        .map(|job| job.metadata.name.clone())
        .collect();
    if prune.force {
        return Ok(candidates);
    }
    if applied.is_empty() {
        return Err(format!(
            "refusing to prune: no jobs are applied, so every job matching {:?} would be deleted; pass --force to do that",
            prune.selector
        ));
    }
    let all_matched = candidates.len() == matched.len();
    if all_matched && !matched.is_empty() {
        return Err(format!(
            "refusing to prune: none of the {} job(s) matching {:?} is among the applied documents, so all of them would be deleted; pass --force to do that",
            matched.len(),
            prune.selector
        ));
    }
    Ok(candidates)
}

async fn prune_jobs(client: &ApiClient, names: &[String], dry_run: bool, report: &mut ApplyReport) {
    for name in names {
        if dry_run {
            println!("transcodejob/{name} pruned (dry run)");
            report.pruned.push(name.clone());
            continue;
        }
        match client.delete(name).await {
            Ok(()) => {
                println!("transcodejob/{name} pruned");
                report.pruned.push(name.clone());
            }
            Err(err) => {
                eprintln!(
                    "error: failed to prune job {name}: {}",
                    super::error_chain(&err)
                );
                report.failures += 1;
            }
        }
    }
}

async fn apply_document(
    client: &ApiClient,
    document: &Document,
    job: &TranscodeJob,
    dry_run: bool,
    report: &mut ApplyReport,
) {
    let name = job.metadata.name.clone();
    match client.apply(&name, document.text.clone(), dry_run).await {
        Ok(response) => {
            let verb = match response.outcome {
                ApplyOutcome::Created => "created",
                ApplyOutcome::Configured => "configured",
                ApplyOutcome::Unchanged => "unchanged",
            };
            let suffix = if dry_run { " (dry run)" } else { "" };
            println!("transcodejob/{name} {verb}{suffix}");
            if job.spec.source.upload {
                report.upload_jobs.push(name.clone());
                let status = &response.job.status;
                let source_ready = status
                    .condition("SourceReady")
                    .is_some_and(|c| c.status == "True");
                if !source_ready && !status.phase.is_finished() {
                    report.sourceless_jobs.push(name.clone());
                }
            }
            report.applied.push(name);
        }
        Err(err) => {
            print_client_error(document, &err);
            report.failures += 1;
        }
    }
}

fn print_client_error(document: &Document, err: &ClientError) {
    match err {
        ClientError::Api {
            message, details, ..
        } if !details.is_empty() => {
            eprintln!("error: {}: {message}", document.location());
            print_field_errors(&document.location(), details);
        }
        err => eprintln!(
            "error: {}: {}",
            document.location(),
            super::error_chain(err)
        ),
    }
}

pub fn print_field_errors(location: &str, errors: &[controller::spec::FieldError]) {
    for error in errors {
        eprintln!("error: {location}: {}: {}", error.field, error.message);
    }
}

/// Uploads each `--upload` file to its job. Returns the number of failures.
pub async fn upload_sources(
    client: &ApiClient,
    uploads: &[UploadArg],
    upload_jobs: &[String],
) -> usize {
    let mut failures = 0;
    for (job, path) in match_uploads(uploads, upload_jobs) {
        let Some(job) = job else {
            eprintln!(
                "error: cannot tell which job {} is for; {} applied jobs take an upload, so use --upload NAME=FILE",
                path.display(),
                upload_jobs.len()
            );
            failures += 1;
            continue;
        };
        match client.upload_source(&job, &path).await {
            Ok(bytes) => println!(
                "transcodejob/{job} source uploaded from {} ({bytes} bytes)",
                path.display()
            ),
            Err(err) => {
                eprintln!(
                    "error: upload for job {job} failed: {}",
                    super::error_chain(&err)
                );
                failures += 1;
            }
        }
    }
    failures
}

fn match_uploads(uploads: &[UploadArg], upload_jobs: &[String]) -> Vec<(Option<String>, PathBuf)> {
    uploads
        .iter()
        .map(|upload| {
            let job = upload.job.clone().or_else(|| match upload_jobs {
                [only] => Some(only.clone()),
                _ => None,
            });
            (job, upload.path.clone())
        })
        .collect()
}

/// Tells about applied upload jobs whose source is neither stored nor given: they wait for one.
pub fn report_waiting_uploads(uploads: &[UploadArg], report: &ApplyReport) {
    let given: BTreeSet<String> = match_uploads(uploads, &report.upload_jobs)
        .into_iter()
        .filter_map(|(job, _)| job)
        .collect();
    for job in report
        .sourceless_jobs
        .iter()
        .filter(|job| !given.contains(*job))
    {
        println!("transcodejob/{job} waits for its source; upload it with `transcoder apply -f SPEC --upload {job}=FILE`");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_arg_parses_both_forms() {
        assert_eq!(
            "a=x.wav".parse::<UploadArg>(),
            Ok(UploadArg {
                job: Some("a".into()),
                path: "x.wav".into()
            })
        );
        assert_eq!(
            "x.wav".parse::<UploadArg>(),
            Ok(UploadArg {
                job: None,
                path: "x.wav".into()
            })
        );
        assert!("=x.wav".parse::<UploadArg>().is_err());
    }

    #[test]
    fn bare_upload_goes_to_the_only_upload_job() {
        let uploads = vec![UploadArg {
            job: None,
            path: "x.wav".into(),
        }];

        assert_eq!(
            match_uploads(&uploads, &["a".to_owned()]),
            [(Some("a".to_owned()), PathBuf::from("x.wav"))]
        );
        assert_eq!(
            match_uploads(&uploads, &["a".to_owned(), "b".to_owned()]),
            [(None, PathBuf::from("x.wav"))]
        );
    }
}
