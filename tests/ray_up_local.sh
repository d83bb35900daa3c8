#!/usr/bin/env bash
# `ray up` of cluster/local.yaml against an sshd on 127.0.0.1, run by tests/test_cluster_local.py inside
# fresh PID, network and mount namespaces (unshare), so its `ray stop`, ports and mounts touch nothing outside.
# Usage: ray_up_local.sh WORKDIR VENV REPO SWEEP_FILE
set -euo pipefail
WORK=$1 VENV=$2 REPO=$3 SWEEP=$4
# This script's own commands (ray up/exec/down, the probes) decide Ray's auth mode explicitly; no login or
# token from the caller's environment leaks in.
unset MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD RAY_AUTH_TOKEN RAY_AUTH_TOKEN_PATH RAY_ADDRESS
export RAY_AUTH_MODE=disabled PATH="$VENV/bin:$PATH"
ip link set lo up
# Ray's files in this namespace only: /tmp/ray (sessions, the local provider's cluster state) and ~/.ray,
# which holds a stray auth_token with a wrong token: the cluster must not pick it up (DESIGN.md).
mkdir -p "$WORK/tmp-ray" "$WORK/dot-ray" /tmp/ray "$HOME/.ray"
mount --bind "$WORK/tmp-ray" /tmp/ray
printf '%064d\n' 7 > "$WORK/dot-ray/auth_token"
mount --bind "$WORK/dot-ray" "$HOME/.ray"
mkdir -p /run/sshd
ssh-keygen -q -t ed25519 -N "" -f "$WORK/host_key"
ssh-keygen -q -t ed25519 -N "" -f "$WORK/user_key"
cp "$WORK/user_key.pub" "$WORK/authorized_keys"
/usr/sbin/sshd -f /dev/null -o ListenAddress=127.0.0.1 -o Port=2222 -o HostKey="$WORK/host_key" \
  -o AuthorizedKeysFile="$WORK/authorized_keys" -o PidFile="$WORK/sshd.pid" -o StrictModes=no \
  -o PermitRootLogin=prohibit-password -o UsePAM=no

echo "== secrets, made as on the launching machine (Python's standard library only: -I -S)"
python3 -I -S "$REPO/src/robustsweep/cluster_secrets.py" make "$WORK/secrets"

echo "== ray up"
ray up -y --no-config-cache "$WORK/cluster.yaml" > "$WORK/ray_up.log" 2>&1 || { tail -40 "$WORK/ray_up.log"; exit 1; }
echo "node secrets: $(stat -c %a "$WORK/node-secrets") $(stat -c %a "$WORK/node-secrets/"* | sort -u | tr '\n' ' ')"

echo "== Ray refuses clients without the cluster's token"
refused() {  # DESCRIPTION ENV...: `ray status` against the head, with ENV, must be refused for its token
  local what=$1 out; shift
  if out=$(env "$@" timeout 120 ray status --address 127.0.0.1:6379 2>&1); then
    echo "ray status was answered ($what)"; exit 1
  fi
  grep -q "InvalidAuthToken" <<< "$out" || { echo "ray status failed otherwise ($what):"; tail -5 <<< "$out"; exit 1; }
  echo "ray: refused $what"
}
refused "no token (RAY_AUTH_MODE=disabled)" RAY_AUTH_MODE=disabled
refused "a wrong token (RAY_AUTH_TOKEN)" RAY_AUTH_MODE=token RAY_AUTH_TOKEN="$(printf '%064d' 1)"
refused "the stray ~/.ray/auth_token" RAY_AUTH_MODE=token
(. "$WORK/secrets/env" && timeout 120 ray status --address 127.0.0.1:6379 > "$WORK/ray_status.log" 2>&1) \
  || { tail -5 "$WORK/ray_status.log"; exit 1; }
echo "ray: answered the cluster's token"
set +e
(. "$WORK/secrets/env" && RAY_AUTH_MODE=disabled timeout 300 robustsweep launch "$SWEEP" --address 127.0.0.1:6379 \
  --verbose 0 > "$WORK/launch_no_token.log" 2>&1)
rc=$?
set -e
grep -q "takes only drivers with its token" "$WORK/launch_no_token.log" && ! grep -q Traceback "$WORK/launch_no_token.log" \
  || { tail -20 "$WORK/launch_no_token.log"; exit 1; }
echo "driver without the token: exit $rc"

echo "== MLflow refuses requests without the login"
(. "$WORK/secrets/env" && python - <<'PY'
import base64, json, os, urllib.error, urllib.request

def status(path, login=None, data=None):
    headers = {"Content-Type": "application/json"}
    if login:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(login).encode()).decode()
    request = urllib.request.Request("http://127.0.0.1:5000" + path, data=data, headers=headers,
                                     method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code

search = "/api/2.0/mlflow/experiments/search", json.dumps({"max_results": 1}).encode()
login = os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
print("mlflow: no login", status(search[0], data=search[1]), "| wrong password",
      status(search[0], (login[0], "not-the-password"), data=search[1]), "| UI without login", status("/"),
      "| the login", status(search[0], login, data=search[1]))
PY
)
set +e
robustsweep audit "$SWEEP" > "$WORK/audit_no_login.log" 2>&1
rc=$?
set -e
grep -q "asks for a login" "$WORK/audit_no_login.log" || { tail -20 "$WORK/audit_no_login.log"; exit 1; }
echo "audit without the login: exit $rc"

echo "== ray exec: robustsweep launch --address auto, with the node's secrets"
ray exec --no-config-cache "$WORK/cluster.yaml" \
  ". $WORK/node-secrets/env && cd $WORK && $VENV/bin/robustsweep launch $SWEEP --address auto --verbose 0" \
  > "$WORK/launch.log" 2>&1 || { grep -E "^sweep |Error:|error:" "$WORK/launch.log" | cut -c1-400 | head -20
                               tail -40 "$WORK/launch.log"; exit 1; }
grep -E "^sweep .*: " "$WORK/launch.log"
echo "== audit against the head's MLflow server, with the login"
(. "$WORK/secrets/env" && "$VENV/bin/robustsweep" audit "$SWEEP" --complete)
(. "$WORK/secrets/env" && "$VENV/bin/python" - <<PY
from mlflow.tracking import MlflowClient
client = MlflowClient("http://127.0.0.1:5000")
exp = client.get_experiment_by_name("upsweep")
runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("kind") != "sweep"]  # the trials'
print("runs:", len(runs), sorted({r.data.tags.get("mode") for r in runs}), sorted({r.info.status for r in runs}))
PY
)
echo "== ray down"
ray down -y "$WORK/cluster.yaml" > "$WORK/ray_down.log" 2>&1
ray stop > /dev/null 2>&1 || true   # `ray down` runs a bare `ray stop` there, which is not on the login PATH
sleep 2
if pgrep -f raylet > /dev/null; then echo "raylet still running after ray down + ray stop"; exit 1; fi
echo "== done: no Ray process left"
