"""ASAM: adaptive sharpness-aware minimization.

Kwon, Kim, Park, Choi, "ASAM: Adaptive Sharpness-Aware Minimization for
Scale-Invariant Learning of Deep Neural Networks", ICML 2021, and the
authors' code (SamsungLabs/ASAM, asam.py), which this module follows.

Update rule. SAM's (variants/sam.py: two passes on the same minibatch, the
``sgd`` step from w with the gradient at w + e), with the perturbation taken
in the weights' own scale, through Kwon et al.'s element-wise operator
T_w = |w| + eta:

    g     = grad L_B(w)
    e     = rho * T_w^2 g / ||T_w g||     (element-wise products; one norm over all parameters)
    g_sam = grad L_B(w + e)

rho = ``sam_rho`` (default 0.5, the authors' CIFAR setting), eta = ``asam_eta``
(default 0.01, their ASAM class's).

Choices, and what was chosen:

* Which parameters are normalized. The paper writes T_w for every parameter;
  the authors' code applies it only to parameters named ``weight`` (convolution
  and linear kernels, BatchNorm's scale) and leaves biases, BatchNorm's shift
  included, at the identity (T = 1, SAM's perturbation). rho = 0.5 was tuned
  with that code (Kwon, in davda54/sam#37: all their CIFAR-10 runs used 0.5
  with it), so this module does the same: T_w = |w| + eta where the
  parameter's own name (the last part of its dotted name) contains
  ``weight``, 1 elsewhere. (davda54/sam's ``adaptive`` mode differs: T_w = |w|,
  no eta, on every parameter.)
* Weight decay stays out of the perturbation and enters the base SGD step at
  w, as in the authors' code (their example wraps torch.optim.SGD with
  weight_decay); see variants/sam.py for Foret et al.'s other choice.
* BatchNorm's running statistics, training metrics, the restore of w, the
  norm's 1e-12 and ``grad_evals`` (2 per example) are SAM's; see variants/sam.py.
"""

from __future__ import annotations

from typing import Optional

import torch

from .sam import SAM


def is_normalized(name: str) -> bool:
    """Whether ASAM scales a parameter by |w| + eta: its own name contains 'weight' (the authors' rule)."""
    return "weight" in name.rsplit(".", 1)[-1]


class ASAM(SAM):
    name = "asam"

    def normalization(self, name: str, param: torch.Tensor) -> Optional[torch.Tensor]:
        if not is_normalized(name):
            return None
        return param.detach().abs() + self.config.asam_eta
