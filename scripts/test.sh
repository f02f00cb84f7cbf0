#!/usr/bin/env bash
# The whole test suite, on a fresh clone too: checks that the tools the tests use are
# there (installing what is missing when it may), makes sure RabbitMQ answers when it
# may start it, then runs every check CI runs: the alert rules, the compose file, the
# AsyncAPI document, licences and banned crates (cargo deny), formatting, clippy and
# `cargo test --workspace --locked`.
#
#   scripts/test.sh [--install | --no-install] [-- ARGS for cargo test]
#
# Missing tools are installed (apt-get, pip, cargo install) with --install, or by default
# when run as root; with --no-install, or as another user, the script lists what is
# missing and exits 69 before running anything. `.ci/run` is this script with --install.
set -euo pipefail
cd "$(dirname "$0")/.."

install=auto
cargo_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --install) install=yes ;;
    --no-install) install=no ;;
    --) shift; cargo_args=("$@"); break ;;
    -h | --help) sed -n '2,13s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "scripts/test.sh: unknown argument $1 (see --help)" >&2; exit 64 ;;
  esac
  shift
done
if [ "$install" = auto ]; then
  if [ "$(id -u)" = 0 ]; then install=yes; else install=no; fi
fi

# tool, then the Debian package that provides it ("pip:NAME" for a Python module,
# "cargo:NAME" for a crate installed with `cargo install --locked NAME`).
requirements=(
  "cargo:"
  "cargo-deny:cargo:cargo-deny"
  "rabbitmq-server:rabbitmq-server"
  "rabbitmqctl:rabbitmq-server"
  "python3:python3"
  "pika:pip:pika"
  "jsonschema:pip:jsonschema"
  "openssl:openssl"
  "script:bsdutils"
  "promtool:prometheus"
  "amtool:prometheus-alertmanager"
  "docker-compose:docker-compose"
  "npx:npm"
)

has() {
  case "$1" in
    pika) command -v python3 >/dev/null 2>&1 && python3 -c 'import pika' >/dev/null 2>&1 ;;
    # jsonschema brings referencing (4.18 and later): docs/consuming.md's validation.
    jsonschema) command -v python3 >/dev/null 2>&1 \
      && python3 -c 'import jsonschema, referencing' >/dev/null 2>&1 ;;
    *) command -v "$1" >/dev/null 2>&1 ;;
  esac
}

missing() {
  local r
  for r in "${requirements[@]}"; do
    has "${r%%:*}" || echo "$r"
  done
}

mapfile -t absent < <(missing)
if [ "${#absent[@]}" -gt 0 ] && [ "$install" = yes ]; then
  packages=() modules=() crates=()
  for r in "${absent[@]}"; do
    source=${r#*:}
    case "$source" in
      "") ;;
      pip:*) modules+=("${source#pip:}") ;;
      cargo:*) crates+=("${source#cargo:}") ;;
      *) packages+=("$source") ;;
    esac
  done
  if [ "${#modules[@]}" -gt 0 ] && ! has python3; then packages+=(python3); fi
  if [ "${#modules[@]}" -gt 0 ]; then packages+=(python3-pip); fi
  if [ "${#packages[@]}" -gt 0 ]; then
    echo "installing: ${packages[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      $(printf '%s\n' "${packages[@]}" | sort -u)
  fi
  if [ "${#modules[@]}" -gt 0 ]; then
    echo "installing Python modules: ${modules[*]}" >&2
    python3 -m pip install -q --break-system-packages "${modules[@]}" 2>/dev/null \
      || python3 -m pip install -q "${modules[@]}" || true
  fi
  # Without cargo there is nothing to install them with: they stay listed as missing,
  # with the Rust toolchain.
  if [ "${#crates[@]}" -gt 0 ] && has cargo; then
    echo "installing with cargo: ${crates[*]}" >&2
    for crate in "${crates[@]}"; do
      cargo install --locked "$crate" || true
    done
  fi
  mapfile -t absent < <(missing)
fi
if [ "${#absent[@]}" -gt 0 ]; then
  echo "scripts/test.sh: missing what the tests use:" >&2
  for r in "${absent[@]}"; do
    source=${r#*:}
    case "$source" in
      "") echo "  ${r%%:*} (the Rust toolchain: https://rustup.rs)" >&2 ;;
      pip:*) echo "  ${r%%:*}, a Python module (python3 -m pip install ${source#pip:})" >&2 ;;
      cargo:*) echo "  ${r%%:*} (cargo install --locked ${source#cargo:})" >&2 ;;
      *) echo "  ${r%%:*} (Debian/Ubuntu package ${source})" >&2 ;;
    esac
  done
  if [ "$install" = no ]; then
    echo "run as root or with --install to install them" >&2
  fi
  exit 69
fi

# RabbitMQ: when it is stopped and we may start it (root), start the system broker;
# otherwise each test process starts a private node in its place (testkit).
if ! rabbitmq-diagnostics -q ping >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "starting RabbitMQ" >&2
  rabbitmq-server -detached
  timeout 180 rabbitmqctl await_startup
  for _ in $(seq 1 60); do
    if (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then break; fi
    sleep 1
  done
fi

# The monitoring kit: alert rules and their tests, Prometheus and Alertmanager configs.
promtool check rules deploy/prometheus/alerts.yml
(cd deploy/prometheus && promtool test rules alerts.test.yml)
promtool check config --syntax-only deploy/prometheus/prometheus.yml
amtool check-config deploy/alertmanager/alertmanager.yml

# The compose file: no Docker daemon needed, docker-compose (1.29) checks it against the
# Compose schema.
docker-compose -f docker-compose.yml --profile monitoring config -q

# The AsyncAPI document, with the AsyncAPI CLI (npm). The CLI reads ./config/ as its own
# configuration (node-config): point it elsewhere. A unit test checks that the document
# is what `event-types --format asyncapi` prints.
NODE_CONFIG_DIR=$(mktemp -d) SUPPRESS_NO_CONFIG_WARNING=1 \
  npx --yes @asyncapi/cli@6.2.0 validate docs/asyncapi.json

# Licences and banned crates (deny.toml): the dependency tree's licences are on the
# allow-list, no crate we must not ship (openssl), crates only from crates.io. Not the
# advisories: their database needs the network. cargo deny reads the crates' manifests
# from Cargo's cache and, --offline, downloads none: fetch them first (every platform's,
# as `cargo metadata` needs; nothing to do when they are there).
cargo fetch --locked
cargo deny --offline --locked check licenses bans sources

export INSTA_UPDATE=no
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
# --locked: the lock file is part of the change.
cargo test --workspace --locked "${cargo_args[@]}"
