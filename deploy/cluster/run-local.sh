#!/usr/bin/env bash
# A gateway cluster on loopback, to try it (issue #12): redis-server, Mosquitto, two
# gateway nodes on the example dialplan, and Kamailio in front (deploy/kamailio/cluster.cfg).
#
#   deploy/cluster/run-local.sh            # Ctrl-C stops everything it started
#
#   phones and SIPp talk to the front:     udp/tcp 127.0.0.1:${FRONT_PORT:-5060}
#   the nodes (gw1, gw2):                  127.0.0.1:5071 and 127.0.0.1:5072 (NODE_PORTS)
#   Redis:                                 127.0.0.1:${REDIS_PORT:-6390}
#   MQTT (presence, emergency events):     127.0.0.1:${MQTT_PORT:-1883}
#   metrics:                               127.0.0.1:9464 (gw1), 127.0.0.1:9465 (gw2)
#                                          (METRICS_PORT is gw1's)
#
# Every log and generated file is in $WORK (a new /tmp directory unless set).
# Needs redis-server, mosquitto and kamailio (scripts/install-test-deps.sh) and the venv
# (make venv).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${WORK:-$(mktemp -d /tmp/gateway-cluster.XXXXXX)}
mkdir -p "$WORK"
PY=${PYTHON:-$ROOT/.venv/bin/python}
FRONT_PORT=${FRONT_PORT:-5060}
REDIS_PORT=${REDIS_PORT:-6390}
MQTT_PORT=${MQTT_PORT:-1883}
read -r -a NODE_PORTS <<<"${NODE_PORTS:-5071 5072}"
METRICS_PORT=${METRICS_PORT:-9464}   # gw1's; gw2's is the next one
# the digest nonce key every node shares (GATEWAY_NONCE_SECRET); a fresh one per run
SECRET=${GATEWAY_NONCE_SECRET:-$(head -c 24 /dev/urandom | base64 | tr -d '/+=')}

tool() {
    local found
    found=$(command -v "$1" || true)
    [ -z "$found" ] && [ -x "/usr/sbin/$1" ] && found="/usr/sbin/$1"
    if [ -z "$found" ]; then
        echo "run-local: $1 not found: run scripts/install-test-deps.sh" >&2
        exit 1
    fi
    echo "$found"
}
REDIS=$(tool redis-server)
MOSQUITTO=$(tool mosquitto)
KAMAILIO=$(tool kamailio)
[ -x "$PY" ] || { echo "run-local: no $PY: run make venv" >&2; exit 1; }

pids=()
stop_all() {
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    echo "run-local: stopped; logs in $WORK"
}
trap stop_all EXIT INT TERM

"$REDIS" --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" \
    >"$WORK/redis.log" 2>&1 &
pids+=($!)

printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$MQTT_PORT" \
    >"$WORK/mosquitto.conf"
"$MOSQUITTO" -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
pids+=($!)

: >"$WORK/dispatcher.list"
for n in 1 2; do
    port=${NODE_PORTS[$((n - 1))]}
    # gwN on its own port, with its own share of DIDs for Redis outages;
    # the front is the node's only front: requests from it are judged by X-Gateway-Source
    sed -e "s/^  name: gw1$/  name: gw$n/" \
        -e "s/^  # fronts: .*$/  fronts: ['127.0.0.1:$FRONT_PORT']/" \
        -e "s/port: 5060 }/port: $port }/" \
        -e "s/^    window_s: 3600$/    window_s: 3600\n    outage_dids: [\"+1555555029$n\"]/" \
        "$ROOT/dialplans/example.yaml" >"$WORK/gw$n.yaml"
    echo "1 sip:127.0.0.1:$port 0 0" >>"$WORK/dispatcher.list"
    GATEWAY_STORE="redis://127.0.0.1:$REDIS_PORT/0" \
    GATEWAY_NONCE_SECRET="$SECRET" \
    GATEWAY_DATA_DIR="$WORK/gw$n" \
    GATEWAY_MQTT_URL="mqtt://127.0.0.1:$MQTT_PORT" \
    GATEWAY_METRICS_ADDR="127.0.0.1:$((METRICS_PORT + n - 1))" \
    GATEWAY_LOG_FORMAT=console \
        "$PY" -m gateway run --dialplan "$WORK/gw$n.yaml" >"$WORK/gw$n.log" 2>&1 &
    pids+=($!)
done

"$KAMAILIO" -DD -E -f "$ROOT/deploy/kamailio/cluster.cfg" \
    -A "FRONT_PORT=$FRONT_PORT" -A "DISPATCHER_LIST=\"$WORK/dispatcher.list\"" \
    -w "$WORK" -Y "$WORK" -P "$WORK/kamailio.pid" -m 256 -M 8 \
    >"$WORK/kamailio.log" 2>&1 &
pids+=($!)

echo "run-local: front udp/tcp 127.0.0.1:$FRONT_PORT -> gw1 :${NODE_PORTS[0]}, gw2 :${NODE_PORTS[1]};" \
    "redis :$REDIS_PORT; mqtt :$MQTT_PORT; logs in $WORK (Ctrl-C stops)"
# stay up until one of them stops, or Ctrl-C
wait -n "${pids[@]}"
echo "run-local: a process ended; see the logs in $WORK" >&2
