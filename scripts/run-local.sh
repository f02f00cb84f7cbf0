#!/usr/bin/env bash
# Runs the worker against a local RabbitMQ, on a fresh machine too:
#   - the broker your settings name, when they name one (NORMALIZER__AMQP__URL set, or
#     a --config file whose amqp.url is not the default): no broker is started;
#   - else the broker on 127.0.0.1:5672 when one answers;
#   - else `docker compose up --build` when Docker runs;
#   - else a broker of its own, started from the distribution's `rabbitmq-server`
#     (Debian/Ubuntu: `apt install rabbitmq-server`) in a temporary directory, and
#     stopped (directory removed) when the worker stops.
# Extra arguments go to `webhook-normalizer run` (and to `webhook-normalizer config`,
# which says what amqp.url they make). On every path this script's process becomes the
# worker (exec): TERM or Ctrl-C stops it as it stops `run` (it drains, then exits 0),
# and nothing is left running.
# WN_LOCAL_PORT picks another port than 5672 when your settings name no broker;
# WEBHOOK_NORMALIZER_BIN a built binary instead of `cargo run --release`.
set -euo pipefail
cd "$(dirname "$0")/.."
port=${WN_LOCAL_PORT:-5672}

normalizer() {
  if [ -n "${WEBHOOK_NORMALIZER_BIN:-}" ]; then
    "$WEBHOOK_NORMALIZER_BIN" "$@"
  else
    cargo run --release -- "$@"
  fi
}

# Replaces this script by the worker (`cargo run` execs the binary too).
exec_worker() {
  if [ -n "${WEBHOOK_NORMALIZER_BIN:-}" ]; then
    exec "$WEBHOOK_NORMALIZER_BIN" run "$@"
  else
    exec cargo run --release -- run "$@"
  fi
}

# The URL the worker would use, password masked; an invalid configuration stops here
# (`config` says why, exit 78).
url=$(normalizer config --get amqp.url "$@")
if [ -n "${NORMALIZER__AMQP__URL:-}" ] || [ "$url" != "amqp://guest:****@127.0.0.1:5672/%2f" ]; then
  echo "using amqp.url from your settings: $url (starting no broker)" >&2
  exec_worker "$@"
fi

# From here on the settings name the default broker: guest on 127.0.0.1:5672, vhost /.
if [ "$port" != 5672 ]; then
  export NORMALIZER__AMQP__URL="amqp://guest:guest@127.0.0.1:${port}/%2f"
fi

if (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null; then
  echo "using the RabbitMQ on 127.0.0.1:${port}" >&2
  exec_worker "$@"
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

# The broker's reaper: reads a pipe whose only writer is this process (the worker, once
# exec'd), so it stops the broker and removes its directory when the worker has exited,
# however it ends. It ignores the signals meant for the worker (Ctrl-C reaches the whole
# process group).
reap_broker() {
  trap '' INT TERM HUP
  while read -r _; do :; done
  rabbitmqctl -q -n "$node" stop "$dir/pid" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
exec 3> >(reap_broker)

echo "no RabbitMQ on 127.0.0.1:${port} and no Docker: starting one in $dir" >&2
# The broker (and the epmd it starts) must not hold the reaper's pipe open.
RABBITMQ_NODENAME="$node" RABBITMQ_NODE_PORT="$port" \
  RABBITMQ_DIST_PORT=$((port + 20000)) \
  RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" \
  RABBITMQ_CONFIG_FILE="$dir/rabbitmq" RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
  RABBITMQ_PID_FILE="$dir/pid" \
  rabbitmq-server -detached 3>&-
rabbitmqctl -q -n "$node" wait "$dir/pid" 3>&-
exec_worker "$@"
