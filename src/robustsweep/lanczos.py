"""The largest eigenvalue of a symmetric linear operator by the Lanczos method.

Lanczos builds an orthonormal basis of the Krylov space {v, Av, A^2 v, ...}
and the tridiagonal matrix T of A in that basis; the largest eigenvalue of T
(the top Ritz value) converges to A's largest eigenvalue far faster than
power iteration, which keeps only the last vector of the same space (Golub &
Van Loan, Matrix Computations, 4th ed., 10.1). The basis is fully
re-orthogonalized, so the finite-precision loss of orthogonality that makes
plain Lanczos produce ghost eigenvalues cannot happen; the basis costs one
vector per iteration of memory.

The stop rule is the residual: for the top Ritz pair (theta, y),
||A y - theta y|| = |beta_k s_k| (s_k the last entry of T's eigenvector), and a
symmetric matrix has an eigenvalue within that distance of theta. Iteration
stops when it is at most ``tol * |theta|``, so the relative error bound is
``tol``; power iteration's usual rule (relative change between iterates)
gives no such bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class LanczosResult:
    eigenvalue: float
    iterations: int
    residual: float


def top_eigenvalue_lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, *,
                           max_iter: int = 100, tol: float = 1e-3) -> LanczosResult:
    """Largest (algebraic) eigenvalue of the symmetric operator ``matvec``, from the vector ``start``.

    ``matvec`` maps a 1-D tensor to one of the same shape and dtype;
    ``iterations`` counts its calls. Stops when the top Ritz pair's residual
    is at most ``tol`` times the Ritz value, when the Krylov space is
    exhausted (an invariant subspace: the value is then exact), or after
    ``max_iter`` calls.
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    basis = [start / start.norm()]
    alphas: list[float] = []
    betas: list[float] = []
    theta, residual = 0.0, float("inf")
    for k in range(max_iter):
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
        values, vectors = torch.linalg.eigh(t)
        theta = float(values[-1])
        residual = abs(beta * float(vectors[-1, -1]))
        if residual <= tol * abs(theta) or beta <= 1e-12 * max(abs(theta), 1.0):
            return LanczosResult(theta, k + 1, residual)
        betas.append(beta)
        basis.append(w / beta)
    return LanczosResult(theta, max_iter, residual)
