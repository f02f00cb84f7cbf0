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

const TOOLS: [&str; 12] = [
    "cargo",
    "cargo-deny",
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
    // cargo-deny is a crate, not a Debian package: the listing gives its install command.
    assert!(
        stderr.contains("cargo-deny (cargo install --locked cargo-deny)"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "nothing ran: {:?}", out.stdout);
}

#[test]
fn with_install_it_asks_apt_for_every_package_and_still_checks() {
    let (_dir, bin) = bare_path();
    let log = bin.parent().unwrap().join("apt.log");
    logging_tool(&bin, "apt-get", &log);
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
    // No cargo on the PATH: nothing to install cargo-deny with, so it is still missing.
    assert!(
        stderr.contains("cargo-deny (cargo install --locked cargo-deny)"),
        "{stderr}"
    );
    assert!(!stderr.contains("installing with cargo"), "{stderr}");
}

/// A stand-in for `NAME` on `bin` that appends its arguments to `log`.
fn logging_tool(bin: &Path, name: &str, log: &Path) {
    let tool = bin.join(name);
    std::fs::write(
        &tool,
        format!("#!/bin/bash\necho \"$*\" >> {}\n", log.display()),
    )
    .unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn with_install_and_cargo_it_installs_cargo_deny_with_cargo() {
    let (_dir, bin) = bare_path();
    let apt_log = bin.parent().unwrap().join("apt.log");
    let cargo_log = bin.parent().unwrap().join("cargo.log");
    logging_tool(&bin, "apt-get", &apt_log);
    logging_tool(&bin, "cargo", &cargo_log);
    let out = run(&bin, &["--install"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The stand-in cargo installs nothing: cargo-deny is listed as missing again.
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    let calls = std::fs::read_to_string(&cargo_log).unwrap();
    assert_eq!(calls, "install --locked cargo-deny\n", "{stderr}");
    // Not asked of apt-get: no Debian package is named after the crate.
    let apt = std::fs::read_to_string(&apt_log).unwrap();
    assert!(!apt.contains("cargo"), "{apt}");
    assert!(
        stderr.contains("cargo-deny (cargo install --locked cargo-deny)"),
        "{stderr}"
    );
    assert!(
        !stderr
            .lines()
            .any(|l| l.trim_start().starts_with("cargo (")),
        "cargo is there: {stderr}"
    );
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

/// The licence and crate check docs/testing.md shows is the one the script runs.
#[test]
fn the_script_runs_the_documented_cargo_deny_check() {
    let page = std::fs::read_to_string(repo().join("docs/testing.md")).unwrap();
    let section = page
        .split_once("\n## Licences and banned crates\n")
        .expect("the section in docs/testing.md")
        .1;
    let block = section
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .expect("a sh block in the section")
        .0;
    assert!(block.starts_with("cargo deny "), "{block}");
    let script = std::fs::read_to_string(repo().join("scripts/test.sh")).unwrap();
    assert!(
        script.lines().any(|l| l == block),
        "scripts/test.sh does not run `{block}`"
    );
}
