//! `SourceLocator`: where a job's source and output live in the object store.
//!
//! Keys for uploads and default outputs are made here from the job's validated name and uid,
//! never from other user input.

use crate::objectstore::ObjectUrl;
use crate::store::StoredJob;

#[derive(Debug, Clone)]
pub struct SourceLocator {
    default_bucket: String,
}

impl SourceLocator {
    pub fn new(default_bucket: &str) -> Self {
        Self {
            default_bucket: default_bucket.to_owned(),
        }
    }

    /// Returns the object that contains the job's source, or `None` for an https source.
    pub fn stored_source(&self, job: &StoredJob) -> Option<ObjectUrl> {
        if job.job.spec.source.upload {
            return Some(self.upload_object(job));
        }
        let url = job.job.spec.source.url.as_deref()?;
        ObjectUrl::parse(url).ok()
    }

    /// Where an `upload: true` source is put. The uid keeps a re-created job with the same name
    /// from picking up an older upload.
    pub fn upload_object(&self, job: &StoredJob) -> ObjectUrl {
        ObjectUrl::new(
            &self.default_bucket,
            &format!("uploads/{}/{}/source", job.name(), job.uid()),
        )
    }

    /// Where the job's MP3 goes: `spec.output.url`, else `outputs/NAME.mp3` in the default bucket.
    pub fn output_object(&self, job: &StoredJob) -> ObjectUrl {
        let explicit = job
            .job
            .spec
            .output
            .url
            .as_deref()
            .and_then(|url| ObjectUrl::parse(url).ok());
        explicit.unwrap_or_else(|| {
            ObjectUrl::new(&self.default_bucket, &format!("outputs/{}.mp3", job.name()))
        })
    }
}
