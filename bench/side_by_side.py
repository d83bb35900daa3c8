"""One M1 trial two ways, interleaved: the plain reference script and `robustsweep run`.

    .venv/bin/python bench/side_by_side.py --data-root ../shared/data --rounds 3
    .venv/bin/python bench/side_by_side.py --device cuda --library --concurrency 1,2,4,8   # GPU, no MLflow

``--library`` times robustsweep's computation without its process around it
(bench/library_trial.py: no CLI, no MLflow), for machines without MLflow.
``--concurrency`` then runs that many copies of a table1-shaped M1 trial at
once (as Ray does with fractional ``gpu`` resources) and prints trials per
minute for each count.

The work (issue 10): M1 at batch 128, SGD lr 0.01 momentum 0.9, one epoch of full
MNIST with random horizontal flips; clean accuracy on the test set; FGSM and
10-step PGD at eps 0.03 and 0.15 on 2,000 test images; the top Hessian
eigenvalue on 1,000 training examples. Each round runs both sides as fresh
processes, one after the other, so machine noise hits both alike; the table
holds per-phase medians and the speed ratio (plain / robustsweep, > 1 means
robustsweep is faster). "setup" is everything outside the timed phases:
interpreter start, imports, data, MLflow, artifacts, exit.

The eigenvalue check: after the rounds, the model robustsweep trained is loaded
from its MLflow artifact and PyHessian is run over a dataloader of the same
1,000 examples to a relative tolerance of 1e-6: robustsweep's logged value must
be within 1% of that converged value.

Then the projection: hours for sweeps/table1.yaml on this device, from the
measured per-example costs scaled to table1's settings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PHASES = ("setup", "train_epoch", "clean_eval", "fgsm", "pgd", "hessian", "whole")
WORK = dict(batch_size=128, lr=0.01, momentum=0.9, epochs=1, attack_subset=2000, pgd_steps=10,
            eps=(0.03, 0.15), hessian_samples=1000, seed=0)


def run_plain(args: argparse.Namespace) -> dict:
    command = [sys.executable, str(HERE / "plain_trial.py"), "--data-root", args.data_root, "--device", args.device,
               "--batch-size", str(WORK["batch_size"]), "--attack-subset", str(WORK["attack_subset"]),
               "--pgd-steps", str(WORK["pgd_steps"]), "--eps", ",".join(map(str, WORK["eps"])),
               "--hessian-samples", str(WORK["hessian_samples"]), "--seed", str(WORK["seed"])]
    return _timed_json_process(command, "the plain script")


def _run_process(command: list[str], what: str, done: str = "{") -> tuple[str, float, float]:
    """Run a process to its end: its stdout, wall seconds and peak RSS in MiB (``os.wait4``)."""
    t0 = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = process.stdout.read()
    err = process.stderr.read()
    _, _, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - t0
    if done not in out:
        raise SystemExit(f"{what} failed:\n{out[-2000:]}\n{err[-3000:]}")
    return out, wall, usage.ru_maxrss / 1024


def _timed_json_process(command: list[str], what: str) -> dict:
    """Run a script that prints one JSON line of phase timings; add its wall time, setup and peak RSS."""
    out, wall, rss = _run_process(command, what)
    result = json.loads(out.strip().splitlines()[-1])
    result["timings"]["whole"] = wall
    result["timings"]["setup"] = wall - sum(result["timings"][p] for p in PHASES if p not in ("setup", "whole"))
    result["memory"]["peak_rss_mib"] = rss
    return result


def run_robustsweep(args: argparse.Namespace, store: Path, index: int) -> dict:
    import mlflow

    uri = f"sqlite:///{store}/mlflow.db"
    experiment = f"side-by-side-{index}"
    settings = {"dataset": "mnist", "model": "m1", "variant": "sgd", "augment_flip": "true",
                "eps": "[" + ",".join(map(str, WORK["eps"])) + "]", "data_root": args.data_root, "download": "false",
                "device": args.device, "mlflow_tracking_uri": uri, "mlflow_experiment": experiment,
                **{k: str(v) for k, v in WORK.items() if k != "eps"}}
    settings.update(dict(s.split("=", 1) for s in args.set))
    command = [str(Path(sys.executable).with_name("robustsweep")), "run", "--quiet",
               *(f"{k}={v}" for k, v in settings.items())]
    _, wall, rss = _run_process(command, "robustsweep run", done="MLflow run")
    mlflow.set_tracking_uri(uri)
    run = mlflow.search_runs(experiment_names=[experiment], output_format="list")[0]
    m = run.data.metrics
    # The last epoch's test pass is the clean evaluation (its accuracy is clean_acc): count it there.
    timings = {"train_epoch": m["epoch_seconds"], "clean_eval": m["seconds_clean_eval"] + m["test_seconds"],
               "fgsm": m["seconds_fgsm"], "pgd": m["seconds_pgd"], "hessian": m["seconds_hessian"], "whole": wall}
    timings["setup"] = wall - sum(timings[p] for p in PHASES if p not in ("setup", "whole"))
    memory = {"peak_rss_mib": rss}
    if "peak_gpu_mib" in m:
        memory["peak_gpu_mib"] = m["peak_gpu_mib"]
    values = {k: v for k, v in m.items() if k == "clean_acc" or k.endswith(("_acc_eps0.03", "_acc_eps0.15"))}
    values["hessian_top_eig"] = m["hessian_top_eig"]
    values["hessian_iters"] = m["hessian_iters"]
    return {"timings": timings, "values": values, "memory": memory, "run_id": run.info.run_id, "uri": uri}


def _library_command(args: argparse.Namespace, settings: dict, save_model: str | None = None) -> list[str]:
    command = [sys.executable, str(HERE / "library_trial.py"), "--data-root", args.data_root,
               *(f"--set={k}={v}" for k, v in settings.items())]
    return command + (["--save-model", save_model] if save_model else [])


def run_library(args: argparse.Namespace, store: Path, index: int) -> dict:
    settings = {"dataset": "mnist", "variant": "sgd", "eps": "[" + ",".join(map(str, WORK["eps"])) + "]",
                "device": args.device, **{k: str(v) for k, v in WORK.items() if k != "eps"},
                **dict(s.split("=", 1) for s in args.set)}
    model = str(store / f"model-{index}.pt")
    result = _timed_json_process(_library_command(args, settings, model), "bench/library_trial.py")
    result["model_path"] = model
    return result


def concurrency(args: argparse.Namespace, counts: list[int]) -> None:
    """Trials per minute with N table1-shaped M1 trials (2 epochs) sharing the device at once."""
    settings = {"dataset": "mnist", "variant": "sgd", "lr": "0.01", "batch_size": "128", "epochs": "2",
                "device": args.device, **dict(s.split("=", 1) for s in args.set)}
    env = dict(os.environ, OMP_NUM_THREADS="2")
    print("\n### Concurrent M1 trials on one device (2 epochs of full MNIST, PGD-20 on 10,000 test images at "
          "2 eps, Hessian on 1,000 examples)\n")
    print("| concurrent trials | wall s | trials/min | per-trial s (median) | peak GPU MiB per trial |")
    print("|---|---|---|---|---|")
    for n in counts:
        t0 = time.perf_counter()
        processes = [subprocess.Popen(_library_command(args, settings), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env) for _ in range(n)]
        results = []
        for process in processes:
            out, err = process.communicate()
            if process.returncode != 0:
                raise SystemExit(f"bench/library_trial.py failed:\n{err[-3000:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
        wall = time.perf_counter() - t0
        per_trial = statistics.median(r["timings"]["whole"] for r in results)
        gpu = max(r["memory"].get("peak_gpu_mib", 0.0) for r in results)
        print(f"| {n} | {wall:.1f} | {60 * n / wall:.1f} | {per_trial:.1f} | {gpu:.0f} |", flush=True)


def converged_eigenvalue(args: argparse.Namespace, result: dict) -> float:
    """PyHessian over a dataloader of the trial's Hessian sample, to tol 1e-6, on the model robustsweep saved."""
    import warnings

    import torch
    import torchvision
    from pyhessian import hessian
    from torch.utils.data import DataLoader, Subset
    from torchvision import transforms

    from robustsweep.hessian import hessian_sample
    from robustsweep.models import M1

    if "model_path" in result:
        path = result["model_path"]
    else:
        import mlflow

        mlflow.set_tracking_uri(result["uri"])
        path = mlflow.artifacts.download_artifacts(run_id=result["run_id"], artifact_path="model.pt")
    model = M1()
    model.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"))
    model.eval()
    train = torchvision.datasets.MNIST(args.data_root, train=True, download=False, transform=transforms.ToTensor())
    index = hessian_sample(len(train), WORK["hessian_samples"], WORK["seed"]).tolist()
    loader = DataLoader(Subset(train, index), batch_size=200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        top, _ = hessian(model, torch.nn.CrossEntropyLoss(), dataloader=loader, cuda=False).eigenvalues(
            maxIter=500, tol=1e-6)
    return float(top[0])


def projected_table1_hours(median: dict, table1: Path) -> tuple[float, str]:
    """Hours for table1's MNIST trials on this device, from per-example costs measured here."""
    from robustsweep.sweep import load_sweep

    spec = load_sweep(table1)
    seconds = 0.0
    count = 0
    for trial in spec.trials:
        config = trial.config.resolved()
        if config.dataset != "mnist":
            continue
        count += 1
        train_examples = config.subset or 60000
        per_epoch = median["train_epoch"] / 60000 * train_examples
        if config.variant == "svrg":
            per_epoch *= 3  # a snapshot pass plus two gradients per example
        attacked = config.attack_subset or 10000
        eps_count = len(config.eps or (0.03, 0.15))
        fgsm = median["fgsm"] / (WORK["attack_subset"] * len(WORK["eps"])) * attacked * eps_count
        pgd = (median["pgd"] / (WORK["attack_subset"] * len(WORK["eps"]) * WORK["pgd_steps"])
               * attacked * eps_count * config.pgd_steps)
        clean = median["clean_eval"] * config.epochs  # a test pass after every epoch
        seconds += (median["setup"] + per_epoch * config.epochs + clean + fgsm + pgd
                    + median["hessian"] / WORK["hessian_samples"] * config.hessian_samples)
    return seconds / 3600, f"{count} MNIST trials of {table1.name}, one at a time"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=os.environ.get("ROBUSTSWEEP_DATA_ROOT", "../shared/data"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra robustsweep trial setting (e.g. eval_batch_size=500)")
    parser.add_argument("--table1", default=str(HERE.parent / "sweeps" / "table1.yaml"))
    parser.add_argument("--json", help="also write every round's raw figures here")
    parser.add_argument("--library", action="store_true",
                        help="time bench/library_trial.py (robustsweep's computation, no MLflow) for robustsweep")
    parser.add_argument("--concurrency", help="comma-separated counts of concurrent trials to measure, e.g. 1,2,4,8")
    args = parser.parse_args()
    args.data_root = str(Path(args.data_root).resolve())
    ours_side = run_library if args.library else run_robustsweep
    plain, ours = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            for side in ((run_plain, ours_side) if i % 2 == 0 else (ours_side, run_plain)):
                if side is run_plain:
                    plain.append(run_plain(args))
                else:
                    ours.append(side(args, Path(tmp), i))
            print(f"round {i + 1}/{args.rounds}: plain {plain[-1]['timings']['whole']:.1f}s, "
                  f"robustsweep {ours[-1]['timings']['whole']:.1f}s", file=sys.stderr, flush=True)
        reference = converged_eigenvalue(args, ours[-1]) if ours else None
        if ours:
            print_table(args, plain, ours, reference)
    if args.concurrency:
        concurrency(args, [int(n) for n in args.concurrency.split(",")])
    if args.json:
        Path(args.json).write_text(json.dumps({"plain": plain, "robustsweep": ours, "converged": reference}, indent=1))


def _median(results: list[dict], group: str, key: str) -> float:
    return statistics.median(r[group][key] for r in results if key in r[group])


def print_table(args: argparse.Namespace, plain: list[dict], ours: list[dict], reference: float) -> None:
    import torch

    from robustsweep.tracking import device_name

    device = torch.device(args.device)
    label = "bench/library_trial.py (robustsweep without CLI or MLflow)" if args.library else "`robustsweep run`"
    print(f"### One M1 trial, plain script vs {label} ({device_name(device)}, {os.cpu_count()} CPU cores)\n")
    print(f"median of {args.rounds} interleaved rounds; speed = plain / robustsweep (> 1: robustsweep faster)\n")
    print("| phase | plain s | robustsweep s | speed |")
    print("|---|---|---|---|")
    median_ours = {}
    for phase in PHASES:
        a, b = _median(plain, "timings", phase), _median(ours, "timings", phase)
        median_ours[phase] = b
        label = "PGD-10, both eps" if phase == "pgd" else "FGSM, both eps" if phase == "fgsm" else phase
        print(f"| {label} | {a:.2f} | {b:.2f} | {a / b:.2f}x |")
    print("\n| memory | plain | robustsweep |")
    print("|---|---|---|")
    for key in ("peak_rss_mib", "peak_gpu_mib"):
        if any(key in r["memory"] for r in ours):
            print(f"| {key} | {_median(plain, 'memory', key):.0f} | {_median(ours, 'memory', key):.0f} |")
    print("\n| measured value (last round) | plain | robustsweep |")
    print("|---|---|---|")
    for key in sorted(ours[-1]["values"]):
        p = plain[-1]["values"].get(key)
        print(f"| {key} | {'' if p is None else f'{p:.4f}'} | {ours[-1]['values'][key]:.4f} |")
    ours_eig = ours[-1]["values"]["hessian_top_eig"]
    print(f"\nrobustsweep's top eigenvalue {ours_eig:.4f} vs PyHessian converged (tol 1e-6, same model and "
          f"examples) {reference:.4f}: {100 * abs(ours_eig - reference) / abs(reference):.3f}% apart")
    hours, what = projected_table1_hours(median_ours, Path(args.table1))
    print(f"\nprojected {what}: {hours:.1f} h on this device")


if __name__ == "__main__":
    main()
