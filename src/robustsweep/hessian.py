"""Curvature of the training loss: the Hessian's top eigenvalue(s) and trace, from one Hessian-vector product.

:class:`HessianOperator` holds the gradient's retained graph and computes
Hessian-vector products through it; :func:`hessian_operator` builds one with the
model prepared (eval mode, gradients cleared, unused parameters frozen) and
restores the model afterwards. Lanczos (top eigenvalue, top ``k``) and
Hutchinson's estimator (trace, with its standard error) all run on it.

The Hessian is that of the mean cross-entropy over the given examples, with
the model in eval mode (BatchNorm uses its running statistics), as PyHessian
computes it. Two methods, chosen by the trial setting ``hessian_method``:

``lanczos`` (the default): the gradient is built once with ``create_graph=True``
(in chunks of examples, weighted so they sum to the mean loss) and every
Hessian-vector product back-propagates through that retained graph (Pearlmutter's
trick, the same product PyHessian computes); :mod:`robustsweep.lanczos` finds
the top eigenvalue in a fraction of power iteration's products, with a
guaranteed relative error bound ``tol`` (see there).

``power``: PyHessian 0.1's power iteration (the 2021 PyPI release; its stop
rule is the relative change between iterates, ``tol``). It has sharp edges,
each handled here:

* it puts the model in eval mode and leaves it there: the mode is restored;
* it back-propagates with ``create_graph=True`` into ``.grad``: gradients are
  cleared before (so stale ones do not leak into its gradient) and after (so
  the double-backward graph is freed);
* it fails on parameters that get no gradient: those are frozen for the call;
* with a dataloader it redoes a full pass per power iteration: we give it one
  fixed, seeded batch of training examples instead;
* it does not report how many iterations it used: we count its
  Hessian-vector products.

Power iteration converges to the eigenvalue of largest magnitude; Lanczos
returns the largest (algebraic) one. For a trained network they are the same.
"""

from __future__ import annotations

import contextlib
import importlib
import warnings
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from .lanczos import LanczosResult, top_eigenvalues_lanczos

# `pyhessian/__init__` rebinds `pyhessian.hessian` to the class, so fetch the module itself.
_pyhessian_module = importlib.import_module("pyhessian.hessian")


HESSIAN_METHODS = ("lanczos", "power")


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


@dataclass(frozen=True)
class TraceResult:
    """Hutchinson's estimate of the trace: the mean of v'Hv over Rademacher probes v, and its standard error."""

    trace: float
    standard_error: float
    probes: int


class HessianOperator:
    """Hessian-vector products of the mean cross-entropy of ``model`` on (inputs, targets).

    The gradient is built once with ``create_graph=True``, in chunks of
    ``chunk_size`` examples (sum-reduced and divided by n, so the chunks add
    up to the mean loss), and every product back-propagates through those
    retained graphs (Pearlmutter's trick, the product PyHessian computes).
    Use :func:`hessian_operator`, which prepares the model first.
    ``products`` counts the calls.
    """

    def __init__(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, chunk_size: int = 0):
        self.params = [p for p in model.parameters() if p.requires_grad]
        n = len(targets)
        chunk_size = chunk_size or n
        self._grads = []
        for start in range(0, n, chunk_size):
            loss = nn.functional.cross_entropy(model(inputs[start:start + chunk_size]),
                                               targets[start:start + chunk_size], reduction="sum") / n
            self._grads.append(torch.autograd.grad(loss, self.params, create_graph=True))
        self._sizes = [p.numel() for p in self.params]
        self.dim = sum(self._sizes)
        self.device = inputs.device
        self.dtype = self.params[0].dtype
        self.products = 0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        self.products += 1
        pieces = [piece.view(p.shape) for piece, p in zip(v.split(self._sizes), self.params)]
        total = torch.zeros_like(v)
        for g in self._grads:
            hv = torch.autograd.grad(g, self.params, grad_outputs=pieces, retain_graph=True, allow_unused=True)
            total += torch.cat([torch.zeros(p.numel(), device=v.device, dtype=v.dtype) if h is None
                                else h.reshape(-1) for h, p in zip(hv, self.params)])
        return total


@contextlib.contextmanager
def _prepared(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> Iterator[None]:
    """Eval mode, no stale gradients, parameters that get no gradient frozen; all restored afterwards."""
    was_training = model.training
    model.eval()
    frozen = _params_without_gradient(model, inputs, targets)
    for p in frozen:
        p.requires_grad_(False)
    model.zero_grad(set_to_none=True)
    try:
        yield
    finally:
        model.zero_grad(set_to_none=True)
        for p in frozen:
            p.requires_grad_(True)
        model.train(was_training)


@contextlib.contextmanager
def hessian_operator(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                     chunk_size: int = 0) -> Iterator[HessianOperator]:
    """A :class:`HessianOperator` on the prepared model, valid inside the ``with`` block."""
    with _prepared(model, inputs, targets):
        yield HessianOperator(model, inputs, targets, chunk_size)


def lanczos_top(operator: HessianOperator, *, k: int = 1, max_iter: int = 100, tol: float = 1e-3,
                seed: int = 0) -> LanczosResult:
    """The ``k`` largest Hessian eigenvalues by Lanczos from a seeded Gaussian start (see robustsweep.lanczos)."""
    generator = torch.Generator().manual_seed(seed)
    start = torch.randn(operator.dim, generator=generator).to(device=operator.device, dtype=operator.dtype)
    with torch.no_grad():
        return top_eigenvalues_lanczos(operator, start, k=k, max_iter=max_iter, tol=tol)


def hutchinson_trace(operator: HessianOperator, *, probes: int = 100, seed: int = 0) -> TraceResult:
    """The Hessian's trace by Hutchinson's estimator (Hutchinson 1990; PyHessian's ``trace()``).

    E[v'Hv] = tr(H) for Rademacher v (entries +-1, independent), so the mean of
    v'Hv over ``probes`` seeded draws estimates the trace, and their sample
    standard deviation over sqrt(probes) is its standard error. PyHessian's
    default is at most 100 probes; a fixed count keeps the estimate
    reproducible and its error stated.
    """
    if probes < 2:
        raise ValueError(f"probes must be >= 2 for a standard error, got {probes}")
    generator = torch.Generator().manual_seed(seed)
    values = []
    with torch.no_grad():
        for _ in range(probes):
            v = (torch.randint(0, 2, (operator.dim,), generator=generator) * 2 - 1).to(
                device=operator.device, dtype=operator.dtype)
            values.append(float(torch.dot(v, operator(v))))
    estimates = torch.tensor(values, dtype=torch.float64)
    return TraceResult(float(estimates.mean()), float(estimates.std(unbiased=True) / probes ** 0.5), probes)


def top_eigenvalue_with_iterations(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *,
                                   max_iter: int = 100, tol: float = 1e-3, seed: int = 0, method: str = "lanczos",
                                   chunk_size: int = 0) -> EigenResult:
    """Like :func:`top_eigenvalue`, also returning the number of Hessian-vector products used."""
    if method not in HESSIAN_METHODS:
        raise ValueError(f"unknown Hessian method {method!r}: allowed are {', '.join(HESSIAN_METHODS)}")
    if method == "lanczos":
        with hessian_operator(model, inputs, targets, chunk_size) as operator:
            result = lanczos_top(operator, max_iter=max_iter, tol=tol, seed=seed)
        return EigenResult(result.eigenvalue, result.iterations)
    with _prepared(model, inputs, targets):
        return _pyhessian_power(model, inputs, targets, max_iter, tol, seed, inputs.device)


def _pyhessian_power(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, max_iter: int, tol: float,
                     seed: int, device: torch.device) -> EigenResult:
    devices = [device] if device.type == "cuda" else []
    # PyHessian draws its start vector from the global RNG: fork it, so the caller's stream is untouched.
    with torch.random.fork_rng(devices=devices), _count_hvps() as hvps, warnings.catch_warnings():
        # PyHessian's backward(create_graph=True) warns of a grad<->param cycle; the caller's finally
        # resets .grad to None, which is the remedy the warning asks for.
        warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
        torch.manual_seed(seed)
        hess = _pyhessian_module.hessian(
            model, nn.CrossEntropyLoss(), data=(inputs, targets), cuda=device.type == "cuda"
        )
        eigenvalues, _ = hess.eigenvalues(maxIter=max_iter, tol=tol, top_n=1)
        del hess
    return EigenResult(float(eigenvalues[0]), hvps[0])


def top_eigenvalue(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, **options) -> float:
    """Largest eigenvalue of the Hessian of the mean cross-entropy loss of ``model`` on (inputs, targets).

    Options: ``method`` ("lanczos", default, or "power" for PyHessian's power
    iteration), ``max_iter`` (Hessian-vector products, default 100), ``tol``
    (default 1e-3: Lanczos' relative residual bound, or power iteration's
    relative change between iterates), ``seed`` for the start vector and
    ``chunk_size`` (Lanczos: examples per retained graph, 0 = all at once).
    """
    return top_eigenvalue_with_iterations(model, inputs, targets, **options).eigenvalue


def hessian_sample(n: int, size: int, seed: int) -> torch.Tensor:
    """Indices of a fixed, seeded sample of ``size`` of ``n`` examples (all when size >= n)."""
    if size >= n:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator)[:size].sort().values
