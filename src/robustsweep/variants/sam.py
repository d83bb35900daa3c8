"""SAM: sharpness-aware minimization.

Foret, Kleiner, Mobahi, Neyshabur, "Sharpness-Aware Minimization for
Efficiently Improving Generalization", ICLR 2021; their JAX code
(google-research/sam) and the PyTorch code most use (davda54/sam).

Update rule. On a minibatch B with mean loss L_B and rho = ``sam_rho``
(default 0.05, Foret et al.):

    g     = grad L_B(w)
    e     = rho * g / ||g||           (one norm over all parameters together)
    g_sam = grad L_B(w + e)           (the same minibatch, the same augmentation)
    w    <- the ``sgd`` step (torch.optim.SGD: lr, momentum, weight_decay) from w, with g_sam as the gradient

``asam`` (variants/asam.py) changes only e, through :meth:`SAM.normalization`.

Choices the references leave open or make differently, and what was chosen:

* Weight decay. Foret et al.'s JAX code adds the L2 penalty to the loss, so it
  enters both gradients: e follows g + wd * w, and the step uses
  grad L_B(w + e) + wd * (w + e). The PyTorch codes, davda54/sam and Kwon et
  al.'s SamsungLabs/ASAM, leave it to the base optimizer: e follows the loss
  gradient alone, and torch.optim.SGD adds wd * w at the unperturbed w. This
  module does the latter, so ``weight_decay`` means here what it means for
  ``sgd`` (torch.optim.SGD's L2 term at w) and the perturbation sees the data
  loss only. With weight_decay 0 (every trial of sweeps/beyond.yaml) the two agree.
* BatchNorm. The first pass (at w) updates the running statistics, as a plain
  SGD step does. The second pass (at w + e) runs in training mode, so it
  normalizes with its own batch statistics as in every reference, and then
  every buffer of the model (BatchNorm's running mean and variance and its
  num_batches_tracked) is put back: the running statistics move once per step,
  from the batch at w. Foret et al.'s JAX code keeps the first pass's state
  too; davda54's example sets BatchNorm's momentum to 0 for the second pass,
  which leaves the averages alone but still counts num_batches_tracked twice.
* The training metrics (loss, accuracy) are the first pass's, at w.
* w is restored by copying the saved weights back (not by subtracting e), so it is exact.
* The denominator is ||g|| + 1e-12 (davda54/sam): a zero gradient gives no perturbation.
  A parameter that gets no gradient is neither perturbed nor stepped.
* Cost: two gradient evaluations per example per step; ``grad_evals`` counts 2 per example.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..config import DEFAULT_SAM_RHO
from .base import StepResult, Variant

#: Added to the perturbation's norm (davda54/sam's 1e-12), so a zero gradient perturbs nothing.
NORM_EPSILON = 1e-12


class SAM(Variant):
    name = "sam"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        c = self.config
        self.rho = c.sam_rho if c.sam_rho is not None else DEFAULT_SAM_RHO[self.name]
        self.named_params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def normalization(self, name: str, param: torch.Tensor) -> Optional[torch.Tensor]:
        """The element-wise operator T_w for one parameter, or None for the identity (SAM: always None)."""
        return None

    @torch.no_grad()
    def perturbation(self, grads: Sequence[Optional[torch.Tensor]]) -> list[Optional[torch.Tensor]]:
        """e = rho * T_w^2 g / ||T_w g|| (T_w = identity for SAM), per parameter; None where g is None."""
        ops = [None if g is None else self.normalization(n, p) for (n, p), g in zip(self.named_params, grads)]
        scaled = [g if t is None or g is None else t * g for g, t in zip(grads, ops)]
        present = [s for s in scaled if s is not None]
        if not present:
            return [None] * len(grads)
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(s) for s in present]))
        factor = self.rho / (norm + NORM_EPSILON)
        return [None if s is None else (s if t is None else t * s) * factor for s, t in zip(scaled, ops)]

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        params = [p for _, p in self.named_params]
        logits = self.model(x)
        losses = self.loss_fn(logits, y)
        grads = torch.autograd.grad(self.batch_loss(losses), params, allow_unused=True)
        perturbation = self.perturbation(grads)
        with torch.no_grad():
            saved = [None if e is None else p.detach().clone() for p, e in zip(params, perturbation)]
            buffers = [b.detach().clone() for b in self.model.buffers()]
            for p, e in zip(params, perturbation):
                if e is not None:
                    p.add_(e)
        try:
            perturbed_loss = self.batch_loss(self.loss_fn(self.model(x), y))
            sam_grads = torch.autograd.grad(perturbed_loss, params, allow_unused=True)
        finally:
            with torch.no_grad():
                for p, w in zip(params, saved):
                    if w is not None:
                        p.copy_(w)
                for b, value in zip(self.model.buffers(), buffers):
                    b.copy_(value)
        for p, g in zip(params, sam_grads):
            p.grad = g
        self.optimizer.step()
        self.counters["grad_evals"] += 2 * len(y)
        return self.result(logits, losses, y)
