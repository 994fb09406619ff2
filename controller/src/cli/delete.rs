//! `transcoder delete`: deletes jobs by name or by the spec files that define them.

use std::path::PathBuf;

use controller::client::{ApiClient, ClientError};
use controller::documents::read_documents;

/// Requests deletion of each named job and of each job defined under `paths`. Returns the
/// exit code: 0 when every deletion was accepted, 1 otherwise.
pub async fn run(client: &ApiClient, names: &[String], paths: &[PathBuf], recursive: bool) -> i32 {
    let mut failures = 0;
    let mut targets: Vec<String> = names.to_vec();
    for path in paths {
        match read_documents(path, recursive) {
            Ok(documents) => {
                for document in documents {
                    // An invalid document still names the job it would have made.
                    let name = document
                        .parse()
                        .map(|job| job.metadata.name)
                        .ok()
                        .or_else(|| document.name_hint());
                    match name {
                        Some(name) if !targets.contains(&name) => targets.push(name),
                        Some(_) => {}
                        None => {
                            eprintln!(
                                "error: {}: metadata.name: missing; cannot tell which job to delete",
                                document.location()
                            );
                            failures += 1;
                        }
                    }
                }
            }
            Err(err) => {
                eprintln!("error: {}", super::error_chain(&err));
                failures += 1;
            }
        }
    }

    for name in &targets {
        match client.delete(name).await {
            Ok(()) => println!("transcodejob/{name} deleted"),
            Err(ClientError::Api { status: 404, .. }) => {
                eprintln!("error: job {name:?} not found");
                failures += 1;
            }
            Err(err) => {
                eprintln!(
                    "error: failed to delete job {name}: {}",
                    super::error_chain(&err)
                );
                failures += 1;
            }
        }
    }
    i32::from(failures > 0)
}
