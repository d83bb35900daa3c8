"""The secrets of a robustsweep Ray cluster: Ray's authentication token and the MLflow server's login.

They are made on the machine that runs ``ray up`` (this file needs only Python's standard library, so
it runs there without robustsweep installed), copied to every node by the cluster file's
``file_mounts`` (``~/robustsweep-secrets``), and never committed (``cluster/secrets/`` is ignored)::

    python3 src/robustsweep/cluster_secrets.py make cluster/secrets/local            # once
    python3 src/robustsweep/cluster_secrets.py make cluster/secrets/local --rotate   # new ones, then `ray up`

The folder (mode 0700, every file 0600) holds:

``ray_token``
    Ray's token (64 hex digits, as ``ray get-auth-token --generate`` makes them). Every ``ray start``
    and every driver runs with ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH`` pointing here.
``mlflow_auth.ini``
    The configuration of MLflow's basic-auth app (``MLFLOW_AUTH_CONFIG_PATH``): MLflow's own
    ``basic_auth.ini`` with a generated ``admin_password`` and the user store next to the server's
    working directory.
``flask_secret_key``
    ``MLFLOW_FLASK_SERVER_SECRET_KEY``, which the basic-auth app requires (its CSRF protection).
``env``
    Lines for bash to source (``. ~/robustsweep-secrets/env``): ``RAY_AUTH_MODE=token``,
    ``RAY_AUTH_TOKEN_PATH`` (next to the file, wherever it is), ``MLFLOW_TRACKING_USERNAME`` and
    ``MLFLOW_TRACKING_PASSWORD``. The cluster files source it before ``ray start``, so every trial
    process inherits it; a driver on the head sources it before ``robustsweep launch``.

MLflow reads ``admin_password`` only when it creates the admin user. So that a rotated password takes
effect on a server whose user store already exists (or that is running), the head runs
``python -m robustsweep.cluster_secrets set-mlflow-admin`` before it starts the server: it sets the
admin's password in the user store to the one in ``MLFLOW_AUTH_CONFIG_PATH`` (that needs ``mlflow[auth]``).
"""

from __future__ import annotations

import argparse
import configparser
import os
import secrets
import socket
import sys
import time
from pathlib import Path

RAY_TOKEN = "ray_token"
MLFLOW_AUTH_INI = "mlflow_auth.ini"
FLASK_SECRET_KEY = "flask_secret_key"
ENV = "env"
FILES = (RAY_TOKEN, MLFLOW_AUTH_INI, FLASK_SECRET_KEY, ENV)

#: The MLflow account the trials log with (the basic-auth app's admin).
ADMIN = "admin"
#: The user store, relative to the MLflow server's working directory (the cluster files start it in the
#: SSH user's home, next to its run database).
AUTH_DB = "sqlite:///robustsweep-mlflow-auth.db"

_INI = """\
# MLflow basic-auth configuration for a robustsweep cluster, made by robustsweep/cluster_secrets.py
# on {host} at {when}. Secret: never commit it. MLflow reads admin_password only when it creates the
# admin user; the cluster's head sets it again on every `ray up` (set-mlflow-admin), so a rotation holds.
[mlflow]
# What an account other than the admin may do with experiments it did not create.
default_permission = READ
database_uri = {db}
admin_username = {admin}
admin_password = {password}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
grant_default_workspace_access = false
# Successful logins are remembered for 60 s in each server worker: without that every request pays a
# password hash (measured on a loaded 2-core machine: 1.4 s per log_metric, 0.27 s with the cache, 0.29 s
# on a server without a login). So a rotated or deleted password can keep working for up to 60 s.
auth_cache_ttl_seconds = 60
"""

_ENV = """\
# robustsweep cluster secrets, made on {host} at {when}; never commit them. For bash: . THIS_FILE
# Ray: token authentication, set explicitly (a stray ~/.ray/auth_token must decide nothing).
_rs_dir=$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="$_rs_dir/{token}"
unset _rs_dir
# MLflow: the tracking server's login, sent by MLflow's client and by robustsweep's checks.
export MLFLOW_TRACKING_USERNAME={admin}
export MLFLOW_TRACKING_PASSWORD={password}
"""


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 from the start, through a temporary name."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def make(folder: str | os.PathLike, rotate: bool = False) -> list[str]:
    """Create the secrets in ``folder`` (or new ones with ``rotate``); returns the files written.

    An existing complete set is kept (returns []) unless ``rotate``; a partial one is an error, so that a
    cluster never gets a token from one set and a password from another.
    """
    folder = Path(folder).expanduser()
    present = [name for name in FILES if (folder / name).exists()]
    if present and not rotate:
        if len(present) == len(FILES):
            return []
        raise SystemExit(f"{folder} holds only {', '.join(present)} of {', '.join(FILES)}: make them all again "
                         f"with --rotate (then `ray up` the cluster again).")
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    host, when = socket.gethostname(), time.strftime("%Y-%m-%d %H:%M:%S %z")
    password = secrets.token_urlsafe(24)  # 32 characters of [A-Za-z0-9_-]: safe in an ini and unquoted in sh
    texts = {
        RAY_TOKEN: secrets.token_hex(32) + "\n",  # 256 bits, the form Ray's own generator gives
        MLFLOW_AUTH_INI: _INI.format(host=host, when=when, db=AUTH_DB, admin=ADMIN, password=password),
        FLASK_SECRET_KEY: secrets.token_hex(32) + "\n",
        ENV: _ENV.format(host=host, when=when, token=RAY_TOKEN, admin=ADMIN, password=password),
    }
    for name, text in texts.items():
        _write_private(folder / name, text)
    return list(texts)


def read_admin(ini_path: str | os.PathLike) -> tuple[str, str, str]:
    """(admin user, password, user-store URI) from a basic-auth configuration file."""
    config = configparser.ConfigParser()
    if not config.read(ini_path):
        raise SystemExit(f"cannot read the MLflow auth configuration {ini_path}")
    section = config["mlflow"]
    return section["admin_username"], section["admin_password"], section["database_uri"]


def set_mlflow_admin(ini_path: str | os.PathLike) -> str:
    """Make the admin of the user store in ``ini_path`` have the password written there (creating the store
    and the user when absent). Safe while a server runs on the store: it reads the store on every request."""
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    user, password, db = read_admin(ini_path)
    store = SqlAlchemyStore()
    store.init_db(db)
    if not store.has_user(user):
        store.create_user(user, password, is_admin=True)
        return f"created MLflow admin {user!r} in {db}"
    if store.authenticate_user(user, password, use_primary=True):
        return f"MLflow admin {user!r} in {db}: password unchanged"
    store.update_user(user, password=password, is_admin=True)
    return f"MLflow admin {user!r} in {db}: password set to the rotated one"


def _api_status(url: str, login: tuple[str, str] | None) -> int | None:
    """HTTP status of an MLflow API call (search experiments) with ``login`` or none; None when it does not answer."""
    import base64
    import json
    import urllib.error
    import urllib.request

    headers = {"Content-Type": "application/json"}
    if login:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()
    request = urllib.request.Request(url.rstrip("/") + "/api/2.0/mlflow/experiments/search",
                                     data=json.dumps({"max_results": 1}).encode(), method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def wait_mlflow(url: str, timeout: float) -> str:
    """Wait up to ``timeout`` seconds for the MLflow server at ``url`` to answer; then require that it refuses a
    client without a login (401) and takes the one in MLFLOW_TRACKING_USERNAME/PASSWORD (200)."""
    login = (os.environ.get("MLFLOW_TRACKING_USERNAME", ""), os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
    if not all(login):
        raise SystemExit("wait-mlflow needs MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (. ~/robustsweep-secrets/env)")
    deadline = time.monotonic() + timeout
    while (anonymous := _api_status(url, None)) is None:
        if time.monotonic() > deadline:
            raise SystemExit(f"the MLflow server at {url} did not answer within {timeout:.0f} s")
        time.sleep(1)
    if anonymous != 401:
        raise SystemExit(f"the MLflow server at {url} answers a client without a login with HTTP {anonymous}, not 401: "
                         "it runs without --app-name basic-auth (an older one?). Stop it, then `ray up` again.")
    while (ours := _api_status(url, login)) is None and time.monotonic() < deadline:
        time.sleep(1)
    if ours != 200:
        raise SystemExit(f"the MLflow server at {url} answers the cluster's login with HTTP {ours}: its user store "
                         "is not the one set-mlflow-admin set (another --app-name basic-auth server?)")
    return f"the MLflow server at {url} asks for a login and takes the cluster's"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cluster_secrets", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_make = sub.add_parser("make", help="create the secrets (on the machine that runs `ray up`)")
    p_make.add_argument("folder", help="e.g. cluster/secrets/local (the path the cluster file's file_mounts reads)")
    p_make.add_argument("--rotate", action="store_true", help="replace existing secrets with new ones")
    p_set = sub.add_parser("set-mlflow-admin", help="on the head: give the MLflow admin the configured password")
    p_set.add_argument("ini", nargs="?", default=os.environ.get("MLFLOW_AUTH_CONFIG_PATH"),
                       help="the basic-auth configuration (default: $MLFLOW_AUTH_CONFIG_PATH)")
    p_wait = sub.add_parser("wait-mlflow", help="on the head: wait for the server, check that it needs and takes "
                                                "the login in MLFLOW_TRACKING_USERNAME/PASSWORD")
    p_wait.add_argument("url")
    p_wait.add_argument("--timeout", type=float, default=90.0)
    args = parser.parse_args(argv)
    if args.command == "wait-mlflow":
        print(wait_mlflow(args.url, args.timeout))
        return 0
    if args.command == "make":
        written = make(args.folder, rotate=args.rotate)
        if written:
            print(f"wrote {', '.join(written)} to {args.folder} (mode 0600); `ray up` copies them to every node")
        else:
            print(f"{args.folder} already holds the cluster's secrets (new ones: --rotate)")
        return 0
    if not args.ini:
        parser.error("set-mlflow-admin needs the configuration file (or MLFLOW_AUTH_CONFIG_PATH)")
    print(set_mlflow_admin(args.ini))
    return 0


if __name__ == "__main__":
    sys.exit(main())
