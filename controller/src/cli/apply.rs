//! `transcoder apply`: sends spec files to the API and uploads local sources.

use std::collections::BTreeSet;
use std::path::PathBuf;

use controller::client::{ApiClient, ClientError};
use controller::store::ApplyOutcome;

use super::documents::{read_documents, Document};

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

/// What one `apply` did.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// Names of the jobs applied, in order.
    pub applied: Vec<String>,
    /// Names of applied jobs that take an upload.
    pub upload_jobs: Vec<String>,
    pub failures: usize,
}

/// Applies every document under `paths`. An invalid document is reported with its file,
/// position and field, and the valid ones still apply.
pub async fn apply_paths(client: &ApiClient, paths: &[PathBuf], recursive: bool) -> ApplyReport {
    let mut report = ApplyReport::default();
    for path in paths {
        match read_documents(path, recursive) {
            Ok(documents) if documents.is_empty() => {
                eprintln!("warning: no spec documents in {}", path.display());
            }
            Ok(documents) => {
                for document in documents {
                    apply_document(client, &document, &mut report).await;
                }
            }
            Err(err) => {
                eprintln!("error: {}", super::error_chain(&err));
                report.failures += 1;
            }
        }
    }
    report
}

async fn apply_document(client: &ApiClient, document: &Document, report: &mut ApplyReport) {
    let job = match document.parse() {
        Ok(job) => job,
        Err(err) => {
            print_field_errors(&document.location(), &err.errors);
            report.failures += 1;
            return;
        }
    };

    let name = job.metadata.name.clone();
    match client.apply(&name, document.text.clone()).await {
        Ok(response) => {
            let verb = match response.outcome {
                ApplyOutcome::Created => "created",
                ApplyOutcome::Configured => "configured",
                ApplyOutcome::Unchanged => "unchanged",
            };
            println!("transcodejob/{name} {verb}");
            if job.spec.source.upload {
                report.upload_jobs.push(name.clone());
            }
            report.applied.push(name);
        }
        Err(ClientError::Api {
            message, details, ..
        }) if !details.is_empty() => {
            eprintln!("error: {}: {message}", document.location());
            print_field_errors(&document.location(), &details);
            report.failures += 1;
        }
        Err(err) => {
            eprintln!(
                "error: {}: {}",
                document.location(),
                super::error_chain(&err)
            );
            report.failures += 1;
        }
    }
}

fn print_field_errors(location: &str, errors: &[controller::spec::FieldError]) {
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

/// Jobs that were applied with an upload source but got no file: they wait for one.
pub fn report_waiting_uploads(uploads: &[UploadArg], upload_jobs: &[String]) {
    let given: BTreeSet<String> = match_uploads(uploads, upload_jobs)
        .into_iter()
        .filter_map(|(job, _)| job)
        .collect();
    for job in upload_jobs.iter().filter(|job| !given.contains(*job)) {
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
