"""The ``hessian_top_k`` largest eigenvalues of the training-loss Hessian, from one Lanczos run.

Lanczos stops when each of the top k Ritz values has a residual within ``hessian_tol`` of itself
(robustsweep.lanczos). Logged as ``hessian_eig_1`` (the largest) ... ``hessian_eig_<k>``, with the
products used, ``hessian_top_k_iters``.
"""

from __future__ import annotations

from .. import metrics as keys
from .base import Measurement


class TopK(Measurement):
    name = "top_k"
    kind = "curvature"
    label = "Hessian top-k eigenvalues"
    phase = "hessian_top_k"
    log_scale = True

    def keys(self, config):
        return [keys.hessian_eig_key(i + 1) for i in range(config.hessian_top_k)] + [keys.HESSIAN_TOP_K_ITERS]

    def unreliable_when_collapsed(self, config):
        return self.keys(config)[:-1]

    def measure(self, ctx):
        from ..hessian import lanczos_top

        c = ctx.config
        with ctx.clock(self.phase) as seconds:
            result = lanczos_top(ctx.hessian(), k=c.hessian_top_k, max_iter=c.hessian_iters, tol=c.hessian_tol,
                                 seed=c.seed)
        ctx.log(f"hessian top {c.hessian_top_k} eigenvalues {', '.join(f'{v:.4g}' for v in result.eigenvalues)} "
                f"after {result.iterations} products ({seconds[0]:.1f}s)")
        out = {keys.hessian_eig_key(i): v for i, v in enumerate(result.eigenvalues, 1)}
        out[keys.HESSIAN_TOP_K_ITERS] = float(result.iterations)
        return out
