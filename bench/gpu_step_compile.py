"""Does torch.compile (with CUDA graphs) pay for M1's small training step on a GPU? (issue 10)

    python3 bench/gpu_step_compile.py          # on a GPU machine; prints a Markdown table

Times one M1 SGD step at batch 128 (forward, backward, optimizer step) eagerly, with the model
compiled by torch.compile (default mode), and compiled with mode="reduce-overhead" (CUDA graphs),
after warm-up; and the one-time compile cost. The answer decides whether a trial should compile:
a table1 M1 trial is 30 epochs of 469 steps.
"""

from __future__ import annotations

import time

import torch

from robustsweep.models import M1


def step_time(model: torch.nn.Module, steps: int = 300) -> tuple[float, float]:
    """(seconds for the first 3 steps, including compilation; median-free mean ms per step after that)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(128, 1, 28, 28, device="cuda")
    y = torch.randint(0, 10, (128,), device="cuda")

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    for _ in range(20):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return first, (time.perf_counter() - t0) / steps * 1000


def main() -> None:
    print(f"### M1 training step, batch 128, {torch.cuda.get_device_name()} (torch {torch.__version__})\n")
    print("| mode | first 3 steps (s, incl. compile) | ms/step after warm-up | epoch of 469 steps (s) |")
    print("|---|---|---|---|")
    for label, make in (("eager", lambda m: m),
                        ("eager, channels_last", lambda m: m.to(memory_format=torch.channels_last)),
                        ("torch.compile", lambda m: torch.compile(m)),
                        ("torch.compile reduce-overhead (CUDA graphs)", lambda m: torch.compile(m, mode="reduce-overhead"))):
        torch.manual_seed(0)
        first, ms = step_time(make(M1().cuda()))
        print(f"| {label} | {first:.2f} | {ms:.3f} | {ms * 469 / 1000:.2f} |", flush=True)


if __name__ == "__main__":
    main()
