#!/usr/bin/env bash
# Instructions the worker executes per raw message, counted by valgrind (callgrind) on a
# fixed workload: a figure that repeats from run to run, to compare two builds.
#
#   scripts/instructions.sh [--messages N] [--rounds R] [--idle S] [--baseline PATH] [--top K]
#
# Builds this checkout's release binary as the Dockerfile does (`cargo build --release
# --locked --bin webhook-normalizer`), keeps a copy named after the commit in
# TARGET/instructions/ (webhook-normalizer-COMMIT, -dirty for uncommitted changes), and
# measures it with `cargo bench --bench instructions`, which takes the other arguments:
# 5000 raw messages of the benchmarks' mix and 3 rounds by default; --baseline PATH
# measures another binary in the same rounds (a copy kept by an earlier run at another
# commit, say) and prints the ratio; --top K lists the K costliest functions. WORKER=PATH
# measures that binary instead of building one. Needs RabbitMQ at 127.0.0.1:5672,
# rabbitmqctl and valgrind. See docs/performance.md, "Instructions per message".
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
  -h | --help) sed -n '2,15s/^# \{0,1\}//p' "$0"; exit 0 ;;
esac
for tool in valgrind rabbitmqctl; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "scripts/instructions.sh: $tool is not on the PATH" >&2
    exit 69
  fi
done

if [ -n "${WORKER:-}" ]; then
  worker=$(realpath "$WORKER")
else
  target=$(cargo metadata --format-version 1 --no-deps \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
  cargo build --release --locked --bin webhook-normalizer
  commit=$(git rev-parse --short HEAD)
  if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
    commit="$commit-dirty"
  fi
  mkdir -p "$target/instructions"
  worker="$target/instructions/webhook-normalizer-$commit"
  cp "$target/release/webhook-normalizer" "$worker"
  echo "measuring $worker" >&2
fi

# The benchmark's own build of the binary has dev-dependency features unified in; the
# one measured is the release build above (or WORKER).
WEBHOOK_NORMALIZER_BENCH_WORKER="$worker" exec cargo bench --locked --bench instructions -- "$@"
