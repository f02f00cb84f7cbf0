#!/usr/bin/env bash
# Times `dlq stats` over N dead letters for each given build, alternating, ROUNDS rounds:
#   scripts/dlq-walk-time.sh OLD_BINARY NEW_BINARY      (N=2000 ROUNDS=3 by default)
# Uses a throwaway vhost on the broker at 127.0.0.1:5672 (rabbitmqctl) and Python's pika
# to publish the dead letters. Build an older commit with `git worktree add` to compare.
set -euo pipefail
N=${N:-2000}
ROUNDS=${ROUNDS:-3}
VHOST="dlq-walk-time-$$"
URL="amqp://guest:guest@127.0.0.1:5672/$VHOST"
rabbitmqctl -q add_vhost "$VHOST"
trap 'rabbitmqctl -q delete_vhost "$VHOST"' EXIT
rabbitmqctl -q set_permissions -p "$VHOST" guest '.*' '.*' '.*'
NORMALIZER__AMQP__URL="$URL" "$1" topology 2>/dev/null
python3 - "$URL" "$N" <<'PY'
import sys, pika
url, n = sys.argv[1], int(sys.argv[2])
channel = pika.BlockingConnection(pika.URLParameters(url)).channel()
channel.confirm_delivery()
headers = {"x-normalizer-error-kind": "invalid_json", "x-normalizer-error": "expected value",
           "x-normalizer-failed-at": "2026-01-01T00:00:00Z",
           "x-original-exchange": "webhooks.raw", "x-original-routing-key": "gateway"}
for i in range(n):
    channel.basic_publish("", "normalizer.dead-letter", b'{"n": %d}' % i,
                          pika.BasicProperties(message_id="m%d" % i, headers=headers))
PY
for round in $(seq "$ROUNDS"); do
  for binary in "$@"; do
    TIMEFORMAT="round $round  $binary  %R s"
    time NORMALIZER__AMQP__URL="$URL" "$binary" dlq stats >/dev/null 2>&1
  done
done
