#!/usr/bin/env bash
# Runs the worker against a local RabbitMQ, on a fresh machine too:
#   - the broker on 127.0.0.1:5672 when one answers;
#   - else `docker compose up --build` when Docker runs;
#   - else a broker of its own, started from the distribution's `rabbitmq-server`
#     (Debian/Ubuntu: `apt install rabbitmq-server`) in a temporary directory, and
#     stopped (directory removed) when the worker stops.
# Extra arguments go to `webhook-normalizer run`. Ctrl-C stops the worker (it drains).
# WN_LOCAL_PORT picks another port than 5672; WEBHOOK_NORMALIZER_BIN a built binary
# instead of `cargo run --release`.
set -euo pipefail
cd "$(dirname "$0")/.."
port=${WN_LOCAL_PORT:-5672}

worker() {
  export NORMALIZER__AMQP__URL="amqp://guest:guest@127.0.0.1:${port}/%2f"
  if [ -n "${WEBHOOK_NORMALIZER_BIN:-}" ]; then
    "$WEBHOOK_NORMALIZER_BIN" run "$@"
  else
    cargo run --release -- run "$@"
  fi
}

if (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null; then
  echo "using the RabbitMQ on 127.0.0.1:${port}" >&2
  worker "$@"
  exit
fi

if [ "$port" = 5672 ] && command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  echo "no RabbitMQ on 127.0.0.1:5672: docker compose up --build" >&2
  exec docker compose up --build
fi

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  echo "error: no RabbitMQ on 127.0.0.1:${port}, no Docker, and no rabbitmq-server to start one (apt install rabbitmq-server)" >&2
  exit 69
fi

dir=$(mktemp -d /tmp/wn-local-rabbitmq.XXXXXX)
node="wn-local-$$@localhost"
chmod 755 "$dir"
mkdir -p "$dir/mnesia" "$dir/log"
printf 'listeners.tcp.1 = 127.0.0.1:%s\nloopback_users = none\n' "$port" > "$dir/rabbitmq.conf"
echo '[].' > "$dir/enabled_plugins"
# The server drops to the rabbitmq user when started by root.
if [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1; then chown -R rabbitmq:rabbitmq "$dir"; fi
stop_broker() {
  rabbitmqctl -q -n "$node" stop "$dir/pid" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap stop_broker EXIT
# A signal waits for the worker to drain, then the trap above stops the broker.
trap 'exit 130' INT
trap 'exit 143' TERM
echo "no RabbitMQ on 127.0.0.1:${port} and no Docker: starting one in $dir" >&2
RABBITMQ_NODENAME="$node" RABBITMQ_NODE_PORT="$port" \
  RABBITMQ_DIST_PORT=$((port + 20000)) \
  RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" \
  RABBITMQ_CONFIG_FILE="$dir/rabbitmq" RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
  RABBITMQ_PID_FILE="$dir/pid" \
  rabbitmq-server -detached
rabbitmqctl -q -n "$node" wait "$dir/pid"
worker "$@"
