"""Top eigenvalue of the training-loss Hessian with PyHessian's power iteration.

PyHessian 0.1 (the 2021 PyPI release) has sharp edges, each handled here:

* it puts the model in eval mode and leaves it there: the mode is restored;
* it back-propagates with ``create_graph=True`` into ``.grad``: gradients are
  cleared before (so stale ones do not leak into its gradient) and after (so
  the double-backward graph is freed);
* it fails on parameters that get no gradient: those are frozen for the call;
* with a dataloader it redoes a full pass per power iteration: we give it one
  fixed, seeded batch of training examples instead;
* it does not report how many iterations it used: we count its
  Hessian-vector products.

The Hessian is that of the mean cross-entropy over the given examples, with
the model in eval mode (BatchNorm uses its running statistics), as PyHessian
computes it.
"""

from __future__ import annotations

import contextlib
import importlib
import warnings
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

# `pyhessian/__init__` rebinds `pyhessian.hessian` to the class, so fetch the module itself.
_pyhessian_module = importlib.import_module("pyhessian.hessian")


@dataclass(frozen=True)
class EigenResult:
    eigenvalue: float
    iterations: int


@contextlib.contextmanager
def _count_hvps() -> Iterator[list[int]]:
    """Count calls of PyHessian's Hessian-vector product (one per power iteration, single-batch mode)."""
    counter = [0]
    original = _pyhessian_module.hessian_vector_product

    def counted(*args, **kwargs):
        counter[0] += 1
        return original(*args, **kwargs)

    _pyhessian_module.hessian_vector_product = counted
    try:
        yield counter
    finally:
        _pyhessian_module.hessian_vector_product = original


def _params_without_gradient(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> list[nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    loss = nn.functional.cross_entropy(model(inputs[:2]), targets[:2])
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [p for p, g in zip(params, grads) if g is None]


def top_eigenvalue_with_iterations(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *,
                                   max_iter: int = 100, tol: float = 1e-3, seed: int = 0) -> EigenResult:
    """Like :func:`top_eigenvalue`, also returning the number of power iterations PyHessian used."""
    was_training = model.training
    device = inputs.device
    model.eval()
    frozen = _params_without_gradient(model, inputs, targets)
    for p in frozen:
        p.requires_grad_(False)
    model.zero_grad(set_to_none=True)
    devices = [device] if device.type == "cuda" else []
    try:
        # PyHessian draws its start vector from the global RNG: fork it, so the caller's stream is untouched.
        with torch.random.fork_rng(devices=devices), _count_hvps() as hvps, warnings.catch_warnings():
            # PyHessian's backward(create_graph=True) warns of a grad<->param cycle; the finally below
            # resets .grad to None, which is the remedy the warning asks for.
            warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
            torch.manual_seed(seed)
            hess = _pyhessian_module.hessian(
                model, nn.CrossEntropyLoss(), data=(inputs, targets), cuda=device.type == "cuda"
            )
            eigenvalues, _ = hess.eigenvalues(maxIter=max_iter, tol=tol, top_n=1)
            del hess
    finally:
        model.zero_grad(set_to_none=True)
        for p in frozen:
            p.requires_grad_(True)
        model.train(was_training)
    return EigenResult(float(eigenvalues[0]), hvps[0])


def top_eigenvalue(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, **options) -> float:
    """Largest eigenvalue of the Hessian of the mean cross-entropy loss of ``model`` on (inputs, targets).

    Options: ``max_iter`` (default 100), ``tol`` (relative change between
    iterations, default 1e-3; both PyHessian's defaults) and ``seed`` for the
    start vector. Power iteration finds the eigenvalue of largest magnitude,
    which for a trained network is the top (positive) one.
    """
    return top_eigenvalue_with_iterations(model, inputs, targets, **options).eigenvalue


def hessian_sample(n: int, size: int, seed: int) -> torch.Tensor:
    """Indices of a fixed, seeded sample of ``size`` of ``n`` examples (all when size >= n)."""
    if size >= n:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator)[:size].sort().values
