//! Spec files on disk: finding them, splitting multi-document YAML, and validating each
//! document before anything is sent.

use std::path::{Path, PathBuf};

use crate::spec::{self, SpecError, TranscodeJob};

/// One document from one file.
#[derive(Debug, Clone)]
pub struct Document {
    pub path: PathBuf,
    /// 1-based position of the document in its file.
    pub index: usize,
    /// 1-based line where the document starts.
    pub line: usize,
    pub text: String,
}

impl Document {
    /// Where the document is, for messages: `specs/a.yaml (document 2, line 14)`.
    pub fn location(&self) -> String {
        format!(
            "{} (document {}, line {})",
            self.path.display(),
            self.index,
            self.line
        )
    }

    pub fn parse(&self) -> Result<TranscodeJob, SpecError> {
        spec::parse(&self.text)
    }

    /// The `metadata.name` of a document that may be invalid, when its YAML or JSON is
    /// readable and the name is a string.
    pub fn name_hint(&self) -> Option<String> {
        let value: serde_yaml::Value = serde_yaml::from_str(&self.text).ok()?;
        let name = value.get("metadata")?.get("name")?.as_str()?;
        Some(name.to_owned())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("failed to read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a spec file; expected .yaml, .yml or .json", path.display())]
    NotSpec { path: PathBuf },
}

/// Reads the documents of `path`: a file, or the `.yaml`, `.yml` and `.json` files of a
/// directory (with `recursive`, of its subdirectories too), in name order. The first file that
/// cannot be read stops the reading.
pub fn read_documents(path: &Path, recursive: bool) -> Result<Vec<Document>, DocumentError> {
    let mut documents = Vec::new();
    for file in spec_files(path, recursive)? {
        documents.extend(read_file(&file)?);
    }
    Ok(documents)
}

/// The spec files at `path`: the file itself, or the spec files of a directory in name order.
/// Entries whose names start with `.` (such as `.git`) are skipped.
pub fn spec_files(path: &Path, recursive: bool) -> Result<Vec<PathBuf>, DocumentError> {
    let metadata = std::fs::metadata(path).map_err(|source| DocumentError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if metadata.is_file() {
        if !is_spec_file(path) && path.extension().is_some() {
            return Err(DocumentError::NotSpec {
                path: path.to_path_buf(),
            });
        }
        return Ok(vec![path.to_path_buf()]);
    }

    let mut files = Vec::new();
    collect_files(path, recursive, &mut files)?;
    files.sort();
    Ok(files)
}

/// Reads one file and splits it into documents.
pub fn read_file(path: &Path) -> Result<Vec<Document>, DocumentError> {
    let text = std::fs::read_to_string(path).map_err(|source| DocumentError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(split(path, &text))
}

fn collect_files(
    dir: &Path,
    recursive: bool,
    files: &mut Vec<PathBuf>,
) -> Result<(), DocumentError> {
    let read_error = |source| DocumentError::Read {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        let entry = entry.map_err(read_error)?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let is_link = entry.file_type().map_err(read_error)?.is_symlink();
        // Symbolic links to directories are not followed, so a link loop cannot recurse, and a
        // dangling link is skipped rather than failing the whole directory.
        if is_link && (path.is_dir() || !path.exists()) {
            tracing::warn!(path = %path.display(), "skipping a symbolic link to a directory or to nothing");
            continue;
        }
        if path.is_dir() {
            if recursive {
                collect_files(&path, recursive, files)?;
            }
        } else if is_spec_file(&path) {
            files.push(path);
        }
    }
    Ok(())
}

/// `.yaml`, `.yml` and `.json` files, except JSON Schemas (`*.schema.json`) such as the
/// spec's own schema beside the examples.
fn is_spec_file(path: &Path) -> bool {
    let name = path
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or_default();
    let extension = path.extension().and_then(|e| e.to_str());
    matches!(extension, Some("yaml" | "yml" | "json")) && !name.ends_with(".schema.json")
}

/// Splits a file into documents at YAML `---` separators, keeping each document's text
/// unchanged so that error positions stay meaningful. Documents with nothing but comments
/// and blank lines are dropped.
pub fn split(path: &Path, text: &str) -> Vec<Document> {
    let mut documents = Vec::new();
    let mut current = String::new();
    let mut start_line = 1;

    for (number, line) in text.lines().enumerate() {
        let is_separator = line == "---" || line.starts_with("--- ") || line == "...";
        if is_separator {
            push_document(
                &mut documents,
                path,
                start_line,
                std::mem::take(&mut current),
            );
            start_line = number + 2;
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    push_document(&mut documents, path, start_line, current);
    documents
}

fn push_document(documents: &mut Vec<Document>, path: &Path, line: usize, text: String) {
    let has_content = text.lines().any(|line| {
        let trimmed = line.trim();
        !trimmed.is_empty() && !trimmed.starts_with('#')
    });
    if has_content {
        documents.push(Document {
            path: path.to_path_buf(),
            index: documents.len() + 1,
            line,
            text,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_document_positions() {
        let text = "# header\n---\na: 1\n---\n# only a comment\n---\nb: 2\nc: 3\n";

        let documents = split(Path::new("x.yaml"), text);

        assert_eq!(documents.len(), 2);
        assert_eq!(
            (
                documents[0].index,
                documents[0].line,
                documents[0].text.as_str()
            ),
            (1, 3, "a: 1\n")
        );
        assert_eq!(
            (
                documents[1].index,
                documents[1].line,
                documents[1].text.as_str()
            ),
            (2, 7, "b: 2\nc: 3\n")
        );
    }

    #[test]
    fn single_json_document_is_one_document() {
        let documents = split(Path::new("x.json"), "{\"a\": 1}\n");

        assert_eq!(documents.len(), 1);
        assert_eq!(documents[0].line, 1);
    }

    #[test]
    fn name_hint_reads_the_name_of_an_invalid_document() {
        let documents = split(
            Path::new("x.yaml"),
            "metadata: {name: broken}\nspec: {output: {bitrateKbps: 100}}\n---\n: : :\n",
        );

        assert_eq!(documents[0].name_hint().as_deref(), Some("broken"));
        assert_eq!(documents[1].name_hint(), None);
    }

    #[test]
    fn hidden_directories_and_schemas_are_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join(".git")).expect("mkdir");
        std::fs::write(dir.path().join(".git/config.yaml"), "a: 1\n").expect("write");
        std::fs::write(dir.path().join("job.yaml"), "a: 1\n").expect("write");
        std::fs::write(dir.path().join("job.schema.json"), "{}\n").expect("write");

        let files = spec_files(dir.path(), true).expect("files");

        assert_eq!(files, [dir.path().join("job.yaml")]);
    }
}
