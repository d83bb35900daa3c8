"""`ray up` for real: cluster/local.yaml against an sshd on 127.0.0.1, a sweep through `ray exec`.

The whole exercise (sshd, `ray up`, the head's MLflow server, `ray exec ... robustsweep launch
--address auto`, `ray down`, `ray stop`) runs inside new PID, network and mount namespaces, so `ray stop`
cannot reach a Ray the developer runs beside it, the ports are the namespace's own, and so are /tmp/ray
and ~/.ray (which gets a stray auth_token holding a wrong token). It needs root, util-linux's `unshare`,
Debian's openssh-server, netcat, rsync and iproute2, and mlflow[auth] in the venv; it skips, saying which
is missing, elsewhere.

Who can use the cluster: the secrets are made with the standard library alone, as on the machine that
runs `ray up`, and reach the node through the cluster file's file_mounts; then Ray refuses `ray status`
without the token, with a wrong one and with the stray one, and a `robustsweep launch` without it (one
paragraph); MLflow answers 401 to an API call without the login or with a wrong password and to the UI,
and `robustsweep audit` without the login is one paragraph; with them, the sweep logs and audits OK.

What the test changes in cluster/local.yaml, and nothing else: the node addresses (127.0.0.1, no
workers), the SSH user, key and endpoint (a proxy command to the test's sshd port), the file mounts (the
checkout is used in place; the secrets go to a folder of the test's), and the paths of the virtual
environment, the secrets on the node and the MLflow store (this checkout's venv and a temporary folder),
the head's PostgreSQL (a server started for the test, tests/conftest.py, instead of this machine's
postgresql service), and one MLflow server worker instead of four (the test machine has two cores).
The pip install of the setup commands and the PostgreSQL setup command are left out: there is no
package index here.
"""

from __future__ import annotations

import getpass
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
NEEDED = ("unshare", "sshd", "ssh", "nc", "rsync", "ip", "ssh-keygen", "mount")


def _missing() -> list[str]:
    missing = [tool for tool in NEEDED if not (shutil.which(tool) or Path(f"/usr/sbin/{tool}").exists())]
    if os.geteuid() != 0:
        missing.append("root (for unshare)")
    if importlib.util.find_spec("flask_wtf") is None:
        missing.append("mlflow[auth] in this venv (pip install -e .)")
    return missing


#: The MLflow server's database in cluster/local.yaml (the head's PostgreSQL, set up by the command before it).
CLUSTER_DATABASE = "postgresql+psycopg2:///robustsweep_mlflow?host=/var/run/postgresql"


def concrete_cluster(work: Path, venv: Path, database: str = CLUSTER_DATABASE) -> dict:
    """cluster/local.yaml with the test's addresses, SSH endpoint and paths (see the module docstring)."""
    text = (REPO / "cluster" / "local.yaml").read_text()
    assert CLUSTER_DATABASE in text
    text = text.replace(CLUSTER_DATABASE, database)
    for secrets in ("~/robustsweep-secrets", "$HOME/robustsweep-secrets"):
        text = text.replace(secrets, f"{work}/node-secrets")
    text = text.replace("~/robustsweep-venv", str(venv)).replace("$HOME/robustsweep-", f"{work}/mlflow-")
    text = text.replace("~/robustsweep-mlflow.log", f"{work}/mlflow.log").replace("cd ~ &&", f"cd {work} &&")
    text = text.replace("192.168.1.10,192.168.1.10:*,", "")
    text = text.replace("mlflow server --app-name", "mlflow server --workers 1 --app-name")  # two cores here
    config = yaml.safe_load(text)
    config["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    config["max_workers"] = 0
    config["auth"] = {"ssh_user": getpass.getuser(), "ssh_private_key": str(work / "user_key"),
                      "ssh_proxy_command": "nc 127.0.0.1 2222"}
    # the secrets travel as on a real cluster (rsync over SSH), from where the launching machine made them
    config["file_mounts"] = {f"{work}/node-secrets": str(work / "secrets")}
    config["setup_commands"] = [c for c in config["setup_commands"] if "pip install" not in c]
    # the head's PostgreSQL is one started for the test, not this machine's own service
    config["head_setup_commands"] = [c for c in config["head_setup_commands"] if "postgresql start" not in c]
    return config


def test_local_cluster_file_passes_rays_own_schema(tmp_path):
    from ray.autoscaler._private.commands import prepare_config
    from ray.autoscaler._private.util import validate_config

    config = yaml.safe_load((REPO / "cluster" / "local.yaml").read_text())
    validate_config(prepare_config(config))
    assert config["provider"]["type"] == "local"
    start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start  # the dashboard only through the SSH tunnel
    assert all("~/robustsweep-venv/bin/" in c for c in config["head_start_ray_commands"] + config["setup_commands"]
               if "ray " in c or "pip " in c)  # absolute paths: the login shell resets PATH
    validate_config(prepare_config(concrete_cluster(tmp_path, Path(sys.prefix))))
    config["bogus"] = 1  # and the schema really is checked
    with pytest.raises(Exception, match="bogus"):
        validate_config(prepare_config(config))


@pytest.mark.slow
@pytest.mark.skipif(bool(_missing()), reason=f"needs {', '.join(_missing())}: apt-get install openssh-server "
                                             "netcat-openbsd rsync iproute2 (.ci/run does)")
def test_ray_up_a_local_cluster_and_launch_a_sweep_on_it(tmp_path, mnist_root, postgres_uri):
    work = tmp_path
    venv = Path(sys.prefix)
    (work / "cluster.yaml").write_text(yaml.safe_dump(concrete_cluster(work, venv, postgres_uri)))
    sweep = work / "upsweep.yaml"
    sweep.write_text(f"""
name: upsweep
storage_path: {work}/ray_results
mlflow: {{tracking_uri: "http://127.0.0.1:5000"}}
resources: {{cpu: 1}}
base: {{dataset: mnist, data_root: "{mnist_root}", device: cpu, subset: 300, test_subset: 200, epochs: 1,
        batch_size: 50, attack_subset: 40, pgd_steps: 2, hessian_samples: 32, hessian_iters: 3}}
groups:
  - name: g
    grid: {{lr: [0.01, 0.05]}}
""")
    home = Path.home()
    # What `ray up` leaves behind (the SSH user's home, the local provider's state, SSH control sockets).
    leftovers = [home / "ray_bootstrap_config.yaml", home / "ray_bootstrap_key.pem",
                 *Path("/tmp/ray").glob("cluster-robustsweep-lab.*"), *Path("/tmp").glob("ray_ssh_*")]
    existed = {p: p.exists() for p in leftovers}
    dot_ray_existed = (home / ".ray").exists()  # the script bind-mounts over it, creating it when absent
    before = set(Path("/tmp/ray").glob("cluster-robustsweep-lab.*")) | set(Path("/tmp").glob("ray_ssh_*"))
    try:
        result = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "--net", "bash",
                                 str(REPO / "tests" / "ray_up_local.sh"), str(work), str(venv), str(REPO), str(sweep)],
                                capture_output=True, text=True, timeout=900)
    finally:
        created = [p for p, was in existed.items() if not was and p.exists()]
        created += (set(Path("/tmp/ray").glob("cluster-robustsweep-lab.*")) | set(Path("/tmp").glob("ray_ssh_*"))) - before
        for path in created:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        if not dot_ray_existed and (home / ".ray").is_dir() and not any((home / ".ray").iterdir()):
            (home / ".ray").rmdir()  # only while empty: a Ray beside the test may have put a token there since
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "node secrets: 700 600" in out  # file_mounts kept the modes the launching machine gave them
    for refused in ("no token (RAY_AUTH_MODE=disabled)", "a wrong token (RAY_AUTH_TOKEN)", "the stray ~/.ray/auth_token"):
        assert f"ray: refused {refused}" in out
    assert "ray: answered the cluster's token" in out
    assert "driver without the token: exit 2" in out
    assert "mlflow: no login 401 | wrong password 401 | UI without login 401 | the login 200" in out
    assert "audit without the login: exit 2" in out
    assert "sweep upsweep: 2 finished" in out
    assert "audit: OK" in out and "runs: 2 ['ray'] ['FINISHED']" in out
    assert "== done: no Ray process left" in out
