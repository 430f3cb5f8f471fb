#!/usr/bin/env bash
# Soak: Interlock under moderate, steady wrk load (JSON and streaming at once) for SOAK_SECONDS,
# recording its RSS every SOAK_INTERVAL seconds. Memory must stay flat: the verdict compares the
# RSS after the first minute with the end, and fits a slope over the second half.
#
#   bench/soak.sh                       # 10 minutes
#   SOAK_SECONDS=60 bench/soak.sh       # a short check
#
# Knobs: SOAK_SECONDS=600 SOAK_INTERVAL=10 SOAK_PORT=18093 (Interlock), MOCK_PORT=18080,
#   SOAK_JSON_CONNS=2 SOAK_JSON_DELAY_MS=10 SOAK_STREAM_CONNS=1 SOAK_STREAM_DELAY_MS=20
#   (each wrk connection waits DELAY_MS between requests: an open-ish, moderate load of roughly
#   conns * 1000 / (delay + latency) req/s, well under Interlock's capacity), PEERS_HOME.
# Starts the mock if it is not running (and stops it again), starts and stops its own Interlock.
# Output: bench/results/soak-<time>/{rss.tsv,soak.md,wrk-*.txt,interlock-access.log.gz}; prints soak.md.
set -u
HERE=$(cd "$(dirname "$0")" && pwd -P)
REPO=$(dirname "$HERE")
SHARED=$(cd "${SHARED_BENCH:-$REPO/../shared/bench}" && pwd -P) || exit 2
export PEERS_HOME=${PEERS_HOME:-/tmp/interlock-peers}
SECONDS_TOTAL=${SOAK_SECONDS:-600}; INTERVAL=${SOAK_INTERVAL:-10}; PORT=${SOAK_PORT:-18093}
JC=${SOAK_JSON_CONNS:-2}; JD=${SOAK_JSON_DELAY_MS:-10}; SC=${SOAK_STREAM_CONNS:-1}; SD=${SOAK_STREAM_DELAY_MS:-20}
export MOCK_PORT=${MOCK_PORT:-18080} INTERLOCK_BENCH_UPSTREAM_KEY=sk-mock-upstream
OUT=$HERE/results/soak-$(date +%Y%m%d-%H%M%S); mkdir -p "$OUT"
PY=$REPO/.venv/bin/python
URL=http://127.0.0.1:$PORT/v1/chat/completions
KEY=sk-bench-0123456789abcdef

NGINX_PIDFILE=$PEERS_HOME/nginx/logs/nginx.pid
mock_was_up=0; [ -f "$NGINX_PIDFILE" ] && kill -0 "$(cat "$NGINX_PIDFILE")" 2>/dev/null && mock_was_up=1
IL_PID=""; WRK_PIDS=()
cleanup() {
  for p in "${WRK_PIDS[@]}"; do kill "$p" 2>/dev/null; done
  if [ -n "$IL_PID" ] && kill -0 "$IL_PID" 2>/dev/null; then
    kill -TERM "$IL_PID"; for _ in $(seq 100); do kill -0 "$IL_PID" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$IL_PID" 2>/dev/null && kill -KILL "$IL_PID"
  fi
  [ $mock_was_up = 1 ] || "$SHARED/stop.sh" mock > /dev/null 2>&1
}
trap 'echo interrupted; cleanup; exit 130' INT TERM

main() {  # NOTE: one function, so bash has parsed it all before it runs (edits mid-run are safe)
[ $mock_was_up = 1 ] || "$SHARED/start.sh" mock > "$OUT/mock.txt" || { echo "mock did not start"; exit 1; }
( cd "$REPO" && exec "$PY" -m runtime.cli serve bench/interlock-bench.yaml --bind "127.0.0.1:$PORT" --no-watch ) \
  > /dev/null 2> "$OUT/interlock-access.log" &
IL_PID=$!
for _ in $(seq 300); do
  [ "$(curl --noproxy '*' -s -o /dev/null -w '%{http_code}' -m 5 -H 'content-type: application/json' \
       -H "authorization: Bearer $KEY" -d '{"model":"gpt-mock","messages":[{"role":"user","content":"hi"}]}' "$URL")" = 200 ] && break
  kill -0 "$IL_PID" 2>/dev/null || { echo "Interlock exited"; tail "$OUT/interlock-access.log"; cleanup; exit 1; }
  sleep 0.1
done

# chat.lua + a fixed pause before each request (wrk calls the global `delay`)
cat > "$OUT/soak.lua" <<EOF
dofile("$SHARED/chat.lua")
local pause = tonumber(os.getenv("DELAY_MS") or "0")
function delay() return pause end
EOF
run_wrk() { # label model stream conns delay
  env MODEL="$2" STREAM="$3" AUTH=$KEY LABEL="$1" DELAY_MS="$5" \
    wrk -t1 -c"$4" -d"${SECONDS_TOTAL}s" --timeout 10s --latency -s "$OUT/soak.lua" "$URL" > "$OUT/wrk-$1.txt" 2>&1 &
  WRK_PIDS+=($!)
}
echo "soak: ${SECONDS_TOTAL}s, JSON ${JC} conns (+${JD} ms pause), stream ${SC} conns (+${SD} ms pause), RSS every ${INTERVAL}s"
printf 't_s\trss_mb\thwm_mb\tcpu_s\tfds\n' > "$OUT/rss.tsv"
sample() { # t
  local st; st=$(sed 's/.*) //' "/proc/$IL_PID/stat")
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" \
    "$(awk '/^VmRSS/{printf "%.1f", $2/1024}' "/proc/$IL_PID/status")" \
    "$(awk '/^VmHWM/{printf "%.1f", $2/1024}' "/proc/$IL_PID/status")" \
    "$(echo "$st" | awk -v hz="$(getconf CLK_TCK)" '{printf "%.1f", ($12+$13)/hz}')" \
    "$(ls "/proc/$IL_PID/fd" | wc -l)" >> "$OUT/rss.tsv"
}
sample 0
run_wrk json gpt-mock 0 "$JC" "$JD"
run_wrk stream gpt-mock-stream 1 "$SC" "$SD"
start=$(date +%s)
while :; do
  sleep "$INTERVAL"
  now=$(( $(date +%s) - start ))
  kill -0 "$IL_PID" 2>/dev/null || { echo "Interlock died at ${now}s"; cleanup; exit 1; }
  sample "$now"
  [ "$now" -ge "$SECONDS_TOTAL" ] && break
done
for p in "${WRK_PIDS[@]}"; do wait "$p"; done; WRK_PIDS=()
sleep 1; sample "$(( $(date +%s) - start ))"
cleanup; IL_PID=""
gzip -f "$OUT/interlock-access.log"

python3 - "$OUT" > "$OUT/soak.md" <<'PY'
import sys, pathlib
out = pathlib.Path(sys.argv[1])
rows = [l.split("\t") for l in (out / "rss.tsv").read_text().splitlines()[1:]]
t = [int(r[0]) for r in rows]; rss = [float(r[1]) for r in rows]; fds = [int(r[4]) for r in rows]
def result(name):
    text = (out / f"wrk-{name}.txt").read_text()
    line = next((l for l in text.splitlines() if l.startswith("RESULT")), "")
    return dict(kv.split("=", 1) for kv in line.split()[1:])
j, s = result("json"), result("stream")
def errs(r): return sum(int(r.get(k, 0)) for k in ("non2xx", "connect_err", "read_err", "write_err", "timeouts"))
base_i = next((i for i, x in enumerate(t) if x >= 60), 1 if len(t) > 1 else 0)
half = [(x, y) for x, y in zip(t, rss) if x >= t[-1] / 2]
n = len(half); slope = 0.0
if n >= 2:
    mx = sum(x for x, _ in half) / n; my = sum(y for _, y in half) / n
    den = sum((x - mx) ** 2 for x, _ in half)
    slope = sum((x - mx) * (y - my) for x, y in half) / den * 60 if den else 0.0
growth = rss[-1] - rss[base_i]
flat = abs(growth) <= max(2.0, 0.05 * rss[base_i]) and abs(slope) < 0.2
print(f"Soak: {t[-1]} s; JSON {j.get('rps', '?')} req/s (p50 {j.get('p50', '?')} ms, p99 {j.get('p99', '?')} ms, "
      f"errors {errs(j)}), stream {s.get('rps', '?')} req/s (p99 {s.get('p99', '?')} ms, errors {errs(s)}).\n")
print(f"RSS: {rss[0]:.1f} MB at start, {rss[base_i]:.1f} MB at {t[base_i]} s, {rss[-1]:.1f} MB at the end "
      f"(max {max(rss):.1f}); growth after warm-up {growth:+.1f} MB; slope over the second half "
      f"{slope:+.2f} MB/min; open fds {fds[0]} -> {fds[-1]}. Verdict: **{'flat' if flat else 'NOT flat'}**.\n")
step = max(1, len(rows) // 20)
print("| t (s) | RSS MB | peak MB | CPU s | fds |\n|---|---|---|---|---|")
for i, r in enumerate(rows):
    if i % step == 0 or i == len(rows) - 1:
        print("| " + " | ".join(r) + " |")
PY
cat "$OUT/soak.md"
echo "results: $OUT"
}

main "$@"
