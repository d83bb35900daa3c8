"""The trace of the training-loss Hessian by Hutchinson's estimator, with its standard error.

``hessian_trace_probes`` seeded Rademacher probes on the shared Hessian-vector product
(robustsweep.hessian.hutchinson_trace). Logged as ``hessian_trace`` and ``hessian_trace_se``. The
trace sums the whole spectrum (negative curvature too), where the top eigenvalue sees one direction.
"""

from __future__ import annotations

from .. import metrics as keys
from .base import Measurement


class Trace(Measurement):
    name = "trace"
    kind = "curvature"
    label = "Hessian trace"
    phase = "hessian_trace"

    def keys(self, config):
        return [keys.HESSIAN_TRACE, keys.HESSIAN_TRACE_SE]

    def measure(self, ctx):
        from ..hessian import hutchinson_trace

        c = ctx.config
        with ctx.clock(self.phase) as seconds:
            result = hutchinson_trace(ctx.hessian(), probes=c.hessian_trace_probes, seed=c.seed)
        ctx.log(f"hessian trace {result.trace:.4g} +- {result.standard_error:.2g} from {result.probes} Hutchinson "
                f"probes ({seconds[0]:.1f}s)")
        return {keys.HESSIAN_TRACE: result.trace, keys.HESSIAN_TRACE_SE: result.standard_error}
