//! `scripts/test.sh`, the README's test command, on a machine without the tools the
//! tests use: it lists what is missing (or installs it when it may) and runs nothing.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A directory for `PATH` holding only what a bare machine has: bash and coreutils.
fn bare_path() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for tool in ["bash", "dirname", "id", "sort", "cat", "sed"] {
        let found = which(tool).unwrap_or_else(|| panic!("{tool} on this machine"));
        std::os::unix::fs::symlink(found, bin.join(tool)).unwrap();
    }
    (dir, bin)
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(tool))
            .find(|p| p.is_file())
    })
}

fn run(bin: &Path, args: &[&str]) -> Output {
    Command::new(repo().join("scripts/test.sh"))
        .args(args)
        .env_clear()
        .env("PATH", bin)
        .env("HOME", bin.parent().unwrap())
        .output()
        .unwrap()
}

const TOOLS: [&str; 11] = [
    "cargo",
    "rabbitmq-server",
    "rabbitmqctl",
    "python3",
    "pika",
    "jsonschema",
    "openssl",
    "script",
    "promtool",
    "docker-compose",
    "npx",
];

#[test]
fn without_the_tools_it_lists_them_and_runs_nothing() {
    let (_dir, bin) = bare_path();
    let out = run(&bin, &["--no-install"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    for tool in TOOLS {
        assert!(
            stderr.lines().any(|l| l.trim_start().starts_with(tool)),
            "{tool} not listed:\n{stderr}"
        );
    }
    assert!(stderr.contains("--install"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing ran: {:?}", out.stdout);
}

#[test]
fn with_install_it_asks_apt_for_every_package_and_still_checks() {
    let (_dir, bin) = bare_path();
    let log = bin.parent().unwrap().join("apt.log");
    let apt = bin.join("apt-get");
    std::fs::write(
        &apt,
        format!("#!/bin/bash\necho \"$*\" >> {}\n", log.display()),
    )
    .unwrap();
    std::fs::set_permissions(&apt, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = run(&bin, &["--install"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The stand-in apt-get installs nothing: the script checks again and stops.
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    let calls = std::fs::read_to_string(&log).unwrap();
    let mut lines = calls.lines();
    assert_eq!(lines.next(), Some("update -qq"), "{calls}");
    let install: Vec<&str> = lines.next().unwrap().split(' ').collect();
    assert_eq!(
        install[..4],
        ["install", "-y", "-qq", "--no-install-recommends"],
        "{calls}"
    );
    let mut packages = install[4..].to_vec();
    packages.sort();
    assert_eq!(
        packages,
        [
            "bsdutils",
            "docker-compose",
            "npm",
            "openssl",
            "prometheus",
            "prometheus-alertmanager",
            "python3",
            "python3-pip",
            "rabbitmq-server",
        ]
    );
    assert!(stderr.contains("cargo"), "{stderr}");
}

/// CI runs exactly the README's command.
#[test]
fn ci_and_the_readme_run_the_same_command() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    assert!(
        readme.contains("## Run the tests\n\n```sh\nscripts/test.sh\n```"),
        "the README's test command"
    );
    let ci = std::fs::read_to_string(repo().join(".ci/run")).unwrap();
    let commands: Vec<&str> = ci
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    assert_eq!(
        commands.last(),
        Some(&"exec scripts/test.sh --install"),
        "{ci}"
    );
}
