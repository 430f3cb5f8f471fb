#!/usr/bin/env bash
# Interlock vs direct, LiteLLM and Portkey in ONE run, governance off and on, plus Interlock's own
# extras (cold start, RSS, upstream-client comparison, per-stage profile). One command:
#
#   bench/run.sh             # full: ~10 min harness + ~2 x ~3 min more Interlock rows + ~3 min extras
#   QUICK=1 bench/run.sh     # plumbing check: ~4 min harness + ~2 x ~1.5 min rows + ~1.5 min extras
#
# It installs what it needs (the shared harness's install.sh; the repo venv with `pip install -e .`
# if it is missing; matplotlib, the `bench` extra; py-spy in PEERS_HOME/bench-venv), starts the
# nginx mock, measures cold start (governance off and on), then:
#   1. Interlock on bench/interlock-bench.yaml (JSON access log to a file, as in production) as the
#      shared harness's candidate, next to direct, LiteLLM and Portkey          -> harness/
#   2. Interlock + governance: the same file plus interlock-bench-governance.yaml (a managed key,
#      an rpm + tpm limit on the memory backend, the SQLite usage ledger), served as one config
#      directory; the harness's smoke, load and probe again with it as the candidate (and direct
#      in the probe, for added latency)                                          -> harness-governed/
#   3. Interlock --workers 2 (governance off; WORKERS_ROW=0 skips it), the same way -> harness-workers/
# recording each one's RSS, then runs the extras (clients.py, stages.py --profile, variants.py),
# stops the mock (if it started it), and writes bench/results/<time>/: summary.md (side-by-side
# ratio tables against Portkey and LiteLLM, governance off and on), comparison.png (unpinned) and
# comparison-pinned.png (bench/chart.py), and prints the harness report and summary.md.
# The shared harness takes one candidate per run; it is not edited, only run again (load.sh,
# ttfb.py, report.py) for rows 2 and 3.
#
# Knobs (environment): QUICK=1, and everything the harness takes (DURATION, CONNS, REPEAT,
# PIN_MODES, TARGETS, ...; see ../shared/bench/README.md), plus:
#   PEERS_HOME=/tmp/interlock-peers   harness state (venvs, node_modules, logs)
#   SHARED_BENCH=<repo>/../shared/bench   the harness
#   INTERLOCK_PORT=18090              where the benchmarked Interlock listens
#   EXTRAS=1                          0 skips clients.py, stages.py and variants.py
#   COLDSTART_RUNS=5
#   VARIANT_ROUNDS=3                  interleaved rounds of variants.py compare (the floor ladder)
#   WORKERS_ROW=2                     the --workers of row 3; 0 skips the row
#   GOVERNED_ROW=1                    0 skips row 2
#   QUIET_LOAD=                       e.g. 1.0: first wait (up to QUIET_WAIT_S=300) for the 1-min
#                                     load average to drop below this (a shared box is noisy)
set -u
HERE=$(cd "$(dirname "$0")" && pwd -P)
REPO=$(dirname "$HERE")
SHARED=${SHARED_BENCH:-$REPO/../shared/bench}
[ -x "$SHARED/run.sh" ] || { echo "shared harness not found at $SHARED (set SHARED_BENCH)" >&2; exit 2; }
SHARED=$(cd "$SHARED" && pwd -P)
export PEERS_HOME=${PEERS_HOME:-/tmp/interlock-peers}
PORT=${INTERLOCK_PORT:-18090}
MOCK_PORT=${MOCK_PORT:-18080}
EXTRAS=${EXTRAS:-1}
COLDSTART_RUNS=${COLDSTART_RUNS:-5}
WORKERS_ROW=${WORKERS_ROW:-2}
GOVERNED_ROW=${GOVERNED_ROW:-1}
STAMP=$(date +%Y%m%d-%H%M%S)
OUT=$HERE/results/$STAMP
HARNESS_OUT=$PEERS_HOME/results/interlock-$STAMP
PY=$REPO/.venv/bin/python
TOOLS=$PEERS_HOME/bench-venv
EXTRA=$PEERS_HOME/bench-extra
BENCH_KEY=sk-bench-0123456789abcdef         # the route matches "Bearer sk-bench-"
export MOCK_PORT INTERLOCK_BENCH_UPSTREAM_KEY=sk-mock-upstream
GOV_CONFIG=$OUT/config-governed   # a config directory: the bench file + the governance file
USAGE_DB=$PEERS_HOME/bench-usage-$STAMP.db
mkdir -p "$OUT" "$GOV_CONFIG"
cp "$HERE/interlock-bench.yaml" "$HERE/interlock-bench-governance.yaml" "$GOV_CONFIG/"

log() { printf '== %s\n' "$*"; }
die() { echo "run.sh: $*" >&2; cleanup; exit 1; }

main() {  # NOTE: one function, so bash has parsed it all before it runs (edits mid-run are safe)
# --- install -----------------------------------------------------------------------------------
log "install (shared harness; idempotent)"
"$SHARED/install.sh" > "$OUT/install.txt" 2>&1 || { tail -20 "$OUT/install.txt"; exit 1; }
tail -1 "$OUT/install.txt"

if [ ! -x "$PY" ]; then
  log "creating $REPO/.venv"
  python3 -m venv "$REPO/.venv" || exit 1
fi
if ! (cd / && "$PY" -c 'import runtime.server, compiler' 2>/dev/null); then
  log "pip install -e $REPO"
  "$PY" -m pip install -q --disable-pip-version-check -e "$REPO" > "$OUT/pip.txt" 2>&1 ||
    { tail -20 "$OUT/pip.txt"; exit 1; }
fi
"$PY" -c 'import matplotlib' 2>/dev/null || {
  log "matplotlib (the bench extra, for comparison.png)"
  "$PY" -m pip install -q --disable-pip-version-check 'matplotlib>=3.7' > "$OUT/pip-bench.txt" 2>&1 ||
    { tail "$OUT/pip-bench.txt"; log "no matplotlib: no comparison.png"; }
}
if [ "$EXTRAS" = 1 ]; then
  "$PY" -c 'import httpx_aiohttp, aiohttp, httpx2' 2>/dev/null ||
    "$PY" -m pip install -q --disable-pip-version-check httpx-aiohttp httpx2 || exit 1
  if [ ! -x "$TOOLS/bin/py-spy" ]; then
    log "py-spy into $TOOLS"
    python3 -m venv "$TOOLS" && "$TOOLS/bin/pip" install -q --disable-pip-version-check py-spy || exit 1
  fi
  if [ ! -d "$EXTRA/uvicorn" ] || [ ! -d "$EXTRA/httptools" ]; then  # for variants.py only
    log "uvicorn + httptools into $EXTRA (not gateway dependencies)"
    "$PY" -m pip install -q --disable-pip-version-check --no-deps --target "$EXTRA" \
      uvicorn httptools click > "$OUT/pip-extra.txt" 2>&1 || { tail "$OUT/pip-extra.txt"; exit 1; }
  fi
fi
{ git -C "$REPO" rev-parse HEAD; git -C "$REPO" status --short; echo "diff sha256: $(git -C "$REPO" diff | sha256sum | cut -c1-16)"; } \
  > "$OUT/git.txt" 2>&1

# --- processes ---------------------------------------------------------------------------------
NGINX_PIDFILE=$PEERS_HOME/nginx/logs/nginx.pid
mock_was_up=0; [ -f "$NGINX_PIDFILE" ] && kill -0 "$(cat "$NGINX_PIDFILE")" 2>/dev/null && mock_was_up=1
IL_PID=""; SAMPLER_PID=""

stop_interlock() {
  [ -n "$IL_PID" ] && kill -0 "$IL_PID" 2>/dev/null || return 0
  kill -TERM "$IL_PID"
  for _ in $(seq 100); do kill -0 "$IL_PID" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$IL_PID" 2>/dev/null && kill -KILL "$IL_PID"
  wait "$IL_PID" 2>/dev/null; IL_PID=""
}
cleanup() {
  [ -n "$SAMPLER_PID" ] && kill "$SAMPLER_PID" 2>/dev/null; SAMPLER_PID=""
  stop_interlock
  [ $mock_was_up = 1 ] || "$SHARED/stop.sh" mock > /dev/null 2>&1
}
trap 'echo "interrupted"; cleanup; exit 130' INT TERM

wait_quiet() {
  [ -n "${QUIET_LOAD:-}" ] || return 0
  local waited=0 max=${QUIET_WAIT_S:-300} load
  while :; do
    load=$(cut -d' ' -f1 /proc/loadavg)
    awk -v l="$load" -v q="$QUIET_LOAD" 'BEGIN{exit !(l < q)}' && break
    [ "$waited" -ge "$max" ] && { log "load average still $load after ${max}s; going on"; break; }
    [ $((waited % 30)) = 0 ] && log "waiting for load average < $QUIET_LOAD (now $load)"
    sleep 5; waited=$((waited + 5))
  done
}

start_interlock() { # NAME CONFIG [serve args] -> IL_PID; stderr (the JSON access log) to $OUT/NAME-access.log
  local name=$1 config=$2; shift 2
  # NOTE: --no-watch: the config's folder (bench/) holds results/, where this run writes the
  # access log; a watcher would wake on every flush.
  ( cd "$REPO" && INTERLOCK_BENCH_USAGE_DB=$USAGE_DB exec "$PY" -m runtime.cli serve "$config" \
      --bind "127.0.0.1:$PORT" --no-watch "$@" ) > "$OUT/$name-stdout.log" 2> "$OUT/$name-access.log" &
  IL_PID=$!
  for _ in $(seq 300); do
    kill -0 "$IL_PID" 2>/dev/null || { tail -20 "$OUT/$name-access.log"; return 1; }
    code=$(curl --noproxy '*' -s -o /dev/null -w '%{http_code}' -m 5 -H 'content-type: application/json' \
      -H "authorization: Bearer $BENCH_KEY" -d '{"model":"gpt-mock","messages":[{"role":"user","content":"hi"}]}' \
      "http://127.0.0.1:$PORT/v1/chat/completions")
    [ "$code" = 200 ] && return 0
    sleep 0.1
  done
  return 1
}

rss_line() { # PID: RSS of it and its children (a --workers supervisor's workers)
  local files=("/proc/$1/status") c
  for c in $(ps -o pid= --ppid "$1"); do [ -r "/proc/$c/status" ] && files+=("/proc/$c/status"); done
  awk '/^VmRSS/{r+=$2}/^VmHWM/{h+=$2}END{printf "%.1f MB (peak %.1f MB)", r/1024, h/1024}' "${files[@]}"
}

# harness_more NAME DIR: the shared harness's smoke, load, probe and report again, with the running
# Interlock (IL_PID) as the only candidate and direct in the probe (added latency needs it).
harness_more() {
  ( export CANDIDATE_NAME=$1 OUTDIR=$2 TARGETS=candidate CANDIDATE_PID=$IL_PID \
      CANDIDATE_URL="http://127.0.0.1:$PORT/v1/chat/completions" CANDIDATE_MODEL=gpt-mock \
      CANDIDATE_STREAM_MODEL=gpt-mock-stream CANDIDATE_KEY=$BENCH_KEY
    . "$SHARED/common.sh"
    mkdir -p "$OUTDIR"
    TARGETS="direct candidate" "$SHARED/smoke.sh" > "$OUTDIR/smoke.txt" ||
      { cat "$OUTDIR/smoke.txt"; exit 1; }
    "$SHARED/load.sh" > "$OUTDIR/load.txt" 2>&1 || { tail "$OUTDIR/load.txt"; exit 1; }
    for p in $PIN_MODES; do
      pin "$p"
      echo "== sequential probe, $p" >> "$OUTDIR/ttfb.txt"
      $(client_cmd "$p") python3 "$SHARED/ttfb.py" --n "$TTFB_N" --warmup "$TTFB_WARMUP" \
        --targets direct,candidate --json-out "$OUTDIR/ttfb_$p.json" >> "$OUTDIR/ttfb.txt" || exit 1
    done
    pin unpinned
    write_meta "$OUTDIR"
    python3 "$SHARED/report.py" "$OUTDIR" > /dev/null
  )
}

# one_more NAME LABEL CONFIG [serve args]: start Interlock, harness_more, RSS, stop
one_more() {
  local name=$1 label=$2 config=$3; shift 3
  wait_quiet
  log "$label: starting Interlock (${config#"$REPO"/} $*)"
  start_interlock "$name" "$config" "$@" || die "$label: Interlock did not answer 200"
  echo "$label: RSS after start + 1 request: $(rss_line "$IL_PID")" | tee "$OUT/rss-$name.txt"
  log "$label: the harness's smoke, load and probe (direct in the probe)"
  harness_more "$label" "$OUT/harness-${name#interlock-}" > "$OUT/harness-$name.txt" 2>&1 ||
    { tail -30 "$OUT/harness-$name.txt"; die "$label: the harness failed"; }
  kill -0 "$IL_PID" 2>/dev/null || die "$label: Interlock died during the load (see $OUT/$name-access.log)"
  echo "$label: RSS after the load run: $(rss_line "$IL_PID")" | tee -a "$OUT/rss-$name.txt"
  stop_interlock
  gzip -f "$OUT/$name-access.log"
}

# --- run ---------------------------------------------------------------------------------------
wait_quiet
log "mock"
"$SHARED/start.sh" mock | tee "$OUT/mock.txt"

log "cold start (${COLDSTART_RUNS} starts)"
"$PY" "$HERE/coldstart.py" --runs "$COLDSTART_RUNS" --json-out "$OUT/coldstart.json" \
  | tee "$OUT/coldstart.md" || die "cold start failed"
if [ "$GOVERNED_ROW" = 1 ]; then
  log "cold start, governance on (${COLDSTART_RUNS} starts)"
  INTERLOCK_BENCH_USAGE_DB=$PEERS_HOME/bench-usage-coldstart.db "$PY" "$HERE/coldstart.py" \
    --runs "$COLDSTART_RUNS" --config "$GOV_CONFIG" --json-out "$OUT/coldstart-governed.json" \
    > "$OUT/coldstart-governed.md" || die "cold start (governance on) failed"
  rm -f "$PEERS_HOME"/bench-usage-coldstart.db*
  sed -n '/first 200/p' "$OUT/coldstart-governed.md"
fi

log "starting Interlock on 127.0.0.1:$PORT (access log: $OUT/interlock-access.log)"
start_interlock interlock "$REPO/bench/interlock-bench.yaml" || die "Interlock did not answer 200"
echo "interlock pid $IL_PID, RSS after start + 1 request: $(rss_line "$IL_PID")" | tee "$OUT/rss.txt"

( while :; do echo "$(date +%s) $(cut -d' ' -f1-3 /proc/loadavg)"; sleep 5; done ) > "$OUT/loadavg.txt" &
SAMPLER_PID=$!

log "shared harness (direct, interlock, litellm, portkey)"
CANDIDATE_NAME=interlock CANDIDATE_URL="http://127.0.0.1:$PORT/v1/chat/completions" \
CANDIDATE_MODEL=gpt-mock CANDIDATE_STREAM_MODEL=gpt-mock-stream CANDIDATE_KEY=$BENCH_KEY \
CANDIDATE_PID=$IL_PID OUTDIR=$HARNESS_OUT "$SHARED/run.sh" > "$OUT/harness.txt" 2>&1
harness_rc=$?
kill -0 "$IL_PID" 2>/dev/null || die "Interlock died during the harness run (see $OUT/interlock-access.log)"
echo "interlock RSS after the load run: $(rss_line "$IL_PID")" | tee -a "$OUT/rss.txt"
stop_interlock
cp -r "$HARNESS_OUT" "$OUT/harness"
[ $harness_rc = 0 ] || { tail -30 "$OUT/harness.txt"; die "the harness failed (rc $harness_rc)"; }

# NOTE: the peers are stopped now (the harness stops what it started); the mock keeps running.
if [ "$GOVERNED_ROW" = 1 ]; then
  rm -f "$USAGE_DB"*
  one_more interlock-governed "interlock + governance" "$GOV_CONFIG"
  "$PY" - "$USAGE_DB" "$OUT/harness-governed/wrk.tsv" <<'PY' | tee -a "$OUT/rss-interlock-governed.txt"
import csv, sqlite3, sys
rows = sqlite3.connect(sys.argv[1]).execute("SELECT count(*) FROM usage_records").fetchone()[0]
measured = sum(int(r["requests"]) for r in csv.DictReader(open(sys.argv[2]), delimiter="\t"))
print(f"usage ledger: {rows} rows in SQLite (measured wrk requests: {measured}; plus warm-ups and probes)")
PY
  rm -f "$USAGE_DB"*
fi
if [ "$WORKERS_ROW" != 0 ]; then
  one_more interlock-workers "interlock --workers $WORKERS_ROW" "$REPO/bench/interlock-bench.yaml" \
    --workers "$WORKERS_ROW"
fi
kill "$SAMPLER_PID" 2>/dev/null; SAMPLER_PID=""

if [ "$EXTRAS" = 1 ]; then
  secs=5; [ "${QUICK:-0}" = 1 ] && secs=2
  log "upstream HTTP clients (client pinned to CPU ${PROXY_CPUS:-1}, ${secs}s per cell)"
  "$PY" "$HERE/clients.py" --seconds "$secs" --pin "${PROXY_CPUS:-1}" \
    --mock "http://127.0.0.1:$MOCK_PORT" --json-out "$OUT/clients.json" 2> "$OUT/clients.log" \
    | tee "$OUT/clients.md"
  log "stages: in-process timings + py-spy profile under load"
  "$PY" "$HERE/stages.py" --profile --py-spy "$TOOLS/bin/py-spy" --seconds "$((secs + 3))" \
    --json-out "$OUT/stages.json" > "$OUT/stages.md" 2> "$OUT/stages.log"
  sed -n '1,/^### Profile/p' "$OUT/stages.md"
  log "variants: the floor ladder (Hypercorn alone, + aiohttp, + pipeline, + governance; uvicorn)"
  "$PY" "$HERE/variants.py" compare --seconds "$secs" --rounds "${VARIANT_ROUNDS:-3}" \
    --extra-path "$EXTRA" --json-out "$OUT/variants.json" > "$OUT/variants.md" 2> "$OUT/variants.log"
  cat "$OUT/variants.md"
fi

cleanup
lines=$(wc -l < "$OUT/interlock-access.log")
gzip -f "$OUT/interlock-access.log"
echo "access log: $lines lines ($OUT/interlock-access.log.gz)" >> "$OUT/rss.txt"

"$PY" "$HERE/summary.py" "$OUT" > "$OUT/summary.md" || echo "summary failed"
if "$PY" -c 'import matplotlib' 2>/dev/null; then
  "$PY" "$HERE/chart.py" "$OUT" > /dev/null || echo "chart failed"
  case " ${PIN_MODES:-unpinned pinned} " in *" pinned "*)
    "$PY" "$HERE/chart.py" "$OUT" --pin pinned --out "$OUT/comparison-pinned.png" > /dev/null ||
      echo "chart (pinned) failed";;
  esac
fi
cat "$OUT/harness/report.md"
echo
cat "$OUT/summary.md"
log "results: $OUT (chart: $OUT/comparison.png)"
}

main "$@"
