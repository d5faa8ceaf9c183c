#!/usr/bin/env bash
# Side by side: Mosquitto (persistence off, the reference) and PromptMQ in each sync mode, on
# loopback, the same promptmq-bench scenarios one after the other in one run.
# Usage: benches/compare.sh [SECONDS]   (default 5 s per scenario)
# Needs: mosquitto (apt-get install mosquitto). Prints a Markdown table with the JSON lines.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
cargo build --release -q -p promptmq-bin -p promptmq-benches
bench=target/release/promptmq-bench
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }

scenarios=(
  "qos0 fan-in|--publishers 4 --subscribers 1 --qos 0"
  "qos1 fan-in|--publishers 4 --subscribers 1 --qos 1"
  "qos1 fan-out 1->100|--publishers 1 --subscribers 100 --qos 1 --rate 500"
  "qos2|--publishers 4 --subscribers 1 --qos 2"
)

run_target() { # name, port
  local name=$1 port=$2 qos1_rate=0
  for s in "${scenarios[@]}"; do
    local label=${s%%|*} args=${s#*|}
    local out
    out=$($bench --port "$port" --duration "$secs" $args 2>&1 | tail -1)
    echo "$name|$label|$out"
    if [ "$label" = "qos1 fan-in" ]; then
      qos1_rate=$(python3 -c 'import json,sys; print(int(json.loads(sys.argv[1])["receive_rate"]))' "$out" 2>/dev/null || echo 0)
    fi
  done
  # Latency at half of this broker's own measured QoS 1 fan-in maximum (4 publishers).
  if [ "$qos1_rate" -gt 0 ]; then
    local per_pub=$(( qos1_rate / 2 / 4 ))
    local out
    out=$($bench --port "$port" --duration "$secs" --publishers 4 --subscribers 1 --qos 1 --rate "$per_pub" 2>&1 | tail -1)
    echo "$name|qos1 fan-in at 50% ($(( per_pub * 4 )) msg/s)|$out"
  fi
}

results=()
mport=$(free_port)
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$mport" > "$work/mosquitto.conf"
mosquitto -c "$work/mosquitto.conf" > "$work/mosquitto.log" 2>&1 &
mpid=$!
wait_port "$mport"
while IFS= read -r l; do results+=("$l"); done < <(run_target mosquitto "$mport")
kill $mpid; wait $mpid 2>/dev/null || true

for mode in always interval:5 none; do
  port=$(free_port)
  target/release/promptmq serve --listen "127.0.0.1:$port" --data-dir "$work/data-${mode%%:*}" --sync "$mode" --log warn --metrics-listen 127.0.0.1:0 > "$work/promptmq.log" 2>&1 &
  ppid=$!
  wait_port "$port"
  while IFS= read -r l; do results+=("$l"); done < <(run_target "promptmq sync=$mode" "$port")
  kill $ppid; wait $ppid 2>/dev/null || true
done

echo "| broker | scenario | sent msg/s | received msg/s | p50 ms | p99 ms | lost | dups |"
echo "|---|---|---|---|---|---|---|---|"
for r in "${results[@]}"; do
  IFS='|' read -r name label json <<< "$r"
  python3 - "$name" "$label" "$json" <<'PY'
import json, sys
name, label, raw = sys.argv[1:4]
try:
    j = json.loads(raw)
    print(f"| {name} | {label} | {j['send_rate']:.0f} | {j['receive_rate']:.0f} | {j['latency_ms']['p50']:.2f} | {j['latency_ms']['p99']:.2f} | {j['lost']} | {j['duplicates']} |")
except Exception:
    print(f"| {name} | {label} | failed: {raw[:80]} | | | | | |")
PY
done
