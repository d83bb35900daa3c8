"""The largest eigenvalue of the training-loss Hessian (the study's curvature measure).

Lanczos on the shared Hessian-vector product, to relative error ``hessian_tol`` within
``hessian_iters`` products, or PyHessian's power iteration (``hessian_method=power``); see
robustsweep.hessian. Logged as ``hessian_top_eig`` with the products used, ``hessian_iters``.
"""

from __future__ import annotations

from .. import metrics as keys
from .base import Measurement


class TopEigenvalue(Measurement):
    name = "top_eig"
    kind = "curvature"
    label = "Hessian top eigenvalue"
    phase = "hessian"
    log_scale = True

    def keys(self, config):
        return [keys.HESSIAN_TOP_EIG, keys.HESSIAN_ITERS]

    def unreliable_when_collapsed(self, config):
        return [keys.HESSIAN_TOP_EIG]

    def measure(self, ctx):
        c = ctx.config
        with ctx.clock(self.phase) as seconds:
            if c.hessian_method == "power":
                from ..hessian import top_eigenvalue_with_iterations

                x, y = ctx.hessian_sample()
                result = top_eigenvalue_with_iterations(ctx.model, x, y, max_iter=c.hessian_iters,
                                                        tol=c.hessian_tol, seed=c.seed, method="power")
                value, iterations = result.eigenvalue, result.iterations
            else:
                from ..hessian import lanczos_top

                result = lanczos_top(ctx.hessian(), max_iter=c.hessian_iters, tol=c.hessian_tol, seed=c.seed)
                value, iterations = result.eigenvalue, result.iterations
        ctx.log(f"hessian top eigenvalue {value:.4g} after {iterations} Hessian-vector products "
                f"({c.hessian_method}, {seconds[0]:.1f}s)")
        return {keys.HESSIAN_TOP_EIG: value, keys.HESSIAN_ITERS: float(iterations)}
