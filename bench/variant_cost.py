"""Seconds per training step of optimizer variants side by side, and of each end-of-trial measurement.

The numbers behind a sweep file's CPU-cost estimate (sweeps/beyond.yaml):
each variant trains M1 for a couple of epochs on a subset at every batch size
asked for (the engine of ``robustsweep run``: DeviceData, the variant, the
training loop), then the trained model of the last batch size is measured
once per measurement, each timed on its own (``evaluate`` with only that one
chosen, so the attacked images' clean accuracy, a second or less, is counted
in each). Both wall time and CPU time (``time.process_time``) are reported:
run it with OMP_NUM_THREADS=1, as a sweep trial with ``resources: {cpu: 1}``
runs, and on a machine shared with other jobs the CPU time is the better
estimate of what a trial costs on a core of its own. Prints one JSON line.

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/variant_cost.py --variants sgd sam
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from robustsweep.allocator import keep_freed_memory
from robustsweep.attacks import clean_accuracy
from robustsweep.config import load_trial_config
from robustsweep.data import DeviceBatches, DeviceData
from robustsweep.trial import _train_epoch, build_trial_model, evaluate
from robustsweep.variants import VARIANTS

#: The measurements of sweeps/beyond.yaml (and table1-mnist-extra.yaml), one at a time.
MEASUREMENTS = {"fgsm": {"attacks": ("fgsm",), "curvature": ()},
                "pgd": {"attacks": ("pgd",), "curvature": ()},
                "autoattack": {"attacks": ("autoattack",), "curvature": ()},
                "top_eig": {"attacks": (), "curvature": ("top_eig",)},
                "trace": {"attacks": (), "curvature": ("trace",)}}


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--variants", nargs="+", default=["sgd", "sam"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 64, 128, 256, 512, 1024])
    parser.add_argument("--subset", type=int, default=6000, help="training examples")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--no-measurements", action="store_true", help="time the training steps only")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="trial setting (default: the measurement settings of sweeps/beyond.yaml)")
    args = parser.parse_args()
    keep_freed_memory()
    base = ["device=cpu", "download=false", f"data_root={args.data_root}", "lr=0.1", f"subset={args.subset}",
            "eps=[0.03,0.15]", "attack_subset=2000", "autoattack_subset=500", "hessian_trace_probes=50", *args.set]
    config = load_trial_config(None, base).resolved()
    device = torch.device("cpu")
    data = DeviceData.load("mnist", config.data_root, device, download=False, train_subset=args.subset)
    out: dict = {"threads": torch.get_num_threads(), "subset": args.subset, "epochs": args.epochs, "train": [],
                 "measure": {}}
    model = None
    for variant_name in args.variants:
        for batch_size in args.batch_sizes:
            c = dataclasses.replace(config, variant=variant_name, batch_size=batch_size).resolved()
            torch.manual_seed(c.seed)
            model = build_trial_model(c, device)
            variant = VARIANTS[c.variant](model, c, data.train, torch.Generator().manual_seed(c.seed + 1))
            batches = DeviceBatches(data.train, batch_size, torch.Generator().manual_seed(c.seed),
                                    flip=c.augment_flip, crop_padding=c.augment_crop)
            for epoch in range(args.epochs):
                model.train()
                variant.start_epoch(epoch, batches)
                wall, cpu = _timed(lambda: _train_epoch(variant, batches, None))
                variant.end_epoch()
                out["train"].append({"variant": variant_name, "batch_size": batch_size, "epoch": epoch + 1,
                                     "steps": len(batches), "wall_s": wall, "cpu_s": cpu,
                                     "ms_per_step_cpu": 1000 * cpu / len(batches),
                                     "ms_per_example_cpu": 1000 * cpu / len(data.train)})
        if args.no_measurements or model is None:
            continue
        measured = out["measure"][variant_name] = {}
        wall, cpu = _timed(lambda: clean_accuracy(model, *data.test.floats(), c.eval_batch_for("cpu")))
        measured["test_pass"] = {"images": len(data.test), "wall_s": wall, "cpu_s": cpu}
        for name, chosen in MEASUREMENTS.items():
            mc = dataclasses.replace(c, **chosen)
            wall, cpu = _timed(lambda: evaluate(model, data, mc, clean_acc=0.0))
            measured[name] = {"wall_s": wall, "cpu_s": cpu}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
