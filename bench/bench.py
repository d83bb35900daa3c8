"""Benchmarks: prints Markdown tables; ratios within one run are what to compare (machines are noisy).

    .venv/bin/python bench/bench.py --data-root ../shared/data            # everything
    .venv/bin/python bench/bench.py --data-root ../shared/data --only epochs

Sections:
  epochs   seconds per M1 epoch on full MNIST for each variant, and the ratio to plain SGD
  eval     the end-of-trial measurements for M1 on the full test set (clean, FGSM, PGD, Hessian)
  ray      Ray Tune's per-trial overhead: the same tiny trials through `launch` and in a loop (`--debug`)
  vgg      seconds per VGG-11 training step at batch 128 (random CIFAR-shaped data)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from robustsweep.config import TrialConfig
from robustsweep.data import DeviceBatches, DeviceData
from robustsweep.models import build_model
from robustsweep.trial import evaluate, resolve_device
from robustsweep.variants import VARIANTS


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_epochs(root: str, device: torch.device, batch_size: int, rounds: int) -> None:
    """Rounds of one epoch per variant, interleaved so machine noise hits all alike; the median is reported."""
    data = DeviceData.load("mnist", root, device, download=False)
    print(f"\n### M1 epoch on full MNIST ({len(data.train)} examples, batch {batch_size}, {machine(device)})\n")
    print(f"median of {rounds} interleaved rounds; sgdselective is timed after its first (full) epoch\n")
    names = ("sgd", "svrg", "sgdnoise", "sgdselective", "adam", "adamw")
    _warm_up(data, device, batch_size)
    runs = {}
    for name in names:
        lr = 0.001 if name.startswith("adam") else 0.01
        config = TrialConfig(variant=name, lr=lr, batch_size=batch_size,
                             noise_ref_batch=32 if name == "sgdnoise" else None).resolved()
        torch.manual_seed(0)
        model = build_model("m1").to(device)
        variant = VARIANTS[name](model, config, data.train, torch.Generator().manual_seed(1))
        batches = DeviceBatches(data.train, batch_size, torch.Generator().manual_seed(0), flip=True)
        runs[name] = [model, variant, batches, 0, [], {}]
    if "sgdselective" in runs:  # its first epoch back-propagates everything by design
        _epoch(runs["sgdselective"], device)
    for _ in range(rounds):
        for name in names:
            _epoch(runs[name], device)
    base = statistics.median(runs["sgd"][4])
    print("| variant | seconds/epoch (median) | min-max | vs sgd | grad evals/epoch |")
    print("|---|---|---|---|---|")
    for name in names:
        times, counts = runs[name][4], runs[name][5]
        med = statistics.median(times)
        print(f"| {name} | {med:.2f} | {min(times):.1f}-{max(times):.1f} | {med / base:.2f}x | "
              f"{int(counts.get('grad_evals', 0))} |", flush=True)


def _epoch(run: list, device: torch.device) -> None:
    model, variant, batches, epoch, times, _ = run
    model.train()
    sync(device)
    t0 = time.perf_counter()
    variant.start_epoch(epoch, batches)
    for x, y in batches:
        variant.train_step(x, y)
    sync(device)
    if epoch > 0 or variant.name != "sgdselective":
        times.append(time.perf_counter() - t0)
    run[5] = variant.end_epoch()
    run[3] = epoch + 1


def _warm_up(data: DeviceData, device: torch.device, batch_size: int, steps: int = 50) -> None:
    """A few untimed SGD steps, so the first timed variant does not pay one-time start-up costs."""
    model = build_model("m1").to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for i, (x, y) in enumerate(DeviceBatches(data.train, batch_size, torch.Generator().manual_seed(0))):
        if i == steps:
            break
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    sync(device)


def bench_eval(root: str, device: torch.device) -> None:
    config = TrialConfig(data_root=root, download=False).resolved()
    data = DeviceData.load("mnist", root, device, download=False)
    torch.manual_seed(0)
    model = build_model("m1").to(device)
    lines: list[str] = []
    t0 = time.perf_counter()
    evaluate(model, data, config, log=lines.append)
    total = time.perf_counter() - t0
    print(f"\n### End-of-trial measurements, M1, full MNIST test set ({machine(device)})\n")
    print(f"eps {list(config.eps)}, PGD {config.pgd_steps} steps, Hessian on {config.hessian_samples} examples, "
          f"at most {config.hessian_iters} iterations (untrained weights)\n")
    for line in lines:
        print(f"- {line}")
    print(f"- total {total:.1f}s")


def bench_ray(root: str, trials: int) -> None:
    from robustsweep.launch import launch, run_debug
    from robustsweep.sweep import load_sweep

    lrs = ", ".join(f"{0.01 * (i + 1):.2f}" for i in range(trials))
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for mode, concurrent in (("loop (--debug)", 1), ("ray", 1), ("ray", 2)):
            name = f"bench{len(rows)}"
            path = Path(tmp) / f"{name}.yaml"
            path.write_text(f"""
name: {name}
storage_path: {tmp}/ray_results
mlflow: {{tracking_uri: "sqlite:///{tmp}/{name}.db"}}
max_concurrent: {concurrent}
base: {{dataset: mnist, data_root: "{root}", download: false, device: cpu, subset: 200, test_subset: 100,
        epochs: 1, attack_subset: 20, pgd_steps: 1, hessian_samples: 16, hessian_iters: 2, eval_batch_size: 100}}
groups: [{{name: g, grid: {{lr: [{lrs}]}}}}]
""")
            spec = load_sweep(path)
            t0 = time.perf_counter()
            if mode.startswith("loop"):
                run_debug(spec, log=lambda _: None)
            else:
                launch(spec, verbose=0)
            rows.append((mode, concurrent, time.perf_counter() - t0))
        import ray

        ray.shutdown()
    loop = rows[0][2]
    print(f"\n### Ray Tune per-trial overhead ({trials} tiny M1 trials, {machine(torch.device('cpu'))})\n")
    print("| mode | concurrent | wall s | s/trial | overhead vs loop, s/trial |")
    print("|---|---|---|---|---|")
    for mode, concurrent, wall in rows:
        print(f"| {mode} | {concurrent} | {wall:.1f} | {wall / trials:.2f} | {(wall - loop) / trials:+.2f} |")
    print("\n(the ray rows include starting the local Ray runtime once)")


def bench_vgg(device: torch.device, steps: int) -> None:
    torch.manual_seed(0)
    model = build_model("vgg11").to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(128, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (128,), device=device)
    times = []
    for _ in range(steps + 1):
        sync(device)
        t0 = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        sync(device)
        times.append(time.perf_counter() - t0)
    per_step = sum(times[1:]) / steps  # first step excluded (warm-up)
    print(f"\n### VGG-11 training step, batch 128 ({machine(device)})\n")
    print(f"- {per_step * 1000:.0f} ms/step; a CIFAR-10 epoch (391 steps) ~ {per_step * 391:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=os.environ.get("ROBUSTSWEEP_DATA_ROOT", "../shared/data"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved epochs per variant (median reported)")
    parser.add_argument("--ray-trials", type=int, default=6)
    parser.add_argument("--vgg-steps", type=int, default=5)
    parser.add_argument("--only", choices=("epochs", "eval", "ray", "vgg"), action="append")
    args = parser.parse_args()
    device = resolve_device(args.device)
    only = set(args.only or ("epochs", "eval", "ray", "vgg"))
    if "epochs" in only:
        bench_epochs(args.data_root, device, args.batch_size, args.rounds)
    if "eval" in only:
        bench_eval(args.data_root, device)
    if "vgg" in only:
        bench_vgg(device, args.vgg_steps)
    if "ray" in only:
        bench_ray(args.data_root, args.ray_trials)


if __name__ == "__main__":
    main()
