//! Request and response bodies of the Fly Machines REST API, in its snake_case JSON shapes.
//!
//! Optional fields are `Option` and left out of the JSON when unset, and fields that this crate
//! does not model are ignored when reading, so a newer API version still decodes.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A Fly Machine as returned by create, get and list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// Machine id: 14 lowercase hex characters on Fly.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub state: MachineState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Id of the current version of the machine; it changes when the config is replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<MachineConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_ref: Option<ImageRef>,
    /// RFC 3339 timestamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// RFC 3339 timestamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    /// Lifecycle events, newest first as Fly sends them.
    #[serde(default, deserialize_with = "null_as_default")]
    pub events: Vec<MachineEvent>,
}

impl Machine {
    /// Returns the exit of the most recent `exit` event, if the machine's process has exited.
    ///
    /// The event with the highest timestamp wins, so the order of `events` does not matter.
    pub fn exit_event(&self) -> Option<ExitEvent> {
        // `rev` makes the first listed (newest) event win a timestamp tie.
        self.events
            .iter()
            .rev()
            .filter(|event| event.kind == "exit")
            .filter_map(|event| event.exit_event().map(|exit| (event.timestamp, exit)))
            .max_by_key(|(timestamp, _)| timestamp.unwrap_or(i64::MIN))
            .map(|(_, exit)| exit)
    }

    /// Returns `config.metadata`, or an empty map when the machine has none.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.config
            .as_ref()
            .and_then(|config| config.metadata.as_ref())
            .unwrap_or(&EMPTY)
    }
}

/// Machine lifecycle state.
///
/// States this crate does not know decode as [`MachineState::Unknown`] rather than failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MachineState {
    Created,
    Starting,
    Started,
    Stopping,
    Stopped,
    Suspending,
    Suspended,
    Replacing,
    Replaced,
    Destroying,
    Destroyed,
    Failed,
    #[serde(other)]
    Unknown,
}

impl MachineState {
    /// Returns the name Fly uses for this state.
    pub fn as_str(self) -> &'static str {
        match self {
            MachineState::Created => "created",
            MachineState::Starting => "starting",
            MachineState::Started => "started",
            MachineState::Stopping => "stopping",
            MachineState::Stopped => "stopped",
            MachineState::Suspending => "suspending",
            MachineState::Suspended => "suspended",
            MachineState::Replacing => "replacing",
            MachineState::Replaced => "replaced",
            MachineState::Destroying => "destroying",
            MachineState::Destroyed => "destroyed",
            MachineState::Failed => "failed",
            MachineState::Unknown => "unknown",
        }
    }
}

impl fmt::Display for MachineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Body of `POST /apps/{app}/machines`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateMachineRequest {
    pub config: MachineConfig,
    /// Unique name; Fly generates one when it is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_launch: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_service_registration: Option<bool>,
    /// Lease time to live in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ttl: Option<u64>,
}

/// The `fly.MachineConfig` object: what a machine runs and how.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MachineConfig {
    /// Container image reference; required on create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<MachineInit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<MachineGuest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<MachineRestart>,
    /// Destroy the machine once its process exits and the restart policy lets it stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_destroy: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_config: Option<StopConfig>,
    /// Run schedule: `hourly`, `daily`, `weekly` or `monthly`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
}

/// The `fly.MachineInit` object: the command that overrides the image's entrypoint and cmd.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MachineInit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_size_mb: Option<u32>,
}

/// The `fly.MachineGuest` object: CPU and memory size.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MachineGuest {
    /// `shared` or `performance`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
}

/// The `fly.MachineRestart` object: whether the machine restarts after its process exits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MachineRestart {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<RestartPolicy>,
    /// Restart attempts allowed under the `on-failure` policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

/// Restart policy values of `fly.MachineRestart.policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    #[serde(rename = "no")]
    No,
    #[serde(rename = "always")]
    Always,
    #[serde(rename = "on-failure")]
    OnFailure,
    /// Fly returns an empty string when no policy was set; unknown values land here too.
    #[serde(rename = "", other)]
    Unspecified,
}

/// The `fly.StopConfig` object: how a stop request ends the machine's process.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StopConfig {
    /// Signal name such as `SIGTERM` or `SIGINT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// Time between the signal and SIGKILL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<FlyDuration>,
}

/// Body of `POST .../machines/{id}/stop`; both fields fall back to the machine's `stop_config`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StopRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<FlyDuration>,
}

/// The `ImageRef` object: the resolved image of a machine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// One entry of `Machine.events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineEvent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Event type such as `launch`, `start`, `exit`, `stop` or `destroy`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Machine state the event led to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// `user` for requested actions, `flyd` for the host's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
    /// Free-form details; an `exit` event carries `{"exit_event": {...}}` here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<serde_json::Value>,
}

impl MachineEvent {
    /// Decodes `request.exit_event`, if present and well-formed.
    pub fn exit_event(&self) -> Option<ExitEvent> {
        let exit = self.request.as_ref()?.get("exit_event")?;
        serde_json::from_value(exit.clone()).ok()
    }
}

/// Exit details of a machine's process, as reported in an `exit` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitEvent {
    #[serde(default)]
    pub exit_code: i32,
    #[serde(default)]
    pub oom_killed: bool,
    /// True when the exit followed a stop or destroy request.
    #[serde(default)]
    pub requested_stop: bool,
    /// True when the restart policy restarts the machine after this exit.
    #[serde(default)]
    pub restarting: bool,
    /// Signal number that ended the process, or -1 when it exited by itself.
    #[serde(default = "no_signal")]
    pub signal: i32,
    /// RFC 3339 timestamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exited_at: Option<String>,
    /// Reason the process could not run, when it never started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn no_signal() -> i32 {
    -1
}

/// Error body Fly returns with non-2xx statuses: `{"error": "..."}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorResponse {
    #[serde(default)]
    pub error: String,
    /// Machine-readable cause such as `insufficient_capacity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// Body of a successful wait: `{"ok": true}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OkResponse {
    pub ok: bool,
}

/// A `fly.Duration`: Go's duration string (`"5s"`, `"1m30s"`) or integer nanoseconds in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlyDuration(pub Duration);

impl Serialize for FlyDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let nanos = self.0.as_nanos();
        let text = if nanos.is_multiple_of(1_000_000_000) {
            format!("{}s", self.0.as_secs())
        } else if nanos.is_multiple_of(1_000_000) {
            format!("{}ms", self.0.as_millis())
        } else {
            format!("{nanos}ns")
        };
        serializer.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for FlyDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Nanos(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Nanos(nanos) => Ok(FlyDuration(Duration::from_nanos(nanos))),
            Raw::Text(text) => parse_go_duration(&text)
                .map(FlyDuration)
                .ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        "invalid duration {text:?}: expected a number with a unit (ns, us, ms, s, m, h), such as \"5s\" or \"1m30s\""
                    ))
                }),
        }
    }
}

/// Parses a non-negative Go duration string such as `"1.5s"` or `"1m30s"`.
fn parse_go_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&len| len > 0)?;
        let value: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];

        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * nanos_per_unit;
    }
    (!text.is_empty()).then(|| Duration::from_nanos(total.round() as u64))
}

/// Decodes a JSON `null` as the type's default, as Fly sends `"events": null` at times.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn machine_decodes_fly_response_with_unknown_fields() {
        let body = json!({
            "id": "3d8d9014b32d08",
            "name": "job-1",
            "state": "stopped",
            "region": "ams",
            "instance_id": "01HZ0000000000000000000000",
            "private_ip": "fdaa::3",
            "config": {
                "image": "registry.fly.io/transcoder:latest",
                "init": {"cmd": ["transcoder-worker", "run"]},
                "restart": {"policy": ""},
                "metadata": {"job": "a"},
                "services": [],
                "stop_config": {"timeout": "10s", "signal": "SIGTERM"}
            },
            "checks": [],
            "host_status": "ok",
            "events": [
                {"type": "exit", "status": "stopped", "source": "flyd", "timestamp": 2000,
                 "request": {"exit_event": {"exit_code": 3, "oom_killed": false,
                    "requested_stop": false, "signal": -1, "exited_at": "2024-01-01T00:00:00Z"},
                    "restart_count": 0}},
                {"type": "start", "status": "started", "source": "flyd", "timestamp": 1000}
            ]
        });
        let machine: Machine = serde_json::from_value(body).expect("decode machine");

        assert_eq!(machine.state, MachineState::Stopped);
        assert_eq!(machine.metadata().get("job").map(String::as_str), Some("a"));
        let config = machine.config.as_ref().expect("config");
        assert_eq!(
            config.restart.as_ref().and_then(|r| r.policy),
            Some(RestartPolicy::Unspecified)
        );
        let stop = config.stop_config.as_ref().expect("stop config");
        assert_eq!(stop.timeout, Some(FlyDuration(Duration::from_secs(10))));
        let exit = machine.exit_event().expect("exit event");
        assert_eq!(exit.exit_code, 3);
        assert!(!exit.oom_killed);
        assert!(!exit.requested_stop);
    }

    #[test]
    fn exit_event_picks_latest_by_timestamp() {
        let exit = |code: i32, timestamp: i64| MachineEvent {
            id: None,
            kind: "exit".into(),
            status: Some("stopped".into()),
            source: Some("flyd".into()),
            timestamp: Some(timestamp),
            request: Some(json!({"exit_event": {"exit_code": code}})),
        };
        let machine = Machine {
            id: "1".into(),
            name: None,
            state: MachineState::Stopped,
            region: None,
            instance_id: None,
            private_ip: None,
            config: None,
            image_ref: None,
            created_at: None,
            updated_at: None,
            events: vec![exit(1, 10), exit(2, 30), exit(3, 20)],
        };

        assert_eq!(machine.exit_event().map(|e| e.exit_code), Some(2));
        assert!(machine.metadata().is_empty());
    }

    #[test]
    fn unknown_state_and_null_events_decode() {
        let machine: Machine =
            serde_json::from_value(json!({"id": "1", "state": "migrating", "events": null}))
                .expect("decode machine");

        assert_eq!(machine.state, MachineState::Unknown);
        assert!(machine.events.is_empty());
        assert_eq!(machine.exit_event(), None);
    }

    #[test]
    fn create_request_leaves_out_unset_fields() {
        let request = CreateMachineRequest {
            config: MachineConfig {
                image: Some("img".into()),
                auto_destroy: Some(true),
                restart: Some(MachineRestart {
                    policy: Some(RestartPolicy::No),
                    max_retries: None,
                }),
                ..MachineConfig::default()
            },
            region: Some("ams".into()),
            ..CreateMachineRequest::default()
        };

        let encoded = serde_json::to_value(&request).expect("encode request");

        assert_eq!(
            encoded,
            json!({"config": {"image": "img", "auto_destroy": true,
                "restart": {"policy": "no"}}, "region": "ams"})
        );
    }

    #[test]
    fn fly_duration_reads_strings_and_nanoseconds() {
        let cases = [
            (json!("5s"), Duration::from_secs(5)),
            (json!("1m30s"), Duration::from_secs(90)),
            (json!("1.5s"), Duration::from_millis(1500)),
            (json!("250ms"), Duration::from_millis(250)),
            (json!(2_000_000_000u64), Duration::from_secs(2)),
            (json!("0"), Duration::ZERO),
        ];
        for (input, expected) in cases {
            let parsed: FlyDuration = serde_json::from_value(input.clone()).expect("decode");
            assert_eq!(parsed.0, expected, "input {input}");
        }
        for bad in ["", "5", "5x", "s", "-1s"] {
            assert!(
                serde_json::from_value::<FlyDuration>(json!(bad)).is_err(),
                "input {bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn fly_duration_writes_go_strings() {
        let encode = |d: Duration| serde_json::to_value(FlyDuration(d)).expect("encode");

        assert_eq!(encode(Duration::from_secs(10)), json!("10s"));
        assert_eq!(encode(Duration::from_millis(1500)), json!("1500ms"));
        assert_eq!(encode(Duration::from_nanos(7)), json!("7ns"));
    }
}
