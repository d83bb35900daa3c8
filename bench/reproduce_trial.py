"""Re-run a trial of a committed sweep export with today's code and compare every measured value.

    OMP_NUM_THREADS=1 .venv/bin/python bench/reproduce_trial.py variant=sgd batch_size=128 momentum=0.0

Picks the first run in ``--runs`` (a ``robustsweep export`` file, default the CPU study's) whose
params match every KEY=VALUE given, runs it again through ``robustsweep run`` with the same
settings into a temporary MLflow store, and compares each metric's whole history, step by step,
exactly (wall-clock metrics left out). Use it to check that a speed-up changed no number.

Float results depend on the number of CPU threads (reductions split differently): the study ran
one thread per trial (Ray's ``cpu: 1``), so compare with ``OMP_NUM_THREADS=1``.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from robustsweep import metrics as keys

HERE = Path(__file__).resolve().parent
#: Settings that say where, not what: replaced for the re-run.
PLACES = {"mlflow_tracking_uri", "mlflow_experiment", "data_root", "download"}


def settings_of(params: dict[str, str]) -> list[str]:
    """A run's logged params as `robustsweep run` KEY=VALUE arguments (unset settings left out)."""
    out = []
    for key, value in params.items():
        if key in PLACES or value == "None":
            continue
        if value.startswith("("):  # tuples are logged as Python literals
            value = "[" + ",".join(map(str, ast.literal_eval(value))) + "]"
        out.append(f"{key}={value}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("match", nargs="*", metavar="KEY=VALUE", help="params the run must have")
    parser.add_argument("--runs", default=str(HERE.parent / "results" / "table1-mnist-cpu" / "runs.jsonl"))
    parser.add_argument("--data-root", default="../shared/data")
    args = parser.parse_args()
    want = dict(item.split("=", 1) for item in args.match)
    rows = [json.loads(line) for line in Path(args.runs).read_text().splitlines() if line.strip()]
    row = next((r for r in rows if all(r["params"].get(k) == v for k, v in want.items())), None)
    if row is None:
        raise SystemExit(f"no run in {args.runs} has params {want}")
    print(f"trial {row['trial_id']} (run {row['run_name']})")
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        command = [str(Path(sys.executable).with_name("robustsweep")), "run", "--quiet", *settings_of(row["params"]),
                   f"data_root={args.data_root}", "download=false", f"mlflow_tracking_uri={uri}",
                   "mlflow_experiment=reproduce"]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"robustsweep run failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        client = MlflowClient(uri)
        (run,) = client.search_runs([client.get_experiment_by_name("reproduce").experiment_id])
        differ = 0
        for key, history in sorted(row["metrics"].items()):
            if keys.is_timing(key) or key == keys.PEAK_GPU_MIB:
                continue
            before = {step: value for step, value, _ in history}
            now = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
            if before != now:
                differ += 1
                print(f"  {key}: committed {before}, now {now}")
    print(f"{len(row['metrics'])} metrics compared: " + (f"{differ} differ" if differ else "every measured value identical"))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
