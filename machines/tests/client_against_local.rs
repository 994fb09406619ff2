//! The Fly client driving the local Machines server over real HTTP on 127.0.0.1, with `sh`
//! commands as machine processes.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use fly_machines::types::MachineState;
use fly_machines::{
    CreateMachineRequest, Faults, FlyClient, FlyClientConfig, ListMachinesQuery, LocalMachines,
    LocalMachinesConfig, Machine, MachineConfig, MachineInit, MachineRestart, RateLimits,
    RestartPolicy, WaitOutcome, WaitState,
};
use tokio::net::TcpListener;

const APP: &str = "transcoder-test";

/// Upper bound for any single step; reaching it means the server or client hangs.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Limits far above the request rate of these tests, so that no call waits for a token.
const GENEROUS_LIMITS: RateLimits = RateLimits {
    create_per_second: 1000,
    create_burst: 1000,
    get_per_second: 1000,
    get_burst: 1000,
    other_per_second: 1000,
    other_burst: 1000,
};

struct Fixture {
    server: LocalMachines,
    client: FlyClient,
    log_dir: tempfile::TempDir,
}

impl Fixture {
    async fn start() -> Result<Fixture> {
        let log_dir = tempfile::tempdir()?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let server = LocalMachines::start(
            listener,
            LocalMachinesConfig {
                app: APP.into(),
                worker_bin: "/bin/true".into(),
                log_dir: log_dir.path().to_path_buf(),
            },
        )
        .await?;
        let client = client_for(&server, APP)?;
        Ok(Fixture {
            server,
            client,
            log_dir,
        })
    }

    async fn create(&self, request: &CreateMachineRequest) -> Result<Machine> {
        step("create machine", self.client.create_machine(request)).await
    }

    async fn wait(
        &self,
        machine: &Machine,
        state: WaitState,
        timeout: Duration,
    ) -> Result<WaitOutcome> {
        let wait =
            self.client
                .wait_machine(&machine.id, machine.instance_id.as_deref(), state, timeout);
        step("wait for machine", wait).await
    }
}

fn client_for(server: &LocalMachines, app: &str) -> Result<FlyClient> {
    Ok(FlyClient::new(FlyClientConfig {
        base_url: server.base_url(),
        app: app.into(),
        token: Some("test-token".into()),
        limits: GENEROUS_LIMITS,
    })?)
}

/// Awaits a client call with [`STEP_TIMEOUT`], naming the step when it hangs or fails.
async fn step<T, E>(
    step_name: &str,
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    tokio::time::timeout(STEP_TIMEOUT, call)
        .await
        .with_context(|| {
            format!("{step_name} hung for {STEP_TIMEOUT:?}: the server never responded")
        })?
        .with_context(|| format!("{step_name} failed"))
}

fn shell_machine(script: &str) -> CreateMachineRequest {
    CreateMachineRequest {
        config: MachineConfig {
            image: Some("registry.fly.io/transcoder:test".into()),
            init: Some(MachineInit {
                cmd: Some(vec!["sh".into(), "-c".into(), script.into()]),
                ..MachineInit::default()
            }),
            restart: Some(MachineRestart {
                policy: Some(RestartPolicy::No),
                max_retries: None,
            }),
            ..MachineConfig::default()
        },
        ..CreateMachineRequest::default()
    }
}

fn with_metadata(
    mut request: CreateMachineRequest,
    pairs: &[(&str, &str)],
) -> CreateMachineRequest {
    let metadata: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    request.config.metadata = Some(metadata);
    request
}

/// Polls `get` until the machine is in `state`, failing after [`STEP_TIMEOUT`].
async fn until_state(client: &FlyClient, id: &str, state: MachineState) -> Result<Machine> {
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    loop {
        let machine = step("get machine", client.get_machine(id)).await?;
        if machine.state == state {
            return Ok(machine);
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "machine {id} stayed {} instead of reaching {state}",
            machine.state
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A machine that exits 3 goes created, started, stopped with exit code 3 in its exit event,
/// and on to destroyed under auto_destroy: hidden from list, still readable by id.
#[tokio::test]
async fn exited_machine_reports_exit_code_and_auto_destroys() -> Result<()> {
    let fixture = Fixture::start().await?;
    let mut request = shell_machine("echo working; exit 3");
    request.config.auto_destroy = Some(true);
    request.region = Some("ams".into());

    let machine = fixture.create(&request).await?;
    assert_eq!(machine.id.len(), 14);
    assert_eq!(machine.state, MachineState::Created);
    assert_eq!(machine.region.as_deref(), Some("ams"));
    assert!(machine.instance_id.is_some());

    let started = fixture
        .wait(&machine, WaitState::Started, Duration::from_secs(10))
        .await?;
    assert_eq!(started, WaitOutcome::Reached);
    let stopped = fixture
        .wait(&machine, WaitState::Stopped, Duration::from_secs(10))
        .await?;
    assert_eq!(stopped, WaitOutcome::Reached);
    let destroyed = fixture
        .wait(&machine, WaitState::Destroyed, Duration::from_secs(10))
        .await?;
    assert_eq!(destroyed, WaitOutcome::Reached);

    let fetched = step("get machine", fixture.client.get_machine(&machine.id)).await?;
    assert_eq!(fetched.state, MachineState::Destroyed);
    let exit = fetched
        .exit_event()
        .context("destroyed machine has an exit event")?;
    assert_eq!(exit.exit_code, 3);
    assert!(!exit.oom_killed);
    assert!(!exit.requested_stop);
    assert_eq!(exit.signal, -1);

    let listed = step("list machines", fixture.client.list_machines()).await?;
    assert!(
        listed.iter().all(|m| m.id != machine.id),
        "destroyed machine listed"
    );
    let with_deleted = ListMachinesQuery {
        include_deleted: true,
        ..ListMachinesQuery::default()
    };
    let listed = step(
        "list machines",
        fixture.client.list_machines_matching(&with_deleted),
    )
    .await?;
    assert!(
        listed.iter().any(|m| m.id == machine.id),
        "include_deleted misses the machine"
    );

    let log = std::fs::read_to_string(fixture.log_dir.path().join(format!("{}.log", machine.id)))?;
    assert_eq!(log, "working\n");
    fixture.server.shutdown().await;
    Ok(())
}

/// The machine's environment has its config.env and the FLY_* variables.
#[tokio::test]
async fn machine_environment_has_fly_variables() -> Result<()> {
    let fixture = Fixture::start().await?;
    let mut request = shell_machine(
        "echo \"$FLY_MACHINE_ID $FLY_APP_NAME $FLY_REGION $FLY_IMAGE_REF $JOB_NAME\"",
    );
    request.config.env = Some(BTreeMap::from([("JOB_NAME".into(), "job-a".into())]));

    let machine = fixture.create(&request).await?;
    fixture
        .wait(&machine, WaitState::Stopped, Duration::from_secs(10))
        .await?;

    let log = std::fs::read_to_string(fixture.log_dir.path().join(format!("{}.log", machine.id)))?;
    let expected = format!(
        "{} {APP} local registry.fly.io/transcoder:test job-a\n",
        machine.id
    );
    assert_eq!(log, expected);
    let fetched = step("get machine", fixture.client.get_machine(&machine.id)).await?;
    assert_eq!(
        fetched.state,
        MachineState::Stopped,
        "without auto_destroy it stays stopped"
    );
    fixture.server.shutdown().await;
    Ok(())
}

/// List filters by metadata pairs and region.
#[tokio::test]
async fn list_filters_by_metadata_and_region() -> Result<()> {
    let fixture = Fixture::start().await?;
    let a = fixture
        .create(&with_metadata(
            shell_machine("sleep 30"),
            &[("job", "a"), ("attempt", "1")],
        ))
        .await?;
    let b = fixture
        .create(&with_metadata(
            shell_machine("sleep 30"),
            &[("job", "b"), ("attempt", "1")],
        ))
        .await?;

    let query = |pairs: &[(&str, &str)]| ListMachinesQuery {
        metadata: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..ListMachinesQuery::default()
    };
    let ids = |machines: Vec<Machine>| machines.into_iter().map(|m| m.id).collect::<Vec<_>>();

    let only_a = step(
        "list",
        fixture
            .client
            .list_machines_matching(&query(&[("job", "a")])),
    )
    .await?;
    assert_eq!(ids(only_a), vec![a.id.clone()]);
    let both = step(
        "list",
        fixture
            .client
            .list_machines_matching(&query(&[("attempt", "1")])),
    )
    .await?;
    assert_eq!(both.len(), 2);
    let none = step(
        "list",
        fixture
            .client
            .list_machines_matching(&query(&[("job", "a"), ("attempt", "2")])),
    )
    .await?;
    assert!(none.is_empty());
    let elsewhere = ListMachinesQuery {
        region: Some("syd".into()),
        ..ListMachinesQuery::default()
    };
    let in_syd = step("list", fixture.client.list_machines_matching(&elsewhere)).await?;
    assert!(in_syd.is_empty());
    let all = step("list", fixture.client.list_machines()).await?;
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].metadata().get("job").map(String::as_str), Some("a"));
    assert_eq!(b.metadata().get("job").map(String::as_str), Some("b"));

    fixture.server.shutdown().await;
    Ok(())
}

/// Destroy without force is rejected with 412 while the machine runs; with force it is
/// killed and destroyed.
#[tokio::test]
async fn destroy_requires_force_while_running() -> Result<()> {
    let fixture = Fixture::start().await?;
    let machine = fixture.create(&shell_machine("sleep 30")).await?;
    fixture
        .wait(&machine, WaitState::Started, Duration::from_secs(10))
        .await?;

    let error = tokio::time::timeout(
        STEP_TIMEOUT,
        fixture.client.destroy_machine(&machine.id, false),
    )
    .await?
    .expect_err("destroying a running machine without force should fail");
    assert_eq!(error.status(), Some(412));
    assert!(!error.is_retryable());
    assert!(error.to_string().contains("force"), "{error}");

    step(
        "destroy machine",
        fixture.client.destroy_machine(&machine.id, true),
    )
    .await?;
    let destroyed = fixture
        .wait(&machine, WaitState::Destroyed, Duration::from_secs(10))
        .await?;
    assert_eq!(destroyed, WaitOutcome::Reached);
    let fetched = until_state(&fixture.client, &machine.id, MachineState::Destroyed).await?;
    let exit = fetched
        .exit_event()
        .context("killed machine has an exit event")?;
    assert!(exit.requested_stop);
    assert_eq!(exit.signal, 9);

    fixture.server.shutdown().await;
    Ok(())
}

/// Stop sends the stop signal; the machine ends stopped with requested_stop set.
#[tokio::test]
async fn stop_ends_running_machine() -> Result<()> {
    let fixture = Fixture::start().await?;
    let machine = fixture.create(&shell_machine("exec sleep 30")).await?;
    fixture
        .wait(&machine, WaitState::Started, Duration::from_secs(10))
        .await?;

    step("stop machine", fixture.client.stop_machine(&machine.id)).await?;
    let stopped = fixture
        .wait(&machine, WaitState::Stopped, Duration::from_secs(10))
        .await?;
    assert_eq!(stopped, WaitOutcome::Reached);

    let fetched = step("get machine", fixture.client.get_machine(&machine.id)).await?;
    assert_eq!(fetched.state, MachineState::Stopped);
    let exit = fetched
        .exit_event()
        .context("stopped machine has an exit event")?;
    assert!(exit.requested_stop);
    assert_eq!(exit.signal, 2, "Fly's default stop signal is SIGINT");

    step(
        "destroy machine",
        fixture.client.destroy_machine(&machine.id, false),
    )
    .await?;
    let fetched = step("get machine", fixture.client.get_machine(&machine.id)).await?;
    assert_eq!(fetched.state, MachineState::Destroyed);
    fixture.server.shutdown().await;
    Ok(())
}

/// A wait that the machine does not satisfy in time returns TimedOut, not an error.
#[tokio::test]
async fn wait_times_out_on_running_machine() -> Result<()> {
    let fixture = Fixture::start().await?;
    let machine = fixture.create(&shell_machine("sleep 30")).await?;

    let outcome = fixture
        .wait(&machine, WaitState::Stopped, Duration::from_secs(1))
        .await?;
    assert_eq!(outcome, WaitOutcome::TimedOut);

    step(
        "destroy machine",
        fixture.client.destroy_machine(&machine.id, true),
    )
    .await?;
    fixture.server.shutdown().await;
    Ok(())
}

/// Bad requests get Fly's JSON errors with 400, 404 and 409.
#[tokio::test]
async fn invalid_requests_get_fly_errors() -> Result<()> {
    let fixture = Fixture::start().await?;

    let mut no_image = shell_machine("exit 0");
    no_image.config.image = None;
    let error = fixture
        .client
        .create_machine(&no_image)
        .await
        .expect_err("image required");
    assert_eq!(error.status(), Some(400));
    assert!(error.to_string().contains("config.image"), "{error}");

    let missing = fixture
        .client
        .get_machine("00000000000000")
        .await
        .expect_err("not found");
    assert!(missing.is_not_found());

    let other_app = client_for(&fixture.server, "someone-else")?;
    let error = other_app.list_machines().await.expect_err("unknown app");
    assert!(error.is_not_found());
    assert!(error.to_string().contains("app not found"), "{error}");

    let mut named = shell_machine("sleep 30");
    named.name = Some("job-a-1".into());
    let first = fixture.create(&named).await?;
    let error = fixture
        .client
        .create_machine(&named)
        .await
        .expect_err("name taken");
    assert_eq!(error.status(), Some(409));
    assert!(error.to_string().contains(&first.id), "{error}");

    let error = fixture
        .client
        .wait_machine(&first.id, None, WaitState::Stopped, Duration::from_secs(1))
        .await
        .expect_err("instance_id required for stopped");
    assert_eq!(error.status(), Some(400));

    fixture.server.shutdown().await;
    Ok(())
}

/// Shutdown kills running machine processes.
#[tokio::test]
async fn shutdown_kills_machine_processes() -> Result<()> {
    let fixture = Fixture::start().await?;
    let pid_file = fixture.log_dir.path().join("pid");
    let script = format!("echo $$ > {}; exec sleep 30", pid_file.display());
    let machine = fixture.create(&shell_machine(&script)).await?;
    fixture
        .wait(&machine, WaitState::Started, Duration::from_secs(10))
        .await?;

    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    let pid = loop {
        if let Ok(text) = std::fs::read_to_string(&pid_file) {
            if let Ok(pid) = text.trim().parse::<u32>() {
                break pid;
            }
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "machine never wrote its pid"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let proc_path = format!("/proc/{pid}");
    assert!(std::path::Path::new(&proc_path).exists());

    tokio::time::timeout(STEP_TIMEOUT, fixture.server.shutdown())
        .await
        .context("shutdown hung")?;

    assert!(
        !std::path::Path::new(&proc_path).exists(),
        "machine process {pid} survived shutdown"
    );
    Ok(())
}

/// An injected 429 or 503 reaches the caller as a retryable error with its status.
#[tokio::test]
async fn injected_rate_limit_and_server_error_are_retryable() -> Result<()> {
    let fixture = Fixture::start().await?;

    fixture.server.set_faults(Faults {
        rate_limit_every: 1,
        ..Faults::default()
    });
    let error = fixture
        .client
        .list_machines()
        .await
        .expect_err("429 injected");
    assert_eq!(error.status(), Some(429));
    assert!(error.is_retryable());

    fixture.server.set_faults(Faults {
        server_error_every: 1,
        ..Faults::default()
    });
    let error = fixture
        .client
        .list_machines()
        .await
        .expect_err("503 injected");
    assert_eq!(error.status(), Some(503));
    assert!(error.is_retryable());

    fixture.server.set_faults(Faults::default());
    let listed = step("list machines", fixture.client.list_machines()).await?;
    assert!(listed.is_empty());
    fixture.server.shutdown().await;
    Ok(())
}

/// A create whose response is lost fails with a retryable error, yet the machine exists, and
/// creating it again under the same name is rejected with 409.
#[tokio::test]
async fn lost_create_response_leaves_machine_behind() -> Result<()> {
    let fixture = Fixture::start().await?;
    fixture.server.set_faults(Faults {
        lose_create_responses: 1,
        ..Faults::default()
    });
    let mut request = with_metadata(shell_machine("sleep 30"), &[("job", "lost")]);
    request.name = Some("lost-1".into());

    let error = fixture
        .client
        .create_machine(&request)
        .await
        .expect_err("response lost");
    assert!(error.is_retryable(), "{error}");

    let query = ListMachinesQuery {
        metadata: BTreeMap::from([("job".to_owned(), "lost".to_owned())]),
        ..ListMachinesQuery::default()
    };
    let listed = step(
        "list machines",
        fixture.client.list_machines_matching(&query),
    )
    .await?;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name.as_deref(), Some("lost-1"));

    let error = fixture
        .client
        .create_machine(&request)
        .await
        .expect_err("name taken");
    assert_eq!(error.status(), Some(409));
    fixture.server.shutdown().await;
    Ok(())
}

/// Under on-failure with max_retries 2, a failing process runs three times, then stops.
#[tokio::test]
async fn on_failure_policy_restarts_then_stops() -> Result<()> {
    let fixture = Fixture::start().await?;
    let mut request = shell_machine("echo run; exit 1");
    request.config.restart = Some(MachineRestart {
        policy: Some(RestartPolicy::OnFailure),
        max_retries: Some(2),
    });

    let machine = fixture.create(&request).await?;
    let stopped = until_state(&fixture.client, &machine.id, MachineState::Stopped).await?;

    let exits: Vec<_> = stopped
        .events
        .iter()
        .filter_map(|event| event.exit_event())
        .collect();
    assert_eq!(exits.len(), 3);
    assert_eq!(exits.iter().filter(|exit| exit.restarting).count(), 2);
    assert!(!exits[0].restarting, "the newest exit ends the restarts");
    assert_eq!(stopped.exit_event().map(|exit| exit.exit_code), Some(1));
    let log = std::fs::read_to_string(fixture.log_dir.path().join(format!("{}.log", machine.id)))?;
    assert_eq!(log, "run\nrun\nrun\n");
    fixture.server.shutdown().await;
    Ok(())
}

/// With a state change delay, a wait for started that is shorter than the delay times out.
#[tokio::test]
async fn slow_state_changes_delay_started() -> Result<()> {
    let fixture = Fixture::start().await?;
    fixture.server.set_faults(Faults {
        state_change_delay: Duration::from_secs(3),
        ..Faults::default()
    });

    let machine = fixture.create(&shell_machine("sleep 30")).await?;
    let outcome = fixture
        .wait(&machine, WaitState::Started, Duration::from_secs(1))
        .await?;
    assert_eq!(outcome, WaitOutcome::TimedOut);
    let fetched = step("get machine", fixture.client.get_machine(&machine.id)).await?;
    assert_ne!(fetched.state, MachineState::Started);

    let outcome = fixture
        .wait(&machine, WaitState::Started, Duration::from_secs(20))
        .await?;
    assert_eq!(outcome, WaitOutcome::Reached);
    fixture.server.shutdown().await;
    Ok(())
}
