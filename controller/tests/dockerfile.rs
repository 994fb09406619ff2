//! The image definition: the Dockerfile's build and runtime stages read as text, and the
//! image's entry commands run through its entrypoint script against this build's binaries.
//!
//! `scripts/check-docker.sh` goes further and replays the build stage itself (a release build
//! from scratch); `replayed_build_stage_passes` runs it when asked with `--ignored`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{repo_root, worker_binary};

/// One Dockerfile instruction: its keyword in capitals and its arguments, continuation lines
/// joined and comment lines dropped.
#[derive(Debug, Clone)]
struct Instruction {
    keyword: String,
    args: String,
}

fn instructions() -> Vec<Instruction> {
    let text = std::fs::read_to_string(repo_root().join("Dockerfile")).expect("Dockerfile");
    let mut instructions = Vec::new();
    let mut joined = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        if let Some(head) = line.trim_end().strip_suffix('\\') {
            joined.push_str(head);
            joined.push(' ');
            continue;
        }
        joined.push_str(line);
        let complete = std::mem::take(&mut joined);
        let complete = complete.trim();
        if complete.is_empty() {
            continue;
        }
        let (keyword, args) = complete
            .split_once(char::is_whitespace)
            .unwrap_or((complete, ""));
        instructions.push(Instruction {
            keyword: keyword.to_ascii_uppercase(),
            args: args.split_whitespace().collect::<Vec<_>>().join(" "),
        });
    }
    instructions
}

/// Groups the instructions by stage, in order. The first stage is the build stage.
fn stages() -> Vec<Vec<Instruction>> {
    let mut stages: Vec<Vec<Instruction>> = Vec::new();
    for instruction in instructions() {
        if instruction.keyword == "FROM" {
            stages.push(Vec::new());
        }
        if let Some(stage) = stages.last_mut() {
            stage.push(instruction);
        }
    }
    stages
}

fn args_of<'a>(stage: &'a [Instruction], keyword: &str) -> Vec<&'a str> {
    stage
        .iter()
        .filter(|instruction| instruction.keyword == keyword)
        .map(|instruction| instruction.args.as_str())
        .collect()
}

/// Returns the `cargo build ...` part of a RUN line, up to the next `&&`.
fn cargo_command(run: &str) -> Option<&str> {
    let start = run.find("cargo build")?;
    let rest = &run[start..];
    Some(rest.split("&&").next().unwrap_or(rest).trim())
}

fn workspace_members() -> Vec<String> {
    let manifest = std::fs::read_to_string(repo_root().join("Cargo.toml")).expect("Cargo.toml");
    let line = manifest
        .lines()
        .find(|line| line.trim_start().starts_with("members"))
        .expect("workspace members line");
    line.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// Returns the names of the `[[bin]]` targets that a member's manifest declares.
fn binaries_of(member: &str) -> Vec<String> {
    let manifest = std::fs::read_to_string(repo_root().join(member).join("Cargo.toml"))
        .expect("member manifest");
    let mut binaries = Vec::new();
    let mut in_bin = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if let (true, Some(value)) = (in_bin, line.strip_prefix("name = ")) {
            binaries.push(value.trim_matches('"').to_owned());
        }
    }
    binaries
}

/// Both cargo builds are the same locked release build of the two binaries, so the dependency
/// layer resolves features exactly as the final build does.
#[test]
fn build_stage_runs_one_locked_release_build_twice() {
    let stages = stages();
    assert_eq!(stages.len(), 2, "expected a build and a runtime stage");
    let build = &stages[0];
    assert!(
        build[0].args.starts_with("rust:") && build[0].args.ends_with("AS build"),
        "build stage: {:?}",
        build[0]
    );

    let commands: Vec<&str> = args_of(build, "RUN")
        .into_iter()
        .filter_map(cargo_command)
        .collect();
    assert_eq!(commands.len(), 2, "cargo builds: {commands:#?}");
    assert_eq!(commands[0], commands[1], "the two builds differ");

    let words: Vec<&str> = commands[0].split_whitespace().collect();
    for flag in ["--release", "--locked"] {
        assert!(words.contains(&flag), "{flag} missing: {}", commands[0]);
    }
    let mut binaries = binaries_of("controller");
    binaries.extend(binaries_of("worker"));
    assert_eq!(binaries, ["transcoder", "transcoder-worker"]);
    for binary in &binaries {
        let selected = words
            .windows(2)
            .any(|pair| pair[0] == "--bin" && pair[1] == binary);
        assert!(selected, "--bin {binary} missing: {}", commands[0]);
    }
    assert!(
        !words.iter().any(|word| word.starts_with("--features")
            || *word == "--all-features"
            || *word == "--no-default-features"),
        "the image must build the default features that the tests build: {}",
        commands[0]
    );
}

/// The dependency layer copies every workspace manifest and stubs every member's targets, and
/// the final build touches every member's sources.
#[test]
fn dependency_layer_covers_every_workspace_member() {
    let stages = stages();
    let build = &stages[0];
    let first_run = build
        .iter()
        .position(|instruction| instruction.keyword == "RUN")
        .expect("a RUN line");
    let copies_before_run: Vec<&str> = build[..first_run]
        .iter()
        .filter(|instruction| instruction.keyword == "COPY")
        .map(|instruction| instruction.args.as_str())
        .collect();
    let runs = args_of(build, "RUN");

    assert!(
        copies_before_run.contains(&"Cargo.toml Cargo.lock ./"),
        "{copies_before_run:#?}"
    );
    assert!(
        copies_before_run.contains(&"scripts/stub-crate-targets.sh scripts/"),
        "{copies_before_run:#?}"
    );
    let stub_command = runs[0].split("&&").next().expect("stub command");
    let stubbed: Vec<&str> = stub_command.split_whitespace().skip(2).collect();
    assert!(
        stub_command.starts_with("sh scripts/stub-crate-targets.sh"),
        "{}",
        runs[0]
    );

    let members = workspace_members();
    assert_eq!(members.len(), 4, "members: {members:?}");
    assert_eq!(stubbed, members, "stubbed crates");
    for member in &members {
        let manifest = format!("{member}/Cargo.toml {member}/");
        assert!(
            copies_before_run.contains(&manifest.as_str()),
            "{member}/Cargo.toml is not copied before the dependency build"
        );
        assert!(
            runs[0].contains(&format!("{member}/src")),
            "stubs of {member} are not removed: {}",
            runs[0]
        );
        let touch = runs[1].split("-name").next().expect("find command");
        assert!(
            touch.split_whitespace().any(|word| word == member),
            "sources of {member} are not touched before the final build: {}",
            runs[1]
        );
    }
}

/// The manifests alone, with the stubbed targets, load as a workspace that cargo can build:
/// every `[[bench]]`, `[[test]]` or `[[example]]` a manifest declares has a file.
#[test]
fn stubbed_manifests_load_without_sources() {
    let root = tempfile::tempdir().expect("tempdir");
    let repo = repo_root();
    for file in ["Cargo.toml", "Cargo.lock"] {
        std::fs::copy(repo.join(file), root.path().join(file)).expect("copy root manifest");
    }
    let members = workspace_members();
    for member in &members {
        std::fs::create_dir_all(root.path().join(member)).expect("member directory");
        std::fs::copy(
            repo.join(member).join("Cargo.toml"),
            root.path().join(member).join("Cargo.toml"),
        )
        .expect("copy member manifest");
    }

    let stub = Command::new("sh")
        .arg(repo.join("scripts/stub-crate-targets.sh"))
        .args(&members)
        .current_dir(root.path())
        .output()
        .expect("stub script runs");
    assert!(stub.status.success(), "{stub:?}");

    // Checking the smallest member loads, and so validates, every manifest of the workspace.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let check = Command::new(cargo)
        .args([
            "check",
            "--locked",
            "--quiet",
            "-p",
            "transcoder-protocol",
            "--lib",
        ])
        .arg("--target-dir")
        .arg(root.path().join("target"))
        .current_dir(root.path())
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("cargo runs");
    assert!(
        check.status.success(),
        "the stubbed workspace does not load:\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

/// The runtime stage is a slim Debian image with ca-certificates, both binaries and the
/// entrypoint, without build tools, and never declares root as its user.
#[test]
fn runtime_stage_is_slim_and_drops_root() {
    let stages = stages();
    let runtime = &stages[1];
    assert!(
        runtime[0].args.starts_with("debian:") && runtime[0].args.ends_with("-slim"),
        "runtime base: {:?}",
        runtime[0]
    );

    let runs = args_of(runtime, "RUN").join(" && ");
    assert!(
        runs.contains("apt-get install -y --no-install-recommends ca-certificates &&"),
        "{runs}"
    );
    for tool in [
        "gcc",
        "make",
        "cargo",
        "rustc",
        "build-essential",
        "pkg-config",
    ] {
        assert!(
            !runs.split_whitespace().any(|word| word == tool),
            "runtime installs {tool}: {runs}"
        );
    }
    assert!(runs.contains("useradd --system --uid 10001"), "{runs}");
    for user in args_of(runtime, "USER") {
        assert!(!matches!(user, "root" | "0"), "USER {user}");
    }

    let copies = args_of(runtime, "COPY");
    assert!(
        copies.contains(
            &"--from=build /src/target/release/transcoder /src/target/release/transcoder-worker /usr/local/bin/"
        ),
        "{copies:#?}"
    );
    assert!(
        copies.contains(&"scripts/docker-entrypoint.sh /usr/local/bin/transcoder-entrypoint"),
        "{copies:#?}"
    );
    assert_eq!(
        args_of(runtime, "ENTRYPOINT"),
        [r#"["transcoder-entrypoint"]"#]
    );
    assert_eq!(args_of(runtime, "CMD"), [r#"["transcoder", "serve"]"#]);
}

/// The build context leaves out what the build must not see or need not send.
#[test]
fn dockerignore_excludes_build_output_and_git() {
    let text = std::fs::read_to_string(repo_root().join(".dockerignore")).expect(".dockerignore");
    let patterns: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();

    for pattern in ["target", ".git"] {
        assert!(
            patterns.contains(&pattern),
            "{pattern} missing: {patterns:?}"
        );
    }
    for needed in [
        "controller",
        "worker",
        "protocol",
        "machines",
        "scripts",
        "Cargo.lock",
    ] {
        assert!(!patterns.contains(&needed), "{needed} is excluded");
    }
}

/// A directory laid out like the image's /usr/local/bin, readable by any user: the binaries of
/// this build and the entrypoint script.
fn image_bin(dir: &Path) -> PathBuf {
    let bin = dir.join("usr-local-bin");
    std::fs::create_dir_all(&bin).expect("bin directory");
    let programs = [
        (
            PathBuf::from(env!("CARGO_BIN_EXE_transcoder")),
            "transcoder",
        ),
        (worker_binary(), "transcoder-worker"),
        (
            repo_root().join("scripts/docker-entrypoint.sh"),
            "transcoder-entrypoint",
        ),
    ];
    for (source, name) in programs {
        let target = bin.join(name);
        if std::fs::hard_link(&source, &target).is_err() {
            std::fs::copy(&source, &target).expect("copy program");
        }
    }
    bin
}

/// Runs `command` the way the image does: through the entrypoint, with the image's PATH and a
/// cleared environment.
fn in_image(bin: &Path, data_dir: &Path, command: &[&str]) -> Output {
    Command::new(bin.join("transcoder-entrypoint"))
        .args(command)
        .env_clear()
        .env(
            "PATH",
            format!(
                "{}:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
                bin.display()
            ),
        )
        .env("TRANSCODER_DATA_DIR", data_dir)
        .output()
        .expect("entrypoint runs")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `transcoder --help`, `transcoder-worker --help` and the image's CMD with no configuration run
/// through the entrypoint. As root, the entrypoint hands the data directory to uid 10001 and
/// runs the command as that user.
#[test]
fn entry_commands_run_through_the_entrypoint() {
    let root = tempfile::tempdir().expect("tempdir");
    set_mode(root.path(), 0o755);
    let bin = image_bin(root.path());
    let data_dir = root.path().join("data");

    let help = in_image(&bin, &data_dir, &["transcoder", "--help"]);
    assert_eq!(help.status.code(), Some(0), "{help:?}");
    assert!(String::from_utf8_lossy(&help.stdout).contains("serve"));

    let worker_help = in_image(&bin, &data_dir, &["transcoder-worker", "--help"]);
    assert_eq!(worker_help.status.code(), Some(0), "{worker_help:?}");
    assert!(String::from_utf8_lossy(&worker_help.stdout).contains("run"));

    let serve = in_image(&bin, &data_dir, &["transcoder", "serve"]);
    let stderr = String::from_utf8_lossy(&serve.stderr);
    assert_eq!(serve.status.code(), Some(2), "{stderr}");
    for variable in ["FLY_API_TOKEN", "S3_BUCKET", "AWS_SECRET_ACCESS_KEY"] {
        assert!(
            stderr.contains(&format!("- {variable} ")),
            "{variable}: {stderr}"
        );
    }

    if is_root() {
        let id = in_image(&bin, &data_dir, &["id", "-u"]);
        assert_eq!(
            String::from_utf8_lossy(&id.stdout).trim(),
            "10001",
            "{id:?}"
        );
        let owner = owner_of(&data_dir);
        assert_eq!(owner, (10001, 10001), "data directory owner");
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn owner_of(path: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path).expect("data directory exists");
    (metadata.uid(), metadata.gid())
}

/// Replays the Dockerfile's build stage (a release build) and checks the resulting image tree
/// with `scripts/check-docker.sh`, reusing `target/docker-check` as its cargo cache.
#[test]
#[ignore = "runs a full release build; run with `cargo test -p controller --test dockerfile -- --ignored`"]
fn replayed_build_stage_passes() {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
        .join("docker-check");
    let output = Command::new("bash")
        .arg(repo_root().join("scripts/check-docker.sh"))
        .arg("--target-dir")
        .arg(&target)
        .output()
        .expect("check script runs");

    assert!(
        output.status.success(),
        "check-docker.sh failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
