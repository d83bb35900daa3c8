"""The reference: one M1 trial written the usual way, with no robustsweep machinery.

A torchvision DataLoader (2 workers, ToTensor + RandomHorizontalFlip), a
torch.optim.SGD loop, clean accuracy over a test DataLoader, torchattacks FGSM
and PGD over a test DataLoader, and PyHessian's ``hessian(..., dataloader=...)``
with its default ``eigenvalues()``. Only the model class comes from
robustsweep, so both sides train the same network.

Prints one JSON line: seconds per phase, the measured values, peak RSS (and
peak GPU memory). ``bench/side_by_side.py`` runs it beside ``robustsweep run``.
"""

from __future__ import annotations

import time

_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import warnings  # noqa: E402

import torch  # noqa: E402
import torchattacks  # noqa: E402
import torchvision  # noqa: E402
from pyhessian import hessian  # noqa: E402
from torch.utils.data import DataLoader, Subset  # noqa: E402
from torchvision import transforms  # noqa: E402

from robustsweep.models import M1  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--attack-subset", type=int, default=2000)
    parser.add_argument("--pgd-steps", type=int, default=10)
    parser.add_argument("--eps", default="0.03,0.15")
    parser.add_argument("--hessian-samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    timings: dict[str, float] = {}
    values: dict[str, float] = {}

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    torch.manual_seed(args.seed)
    train_set = torchvision.datasets.MNIST(args.data_root, train=True, download=False, transform=transforms.Compose(
        [transforms.RandomHorizontalFlip(), transforms.ToTensor()]))
    plain_train = torchvision.datasets.MNIST(args.data_root, train=True, download=False,
                                             transform=transforms.ToTensor())
    test_set = torchvision.datasets.MNIST(args.data_root, train=False, download=False,
                                          transform=transforms.ToTensor())
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, num_workers=2,
                              pin_memory=cuda, persistent_workers=args.epochs > 1)
    model = M1().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    criterion = torch.nn.CrossEntropyLoss()
    sync()
    timings["setup"] = time.perf_counter() - _START

    epoch_times = []
    for _ in range(args.epochs):
        t0 = time.perf_counter()
        model.train()
        for x, y in train_loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad()
            criterion(model(x), y).backward()
            optimizer.step()
        sync()
        epoch_times.append(time.perf_counter() - t0)
    timings["train_epoch"] = sum(epoch_times) / len(epoch_times)

    model.eval()
    t0 = time.perf_counter()
    correct = 0
    with torch.no_grad():
        for x, y in DataLoader(test_set, batch_size=256):
            correct += int((model(x.to(device)).argmax(1) == y.to(device)).sum())
    sync()
    timings["clean_eval"] = time.perf_counter() - t0
    values["clean_acc"] = correct / len(test_set)

    attack_loader = DataLoader(Subset(test_set, range(args.attack_subset)), batch_size=256)
    for name in ("fgsm", "pgd"):
        timings[name] = 0.0
        for eps in (float(e) for e in args.eps.split(",")):
            if name == "fgsm":
                attack = torchattacks.FGSM(model, eps=eps)
            else:
                attack = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / args.pgd_steps, steps=args.pgd_steps,
                                          random_start=True)
            t0 = time.perf_counter()
            correct = 0
            for x, y in attack_loader:
                x, y = x.to(device), y.to(device)
                adversarial = attack(x, y)
                with torch.no_grad():
                    correct += int((model(adversarial).argmax(1) == y).sum())
            sync()
            timings[name] += time.perf_counter() - t0
            values[f"{name}_acc_eps{eps:g}"] = correct / args.attack_subset

    generator = torch.Generator().manual_seed(args.seed)
    sample = torch.randperm(len(plain_train), generator=generator)[:args.hessian_samples].tolist()
    hessian_loader = DataLoader(Subset(plain_train, sample), batch_size=200)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        top, _ = hessian(model, criterion, dataloader=hessian_loader, cuda=cuda).eigenvalues()
    sync()
    timings["hessian"] = time.perf_counter() - t0
    values["hessian_top_eig"] = float(top[0])
    timings["whole"] = time.perf_counter() - _START
    memory = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if cuda:
        memory["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps({"timings": timings, "values": values, "memory": memory}))


if __name__ == "__main__":
    main()
