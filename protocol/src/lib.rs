//! Wire types shared by the controller and the worker that runs on each machine.
//!
//! The controller starts a machine with the environment variables named here. The worker reads
//! its [`Assignment`] from the controller, does the work, and reports [`Callback`]s. Both sides
//! serialize these types as JSON with camelCase field names.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Environment variable with the controller's base URL, for example `http://127.0.0.1:8080`.
pub const ENV_API_URL: &str = "TRANSCODER_API_URL";
/// Environment variable with the job name the machine works for.
pub const ENV_JOB: &str = "TRANSCODER_JOB";
/// Environment variable with the attempt number the machine runs.
pub const ENV_ATTEMPT: &str = "TRANSCODER_ATTEMPT";
/// Environment variable with the per-attempt bearer token for the worker endpoints.
pub const ENV_TOKEN: &str = "TRANSCODER_TOKEN";

/// Worker exit code: the output is uploaded and reported.
pub const EXIT_SUCCEEDED: i32 = 0;
/// Worker exit code: a transient failure (network, storage 5xx); another attempt may succeed.
pub const EXIT_RETRYABLE: i32 = 1;
/// Worker exit code: bad command-line usage.
pub const EXIT_USAGE: i32 = 2;
/// Worker exit code: a permanent failure (not audio, unsupported codec, impossible format).
pub const EXIT_PERMANENT: i32 = 3;

/// What one attempt must do, returned by `GET /v1/jobs/{name}/assignment`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    /// Job name.
    pub job: String,
    /// Attempt number, starting at 1.
    pub attempt: u32,
    /// Presigned GET of the source audio.
    pub source: PresignedRequest,
    /// Presigned PUT of the output MP3.
    pub output: PresignedRequest,
    /// The MP3 to produce.
    pub format: OutputFormat,
}

/// A presigned HTTP request: send exactly `method` to `url` with exactly `headers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresignedRequest {
    pub url: String,
    pub method: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// The requested MP3 encoding. `None` fields take the worker's defaults: the source rate when
/// MP3 allows it (else the nearest allowed rate), and at most two channels.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputFormat {
    /// Constant bitrate in kbit/s; exclusive with `vbr_quality`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitrate_kbps: Option<u32>,
    /// LAME VBR quality, 0 (best) to 9; exclusive with `bitrate_kbps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vbr_quality: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_rate_hz: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<u8>,
}

/// A report from the worker, sent to `POST /v1/jobs/{name}/callbacks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Callback {
    /// Work in progress; `fraction` runs from 0 to 1.
    Progress { fraction: f64 },
    /// The output is uploaded.
    Succeeded(TranscodeResult),
    /// The attempt failed.
    #[serde(rename_all = "camelCase")]
    Failed {
        /// A short machine-readable reason in UpperCamelCase, for example `UnsupportedCodec`.
        reason: String,
        /// A sentence for people.
        message: String,
        /// True when retrying the same input cannot succeed.
        permanent: bool,
    },
}

/// What the worker produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TranscodeResult {
    /// Size of the MP3 in bytes.
    pub bytes: u64,
    /// Duration of the encoded audio in seconds.
    pub duration_seconds: f64,
    /// Hex SHA-256 of the MP3.
    pub sha256: String,
    /// Effective output sample rate.
    pub sample_rate_hz: u32,
    /// Effective output channel count.
    pub channels: u8,
    /// Effective constant bitrate, when CBR was used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitrate_kbps: Option<u32>,
    /// Effective VBR quality, when VBR was used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vbr_quality: Option<u8>,
    /// Adjustments made to the request, for example a bitrate lowered to the MPEG version's cap.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_callback_uses_tagged_camel_case() {
        let callback = Callback::Failed {
            reason: "NotAudio".into(),
            message: "input is not audio".into(),
            permanent: true,
        };

        let json = serde_json::to_value(&callback).expect("serialize");

        assert_eq!(json["type"], "failed");
        assert_eq!(json["reason"], "NotAudio");
        assert_eq!(json["permanent"], true);
    }

    #[test]
    fn succeeded_callback_round_trips() {
        let callback = Callback::Succeeded(TranscodeResult {
            bytes: 10,
            duration_seconds: 1.5,
            sha256: "ab".into(),
            sample_rate_hz: 44100,
            channels: 2,
            bitrate_kbps: Some(192),
            vbr_quality: None,
            notes: vec![],
        });

        let json = serde_json::to_string(&callback).expect("serialize");
        let back: Callback = serde_json::from_str(&json).expect("deserialize");

        assert!(json.contains("\"durationSeconds\":1.5"), "{json}");
        assert_eq!(back, callback);
    }
}
