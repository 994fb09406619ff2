//! Failure reports of an attempt: a machine-readable reason, a sentence for people, and
//! whether another attempt could succeed, which also picks the process exit code.

use std::error::Error;
use std::io;

use protocol::{Callback, EXIT_PERMANENT, EXIT_RETRYABLE};

use crate::decode::DecodeError;
use crate::mp3_writer::Mp3WriteError;
use crate::retry::HttpError;
use crate::source::InputError;
use crate::transcode::TranscodeError;
use crate::wav_header::WavHeaderError;

/// A classified failure.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// UpperCamelCase reason, for example `NotAudio`.
    pub reason: &'static str,
    pub message: String,
    /// True when retrying the same input cannot succeed.
    pub permanent: bool,
}

impl Failure {
    pub fn permanent(reason: &'static str, err: &dyn Error) -> Self {
        Self {
            reason,
            message: error_chain(err),
            permanent: true,
        }
    }

    pub fn retryable(reason: &'static str, err: &dyn Error) -> Self {
        Self {
            reason,
            message: error_chain(err),
            permanent: false,
        }
    }

    /// Returns the process exit code for this failure.
    pub fn exit_code(&self) -> i32 {
        if self.permanent {
            EXIT_PERMANENT
        } else {
            EXIT_RETRYABLE
        }
    }

    pub fn callback(&self) -> Callback {
        Callback::Failed {
            reason: self.reason.to_string(),
            message: self.message.clone(),
            permanent: self.permanent,
        }
    }
}

/// Classifies a transcode failure. Read errors of the input count as transient, because in job
/// mode the input is a download; everything the input's content causes is permanent.
pub fn classify_transcode(err: &TranscodeError) -> Failure {
    match err {
        TranscodeError::Input(input) => classify_input(input, err),
        TranscodeError::Decode(decode) => classify_decode(decode, err),
        TranscodeError::NoAudio(_) => Failure::permanent("NoAudio", err),
        TranscodeError::Format(_) => Failure::permanent("ImpossibleFormat", err),
        TranscodeError::Resample(_) => Failure::permanent("ResampleFailed", err),
        TranscodeError::Encode(Mp3WriteError::Configure { .. }) => {
            Failure::permanent("ImpossibleFormat", err)
        }
        TranscodeError::Encode(Mp3WriteError::Write(_)) | TranscodeError::Hash(_) => {
            Failure::retryable("OutputWriteFailed", err)
        }
        TranscodeError::Encode(_) | TranscodeError::EncoderPanicked => {
            Failure::retryable("EncoderFailed", err)
        }
    }
}

fn classify_input(input: &InputError, err: &TranscodeError) -> Failure {
    match input {
        InputError::Empty => Failure::permanent("EmptyInput", err),
        InputError::Read(_) | InputError::Spool(_) => Failure::retryable("SourceReadFailed", err),
        InputError::WavHeader(WavHeaderError::Read(_) | WavHeaderError::Spool(_)) => {
            Failure::retryable("SourceReadFailed", err)
        }
        InputError::WavHeader(WavHeaderError::Truncated { .. } | WavHeaderError::MissingData) => {
            Failure::permanent("TruncatedInput", err)
        }
        InputError::WavHeader(header) if header.is_unsupported() => {
            Failure::permanent("UnsupportedCodec", err)
        }
        InputError::WavHeader(_) => Failure::permanent("MalformedInput", err),
    }
}

fn classify_decode(decode: &DecodeError, err: &TranscodeError) -> Failure {
    if let Some(io_err) = decode.io_error() {
        return match io_err.kind() {
            io::ErrorKind::UnexpectedEof => Failure::permanent("TruncatedInput", err),
            _ => Failure::retryable("SourceReadFailed", err),
        };
    }
    match decode {
        DecodeError::UnknownFormat(_) | DecodeError::NoAudioTrack => {
            Failure::permanent("NotAudio", err)
        }
        DecodeError::UnsupportedCodec(_) | DecodeError::CreateDecoder { .. } => {
            Failure::permanent("UnsupportedCodec", err)
        }
        _ => Failure::permanent("MalformedInput", err),
    }
}

/// Classifies a failed HTTP exchange with storage or the controller as transient: a
/// client error such as 403 usually means an expired presigned URL or token, and the next
/// attempt gets fresh ones. Only a missing source object is final.
pub fn classify_http(reason: &'static str, err: &HttpError) -> Failure {
    match err.status() {
        Some(404 | 410) if reason == SOURCE_UNAVAILABLE => {
            Failure::permanent("SourceNotFound", err)
        }
        _ => Failure::retryable(reason, err),
    }
}

/// Reason for a source download that failed or broke off.
pub const SOURCE_UNAVAILABLE: &str = "SourceUnavailable";

/// Formats the error and its causes, joined with ": ".
pub fn error_chain(err: &dyn Error) -> String {
    let mut message = err.to_string();
    let mut cause = err.source();
    while let Some(inner) = cause {
        let text = inner.to_string();
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        cause = inner.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_input_is_permanent_with_exit_code_3() {
        let failure = classify_transcode(&TranscodeError::Input(InputError::Empty));

        assert_eq!(failure.reason, "EmptyInput");
        assert!(failure.permanent);
        assert_eq!(failure.exit_code(), EXIT_PERMANENT);
        assert_eq!(
            failure.message,
            "failed to open the input: the input is empty (0 bytes)"
        );
    }

    #[test]
    fn http_failure_permanent_only_for_missing_source() {
        let status = |status| HttpError::Status {
            method: "GET",
            url: "http://storage/key".into(),
            status,
            body: String::new(),
        };

        assert!(classify_http(SOURCE_UNAVAILABLE, &status(404)).permanent);
        assert!(!classify_http(SOURCE_UNAVAILABLE, &status(403)).permanent);
        assert!(!classify_http("UploadFailed", &status(404)).permanent);
        assert!(!classify_http("AssignmentUnavailable", &status(401)).permanent);
    }

    #[test]
    fn interrupted_read_is_retryable() {
        let err = TranscodeError::Input(InputError::Read(io::Error::other("connection reset")));

        let failure = classify_transcode(&err);

        assert!(!failure.permanent);
        assert_eq!(failure.exit_code(), EXIT_RETRYABLE);
    }
}
