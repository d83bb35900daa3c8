"""robustsweep: how optimizers and their hyperparameters change adversarial robustness and curvature."""

__version__ = "0.1.0"
