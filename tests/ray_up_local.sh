#!/usr/bin/env bash
# `ray up` of cluster/local.yaml against an sshd on 127.0.0.1, run by tests/test_cluster_local.py inside
# fresh PID and network namespaces (unshare), so its `ray stop` and ports touch nothing outside.
# Usage: ray_up_local.sh WORKDIR VENV REPO SWEEP_FILE
set -euo pipefail
WORK=$1 VENV=$2 REPO=$3 SWEEP=$4
export RAY_AUTH_MODE=disabled PATH="$VENV/bin:$PATH"
ip link set lo up
mkdir -p /run/sshd
ssh-keygen -q -t ed25519 -N "" -f "$WORK/host_key"
ssh-keygen -q -t ed25519 -N "" -f "$WORK/user_key"
cp "$WORK/user_key.pub" "$WORK/authorized_keys"
/usr/sbin/sshd -f /dev/null -o ListenAddress=127.0.0.1 -o Port=2222 -o HostKey="$WORK/host_key" \
  -o AuthorizedKeysFile="$WORK/authorized_keys" -o PidFile="$WORK/sshd.pid" -o StrictModes=no \
  -o PermitRootLogin=prohibit-password -o UsePAM=no
echo "== ray up"
ray up -y --no-config-cache "$WORK/cluster.yaml" > "$WORK/ray_up.log" 2>&1 || { tail -40 "$WORK/ray_up.log"; exit 1; }
echo "== ray exec: robustsweep launch --address auto"
ray exec --no-config-cache "$WORK/cluster.yaml" \
  "cd $WORK && RAY_AUTH_MODE=disabled $VENV/bin/robustsweep launch $SWEEP --address auto --verbose 0" \
  > "$WORK/launch.log" 2>&1 || { tail -40 "$WORK/launch.log"; exit 1; }
grep -E "^sweep .*: " "$WORK/launch.log"
echo "== audit against the head's MLflow server"
"$VENV/bin/robustsweep" audit "$SWEEP" --complete
"$VENV/bin/python" - <<PY
from mlflow.tracking import MlflowClient
client = MlflowClient("http://127.0.0.1:5000")
exp = client.get_experiment_by_name("upsweep")
runs = client.search_runs([exp.experiment_id])
print("runs:", len(runs), sorted({r.data.tags.get("mode") for r in runs}), sorted({r.info.status for r in runs}))
PY
echo "== ray down"
ray down -y "$WORK/cluster.yaml" > "$WORK/ray_down.log" 2>&1
ray stop > /dev/null 2>&1 || true   # `ray down` runs a bare `ray stop` there, which is not on the login PATH
sleep 2
if pgrep -f raylet > /dev/null; then echo "raylet still running after ray down + ray stop"; exit 1; fi
echo "== done: no Ray process left"
