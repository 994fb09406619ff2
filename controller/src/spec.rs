//! The `TranscodeJob` resource: its wire format, parsing from YAML or JSON, and validation.
//!
//! Parsing and validation never store anything. A document either becomes a [`TranscodeJob`]
//! whose every field is within its allowed range, or a [`SpecError`] that lists each offending
//! field path with the value's problem and what is allowed.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::status::JobStatus;

pub const API_VERSION: &str = "transcoder/v1";
pub const KIND: &str = "TranscodeJob";

/// MPEG-1 and MPEG-2 layer III bitrates in kbit/s.
pub const MP3_BITRATES_KBPS: [u32; 18] = [
    8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160, 192, 224, 256, 320,
];

/// Sample rates an MP3 stream can carry (MPEG-1, MPEG-2 and MPEG-2.5).
pub const MP3_SAMPLE_RATES_HZ: [u32; 9] =
    [8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000];

/// Fly guest presets a job may ask for.
pub const MACHINE_SIZES: [&str; 9] = [
    "shared-cpu-1x",
    "shared-cpu-2x",
    "shared-cpu-4x",
    "shared-cpu-8x",
    "performance-1x",
    "performance-2x",
    "performance-4x",
    "performance-8x",
    "performance-16x",
];

pub const DEFAULT_BITRATE_KBPS: u32 = 192;
pub const DEFAULT_BACKOFF_LIMIT: u32 = 3;
const MAX_BACKOFF_LIMIT: u32 = 100;

/// A job as users write it and as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TranscodeJob {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: JobSpec,
    /// Written by the controller; ignored when a spec is applied.
    #[serde(default)]
    pub status: JobStatus,
}

/// Identity and labels of a job. Fields other than `name` and `labels` are set by the server.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<DateTime<Utc>>,
    /// Set when deletion was requested; the job goes away once its machines are destroyed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<DateTime<Utc>>,
}

/// What the user wants: the desired state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobSpec {
    pub source: SourceSpec,
    pub output: OutputSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<MachineSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_deadline_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds_after_finished: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
}

impl JobSpec {
    pub fn backoff_limit(&self) -> u32 {
        self.backoff_limit.unwrap_or(DEFAULT_BACKOFF_LIMIT)
    }
}

/// Where the source audio comes from: `url` or `upload: true`, exactly one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub upload: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutputSpec {
    pub codec: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitrate_kbps: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vbr_quality: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_rate_hz: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MachineSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// One problem with one field of a spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldError {
    /// Dotted path of the field, for example `spec.output.bitrateKbps`; `.` for the document.
    pub field: String,
    pub message: String,
}

/// Why a document is not a valid `TranscodeJob`.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecError {
    pub errors: Vec<FieldError>,
}

impl SpecError {
    fn single(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            errors: vec![FieldError {
                field: field.into(),
                message: message.into(),
            }],
        }
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect();
        write!(f, "invalid TranscodeJob: {}", lines.join("; "))
    }
}

impl std::error::Error for SpecError {}

/// Parses one document, YAML or JSON (JSON is chosen when the text starts with `{`), and
/// validates it. The `status` of an applied document is discarded.
pub fn parse(text: &str) -> Result<TranscodeJob, SpecError> {
    let mut job = deserialize(text)?;
    job.status = JobStatus::default();
    validate(&job)?;
    Ok(job)
}

fn deserialize(text: &str) -> Result<TranscodeJob, SpecError> {
    // Editors on Windows often save a byte order mark, which YAML parsers take as content.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(SpecError::single(
            ".",
            "the document is empty; expected a TranscodeJob",
        ));
    }

    if text.trim_start().starts_with('{') {
        let deserializer = &mut serde_json::Deserializer::from_str(text);
        return serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let inner = err.inner();
            let message = format!("{inner}");
            SpecError::single(field_path(err.path()), message)
        });
    }

    let deserializer = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let path = field_path(err.path());
        // serde_yaml already puts the path in front of its message.
        let message = err.inner().to_string();
        let message = message
            .strip_prefix(&format!("{path}: "))
            .unwrap_or(&message)
            .to_owned();
        SpecError::single(path, message)
    })
}

fn field_path(path: &serde_path_to_error::Path) -> String {
    let text = path.to_string();
    if text.is_empty() {
        ".".to_owned()
    } else {
        text
    }
}

/// Checks every field of a parsed job and reports all problems at once.
pub fn validate(job: &TranscodeJob) -> Result<(), SpecError> {
    let mut errors = Vec::new();
    let mut fail = |field: &str, message: String| {
        errors.push(FieldError {
            field: field.to_owned(),
            message,
        });
    };

    if job.api_version != API_VERSION {
        fail(
            "apiVersion",
            format!(
                "invalid value {:?}; expected {API_VERSION:?}",
                job.api_version
            ),
        );
    }
    if job.kind != KIND {
        fail(
            "kind",
            format!("invalid value {:?}; expected {KIND:?}", job.kind),
        );
    }
    if let Err(message) = check_name(&job.metadata.name) {
        fail("metadata.name", message);
    }
    for (key, value) in &job.metadata.labels {
        if let Err(message) = check_label(key, value) {
            fail(&format!("metadata.labels.{key}"), message);
        }
    }

    validate_source(&job.spec.source, &mut fail);
    validate_output(&job.spec.output, &mut fail);
    validate_machine(job.spec.machine.as_ref(), &mut fail);
    validate_policy(&job.spec, &mut fail);

    if errors.is_empty() {
        Ok(())
    } else {
        Err(SpecError { errors })
    }
}

fn validate_source(source: &SourceSpec, fail: &mut impl FnMut(&str, String)) {
    match (&source.url, source.upload) {
        (Some(_), true) => fail(
            "spec.source",
            "set either url or upload: true, not both".into(),
        ),
        (None, false) => fail(
            "spec.source",
            "missing source; set url (s3:// or https://) or upload: true".into(),
        ),
        (Some(url), false) => {
            if let Err(message) = check_source_url(url) {
                fail("spec.source.url", message);
            }
        }
        (None, true) => {}
    }
}

fn validate_output(output: &OutputSpec, fail: &mut impl FnMut(&str, String)) {
    if output.codec != "mp3" {
        fail(
            "spec.output.codec",
            format!("unsupported codec {:?}; allowed: \"mp3\"", output.codec),
        );
    }

    if output.bitrate_kbps.is_some() && output.vbr_quality.is_some() {
        fail(
            "spec.output",
            "set either bitrateKbps (CBR) or vbrQuality (VBR), not both".into(),
        );
    }
    if let Some(bitrate) = output.bitrate_kbps {
        if !MP3_BITRATES_KBPS.contains(&bitrate) {
            fail(
                "spec.output.bitrateKbps",
                format!("invalid bitrate {bitrate}; allowed: {MP3_BITRATES_KBPS:?}"),
            );
        } else if let Some(cap) = output.sample_rate_hz.and_then(max_bitrate_for_rate) {
            if bitrate > cap {
                let rate = output.sample_rate_hz.unwrap_or_default();
                fail(
                    "spec.output.bitrateKbps",
                    format!("bitrate {bitrate} is not possible at sampleRateHz {rate}; the maximum there is {cap}"),
                );
            }
        }
    }
    if let Some(quality) = output.vbr_quality {
        if quality > 9 {
            fail(
                "spec.output.vbrQuality",
                format!("invalid quality {quality}; allowed: 0 (best) to 9"),
            );
        }
    }
    if let Some(rate) = output.sample_rate_hz {
        if !MP3_SAMPLE_RATES_HZ.contains(&rate) {
            fail(
                "spec.output.sampleRateHz",
                format!("invalid sample rate {rate}; allowed: {MP3_SAMPLE_RATES_HZ:?}"),
            );
        }
    }
    if let Some(channels) = output.channels {
        if !(1..=2).contains(&channels) {
            fail(
                "spec.output.channels",
                format!("invalid channel count {channels}; allowed: 1 or 2"),
            );
        }
    }
    if let Some(url) = &output.url {
        if let Err(message) = crate::objectstore::ObjectUrl::parse(url) {
            fail("spec.output.url", message);
        }
    }
}

/// The highest bitrate LAME encodes at a sample rate: MPEG-2 (16 to 24 kHz) stops at 160 kbit/s
/// and LAME uses at most 64 kbit/s for MPEG-2.5 (8 to 12 kHz).
pub fn max_bitrate_for_rate(rate: u32) -> Option<u32> {
    match rate {
        8000 | 11025 | 12000 => Some(64),
        16000 | 22050 | 24000 => Some(160),
        _ => None,
    }
}

fn validate_machine(machine: Option<&MachineSpec>, fail: &mut impl FnMut(&str, String)) {
    let Some(machine) = machine else { return };
    if let Some(size) = &machine.size {
        if !MACHINE_SIZES.contains(&size.as_str()) {
            fail(
                "spec.machine.size",
                format!(
                    "unknown machine size {size:?}; allowed: {}",
                    MACHINE_SIZES.join(", ")
                ),
            );
        }
    }
    if let Some(region) = &machine.region {
        let valid = region.len() == 3 && region.bytes().all(|b| b.is_ascii_lowercase());
        if !valid {
            fail(
                "spec.machine.region",
                format!("invalid region {region:?}; expected a Fly region code such as \"ord\""),
            );
        }
    }
}

fn validate_policy(spec: &JobSpec, fail: &mut impl FnMut(&str, String)) {
    if let Some(limit) = spec.backoff_limit {
        if limit > MAX_BACKOFF_LIMIT {
            fail(
                "spec.backoffLimit",
                format!("invalid value {limit}; allowed: 0 to {MAX_BACKOFF_LIMIT}"),
            );
        }
    }
    if spec.active_deadline_seconds == Some(0) {
        fail(
            "spec.activeDeadlineSeconds",
            "invalid value 0; allowed: at least 1 second".into(),
        );
    }
}

/// Checks an RFC 1123 label: lowercase letters, digits and '-', starting and ending with an
/// alphanumeric character, at most 63 characters.
pub fn check_name(name: &str) -> Result<(), String> {
    let valid_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let valid_ends = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if name.is_empty() || name.len() > 63 || !valid_chars || !valid_ends {
        return Err(format!(
            "invalid name {name:?}; expected an RFC 1123 label: 1 to 63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

fn check_label(key: &str, value: &str) -> Result<(), String> {
    let token = |s: &str| {
        s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && (s.is_empty()
                || (s.starts_with(|c: char| c.is_ascii_alphanumeric())
                    && s.ends_with(|c: char| c.is_ascii_alphanumeric())))
    };
    if key.is_empty() || !token(key) {
        return Err(format!("invalid label key {key:?}; expected 1 to 63 characters of letters, digits, '-', '_' and '.'"));
    }
    if !token(value) {
        return Err(format!("invalid label value {value:?}; expected at most 63 characters of letters, digits, '-', '_' and '.'"));
    }
    Ok(())
}

fn check_source_url(url: &str) -> Result<(), String> {
    if url.starts_with("s3://") {
        return crate::objectstore::ObjectUrl::parse(url).map(|_| ());
    }

    let parsed = url::Url::parse(url).map_err(|err| {
        format!("invalid URL {url:?}: {err}; expected s3://BUCKET/KEY or https://...")
    })?;
    if parsed.scheme() != "https" {
        return Err(format!(
            "unsupported URL scheme {:?} in {url:?}; allowed: s3, https",
            parsed.scheme()
        ));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!(
            "invalid URL {url:?}: credentials in the URL are not allowed"
        ));
    }
    match parsed.host() {
        None => Err(format!("invalid URL {url:?}: missing host")),
        Some(url::Host::Domain(domain)) if is_internal_name(domain) => Err(format!(
            "invalid URL {url:?}: {domain} is an internal host; sources must be public https URLs or s3:// objects"
        )),
        Some(url::Host::Ipv4(ip)) if !is_public_ipv4(ip) => Err(format!(
            "invalid URL {url:?}: {ip} is not a public address; sources must be public https URLs or s3:// objects"
        )),
        Some(url::Host::Ipv6(ip)) if !is_public_ipv6(ip) => Err(format!(
            "invalid URL {url:?}: {ip} is not a public address; sources must be public https URLs or s3:// objects"
        )),
        Some(_) => Ok(()),
    }
}

/// Host names that only resolve inside a machine or a private network.
// NOTE: a public name can still resolve to a private address; the check covers the host as
// the spec writes it, not what DNS returns.
fn is_internal_name(domain: &str) -> bool {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    domain == "localhost"
        || [".localhost", ".internal", ".local", ".flycast"]
            .iter()
            .any(|suffix| domain.ends_with(suffix))
}

fn is_public_ipv4(ip: std::net::Ipv4Addr) -> bool {
    let shared = ip.octets()[0] == 100 && (64..128).contains(&ip.octets()[1]);
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_documentation()
        || shared)
}

fn is_public_ipv6(ip: std::net::Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_ipv4(v4);
    }
    let first = ip.segments()[0];
    let unique_local = (first & 0xfe00) == 0xfc00;
    let link_local = (first & 0xffc0) == 0xfe80;
    !(ip.is_loopback() || ip.is_unspecified() || unique_local || link_local)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
apiVersion: transcoder/v1
kind: TranscodeJob
metadata:
  name: weekly-42
  labels: {show: weekly}
spec:
  source:
    url: s3://media/in/42.wav
  output:
    codec: mp3
    bitrateKbps: 192
"#;

    fn fields(err: &SpecError) -> Vec<&str> {
        err.errors.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn valid_yaml_parses() {
        let job = parse(VALID).expect("valid spec");

        assert_eq!(job.metadata.name, "weekly-42");
        assert_eq!(job.spec.output.bitrate_kbps, Some(192));
        assert_eq!(job.spec.backoff_limit(), DEFAULT_BACKOFF_LIMIT);
    }

    #[test]
    fn json_document_parses() {
        let json = r#"{"apiVersion":"transcoder/v1","kind":"TranscodeJob","metadata":{"name":"a"},
            "spec":{"source":{"upload":true},"output":{"codec":"mp3","vbrQuality":2}}}"#;

        let job = parse(json).expect("valid spec");

        assert!(job.spec.source.upload);
        assert_eq!(job.spec.output.vbr_quality, Some(2));
    }

    #[test]
    fn unknown_field_names_its_path() {
        let text = VALID.replace("bitrateKbps: 192", "bitrateKbps: 192\n    bitrate: 1");

        let err = parse(&text).expect_err("unknown field");

        assert_eq!(fields(&err), ["spec.output.bitrate"]);
        assert!(
            err.errors[0].message.contains("unknown field `bitrate`"),
            "{err}"
        );
        assert!(err.errors[0].message.contains("bitrateKbps"), "{err}");
    }

    #[test]
    fn unknown_json_field_names_its_path() {
        let json = r#"{"apiVersion":"transcoder/v1","kind":"TranscodeJob","metadata":{"name":"a","colour":1},
            "spec":{"source":{"upload":true},"output":{"codec":"mp3"}}}"#;

        let err = parse(json).expect_err("unknown field");

        assert_eq!(fields(&err), ["metadata.colour"]);
        assert!(err.errors[0].message.contains("colour"), "{err}");
    }

    #[test]
    fn impossible_bitrate_lists_allowed_values() {
        let err = parse(&VALID.replace("192", "100")).expect_err("bad bitrate");

        assert_eq!(fields(&err), ["spec.output.bitrateKbps"]);
        assert!(err.errors[0].message.contains("100"), "{err}");
        assert!(err.errors[0].message.contains("320"), "{err}");
    }

    #[test]
    fn bitrate_above_mpeg2_cap_is_rejected() {
        let text = VALID.replace(
            "bitrateKbps: 192",
            "bitrateKbps: 320\n    sampleRateHz: 22050",
        );

        let err = parse(&text).expect_err("bitrate above cap");

        assert_eq!(fields(&err), ["spec.output.bitrateKbps"]);
        assert!(err.errors[0].message.contains("160"), "{err}");
    }

    #[test]
    fn bad_name_is_rejected() {
        for name in ["Weekly", "-a", "a-", "a_b", "", &"a".repeat(64)] {
            let text = VALID.replace("name: weekly-42", &format!("name: \"{name}\""));

            let err = parse(&text).expect_err(name);

            assert_eq!(fields(&err), ["metadata.name"], "name {name:?}");
        }
    }

    #[test]
    fn several_problems_are_reported_together() {
        let text = VALID
            .replace("name: weekly-42", "name: Bad_Name")
            .replace("bitrateKbps: 192", "bitrateKbps: 192\n    channels: 6");

        let err = parse(&text).expect_err("two problems");

        assert_eq!(fields(&err), ["metadata.name", "spec.output.channels"]);
    }

    #[test]
    fn source_needs_exactly_one_kind() {
        let both = VALID.replace(
            "url: s3://media/in/42.wav",
            "url: s3://media/in/42.wav\n    upload: true",
        );
        let neither = VALID.replace("url: s3://media/in/42.wav", "upload: false");

        assert_eq!(fields(&parse(&both).expect_err("both")), ["spec.source"]);
        assert_eq!(
            fields(&parse(&neither).expect_err("neither")),
            ["spec.source"]
        );
    }

    #[test]
    fn source_url_scheme_is_checked() {
        for url in [
            "https://169.254.169.254/latest/meta-data",
            "https://127.0.0.1:1/a.wav",
            "https://localhost/a.wav",
            "https://[::1]/a.wav",
            "https://[fd00::1]/a.wav",
            "https://user:pass@example.com/a.wav",
            "https://api.internal/a.wav",
            "https://10.0.0.1/a.wav",
            "http://example.com/a.wav",
            "file:///etc/passwd",
            "s3://media/../other/a.wav",
            "s3://Bad_Bucket/a",
        ] {
            let text = VALID.replace("s3://media/in/42.wav", url);

            let err = parse(&text).expect_err(url);

            assert_eq!(fields(&err), ["spec.source.url"], "url {url}");
        }
    }

    #[test]
    fn applied_status_is_discarded() {
        let text = format!("{VALID}status:\n  phase: Succeeded\n");

        let job = parse(&text).expect("valid spec");

        assert_eq!(job.status, JobStatus::default());
    }

    #[test]
    fn empty_document_is_rejected() {
        let err = parse("  \n").expect_err("empty");

        assert_eq!(fields(&err), ["."]);
    }

    #[test]
    fn byte_order_mark_is_ignored() {
        let job = parse(&format!("\u{feff}{VALID}")).expect("valid spec after a BOM");

        assert_eq!(job.metadata.name, "weekly-42");
    }

    #[test]
    fn public_https_source_is_accepted() {
        let text = VALID.replace("s3://media/in/42.wav", "https://cdn.example.com/in/42.wav");

        let job = parse(&text).expect("public https source");

        assert_eq!(
            job.spec.source.url.as_deref(),
            Some("https://cdn.example.com/in/42.wav")
        );
    }

    #[test]
    fn type_error_names_the_field_once() {
        let text = VALID.replace("bitrateKbps: 192", "bitrateKbps: fast");

        let err = parse(&text).expect_err("type error");

        assert_eq!(fields(&err), ["spec.output.bitrateKbps"]);
        assert!(!err.errors[0].message.starts_with("spec.output"), "{err}");
    }
}
