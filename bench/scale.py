"""Sweeps of thousands of trials (issue 23): real MLflow stores built without training, then every command timed.

    PYTHONPATH=$PWD/src .venv/bin/python bench/scale.py --seeds 10,70 --out /tmp/scale
    PYTHONPATH=$PWD/src .venv/bin/python bench/scale.py --seeds 10 --postgres postgresql://USER@/?host=/tmp/pg
    PYTHONPATH=$PWD/src .venv/bin/python bench/scale.py --seeds 10,70 --out /tmp/scale --build   # fill, then
    PYTHONPATH=$PWD/src .venv/bin/python bench/scale.py --seeds 10,70 --out /tmp/scale --reuse   # time the rest

The committed export of the CPU study (results/table1-mnist-cpu/runs.jsonl, 180 runs) is re-seeded through
the project's own expansion: ``sweeps/table1-mnist-cpu.yaml --seeds 0,...,K-1`` expands to 144 x K trials
(the groups that had seeds 0-2 get K seeds like the rest), and each trial gets the record of its seed-0 twin
(same group, same settings), with its own trial id, seed, sweep name and flags. K = 10 gives 1,440 runs,
K = 70 gives 10,080. Those records are imported with ``robustsweep import`` into an empty store (timed),
then each command runs as a user runs it, in its own process, and is timed from start to exit:

  validate, import, status and audit --complete (each twice: the first reads every run from MLflow and keeps
  the ended ones in a local copy, robustsweep.run_cache; the second, as every later call does, reads that copy
  and asks MLflow only for what changed), export, report, launch --debug (every trial already finished), and
  launch on Ray with one trial left to run: the time until that trial starts (its folder appears under
  storage_path), after which the launch is stopped with SIGTERM.

Prints one Markdown table per backend: seconds per command per size, wall-clock with the command's own CPU
seconds (user + system, its process and those it waited for) in brackets, and the growth exponent of the
wall-clock time between the first and last size (1.0 = linear). Wall-clock times depend on whatever else the
machine is doing: compare ratios measured in one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SWEEP = REPO / "sweeps" / "table1-mnist-cpu.yaml"
EXPORT = REPO / "results" / "table1-mnist-cpu" / "runs.jsonl"
DATA_ROOT = os.environ.get("ROBUSTSWEEP_DATA_ROOT", str(REPO.parent / "shared" / "data"))
COMMANDS = ["validate", "import", "status", "status again", "audit --complete", "audit --complete again", "export",
            "report", "launch --debug, all finished", "launch, first new trial starts",
            "launch on a running Ray, first new trial starts"]
#: The targets of issue 23 at 10,000 runs, in seconds. "again": the same command once more, reading the sweep's
#: ended runs from the local copy the first one kept (robustsweep.run_cache), as every later call of it does.
TARGETS = {"status again": 5, "audit --complete again": 5, "report": 60, "export": 120, "import": 120,
           "launch, first new trial starts": 10, "launch on a running Ray, first new trial starts": 10}


def reseed(seeds: int, uri: str, folder: Path) -> tuple[Path, list[str], str, list[dict]]:
    """(the sweep file, its flags, the sweep's name, one exported record per trial) for ``seeds`` seeds."""
    from robustsweep.sweep import SweepOverrides, _science, _trial_id, load_sweep

    text = SWEEP.read_text().replace("tracking_uri: sqlite:///mlflow.db", f'tracking_uri: "{uri}"')
    sweep = folder / SWEEP.name
    sweep.write_text(text)
    flags = ["--seeds", ",".join(map(str, range(seeds)))]
    spec = load_sweep(sweep, base_dir=folder, max_trials=10**6, overrides=SweepOverrides(seeds=tuple(range(seeds))))
    by_id = {}
    for line in EXPORT.read_text().splitlines():
        record = json.loads(line)
        by_id[record["trial_id"]] = record
    records = []
    for trial in spec.trials:
        twin = _trial_id(trial.group, _science(dataclasses.replace(trial.config, seed=0)))
        record = json.loads(json.dumps(by_id[twin]))
        record.update(trial_id=trial.trial_id, run_name=trial.trial_id)
        record["params"]["seed"] = str(trial.config.seed)
        record["params"]["mlflow_tracking_uri"] = uri
        record["tags"].update(sweep=spec.name, trial_id=trial.trial_id, sweep_flags=spec.flags)
        records.append(record)
    return sweep, flags, spec.name, records


#: CPU seconds (user + system) of each command's process and the processes it waited for, by command line:
#: beside a loaded machine's wall-clock time, what the command itself cost.
CPU: dict[str, float] = {}


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 3600) -> float:
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU[" ".join(map(str, argv))] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} exited {done.returncode}:\n{done.stdout[-2000:]}\n"
                           f"{done.stderr[-2000:]}")
    return seconds


def first_trial(argv: list[str], cwd: Path, env: dict[str, str], trial_dir: Path, timeout: float = 600) -> float:
    """Seconds from starting ``launch`` until the folder of its one trial to run appears; then SIGTERM."""
    started = time.perf_counter()
    driver = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        while not trial_dir.exists():
            if driver.poll() is not None:
                raise RuntimeError(f"launch ended ({driver.returncode}) before its trial started: "
                                   f"{driver.stderr.read()[-2000:]}")
            if time.perf_counter() - started > timeout:
                raise RuntimeError("launch did not start its trial in time")
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        driver.send_signal(signal.SIGTERM)
        driver.wait(120)
        return seconds
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()


def running_ray(folder: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """A Ray head of the benchmark's own (``ray start --head --block``, as on a cluster's head after ``ray up``)
    on a free port, and its address. Token authentication as the cluster files set it: ``env`` gets the mode and
    the token's file, for the head and the launches. Stopped by ending that process (:func:`stop_head`; never
    ``ray stop``, which stops every Ray on the machine)."""
    import secrets
    import socket

    token = folder / "ray-token"
    token.write_text(secrets.token_hex(32) + "\n")
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ray = str(Path(sys.executable).with_name("ray"))
    head = subprocess.Popen([ray, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
                             "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
                             f"--temp-dir={folder / 'ray-head'}"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"127.0.0.1:{port}"
    started = time.perf_counter()
    while subprocess.run([ray, "status", f"--address={address}"], env=env, capture_output=True).returncode != 0:
        if head.poll() is not None or time.perf_counter() - started > 120:
            stop_head(head)
            raise RuntimeError(f"ray start --head did not come up on {address}")
        time.sleep(1)
    return head, address


def stop_head(head: subprocess.Popen) -> None:
    """End the head and every process it started (they share its session)."""
    if head.poll() is None:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
        try:
            head.wait(90)
        except subprocess.TimeoutExpired:
            pass
    subprocess.run(["pkill", "-9", "-s", str(head.pid)], check=False)
    head.wait()


def one_left(uri: str, spec) -> Path:
    """Delete the sweep's last trial's runs (MLflow's searches leave deleted runs out) and its folder: one trial
    left to run. Returns the folder its launch creates."""
    import shutil

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(spec.experiment)
    last = spec.trials[-1]
    for victim in client.search_runs([experiment.experiment_id], f"tags.trial_id = '{last.trial_id}'"):
        client.delete_run(victim.info.run_id)
    trial_dir = Path(spec.storage_path) / spec.name / last.trial_id
    shutil.rmtree(trial_dir, ignore_errors=True)
    return trial_dir


#: Written beside a store that :func:`build` filled: a later ``--reuse`` run times every command but import on it.
BUILT = "built.json"


def build(seeds: int, uri: str, folder: Path) -> None:
    """Fill an empty store with the re-seeded records through ``robustsweep import`` run in this process (the
    command's own code), quickly: SQLite's ``synchronous=OFF`` on this process's connections (no fsync; a
    benchmark store, never a user's). Not a timing: the import row comes from a timed import (without
    ``--reuse``). A 10,080-run store takes about 10 minutes of one core."""
    import sqlalchemy

    from robustsweep.cli import main as cli_main

    folder.mkdir(parents=True, exist_ok=True)
    sweep, flags, _, records = reseed(seeds, uri, folder)
    export = folder / "runs.jsonl"
    export.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))

    @sqlalchemy.event.listens_for(sqlalchemy.engine.Engine, "connect")
    def _no_fsync(connection, _record):  # SQLAlchemy's listener signature
        if type(connection).__module__.startswith("sqlite3"):
            connection.execute("PRAGMA synchronous=OFF")

    started = time.perf_counter()
    here = os.getcwd()
    os.chdir(folder)  # as bench_size runs the commands: relative paths of the sweep resolve there
    try:
        if cli_main(["import", str(export), str(sweep), *flags]) != 0:
            raise RuntimeError(f"robustsweep import into {uri} failed")
    finally:
        os.chdir(here)
    (folder / BUILT).write_text(json.dumps({"runs": len(records), "seconds": round(time.perf_counter() - started, 1)}))


def bench_size(seeds: int, uri: str, folder: Path, reuse: bool = False) -> dict[str, float]:
    from robustsweep.saved_sweep import _save_spec
    from robustsweep.sweep import SweepOverrides, load_sweep

    folder.mkdir(parents=True, exist_ok=True)
    sweep, flags, name, records = reseed(seeds, uri, folder)
    export = folder / "runs.jsonl"
    if reuse and not (folder / BUILT).is_file():
        raise SystemExit(f"--reuse: no store built under {folder} (run with --build first)")
    if not reuse:
        export.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    # the local copies of runs in the store's own folder: the first status is a cold read, whatever ran before
    env = {**os.environ, "ROBUSTSWEEP_DATA_ROOT": DATA_ROOT, "PYTHONUNBUFFERED": "1",
           "ROBUSTSWEEP_CACHE_DIR": str(folder / "run-cache")}
    env.pop("RAY_ADDRESS", None)
    cli = [sys.executable, "-m", "robustsweep.cli"]
    out: dict[str, float] = {"runs": len(records)}
    many = ["--max-trials", str(10**6)]

    def timed(command: str, argv: list[str]) -> None:
        out[command] = run(argv, folder, env)
        out[f"{command} (cpu)"] = CPU[" ".join(map(str, argv))]

    timed("validate", [*cli, "validate", str(sweep), *flags, *many])
    if reuse:  # untimed: brings back the trial an earlier run's Ray launch left unfinished (see one_left)
        run([*cli, "import", str(export), str(sweep), *flags], folder, env)
    else:
        timed("import", [*cli, "import", str(export), str(sweep), *flags])
    # `status` and `report` take the launched sweep's name: write what launch saves beside Ray's state.
    spec = load_sweep(sweep, base_dir=folder, max_trials=10**6, overrides=SweepOverrides(seeds=tuple(range(seeds))))
    _save_spec(spec)
    timed("status", [*cli, "status", name, "--storage-path", spec.storage_path])
    timed("status again", [*cli, "status", name, "--storage-path", spec.storage_path])
    timed("audit --complete", [*cli, "audit", str(sweep), *flags, "--complete"])
    timed("audit --complete again", [*cli, "audit", str(sweep), *flags, "--complete"])
    timed("export", [*cli, "export", str(sweep), *flags, "--out", str(folder / "exported.jsonl")])
    timed("report", [*cli, "report", name, "--storage-path", spec.storage_path, "--out", str(folder / "report")])
    timed("launch --debug, all finished", [*cli, "launch", str(sweep), *flags, *many, "--debug"])
    launch = [*cli, "launch", str(sweep), *flags, *many, "--verbose", "0"]
    # One trial left to run; launch starts a local Ray of its own (the default), then, as on a cluster's head,
    # attaches to a Ray already running.
    out["launch, first new trial starts"] = first_trial(launch, folder, env, one_left(uri, spec))
    attached = dict(env)
    head, address = running_ray(folder, attached)
    try:
        out["launch on a running Ray, first new trial starts"] = first_trial(
            [*launch, "--address", address], folder, attached, one_left(uri, spec))
    finally:
        stop_head(head)
    return out


#: The commands timed again with the code before issue 23 (``--before``), on the same stores.
BEFORE = ["status", "audit --complete", "export", "report", "launch --debug, all finished"]


def bench_before(seeds: int, uri: str, folder: Path, src: str) -> dict[str, float]:
    """The reading commands and ``launch --debug`` of ``bench_size``'s store, with the code under ``src`` (a
    checkout's src/ before issue 23). The trial the Ray launch started is imported back first (as FINISHED),
    with today's code, so that every trial has a FINISHED run again."""
    from robustsweep.sweep import SweepOverrides, load_sweep

    sweep, flags, name, _ = reseed(seeds, uri, folder)
    env = {**os.environ, "ROBUSTSWEEP_DATA_ROOT": DATA_ROOT, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    cli = [sys.executable, "-m", "robustsweep.cli"]
    many = ["--max-trials", str(10**6)]
    run([*cli, "import", str(folder / "runs.jsonl"), str(sweep), *flags], folder, env)
    spec = load_sweep(sweep, base_dir=folder, max_trials=10**6, overrides=SweepOverrides(seeds=tuple(range(seeds))))
    old = {**env, "PYTHONPATH": src}
    out: dict[str, float] = {}

    def timed(command: str, argv: list[str]) -> None:
        # the code before, then today's, one after the other: a ratio of two times taken together
        out[f"before: {command}"] = run(argv, folder, old)
        out[f"before: {command} (cpu)"] = CPU[" ".join(map(str, argv))]
        out[command] = run(argv, folder, env)
        out[f"{command} (cpu)"] = CPU[" ".join(map(str, argv))]
        print(json.dumps({"runs": len(spec.trials), **{k: v for k, v in out.items() if command in k}}), flush=True)

    timed("status", [*cli, "status", name, "--storage-path", spec.storage_path])
    timed("audit --complete", [*cli, "audit", str(sweep), *flags, "--complete"])
    timed("export", [*cli, "export", str(sweep), *flags, "--out", str(folder / "exported-before.jsonl")])
    timed("launch --debug, all finished", [*cli, "launch", str(sweep), *flags, *many, "--debug"])
    timed("report", [*cli, "report", name, "--storage-path", spec.storage_path, "--out", str(folder / "report-before")])
    return out


def sqlite_store(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlflow.db'}"


def postgres_store(base: str, label: str) -> str:
    """A fresh database ``robustsweep_bench_<label>`` on the server of ``base`` (a postgresql:// URI)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(base.replace("/?", "/postgres?", 1) if "/?" in base else base,
                                      isolation_level="AUTOCOMMIT")
    database = f"robustsweep_bench_{label}"
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {database}"))
        connection.execute(sqlalchemy.text(f"CREATE DATABASE {database}"))
    engine.dispose()
    return base.replace("/?", f"/{database}?", 1) if "/?" in base else f"{base.rstrip('/')}/{database}"


def table(backend: str, rows: list[dict[str, float]]) -> str:
    sizes = [int(r["runs"]) for r in rows]
    head = f"| command ({backend}) | " + " | ".join(f"{n:,} runs" for n in sizes)
    lines = [head + (" | growth (exponent) | target at 10,000 |" if len(rows) > 1 else " | target at 10,000 |"),
             "|" + "---|" * (len(rows) + (3 if len(rows) > 1 else 2))]
    for command in COMMANDS:
        cells = [(f"{r[command]:.1f}" + (f" ({r[command + ' (cpu)']:.1f})" if command + " (cpu)" in r else ""))
                 if command in r else "-" for r in rows]
        line = f"| {command} | " + " | ".join(cells)
        if len(rows) > 1 and all(command in r for r in (rows[0], rows[-1])):
            exponent = math.log(rows[-1][command] / rows[0][command]) / math.log(sizes[-1] / sizes[0])
            line += f" | {exponent:.2f}"
        elif len(rows) > 1:
            line += " | -"
        target = TARGETS.get(command)
        line += f" | {'<= ' + str(target) + ' s' if target else ''} |"
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="10,70", help="seed counts, one store each (144 runs a seed)")
    parser.add_argument("--out", default=None, help="folder for the stores (default: a temporary one)")
    parser.add_argument("--postgres", default=None, help="also on this PostgreSQL server (postgresql://...)")
    parser.add_argument("--no-sqlite", action="store_true", help="only PostgreSQL")
    parser.add_argument("--before", default=None, metavar="SRC",
                        help="instead: time the reading commands on the stores already under --out with the code "
                             "in SRC (the src/ folder of a checkout before issue 23)")
    parser.add_argument("--build", action="store_true",
                        help="only fill the stores under --out, quickly (no fsync; no timings), for --reuse later")
    parser.add_argument("--reuse", action="store_true",
                        help="time every command but import on the stores --build filled under --out")
    args = parser.parse_args()
    counts = [int(s) for s in args.seeds.split(",")]
    root = Path(args.out or tempfile.mkdtemp(prefix="robustsweep-scale-"))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}; stores under {root}", flush=True)
    backends = ([] if args.no_sqlite else ["sqlite"]) + (["postgresql"] if args.postgres else [])
    if args.before:
        for backend in backends:
            for seeds in counts:
                folder = root / f"{backend}-{seeds}"
                uri = (sqlite_store(folder) if backend == "sqlite"
                       else args.postgres.replace("/?", f"/robustsweep_bench_{seeds}?", 1))
                print(json.dumps({"backend": backend, "code": args.before, "seeds": seeds,
                                  **bench_before(seeds, uri, folder, args.before)}), flush=True)
        return
    for backend in backends:
        rows = []
        for seeds in counts:
            folder = root / f"{backend}-{seeds}"
            if backend == "sqlite":
                uri = sqlite_store(folder)
            elif args.reuse:
                uri = args.postgres.replace("/?", f"/robustsweep_bench_{seeds}?", 1)
            else:
                uri = postgres_store(args.postgres, str(seeds))
            if args.build:
                build(seeds, uri, folder)
                print(json.dumps({"backend": backend, "built": json.loads((folder / BUILT).read_text())}), flush=True)
                continue
            rows.append(bench_size(seeds, uri, folder, reuse=args.reuse))
            print(json.dumps({"backend": backend, **rows[-1]}), flush=True)
        if rows:
            print(table(backend, rows), flush=True)


if __name__ == "__main__":
    main()
