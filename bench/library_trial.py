"""robustsweep's trial computation without its process around it: no CLI, no MLflow.

It runs what ``robustsweep run`` runs between loading the data and logging the
results: the same data (DeviceData), model, variant, training loop
(``trial._train_epoch``) and measurements (``trial.evaluate``), and prints the
JSON line bench/plain_trial.py prints. Used where MLflow is not installed (the
GPU machine) and to measure how many trials share a GPU (``--concurrent``
copies in bench/side_by_side.py).
"""

from __future__ import annotations

import time

_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402

import torch  # noqa: E402

from robustsweep import metrics as keys  # noqa: E402
from robustsweep.allocator import keep_freed_memory  # noqa: E402
from robustsweep.config import load_trial_config  # noqa: E402
from robustsweep.data import DeviceBatches, DeviceData  # noqa: E402
from robustsweep.trial import _train_epoch, build_trial_model, evaluate, prepare_device, resolve_device  # noqa: E402
from robustsweep.variants import VARIANTS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="trial setting")
    parser.add_argument("--save-model", help="save the trained weights here (state dict)")
    args = parser.parse_args()
    overrides = [f"data_root={args.data_root}", "download=false", "augment_flip=true", *args.set]
    config = load_trial_config(None, overrides).resolved()
    keep_freed_memory()  # as run_trial does
    device = resolve_device(config.device)
    prepare_device(config, device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    data = DeviceData.load(config.dataset, config.data_root, device, download=False, train_subset=config.subset,
                           test_subset=config.test_subset)
    torch.manual_seed(config.seed)
    model = build_trial_model(config, device)
    variant = VARIANTS[config.variant](model, config, data.train, torch.Generator().manual_seed(config.seed + 1))
    batches = DeviceBatches(data.train, config.batch_size, torch.Generator().manual_seed(config.seed),
                            flip=config.augment_flip)
    sync()
    timings = {"setup": time.perf_counter() - _START}
    epochs = []
    for epoch in range(config.epochs):
        model.train()
        variant.start_epoch(epoch, batches)
        t0 = time.perf_counter()
        _train_epoch(variant, batches, None)
        sync()
        epochs.append(time.perf_counter() - t0)
    timings["train_epoch"] = sum(epochs) / len(epochs)
    out = evaluate(model, data, config)
    for phase in keys.EVAL_PHASES + keys.EXTRA_PHASES:
        if keys.phase_seconds_key(phase) in out:  # the opt-in measurements, where the config asks for them
            timings[phase] = out[keys.phase_seconds_key(phase)]
    timings["whole"] = time.perf_counter() - _START
    values = {k: v for k, v in out.items() if k in keys.final_metric_keys(config.eps) and not keys.is_timing(k)}
    memory = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        memory["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    if args.save_model:
        torch.save(model.state_dict(), args.save_model)
    print(json.dumps({"timings": timings, "values": values, "memory": memory,
                      "epoch_seconds": epochs, "steps_per_epoch": len(batches)}))


if __name__ == "__main__":
    main()
