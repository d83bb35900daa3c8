"""Every testable empirical claim of the study, one entry each: adding a claim is one entry here.

The study: Anirudh Choudhary, "Analyzing the implicit adversarial robustness of networks trained using
SGD", 17 December 2020 (``../shared/study/``). Its claims are in sections 3.4.1 (varying learning
rate, and the SGD variants), 3.4.2 (weight regularization), 3.4.3 (momentum) and the four numbered
take-aways of section 4. Each entry states one claim in our own words and names the runs it needs by
their settings. Where one sentence makes several claims, each is its own entry; where a take-away
restates a claim of section 3.4, one entry cites both sections.

Conventions (what the study's words are read as):

* "robustness" on MNIST is the attack ratio, attack accuracy / clean accuracy (section 3.3 defines it so,
  and the MNIST figures are read as plotting it); on CIFAR-10 it is the attack accuracy, the only
  attack measurement Table 2 reports;
* "SGD" or "minibatch SGD" is plain SGD: no momentum, no weight decay, the constant schedule, at the
  study's constant rates 0.01 and 0.1 (Table 1) unless the claim is about the lr/bs ratio
  (0.005/32, Table 1);
* on CIFAR-10 the batch size is 128 (Table 1), and "the SGD variants" are Table 2's two regimes:
  lr 0.1 with the step schedule and lr 0.01 constant;
* a vague range is made explicit in the claim's wording ("smaller batch sizes" as <= 64, the bound the
  study itself gives in 3.4.1; "larger batches" as >= 256, the upper half of 32..1024);
* an exception the study states is an :class:`Exclusion`, left out of that claim's test, and the
  exception is a claim of its own.
"""

from __future__ import annotations

import numpy as np

from .claim import Claim
from .checks import Compare, Correlate, Trend
from .selection import RATIO, Exclusion, Gain, Runs

# ------------------------------------------------------------------------------------------ vocabulary

OTHER_SGD_VARIANTS = ("svrg", "sgdnoise", "sgdselective")
NAMES = {"sgd": "SGD", "svrg": "SVRG", "sgdnoise": "noisy SGD", "sgdselective": "Selective Backprop",
         "adam": "Adam"}
MNIST_ROBUSTNESS = ("fgsm_ratio", "pgd_ratio")    # section 3.3: attack accuracy / clean accuracy
CIFAR_ATTACKS = ("fgsm_acc", "pgd_acc")           # Table 2's columns
CLEAN, EIG = "clean_acc", "hessian_top_eig"
ADAM_LR = 0.0005                                  # the study's constant Adam rate (Table 2, take-away 2)
CIFAR_BATCH = 128                                 # Table 1: CIFAR-10 runs at batch size 128
CIFAR_REGIMES = {"lr": (0.1, 0.01), "schedule": ("step", "constant")}   # Table 2's two SGD-variant regimes


def mnist(**settings) -> Runs:
    return Runs("mnist", **settings)


def cifar(**settings) -> Runs:
    settings.setdefault("batch_sizes", (CIFAR_BATCH,))
    return Runs("cifar10", **settings)


def mnist_ratio(variant: str = "sgd", **settings) -> Runs:
    """MNIST runs at the study's constant lr/bs ratio (0.005/32 for SGD variants, 0.005/3200 for Adam)."""
    settings.setdefault("label", f"{NAMES[variant]} at constant lr/bs")
    return mnist(variant=variant, regime=RATIO, **settings)


def at_constant_rates(variant: str = "sgd", **settings) -> Runs:
    """MNIST runs of a variant at any constant rate (the study's are 0.01 and 0.1, Table 1); claims pair them
    on the rate, or split by it."""
    settings.setdefault("label", NAMES[variant])
    return mnist(variant=variant, **settings)


def cifar_variant(variant: str, **settings) -> Runs:
    return cifar(variant=variant, **{"label": NAMES[variant], **CIFAR_REGIMES, **settings})


ADAM_MNIST = mnist(variant="adam", lr=ADAM_LR, label="Adam (lr 0.0005)")
ADAM_CIFAR = cifar(variant="adam", lr=ADAM_LR, label="Adam (lr 0.0005)")
SAME_RATE = ("seed", "batch_size", "lr")          # pairs of runs at one constant rate and batch size

# The exceptions the study states, left out of the claims they qualify.
MOMENTUM_AT_HIGH_LR_SMALL_BATCH = Exclusion(
    "momentum at lr 0.1 with batch sizes <= 256, which the study says trains suboptimally (3.4.3)",
    lambda d: np.isclose(d["lr"], 0.1) & (d["batch_size"] <= 256) & (d["momentum"] > 0))
DECAY_AT_HIGH_LR_SMALL_BATCH = Exclusion(
    "weight decay at lr 0.1 with batch sizes <= 64: the study's 'smaller batches and higher learning rates' "
    "(3.4.2), read as both together",
    lambda d: np.isclose(d["lr"], 0.1) & (d["batch_size"] <= 64) & (d["weight_decay"] > 0))
SMALL_BATCHES = Exclusion("batch sizes <= 64, where the study finds Adam ahead (3.4.1)",
                          lambda d: d["batch_size"] <= 64)


# ------------------------------------------------------------------------------------------ the claims

CLAIMS: tuple[Claim, ...] = (
    # ---------------------------------------------------------------- take-away 1 (and 3.4.1)
    Claim("mnist-large-batch-lowers-clean-accuracy", "4 (take-away 1); 3.4.1", "mnist",
          "At a constant learning rate, SGD's clean test accuracy falls as the batch size grows.",
          (Trend(mnist(), (CLEAN,), "falls"),)),
    Claim("mnist-large-batch-lowers-robustness", "4 (take-away 1); 3.4.1", "mnist",
          "At a constant learning rate, SGD's robustness (FGSM and PGD accuracy over clean accuracy) falls as "
          "the batch size grows.",
          (Trend(mnist(), MNIST_ROBUSTNESS, "falls"),)),
    Claim("mnist-large-batch-sharpens-minima", "4 (take-away 1); 3.4.1", "mnist",
          "At a constant learning rate, SGD's top Hessian eigenvalue rises with the batch size (sharper minima).",
          (Trend(mnist(), (EIG,), "rises"),)),
    Claim("mnist-ratio-keeps-accuracy-and-robustness", "4 (take-away 1); 3.4.1", "mnist",
          "With the learning rate proportional to the batch size (lr/bs = 0.005/32), SGD's clean accuracy and "
          "robustness stay constant from batch size 32 to 1024.",
          (Trend(mnist_ratio(), (CLEAN, *MNIST_ROBUSTNESS), "flat", split=()),)),
    Claim("mnist-ratio-cures-large-batch", "4 (take-away 1)", "mnist",
          "At large batch sizes (256-1024), SGD with lr/bs constant has higher clean accuracy and robustness "
          "than SGD at either constant rate, 0.01 or 0.1.",
          tuple(Compare(mnist_ratio(batch_sizes=(256, 512, 1024)),
                        mnist(lr=lr, batch_sizes=(256, 512, 1024), label=f"SGD at lr {lr:g}"),
                        (CLEAN, *MNIST_ROBUSTNESS), "higher") for lr in (0.01, 0.1))),
    Claim("cifar-ratio-keeps-accuracy", "4 (take-away 1)", "cifar10",
          "With lr/bs constant, VGG-11's clean, FGSM and PGD accuracy on CIFAR-10 stay constant from batch size "
          "32 to 512.",
          (Trend(cifar(regime=RATIO, batch_sizes=None), (CLEAN, *CIFAR_ATTACKS), "flat", split=()),)),
    # ---------------------------------------------------------------- take-away 2
    Claim("mnist-curvature-opposes-accuracy-and-robustness", "4 (take-away 2)", "mnist",
          "Across every configuration of the sweep, a higher top eigenvalue goes with lower clean accuracy and "
          "lower robustness (each configuration's seed-0 run, so replicated ones do not count thrice; a ratio run "
          "that trains exactly what a constant-lr run trains counts once).",
          (Correlate(mnist(variant=None, regime=None, momentum=None, weight_decay=None, schedule=None, seeds=(0,),
                           label="every configuration, seed 0"), (CLEAN, *MNIST_ROBUSTNESS), "negative"),)),
    Claim("cifar-curvature-opposes-accuracy-and-robustness", "4 (take-away 2)", "cifar10",
          "Across every CIFAR-10 configuration, a higher top eigenvalue goes with lower clean, FGSM and PGD "
          "accuracy (seed-0 runs).",
          (Correlate(cifar(variant=None, regime=None, momentum=None, weight_decay=None, schedule=None,
                           batch_sizes=None, seeds=(0,), label="every configuration, seed 0"),
                     (CLEAN, *CIFAR_ATTACKS), "negative"),)),
    Claim("cifar-sharp-minima-can-be-robust", "4 (take-away 2)", "cifar10",
          "On CIFAR-10 at lr 0.01, SGD and Adam (lr 0.0005) have a higher top eigenvalue than SVRG, noisy SGD "
          "and Selective Backprop, and yet higher FGSM and PGD accuracy.",
          tuple(Compare(sharp, cifar(variant=v, lr=0.01, label=f"{NAMES[v]} at lr 0.01"), measures, "higher",
                        pair_on=("seed",))
                for sharp in (cifar(lr=0.01, label="SGD at lr 0.01"), ADAM_CIFAR)
                for v in OTHER_SGD_VARIANTS for measures in ((EIG,), CIFAR_ATTACKS))),
    # ---------------------------------------------------------------- take-away 3
    Claim("mnist-sgd-beats-other-variants", "4 (take-away 3)", "mnist",
          "SGD is more robust than SVRG, noisy SGD and Selective Backprop, paired at the same batch size and "
          "constant rate or lr/bs ratio.",
          tuple(Compare(mnist(regime=None, label="SGD"), mnist(variant=v, regime=None, label=NAMES[v]),
                        MNIST_ROBUSTNESS, "higher", pair_on=("seed", "batch_size", "lr", "lr_batch_ratio"))
                for v in OTHER_SGD_VARIANTS)),
    Claim("mnist-sgd-beats-adam-at-constant-lr", "4 (take-away 3)", "mnist",
          "At a constant learning rate, SGD (0.01 or 0.1) is more robust than Adam (lr 0.0005).",
          tuple(Compare(mnist(lr=lr, label=f"SGD at lr {lr:g}"), ADAM_MNIST, MNIST_ROBUSTNESS, "higher")
                for lr in (0.01, 0.1))),
    Claim("mnist-sgd-matches-adam-under-ratio", "4 (take-away 3)", "mnist",
          "With lr/bs constant, SGD is as robust as Adam at batch sizes above 64.",
          (Compare(mnist_ratio(), mnist_ratio("adam"), MNIST_ROBUSTNESS, "same"),),
          exception=SMALL_BATCHES),
    Claim("cifar-sgd-beats-other-variants", "4 (take-away 3)", "cifar10",
          "On CIFAR-10, SGD has higher FGSM and PGD accuracy than SVRG, noisy SGD and Selective Backprop in "
          "Table 2's two regimes (lr 0.1 step, lr 0.01 constant).",
          tuple(Compare(cifar_variant("sgd"), cifar_variant(v), CIFAR_ATTACKS, "higher",
                        pair_on=("seed", "lr", "schedule")) for v in OTHER_SGD_VARIANTS)),
    # ---------------------------------------------------------------- take-away 4 (and 3.4.1)
    Claim("mnist-higher-lr-more-accurate-and-robust", "4 (take-away 4); 3.4.1", "mnist",
          "Raising SGD's constant learning rate from 0.01 to 0.1 raises its clean accuracy and robustness.",
          (Compare(mnist(lr=0.1, label="SGD at lr 0.1"), mnist(lr=0.01, label="SGD at lr 0.01"),
                   (CLEAN, *MNIST_ROBUSTNESS), "higher"),)),
    Claim("mnist-momentum-beats-svrg-and-selective-backprop", "4 (take-away 4)", "mnist",
          "SGD with momentum 0.9 is more robust than SVRG, Selective Backprop and SGD without momentum at the "
          "same constant rate and batch size.",
          tuple(Compare(at_constant_rates(momentum=0.9, label="SGD + momentum 0.9"), at_constant_rates(v), MNIST_ROBUSTNESS,
                        "higher", pair_on=SAME_RATE) for v in ("svrg", "sgdselective", "sgd")),
          exception=MOMENTUM_AT_HIGH_LR_SMALL_BATCH),
    Claim("cifar-momentum-beats-svrg-and-selective-backprop", "4 (take-away 4)", "cifar10",
          "On CIFAR-10 at lr 0.01, SGD with momentum 0.9 has higher FGSM and PGD accuracy than SVRG and "
          "Selective Backprop.",
          tuple(Compare(cifar(lr=0.01, momentum=0.9, label="SGD + momentum 0.9"),
                        cifar(variant=v, lr=0.01, label=NAMES[v]), CIFAR_ATTACKS, "higher", pair_on=("seed",))
                for v in ("svrg", "sgdselective"))),
    # ---------------------------------------------------------------- 3.4.1, MNIST
    Claim("mnist-curvature-tracks-robustness-over-batch-size", "3.4.1", "mnist",
          "At a constant learning rate, across batch sizes, SGD's top eigenvalue is high where its robustness "
          "is low (a negative within-seed correlation).",
          (Correlate(mnist(), MNIST_ROBUSTNESS, "negative", split=("lr",)),)),
    Claim("mnist-step-schedule-no-robustness-gain", "3.4.1", "mnist",
          "Annealing SGD's learning rate with the step schedule gives no gain in robustness over keeping it "
          "constant.",
          (Compare(at_constant_rates(schedule="step", label="SGD, step schedule"),
                   at_constant_rates(label="SGD, constant"), MNIST_ROBUSTNESS, "no gain", pair_on=SAME_RATE),)),
    Claim("mnist-variants-gain-little-over-sgd", "3.4.1", "mnist",
          "At a constant learning rate SGD is a strong baseline: SVRG, noisy SGD and Selective Backprop are at "
          "most slightly more robust.",
          tuple(Compare(at_constant_rates(v), at_constant_rates(), MNIST_ROBUSTNESS, "no gain", pair_on=SAME_RATE)
                for v in OTHER_SGD_VARIANTS)),
    Claim("mnist-noisy-sgd-and-svrg-beat-sgd-at-weak-fgsm", "3.4.1", "mnist",
          "Under the weaker FGSM attack, at a constant learning rate, noisy SGD and SVRG are more robust than SGD "
          "at batch sizes <= 64 and at 1024.",
          tuple(Compare(at_constant_rates(v, batch_sizes=(32, 64, 1024)), at_constant_rates(batch_sizes=(32, 64, 1024)),
                        ("fgsm_ratio",), "higher", pair_on=SAME_RATE) for v in ("sgdnoise", "svrg")),
          eps=(0.03,)),
    Claim("mnist-adam-least-robust-at-constant-lr", "3.4.1", "mnist",
          "At a constant learning rate, Adam (lr 0.0005) is far less robust than SGD, noisy SGD and Selective "
          "Backprop at either of their rates.",
          tuple(Compare(ADAM_MNIST, mnist(variant=v, lr=lr, label=f"{NAMES[v]} at lr {lr:g}"), MNIST_ROBUSTNESS,
                        "lower") for v in ("sgd", "sgdnoise", "sgdselective") for lr in (0.01, 0.1))),
    Claim("mnist-ratio-adam-best-at-small-batch", "3.4.1", "mnist",
          "With lr/bs constant, at batch sizes <= 64 and the weaker attacks, Adam is more robust than every "
          "other variant.",
          tuple(Compare(mnist_ratio("adam", batch_sizes=(32, 64)), mnist_ratio(v, batch_sizes=(32, 64)),
                        MNIST_ROBUSTNESS, "higher") for v in ("sgd", *OTHER_SGD_VARIANTS)),
          eps=(0.03,)),
    Claim("mnist-ratio-selective-backprop-beats-sgd-at-large-batch", "3.4.1", "mnist",
          "With lr/bs constant, at batch sizes >= 256 and the weaker attacks, Selective Backprop is slightly "
          "more robust than SGD.",
          (Compare(mnist_ratio("sgdselective", batch_sizes=(256, 512, 1024)),
                   mnist_ratio(batch_sizes=(256, 512, 1024)), MNIST_ROBUSTNESS, "higher"),),
          eps=(0.03,)),
    Claim("mnist-ratio-variants-beat-sgd-at-strong-pgd", "3.4.1", "mnist",
          "With lr/bs constant, under the stronger PGD attack every other variant (SVRG, noisy SGD, Selective "
          "Backprop, Adam) is more robust than SGD.",
          tuple(Compare(mnist_ratio(v), mnist_ratio(), ("pgd_ratio",), "higher")
                for v in (*OTHER_SGD_VARIANTS, "adam")),
          eps=(0.15,)),
    Claim("mnist-ratio-adam-flatter-than-sgd", "3.4.1; 4 (take-away 3)", "mnist",
          "With lr/bs constant, Adam reaches flatter minima (a lower top eigenvalue) than SGD.",
          (Compare(mnist_ratio("adam"), mnist_ratio(), (EIG,), "lower"),)),
    Claim("mnist-ratio-svrg-less-robust-than-sgd", "3.4.1", "mnist",
          "With lr/bs constant, SVRG is less robust than SGD.",
          (Compare(mnist_ratio("svrg"), mnist_ratio(), MNIST_ROBUSTNESS, "lower"),)),
    # ---------------------------------------------------------------- 3.4.1, CIFAR-10 (Table 2)
    Claim("cifar-ratio-large-batch-lowers-accuracy", "3.4.1", "cifar10",
          "Even with lr/bs constant, CIFAR-10 clean, FGSM and PGD accuracy fall as the batch size grows "
          "(32 to 512).",
          (Trend(cifar(regime=RATIO, batch_sizes=None), (CLEAN, *CIFAR_ATTACKS), "falls", split=()),)),
    Claim("cifar-ratio-batch-512-flatter-yet-less-robust", "3.4.1", "cifar10",
          "With lr/bs constant, batch size 512 reaches a much lower top eigenvalue than batch size 128 (the "
          "batch size of Table 2's other rows), yet lower FGSM and PGD accuracy.",
          (Compare(cifar(regime=RATIO, batch_sizes=(512,), label="batch 512"),
                   cifar(regime=RATIO, label="batch 128"), (EIG,), "lower", pair_on=("seed",)),
           Compare(cifar(regime=RATIO, batch_sizes=(512,), label="batch 512"),
                   cifar(regime=RATIO, label="batch 128"), CIFAR_ATTACKS, "lower", pair_on=("seed",)))),
    Claim("cifar-svrg-beats-sgd-clean-and-fgsm", "3.4.1", "cifar10",
          "On CIFAR-10, SVRG reaches higher clean and FGSM accuracy than SGD (Table 2's two regimes).",
          (Compare(cifar_variant("svrg"), cifar_variant("sgd"), (CLEAN, "fgsm_acc"), "higher",
                   pair_on=("seed", "lr", "schedule")),)),
    Claim("cifar-svrg-flatter-than-sgd", "3.4.1", "cifar10",
          "On CIFAR-10, SVRG reaches a lower top eigenvalue than SGD (Table 2's two regimes).",
          (Compare(cifar_variant("svrg"), cifar_variant("sgd"), (EIG,), "lower", pair_on=("seed", "lr", "schedule")),)),
    Claim("cifar-noisy-sgd-flatter-yet-less-robust", "3.4.1", "cifar10",
          "On CIFAR-10, noisy SGD reaches a lower top eigenvalue than SGD, yet lower FGSM and PGD accuracy "
          "(Table 2's two regimes).",
          (Compare(cifar_variant("sgdnoise"), cifar_variant("sgd"), (EIG, *CIFAR_ATTACKS), "lower",
                   pair_on=("seed", "lr", "schedule")),)),
    Claim("cifar-adam-most-accurate", "3.4.1", "cifar10",
          "On CIFAR-10, Adam (lr 0.0005) reaches a higher clean accuracy than every SGD variant in either of "
          "Table 2's regimes.",
          tuple(Compare(ADAM_CIFAR, cifar(variant=v, lr=lr, schedule=schedule,
                                          label=f"{NAMES[v]} at lr {lr:g} {schedule}"), (CLEAN,), "higher",
                        pair_on=("seed",))
                for v in ("sgd", *OTHER_SGD_VARIANTS) for lr, schedule in ((0.1, "step"), (0.01, "constant")))),
    Claim("cifar-adam-sharpest", "3.4.1", "cifar10",
          "On CIFAR-10, Adam (lr 0.0005) sits in a sharper minimum (higher top eigenvalue) than every SGD variant "
          "in either of Table 2's regimes.",
          tuple(Compare(ADAM_CIFAR, cifar(variant=v, lr=lr, schedule=schedule,
                                          label=f"{NAMES[v]} at lr {lr:g} {schedule}"), (EIG,), "higher",
                        pair_on=("seed",))
                for v in ("sgd", *OTHER_SGD_VARIANTS) for lr, schedule in ((0.1, "step"), (0.01, "constant")))),
    Claim("cifar-adam-less-robust-than-sgd", "3.4.1", "cifar10",
          "On CIFAR-10, Adam (lr 0.0005) has lower FGSM and PGD accuracy than SGD (read as Table 2's stronger SGD "
          "row, lr 0.1 with the step schedule: Adam is ahead of SGD at lr 0.01 in Table 2 itself).",
          (Compare(ADAM_CIFAR, cifar(lr=0.1, schedule="step", label="SGD at lr 0.1 step"), CIFAR_ATTACKS, "lower",
                   pair_on=("seed",)),)),
    # ---------------------------------------------------------------- 3.4.2
    Claim("mnist-weight-decay-leaves-robustness", "3.4.2", "mnist",
          "Weight decay 0.001 leaves SGD's robustness unchanged, except at small batch sizes with the higher rate.",
          (Compare(at_constant_rates(weight_decay=0.001, label="SGD + weight decay 0.001"), at_constant_rates(),
                   MNIST_ROBUSTNESS, "same", pair_on=SAME_RATE),),
          exception=DECAY_AT_HIGH_LR_SMALL_BATCH),
    Claim("mnist-weight-decay-helps-small-batches", "3.4.2", "mnist",
          "At lr 0.1 and batch sizes <= 64, weight decay 0.001 raises SGD's robustness (the exception above).",
          (Compare(mnist(lr=0.1, weight_decay=0.001, batch_sizes=(32, 64), label="SGD + weight decay 0.001"),
                   mnist(lr=0.1, batch_sizes=(32, 64), label="SGD"), MNIST_ROBUSTNESS, "higher"),)),
    Claim("cifar-weight-decay-raises-accuracy-and-flattens", "3.4.2", "cifar10",
          "On CIFAR-10 at lr 0.01, weight decay 0.005 raises clean accuracy slightly and lowers the top eigenvalue.",
          (Compare(cifar(lr=0.01, weight_decay=0.005, label="SGD + weight decay 0.005"), cifar(lr=0.01, label="SGD"),
                   (CLEAN,), "higher", pair_on=("seed",)),
           Compare(cifar(lr=0.01, weight_decay=0.005, label="SGD + weight decay 0.005"), cifar(lr=0.01, label="SGD"),
                   (EIG,), "lower", pair_on=("seed",)))),
    Claim("cifar-weight-decay-leaves-attack-accuracy", "3.4.2", "cifar10",
          "On CIFAR-10 at lr 0.01, weight decay 0.005 leaves FGSM and PGD accuracy unchanged.",
          (Compare(cifar(lr=0.01, weight_decay=0.005, label="SGD + weight decay 0.005"), cifar(lr=0.01, label="SGD"),
                   CIFAR_ATTACKS, "same", pair_on=("seed",)),)),
    # ---------------------------------------------------------------- 3.4.3
    Claim("mnist-momentum-raises-clean-accuracy", "3.4.3", "mnist",
          "Momentum (0.5 or 0.9) raises SGD's clean accuracy at the same constant rate and batch size.",
          tuple(Compare(at_constant_rates(momentum=m, label=f"SGD + momentum {m:g}"), at_constant_rates(), (CLEAN,),
                        "higher", pair_on=SAME_RATE) for m in (0.5, 0.9)),
          exception=MOMENTUM_AT_HIGH_LR_SMALL_BATCH),
    Claim("mnist-momentum-raises-robustness", "3.4.3", "mnist",
          "Momentum (0.5 or 0.9) raises SGD's robustness at the same constant rate and batch size.",
          tuple(Compare(at_constant_rates(momentum=m, label=f"SGD + momentum {m:g}"), at_constant_rates(), MNIST_ROBUSTNESS,
                        "higher", pair_on=SAME_RATE) for m in (0.5, 0.9)),
          exception=MOMENTUM_AT_HIGH_LR_SMALL_BATCH),
    Claim("mnist-more-momentum-more-robust", "3.4.3", "mnist",
          "The higher the momentum, the more robust SGD is: momentum 0.9 beats 0.5.",
          (Compare(at_constant_rates(momentum=0.9, label="SGD + momentum 0.9"),
                   at_constant_rates(momentum=0.5, label="SGD + momentum 0.5"), MNIST_ROBUSTNESS, "higher",
                   pair_on=SAME_RATE),),
          exception=MOMENTUM_AT_HIGH_LR_SMALL_BATCH),
    Claim("mnist-momentum-helps-lower-lr-more", "3.4.3", "mnist",
          "Momentum adds more robustness at lr 0.01 than at lr 0.1 (its gain over momentum 0, compared at each "
          "batch size; the high-rate small-batch runs count here, as part of the contrast).",
          tuple(Compare(Gain(mnist(lr=0.01, momentum=m), mnist(lr=0.01), on=("seed", "batch_size"),
                             label=f"momentum {m:g}'s gain at lr 0.01"),
                        Gain(mnist(lr=0.1, momentum=m), mnist(lr=0.1), on=("seed", "batch_size"),
                             label="at lr 0.1"), MNIST_ROBUSTNESS, "higher") for m in (0.5, 0.9))),
    Claim("mnist-momentum-flattens-only-at-0.9", "3.4.3", "mnist",
          "Momentum 0.5 does not make SGD's minima substantially flatter; momentum 0.9 does (a lower top "
          "eigenvalue).",
          (Compare(at_constant_rates(momentum=0.5, label="SGD + momentum 0.5"), at_constant_rates(), (EIG,), "no loss",
                   pair_on=SAME_RATE),
           Compare(at_constant_rates(momentum=0.9, label="SGD + momentum 0.9"), at_constant_rates(), (EIG,), "lower",
                   pair_on=SAME_RATE)),
          exception=MOMENTUM_AT_HIGH_LR_SMALL_BATCH),
    Claim("mnist-lr-0.1-momentum-0.9-best", "3.4.3", "mnist",
          "Learning rate 0.1 with momentum 0.9 gives SGD the best clean accuracy and robustness of the lr x "
          "momentum grid (at batch sizes above 256: the study's exception).",
          tuple(Compare(mnist(lr=0.1, momentum=0.9, label="lr 0.1 + momentum 0.9"),
                        mnist(lr=lr, momentum=m, label=f"lr {lr:g} + momentum {m:g}"), (CLEAN, *MNIST_ROBUSTNESS),
                        "higher")
                for lr in (0.01, 0.1) for m in (0.0, 0.5, 0.9) if (lr, m) != (0.1, 0.9)),
          exception=MOMENTUM_AT_HIGH_LR_SMALL_BATCH),
    Claim("mnist-momentum-at-high-lr-hurts-small-batches", "3.4.3", "mnist",
          "At lr 0.1 and batch sizes <= 256, momentum (0.5 or 0.9) lowers SGD's clean accuracy (suboptimal "
          "training).",
          tuple(Compare(mnist(lr=0.1, momentum=m, batch_sizes=(32, 64, 128, 256), label=f"SGD + momentum {m:g}"),
                        mnist(lr=0.1, batch_sizes=(32, 64, 128, 256), label="SGD"), (CLEAN,), "lower")
                for m in (0.5, 0.9))),
    Claim("cifar-momentum-raises-accuracy-and-robustness", "3.4.3", "cifar10",
          "On CIFAR-10 at lr 0.01, momentum 0.9 raises SGD's clean, FGSM and PGD accuracy.",
          (Compare(cifar(lr=0.01, momentum=0.9, label="SGD + momentum 0.9"), cifar(lr=0.01, label="SGD"),
                   (CLEAN, *CIFAR_ATTACKS), "higher", pair_on=("seed",)),)),
)


def by_id(claim_id: str) -> Claim:
    for claim in CLAIMS:
        if claim.id == claim_id:
            return claim
    raise KeyError(claim_id)


_ids = [c.id for c in CLAIMS]
assert len(_ids) == len(set(_ids)), "claim ids must be unique"
