"""The cluster's MLflow server, started with cluster/gpu.yaml's own command line, takes a whole sweep
from two Ray nodes addressed to it by the host name the cluster gives it (robustsweep-head), not only
by localhost.

The name is mapped the way cluster/gpu.yaml's setup commands map it, in an /etc/hosts of our own:
the sweep runs in a private mount namespace (unshare -m, root only) where /etc/hosts is a copy.
"""

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from .conftest import running_mlflow_server

pytestmark = pytest.mark.slow

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


def server_argv_from_cluster_file(tmp_path: Path) -> list[str]:
    """gpu.yaml's `mlflow server` command, with the port, database and artifact folder made local."""
    (command,) = [c for c in _cluster_file()["head_start_ray_commands"] if "mlflow server" in c]
    (line,) = [part for part in command.split(";") if "mlflow server" in part and "pkill" not in part]
    argv = shlex.split(line.split(">")[0])
    assert argv[:3] == ["nohup", "mlflow", "server"], argv
    argv = [str(BIN / "mlflow"), *argv[2:]]
    local = {"--port": "{port}", "--backend-store-uri": f"sqlite:///{tmp_path / 'head.db'}",
             "--artifacts-destination": str(tmp_path / "head-artifacts")}
    for option, value in local.items():
        argv[argv.index(option) + 1] = value
    return argv + ["--workers", "1"]  # one worker process: the test machine has two cores


def _hosts_commands() -> list[str]:
    """The head's setup commands that give the tracking server its name in /etc/hosts."""
    return [c for c in _cluster_file()["head_setup_commands"] if "/etc/hosts" in c]


def _in_namespace_with_cluster_hosts(tmp_path: Path, command: list[str]) -> subprocess.CompletedProcess:
    hosts = tmp_path / "hosts"
    shutil.copyfile("/etc/hosts", hosts)
    with open(hosts, "a") as f:
        f.write("\n127.0.0.1 unlisted-name\n")  # a name that resolves here but the server was not told
    script = " && ".join([f"mount --bind {shlex.quote(str(hosts))} /etc/hosts", *_hosts_commands(),
                          shlex.join(command)])
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
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
                                                                            private_mount_namespace):
    argv = server_argv_from_cluster_file(tmp_path)
    assert "--allowed-hosts" in argv
    with running_mlflow_server(argv, tmp_path / "server.log") as port:
        # a name the server was not told: refused before anything is created, with the fix named
        bad = _sweep(tmp_path, mnist_root, "refused", f"http://unlisted-name:{port}")
        refused = _in_namespace_with_cluster_hosts(tmp_path, [str(BIN / "robustsweep"), "launch", str(bad)])
        assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
        assert "refuses requests addressed to 'unlisted-name:" in refused.stderr
        assert "--allowed-hosts" in refused.stderr and "Traceback" not in refused.stderr
        assert not (tmp_path / "ray_results" / "refused").exists()

        # the name the cluster's sweeps use: a tiny sweep on a two-node Ray cluster logs through it
        good = _sweep(tmp_path, mnist_root, "head", f"http://robustsweep-head:{port}")
        done = _in_namespace_with_cluster_hosts(tmp_path, [sys.executable, "-c", TWO_NODE_SWEEP, str(good)])
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "finished: 2" in done.stdout
        client = MlflowClient(f"http://127.0.0.1:{port}")
        experiment = client.get_experiment_by_name("head")
        runs = client.search_runs([experiment.experiment_id])
        assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
        assert all("clean_acc" in r.data.metrics for r in runs)
        # one trial per node: each node has one CPU and a trial takes one
        assert len({r.data.tags["ray_node_id"] for r in runs}) == 2
        # the weights went through the server to its artifact store
        assert "model.pt" in {a.path for a in client.list_artifacts(runs[0].info.run_id)}
        assert client.get_experiment_by_name("refused") is None
