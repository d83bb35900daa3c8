"""The largest eigenvalues of a symmetric linear operator by the Lanczos method.

Lanczos builds an orthonormal basis of the Krylov space {v, Av, A^2 v, ...}
and the tridiagonal matrix T of A in that basis; the largest eigenvalues of T
(the top Ritz values) converge to A's largest eigenvalues far faster than
power iteration, which keeps only the last vector of the same space (Golub &
Van Loan, Matrix Computations, 4th ed., 10.1). The basis is fully
re-orthogonalized, so the finite-precision loss of orthogonality that makes
plain Lanczos produce ghost eigenvalues cannot happen; the basis costs one
vector per iteration of memory.

The stop rule is the residual: for a Ritz pair (theta, y),
||A y - theta y|| = |beta_k s_k| (s_k the last entry of T's eigenvector), and a
symmetric matrix has an eigenvalue within that distance of theta. Iteration
stops when every one of the top ``k`` residuals is at most ``tol * |theta|``,
so the relative error bound of each value is ``tol``; power iteration's usual
rule (relative change between iterates) gives no such bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class LanczosResult:
    #: The top Ritz values, largest first (``k`` of them, fewer only if the Krylov space is smaller).
    eigenvalues: tuple[float, ...]
    iterations: int
    #: The largest residual bound among the returned values.
    residual: float

    @property
    def eigenvalue(self) -> float:
        return self.eigenvalues[0]


def top_eigenvalues_lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, *, k: int = 1,
                            max_iter: int = 100, tol: float = 1e-3) -> LanczosResult:
    """The ``k`` largest (algebraic) eigenvalues of the symmetric operator ``matvec``, from ``start``.

    ``matvec`` maps a 1-D tensor to one of the same shape and dtype;
    ``iterations`` counts its calls. Stops when each of the top ``k`` Ritz
    pairs has a residual of at most ``tol`` times its Ritz value, when the
    Krylov space is exhausted (an invariant subspace: the values are then
    exact), or after ``max_iter`` calls.
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    basis = [start / start.norm()]
    alphas: list[float] = []
    betas: list[float] = []
    top: tuple[float, ...] = ()
    residual = float("inf")
    for it in range(max_iter):
        w = matvec(basis[-1])
        alpha = float(torch.dot(w, basis[-1]))
        alphas.append(alpha)
        # Full re-orthogonalization, twice ("twice is enough", Parlett), against every basis vector.
        for _ in range(2):
            for q in basis:
                w = w - torch.dot(w, q) * q
        beta = float(w.norm())
        t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            t = t + torch.diag(off, 1) + torch.diag(off, -1)
        values, vectors = torch.linalg.eigh(t)  # ascending
        m = min(k, len(alphas))
        top = tuple(float(values[-1 - i]) for i in range(m))
        residuals = [abs(beta * float(vectors[-1, -1 - i])) for i in range(m)]
        residual = max(residuals)
        exhausted = beta <= 1e-12 * max(abs(top[0]), 1.0)
        if exhausted or (m == k and all(r <= tol * abs(v) for r, v in zip(residuals, top))):
            return LanczosResult(top, it + 1, residual)
        betas.append(beta)
        basis.append(w / beta)
    return LanczosResult(top, max_iter, residual)


def top_eigenvalue_lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, *,
                           max_iter: int = 100, tol: float = 1e-3) -> LanczosResult:
    """The largest eigenvalue alone (:func:`top_eigenvalues_lanczos` with ``k=1``)."""
    return top_eigenvalues_lanczos(matvec, start, k=1, max_iter=max_iter, tol=tol)
