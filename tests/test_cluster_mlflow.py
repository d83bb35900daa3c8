"""The cluster's MLflow server, started with cluster/gpu.yaml's own command lines on a real PostgreSQL
database (started for the test: tests/conftest.py, postgres_server), takes a whole sweep from two Ray
nodes addressed to it by the host name the cluster gives it (robustsweep-head), not only by localhost,
and only with the cluster's login (MLflow's basic-auth app, the secrets made by
robustsweep/cluster_secrets.py and the admin password set by the file's set-mlflow-admin command).

The name is mapped the way cluster/gpu.yaml's setup commands map it, in an /etc/hosts of our own:
the sweep runs in a private mount namespace (unshare -m, root only) where /etc/hosts is a copy.
"""

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from robustsweep import cluster_secrets

from .conftest import running_mlflow_server, trial_runs_only

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("flask_wtf") is None,
                                 reason="needs mlflow[auth] in this venv (pip install -e .)")]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


#: Launches a sweep file on a two-node local Ray cluster (one CPU per node) and prints its outcome counts.
TWO_NODE_SWEEP = """
import sys
import ray
from ray.cluster_utils import Cluster
from robustsweep.launch import launch
from robustsweep.sweep import load_sweep

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
try:
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    result = launch(load_sweep(sys.argv[1]), address=cluster.address, verbose=0)
    print(", ".join(f"{k}: {v}" for k, v in sorted(result.counts().items())))
finally:
    ray.shutdown()
    cluster.shutdown()
"""


def _cluster_file() -> dict:
    return yaml.safe_load((REPO / "cluster" / "gpu.yaml").read_text())


def _head_command(needle: str, secrets: Path, mlflow_dir: Path) -> str:
    """The head's command holding ``needle``, with the secrets folder and MLflow's folder made local."""
    (command,) = [c for c in _cluster_file()["head_start_ray_commands"] if needle in c and "pkill" not in c]
    for remote in ("$HOME/robustsweep-secrets", "~/robustsweep-secrets"):
        command = command.replace(remote, str(secrets))
    return command.replace("cd /home/ray/mlflow &&", f"cd {mlflow_dir} &&")


def server_argv_from_cluster_file(tmp_path: Path, secrets: Path, database: str) -> tuple[list[str], dict[str, str]]:
    """gpu.yaml's `mlflow server` command, with the port, the PostgreSQL database (``database``: one started
    for the test, where the cluster's is the head's own), artifact folder and secrets made local:
    (argv, the environment the command line gives it)."""
    line = _head_command("mlflow server", secrets, tmp_path).split("&&")[-1].split(">")[0]
    prefix, rest = line.split("nohup", 1)
    env = {}
    for name, value in re.findall(r"(\w+)=(\$\(cat [^)]+\)|\S+)", prefix):
        env[name] = Path(value[len("$(cat "):-1]).read_text().strip() if value.startswith("$(cat ") else value
    assert set(env) == {"MLFLOW_AUTH_CONFIG_PATH", "MLFLOW_FLASK_SERVER_SECRET_KEY"}, prefix
    argv = shlex.split("nohup" + rest)
    assert argv[:3] == ["nohup", "mlflow", "server"], argv
    argv = [str(BIN / "mlflow"), *argv[2:]]
    assert argv[argv.index("--backend-store-uri") + 1].startswith("postgresql"), argv  # SQLite: one machine
    local = {"--port": "{port}", "--backend-store-uri": database,
             "--artifacts-destination": str(tmp_path / "head-artifacts")}
    for option, value in local.items():
        argv[argv.index(option) + 1] = value
    return argv + ["--workers", "1"], env  # one worker process: the test machine has two cores


def _hosts_commands() -> list[str]:
    """The head's setup commands that give the tracking server its name in /etc/hosts."""
    return [c for c in _cluster_file()["head_setup_commands"] if "/etc/hosts" in c]


def _in_namespace_with_cluster_hosts(tmp_path: Path, command: list[str],
                                     login: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    hosts = tmp_path / "hosts"
    shutil.copyfile("/etc/hosts", hosts)
    with open(hosts, "a") as f:
        f.write("\n127.0.0.1 unlisted-name\n")  # a name that resolves here but the server was not told
    script = " && ".join([f"mount --bind {shlex.quote(str(hosts))} /etc/hosts", *_hosts_commands(),
                          shlex.join(command)])
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    env.update(login or {})
    return subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture
def private_mount_namespace(tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) to give the sweep an /etc/hosts of its own")
    target = tmp_path / "probe"
    target.write_text("")
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind /etc/hosts {target}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a private mount namespace here (needs root): {probe.stderr.strip()}")


def _sweep(tmp_path, mnist_root, name, uri):
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"""
name: {name}
storage_path: {tmp_path / 'ray_results'}
mlflow: {{tracking_uri: "{uri}"}}
resources: {{cpu: 1}}
max_concurrent: 2
base: {{dataset: mnist, data_root: "{mnist_root}", epochs: 1, subset: 300, test_subset: 200, batch_size: 50,
        attack_subset: 40, hessian_samples: 32, pgd_steps: 2, hessian_iters: 3, device: cpu}}
groups:
  - name: g
    grid: {{lr: [0.05, 0.1]}}
""")
    return path


def test_cluster_mlflow_server_takes_a_sweep_addressed_to_the_head_by_name(tmp_path, mnist_root,
                                                                            postgres_uri, private_mount_namespace,
                                                                            monkeypatch):
    secrets = tmp_path / "secrets"
    cluster_secrets.make(secrets)
    login = {"MLFLOW_TRACKING_USERNAME": "admin",
             "MLFLOW_TRACKING_PASSWORD": cluster_secrets.read_admin(secrets / "mlflow_auth.ini")[1]}
    # the file's own command gives the user store (basic_auth.db, in the folder the server starts in) the admin password
    set_admin = _head_command("set-mlflow-admin", secrets, tmp_path).replace(" python -m ", f" {sys.executable} -m ")
    subprocess.run(["bash", "-c", set_admin], check=True, capture_output=True, text=True)
    argv, env = server_argv_from_cluster_file(tmp_path, secrets, postgres_uri)
    assert "--allowed-hosts" in argv and argv[argv.index("--app-name") + 1] == "basic-auth"
    with running_mlflow_server(argv, tmp_path / "server.log", env=env, cwd=tmp_path) as port:
        # a name the server was not told: refused before anything is created, with the fix named
        bad = _sweep(tmp_path, mnist_root, "refused", f"http://unlisted-name:{port}")
        refused = _in_namespace_with_cluster_hosts(tmp_path, [str(BIN / "robustsweep"), "launch", str(bad)], login)
        assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
        assert "refuses requests addressed to 'unlisted-name:" in refused.stderr
        assert "--allowed-hosts" in refused.stderr and "Traceback" not in refused.stderr
        assert not (tmp_path / "ray_results" / "refused").exists()

        # the right name without the login, or with a wrong password: refused (401), the two variables named
        good = _sweep(tmp_path, mnist_root, "head", f"http://robustsweep-head:{port}")
        for wrong in ({}, {**login, "MLFLOW_TRACKING_PASSWORD": "not-the-password"}):
            no_login = _in_namespace_with_cluster_hosts(tmp_path, [str(BIN / "robustsweep"), "launch", str(good)],
                                                        wrong)
            assert no_login.returncode == 2, no_login.stdout[-2000:] + no_login.stderr[-2000:]
            assert "HTTP 401" in no_login.stderr and "MLFLOW_TRACKING_PASSWORD" in no_login.stderr
            assert "Traceback" not in no_login.stderr
            assert not (tmp_path / "ray_results" / "head").exists()

        # with the login, under the name the cluster's sweeps use: a tiny sweep on two Ray nodes logs through it
        done = _in_namespace_with_cluster_hosts(tmp_path, [sys.executable, "-c", TWO_NODE_SWEEP, str(good)], login)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "finished: 2" in done.stdout
        for name, value in login.items():
            monkeypatch.setenv(name, value)
        client = MlflowClient(f"http://127.0.0.1:{port}")
        experiment = client.get_experiment_by_name("head")
        runs = trial_runs_only(client.search_runs([experiment.experiment_id]))
        assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
        assert all("clean_acc" in r.data.metrics for r in runs)
        # one trial per node: each node has one CPU and a trial takes one
        assert len({r.data.tags["ray_node_id"] for r in runs}) == 2
        # the sweep's read through the server: runs by one search, histories through its bulk endpoint
        from robustsweep.audit import audit
        from robustsweep.runs import metric_histories

        checked = audit(str(good), f"http://127.0.0.1:{port}")
        assert checked.ok(complete=True) and checked.finished == 2, checked.lines()
        bulk = metric_histories(client, runs)
        for run in runs:
            for key in run.data.metrics:
                one = client.get_metric_history(run.info.run_id, key)
                assert [(m.step, m.value) for m in bulk[run.info.run_id][key]] == sorted(
                    (m.step, m.value) for m in one), key
        # the weights went through the server to its artifact store
        assert "model.pt" in {a.path for a in client.list_artifacts(runs[0].info.run_id)}
        assert client.get_experiment_by_name("refused") is None
