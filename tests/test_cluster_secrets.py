"""The cluster's secrets (src/robustsweep/cluster_secrets.py) and what both cluster files do with them: Ray's
token authentication on every `ray start`, MLflow's login on the tracking server, the secrets copied by
file_mounts and kept out of git and the image."""

from __future__ import annotations

import importlib.util
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from robustsweep import cluster_secrets

REPO = Path(__file__).resolve().parents[1]
CLUSTER_FILES = ("local.yaml", "gpu.yaml")


def _modes(folder: Path) -> set[int]:
    return {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}


def test_make_writes_private_secrets_with_the_standard_library_alone(tmp_path):
    folder = tmp_path / "secrets" / "local"
    # -I -S: no site-packages, as on a launching machine without robustsweep installed
    done = subprocess.run([sys.executable, "-I", "-S", str(REPO / "src/robustsweep/cluster_secrets.py"), "make",
                           str(folder)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in folder.iterdir()) == sorted(cluster_secrets.FILES)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and _modes(folder) == {0o600}
    token = (folder / "ray_token").read_text().strip()
    assert len(token) == 64 and int(token, 16) >= 0
    user, password, db = cluster_secrets.read_admin(folder / "mlflow_auth.ini")
    assert (user, db) == ("admin", "sqlite:///robustsweep-mlflow-auth.db") and len(password) >= 32
    assert password not in (REPO / "src/robustsweep/cluster_secrets.py").read_text()

    # bash, sourcing the env file from anywhere, gets Ray's mode and token path and MLflow's login
    shown = subprocess.run(["bash", "-c", f"cd / && . {folder}/env && echo $RAY_AUTH_MODE $RAY_AUTH_TOKEN_PATH "
                            "$MLFLOW_TRACKING_USERNAME $MLFLOW_TRACKING_PASSWORD"],
                           capture_output=True, text=True, env={"PATH": os.environ["PATH"]}, check=True)
    assert shown.stdout.split() == ["token", str(folder / "ray_token"), "admin", password]


def test_make_keeps_a_set_rotates_on_request_and_refuses_half_a_set(tmp_path, capsys):
    folder = tmp_path / "s"
    assert cluster_secrets.make(folder) == list(cluster_secrets.FILES)
    before = {p.name: p.read_text() for p in folder.iterdir()}
    assert cluster_secrets.make(folder) == []  # a second `make` changes nothing
    assert {p.name: p.read_text() for p in folder.iterdir()} == before
    cluster_secrets.make(folder, rotate=True)
    after = {p.name: p.read_text() for p in folder.iterdir()}
    assert all(after[name] != before[name] for name in cluster_secrets.FILES) and _modes(folder) == {0o600}
    (folder / "ray_token").unlink()
    with pytest.raises(SystemExit, match="--rotate"):
        cluster_secrets.make(folder)


@pytest.mark.skipif(importlib.util.find_spec("flask_wtf") is None, reason="needs mlflow[auth] (pip install -e .)")
def test_set_mlflow_admin_creates_then_rotates_the_admin_password(tmp_path, monkeypatch):
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    monkeypatch.chdir(tmp_path)  # the user store is relative to the server's working directory
    folder = tmp_path / "s"
    cluster_secrets.make(folder)
    ini = folder / "mlflow_auth.ini"
    _, old, db = cluster_secrets.read_admin(ini)
    assert "created" in cluster_secrets.set_mlflow_admin(ini)
    assert "unchanged" in cluster_secrets.set_mlflow_admin(ini)
    cluster_secrets.make(folder, rotate=True)
    _, new, _ = cluster_secrets.read_admin(ini)
    assert "rotated" in cluster_secrets.set_mlflow_admin(ini)
    store = SqlAlchemyStore()
    store.init_db(db)
    assert store.authenticate_user("admin", new) and not store.authenticate_user("admin", old)
    assert store.get_user("admin").is_admin
    assert (tmp_path / "robustsweep-mlflow-auth.db").is_file()


def _cluster(name: str) -> dict:
    return yaml.safe_load((REPO / "cluster" / name).read_text())


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_both_cluster_files_start_ray_with_the_token_and_mlflow_with_the_login(name):
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    config = _cluster(name)
    validate_config(fillout_defaults(config))  # Ray's own schema
    secrets_dir = f"cluster/secrets/{name.split('.')[0]}"
    assert config["file_mounts"]["~/robustsweep-secrets"] == secrets_dir
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2
    for command in starts:
        # the env file gives the token path and the MLflow login; the mode is explicit in the file too
        assert ". ~/robustsweep-secrets/env && RAY_AUTH_MODE=token " in command, command
        assert "RAY_AUTH_MODE=disabled" not in command
    commands = config["head_setup_commands"] + config["head_start_ray_commands"]
    (server,) = [c for c in commands if "mlflow server" in c and "pkill" not in c]
    assert "--app-name basic-auth" in server
    assert "MLFLOW_AUTH_CONFIG_PATH=$HOME/robustsweep-secrets/mlflow_auth.ini" in server
    assert "MLFLOW_FLASK_SERVER_SECRET_KEY=$(cat ~/robustsweep-secrets/flask_secret_key)" in server
    # the admin password is set before the server starts, and `ray up` checks that the login is required
    order = [i for i, c in enumerate(commands) if "set-mlflow-admin" in c]
    assert order and order[0] < commands.index(server)
    assert any("wait-mlflow" in c for c in commands[commands.index(server):])


def test_the_secrets_stay_out_of_git_the_image_and_the_repository_copy():
    assert "/cluster/secrets/" in (REPO / ".gitignore").read_text().splitlines()
    assert "cluster/secrets" in (REPO / ".dockerignore").read_text().splitlines()
    assert "/cluster/secrets" in _cluster("local.yaml")["rsync_exclude"]  # the `~/robustsweep: .` mount
    ignored = subprocess.run(["git", "check-ignore", "-q", "cluster/secrets/local/env"], cwd=REPO)
    assert ignored.returncode == 0
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"mlflow[auth]==' in pyproject  # the basic-auth app's Flask-WTF, in the image and every node's venv
