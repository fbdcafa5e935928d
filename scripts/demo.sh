#!/usr/bin/env bash
# `make demo`: a real orchestrator and a real runner on loopback, a real npm
# package added with `fangs package add`, and its first scan followed live
# until it becomes the package's baseline.  Run after `make setup` (venv,
# dockerd, the sandbox image); the runner needs root for BPF and Docker.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO/.venv}"
PACKAGE="${FANGS_DEMO_PACKAGE:-is-number}"
PORT="${FANGS_DEMO_PORT:-18443}"
WORK="$(mktemp -d /tmp/fangs-demo-XXXXXX)"
URL="http://127.0.0.1:$PORT"
export FANGS_ORCHESTRATOR="$URL"
export PATH="$VENV/bin:$PATH"
FANGS="$VENV/bin/fangs"
[ -x "$FANGS" ] || FANGS="$VENV/bin/python -m fangs.cli"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

ORCH_PID=""
RUNNER_PID=""
cleanup() {
    status=$?
    for pid in $RUNNER_PID $ORCH_PID; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        fi
    done
    echo
    echo "logs:  $WORK/orchestrator.log"
    echo "       $WORK/runner.log"
    echo "db:    $WORK/fangs.db"
    exit $status
}
trap cleanup EXIT INT TERM

if [ "$(id -u)" != 0 ]; then
    echo "demo: the runner needs root (BPF, cgroups, Docker); run as root after 'make setup'" >&2
    exit 1
fi

say "starting the orchestrator on $URL (logs in $WORK)"
"$VENV/bin/twistd" -n --pidfile= --logfile="$WORK/orchestrator.log" fangs-orchestrator \
    --addr "127.0.0.1:$PORT" --db "$WORK/fangs.db" --watch-interval 0 &
ORCH_PID=$!
for _ in $(seq 100); do
    $FANGS status >/dev/null 2>&1 && break
    kill -0 "$ORCH_PID" 2>/dev/null || { echo "orchestrator exited; see $WORK/orchestrator.log" >&2; tail -20 "$WORK/orchestrator.log" >&2; exit 1; }
    sleep 0.2
done

say "starting a runner (demo-runner)"
"$VENV/bin/twistd" -n --pidfile= --logfile="$WORK/runner.log" fangs-runner \
    --orchestrator "$URL" --runner-id demo-runner &
RUNNER_PID=$!
for _ in $(seq 150); do
    if $FANGS --json status 2>/dev/null | grep -q '"runner_id": "demo-runner"'; then break; fi
    kill -0 "$RUNNER_PID" 2>/dev/null || { echo "runner exited; see $WORK/runner.log" >&2; tail -20 "$WORK/runner.log" >&2; exit 1; }
    sleep 0.2
done
$FANGS status

say "fangs package add $PACKAGE --wait   (kickoff scan of the latest version, followed live)"
set +e
$FANGS package add "$PACKAGE" --wait
rc=$?
set -e
case $rc in
    0) echo "(exit 0: the run has a verdict and it is clean or the new baseline)";;
    4) echo "(exit 4: deviations found; see fangs pending)";;
    *) echo "(exit $rc: the run did not finish well; see the logs below)"; exit $rc;;
esac

RUN_ID="$($FANGS --json run list --package "$PACKAGE" --limit 1 | "$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)[0]["run_id"])')"

say "fangs run show ${RUN_ID:0:12}"
$FANGS run show "${RUN_ID:0:12}"

say "fangs package list"
$FANGS package list

say "fangs baseline show $PACKAGE"
$FANGS baseline show "$PACKAGE"

say "done: the first run of $PACKAGE is its baseline; later releases are diffed against it"
