"""The SGD variants against their math, and each one training through the real entry points."""

import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from robustsweep.cli import main
from robustsweep.config import TrialConfig, make_trial_config
from robustsweep.data import Split
from robustsweep.trial import run_trial
from robustsweep.variants import VARIANTS
from robustsweep.variants.sgdnoise import noise_std_for
from robustsweep.variants.sgdselective import selection_probability

from .conftest import TINY_EVAL, trial_runs_only

# ---------------------------------------------------------------------------------------------
# SVRG on a strongly convex least-squares problem


def _least_squares(n=64, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    b = a @ torch.randn(d, generator=g, dtype=torch.float64) + 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
    w_star = torch.linalg.lstsq(a, b[:, None]).solution[:, 0]
    return a, b, w_star


def _squared_error(out, y):
    return 0.5 * (out[:, 0] - y) ** 2


class _Batches:
    """Reshuffled minibatches of (a, b) each pass, like DeviceBatches for float features."""

    def __init__(self, a, b, size, seed):
        self.a, self.b, self.size = a, b, size
        self.g = torch.Generator().manual_seed(seed)

    def __iter__(self):
        order = torch.randperm(len(self.b), generator=self.g)
        for s in range(0, len(order), self.size):
            i = order[s:s + self.size]
            yield self.a[i], self.b[i]


def _variant(name, model, **settings):
    config = TrialConfig(variant=name, **settings).resolved()
    split = Split(torch.zeros(1, 1), torch.zeros(1, dtype=torch.long))
    variant = VARIANTS[name](model, config, split, torch.Generator().manual_seed(0))
    variant.loss_fn = _squared_error
    return variant


def _train_least_squares(name, epochs, lr=0.05):
    a, b, w_star = _least_squares()
    model = nn.Linear(a.shape[1], 1, bias=False).double()
    nn.init.zeros_(model.weight)
    variant = _variant(name, model, lr=lr, batch_size=4, augment_flip=False)
    batches = _Batches(a, b, 4, seed=1)
    errors = []
    for epoch in range(epochs):
        variant.start_epoch(epoch, batches)
        for x, y in batches:
            variant.train_step(x, y)
        errors.append(float((model.weight[0].detach() - w_star).norm()))
    return errors, variant, model, (a, b, w_star)


def test_svrg_converges_geometrically_where_sgd_plateaus():
    svrg, *_ = _train_least_squares("svrg", 60)
    sgd, *_ = _train_least_squares("sgd", 60)
    assert svrg[-1] < 1e-10  # near machine precision for these magnitudes
    assert sgd[-1] > 1e-3 and min(sgd[30:]) > 1e-3  # SGD at a constant step stalls at its noise floor
    # geometric: the log-error falls roughly linearly; every 10 epochs it shrinks by at least 10x
    for e in range(10, 50, 10):
        assert svrg[e + 10] < svrg[e] / 10


def test_svrg_direction_has_lower_variance_than_sgd_near_the_optimum():
    _, variant, model, (a, b, w_star) = _train_least_squares("svrg", 5)
    with torch.no_grad():
        model.weight[0] = w_star + 1e-3 * torch.ones_like(w_star)
    batches = _Batches(a, b, 4, seed=2)
    variant.take_snapshot(batches)  # snapshot at the current point near the optimum
    with torch.no_grad():
        model.weight[0] += 1e-4  # the iterate moves on from the snapshot
    svrg_dirs, sgd_dirs = [], []
    for x, y in batches:
        direction, _, _ = variant.direction(x, y)
        svrg_dirs.append(direction[0].reshape(-1))
        sgd_dirs.append(torch.autograd.grad(_squared_error(model(x), y).mean(), model.weight)[0].reshape(-1))
    svrg_var = torch.stack(svrg_dirs).var(0).sum()
    sgd_var = torch.stack(sgd_dirs).var(0).sum()
    assert svrg_var < 1e-3 * sgd_var


def test_svrg_counts_gradient_evaluations_and_large_batch_snapshot():
    errors, variant, *_ = _train_least_squares("svrg", 1)
    counts = variant.end_epoch()
    assert counts["grad_evals"] == 64 + 2 * 64  # one snapshot pass plus two gradients per example
    a, b, _ = _least_squares()
    model = nn.Linear(5, 1, bias=False).double()
    v = _variant("svrg", model, lr=0.05, batch_size=4, svrg_snapshot_batch=16)
    v.take_snapshot(_Batches(a, b, 4, seed=0))
    assert v.end_epoch()["grad_evals"] == 16


# ---------------------------------------------------------------------------------------------
# multiplicative noisy SGD


def test_noisy_sgd_gradient_mean_and_covariance_match_the_fisher_formula():
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    sigma = 0.8
    variant = _variant("sgdnoise", model, noise_std=sigma, batch_size=8)
    variant.loss_fn = lambda out, y: nn.functional.cross_entropy(out, y, reduction="none")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (8,), generator=g)
    params = list(model.parameters())

    def flat_grad(loss):
        return torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, params)])

    per_example = torch.stack([flat_grad(variant.loss_fn(model(x[i:i + 1]), y[i:i + 1]).sum()) for i in range(8)])
    g_batch = per_example.mean(0)
    expected_cov = sigma ** 2 / 8 ** 2 * per_example.T @ per_example
    draws = torch.stack([flat_grad(variant.batch_loss(variant.loss_fn(model(x), y))) for _ in range(6000)])
    # mean: within 5 standard errors per coordinate
    standard_error = expected_cov.diagonal().sqrt() / 6000 ** 0.5
    assert ((draws.mean(0) - g_batch).abs() <= 5 * standard_error + 1e-12).all()
    # covariance: relative Frobenius error below 10% (Monte Carlo error ~ sqrt(2/6000) ~ 2%)
    centered = draws - g_batch
    empirical_cov = centered.T @ centered / len(draws)
    assert (empirical_cov - expected_cov).norm() / expected_cov.norm() < 0.10


def test_noise_scale_is_fixed_by_default_and_the_reference_rule_is_opt_in():
    model = nn.Linear(2, 2)
    split = Split(torch.zeros(1), torch.zeros(1))

    def sigma(**settings):
        config = TrialConfig(variant="sgdnoise", **settings).resolved()
        return VARIANTS["sgdnoise"](model, config, split, torch.Generator()).sigma

    # the same sigma at every batch size of the study (its Algorithm 2: W = 1 + V, V of a fixed scale)
    assert [sigma(batch_size=b) for b in (32, 128, 1024)] == [1.0, 1.0, 1.0]
    assert sigma(batch_size=1024, lr_batch_ratio=0.005 / 32) == 1.0  # no second batch-size scaling
    assert sigma(batch_size=64, noise_std=0.3) == 0.3
    # opt-in: emulate a reference batch, sigma^2 = b / b_ref - 1
    assert sigma(batch_size=128, noise_ref_batch=32) == pytest.approx(3 ** 0.5)
    assert noise_std_for(256, 32) == pytest.approx(7 ** 0.5)
    assert noise_std_for(32, 32) == 0.0 and noise_std_for(16, 32) == 0.0


def test_noisy_sgd_differs_from_sgd_at_batch_32_with_the_same_seed(mnist_root, mlflow_uri):
    outcomes = {variant: _tiny_trial(mnist_root, mlflow_uri, variant=variant, batch_size=32, epochs=1, lr=0.05)
                for variant in ("sgd", "sgdnoise")}
    assert outcomes["sgd"].history[0]["train_loss"] != outcomes["sgdnoise"].history[0]["train_loss"]
    assert outcomes["sgd"].metrics["hessian_top_eig"] != outcomes["sgdnoise"].metrics["hessian_top_eig"]


# ---------------------------------------------------------------------------------------------
# Selective Backprop


def test_selection_probability_against_hand_computed_percentiles():
    history = torch.tensor([1.0, 2.0, 3.0, 4.0])
    losses = torch.tensor([0.5, 2.5, 3.0, 5.0])
    # fraction strictly lower: 0/4, 2/4, 2/4, 4/4
    assert selection_probability(losses, history, 1.0).tolist() == [0.0, 0.5, 0.5, 1.0]
    assert selection_probability(losses, history, 2.0).tolist() == [0.0, 0.25, 0.25, 1.0]
    assert selection_probability(losses, torch.empty(0), 3.0).tolist() == [1.0] * 4


def _selective(beta, mnist_root, epochs=2):
    from robustsweep.data import DeviceBatches, load_split
    from robustsweep.models import M1

    torch.manual_seed(0)
    train = load_split("mnist", mnist_root, True).head(1024)
    model = M1()
    config = TrialConfig(variant="sgdselective", sb_beta=beta, batch_size=64, lr=0.05).resolved()
    variant = VARIANTS["sgdselective"](model, config, train, torch.Generator().manual_seed(0))
    batches = DeviceBatches(train, 64, torch.Generator().manual_seed(0))
    per_epoch, selected, rejected = [], [], []
    for epoch in range(epochs):
        variant.start_epoch(epoch, batches)
        for x, y in batches:
            variant.train_step(x, y)
            if epoch > 0:
                batch_losses = variant.history[-len(y):]  # this batch's losses, just recorded
                selected.append(batch_losses[variant.last_chosen])
                rejected.append(batch_losses[~variant.last_chosen])
        per_epoch.append(variant.end_epoch())
    return per_epoch, torch.cat(selected), torch.cat(rejected)


def test_selective_backprop_first_epoch_uses_every_example_and_beta_selects(mnist_root):
    epochs1, selected, rejected = _selective(1.0, mnist_root)
    assert epochs1[0]["sb_forward"] == epochs1[0]["sb_backward"] == 1024
    assert epochs1[1]["sb_forward"] == 1024
    assert 0 < epochs1[1]["sb_backward"] < 1024
    assert selected.mean() > rejected.mean()  # the biggest losers are the ones back-propagated
    epochs3, _, _ = _selective(3.0, mnist_root)
    assert epochs3[1]["sb_backward"] < epochs1[1]["sb_backward"]


# ---------------------------------------------------------------------------------------------
# every variant through the real entry points


@pytest.mark.parametrize("variant, lr", [("sgd", 0.05), ("svrg", 0.05), ("sgdnoise", 0.05),
                                         ("sgdselective", 0.05), ("adam", 0.001), ("adamw", 0.001),
                                         ("sam", 0.05), ("asam", 0.05)])
def test_each_variant_trains_m1_through_robustsweep_run(variant, lr, mnist_root, mlflow_uri, capsys):
    epochs = 2 if variant == "sgdselective" else 1  # SB's first epoch is plain SGD by design
    code = main(["run", f"variant={variant}", f"lr={lr}", f"data_root={mnist_root}", "device=cpu",
                 f"mlflow_tracking_uri={mlflow_uri}", "subset=3000", f"epochs={epochs}", "batch_size=64",
                 *TINY_EVAL, "--quiet"])
    assert code == 0, capsys.readouterr()
    client = MlflowClient(mlflow_uri)
    (run,) = trial_runs_only(client.search_runs([client.get_experiment_by_name("robustsweep").experiment_id]))
    # 3000 examples at batch 64 reach ~0.75 after one epoch; chance is 0.1. 0.5 is five times chance.
    assert run.data.metrics["clean_acc"] >= 0.5, run.data.metrics
    assert run.data.params["variant"] == variant
    # per-example gradient evaluations in each epoch on 3000 examples: one per example, SVRG three
    # (a full snapshot pass plus two gradients per step), SAM and ASAM two (at w and at w + e),
    # Selective Backprop one per back-propagated one
    grad_evals = [m.value for m in client.get_metric_history(run.info.run_id, "grad_evals")]
    if variant == "sgdselective":
        backward = [m.value for m in client.get_metric_history(run.info.run_id, "sb_backward")]
        # epoch 1 selects all: 46 full batches of 64; the last 56 examples wait in the pool
        assert grad_evals == backward and backward[0] == 46 * 64 and 0 < backward[1] < 3000
    else:
        assert grad_evals == [{"svrg": 9000.0, "sam": 6000.0, "asam": 6000.0}.get(variant, 3000.0)]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_variant_steps_vgg11_on_cifar_format_data(variant, cifar_root, mlflow_uri):
    config = make_trial_config({
        "dataset": "cifar10", "variant": variant, "data_root": str(cifar_root), "verify_checksums": False,
        "download": False, "mlflow_tracking_uri": mlflow_uri, "device": "cpu", "epochs": 2, "batch_size": 16,
        "lr": 0.01, "subset": 32, "attack_subset": 4, "hessian_samples": 4, "pgd_steps": 1, "hessian_iters": 2,
        "eval_batch_size": 16, "eps": [0.02]})
    outcome = run_trial(config)
    # a few dozen synthetic images and 1-2 epochs leave VGG-11 near chance: "collapsed" is the right
    # outcome then; either way every measurement ran
    assert outcome.status in ("finished", "collapsed")
    assert all(h["train_loss"] == h["train_loss"] for h in outcome.history)  # finite, not NaN


# ---------------------------------------------------------------------------------------------
# momentum and weight decay, by hand


SGD_FAMILY = ("sgd", "svrg", "sgdnoise", "sgdselective")


@pytest.mark.parametrize("name", SGD_FAMILY)
def test_momentum_and_weight_decay_follow_two_hand_computed_steps(name):
    # Two full-batch steps in the first epoch of least squares: every SGD-family variant's direction
    # is then the plain gradient g (SVRG: g_B(w) - g_B(w~) + mu = g(w) with the snapshot at w0; noise 0;
    # Selective Backprop back-propagates every example in its first epoch), so the steps must be
    # heavy-ball SGD with L2 decay, written out by hand.
    a, b, _ = _least_squares(n=16)
    model = nn.Linear(5, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.linspace(-1, 1, 5, dtype=torch.float64)[None])
    lr, momentum, wd = 0.05, 0.9, 0.1
    extra = {"noise_std": 0.0} if name == "sgdnoise" else {}
    variant = _variant(name, model, lr=lr, momentum=momentum, weight_decay=wd, batch_size=16, **extra)

    def gradient(w):
        w = w.clone().requires_grad_(True)
        return torch.autograd.grad(_squared_error(a @ w[:, None], b).mean(), w)[0]

    w0 = model.weight[0].detach().clone()
    d0 = gradient(w0) + wd * w0
    w1 = w0 - lr * d0                      # step 1: the momentum buffer starts as the first direction
    buffer = momentum * d0 + gradient(w1) + wd * w1
    w2 = w1 - lr * buffer                  # step 2: v <- momentum * v + g + wd * w
    variant.start_epoch(0, _Batches(a, b, 16, seed=0))  # SVRG's snapshot at w0
    for step, expected in enumerate((w1, w2)):
        variant.train_step(a, b)
        assert torch.allclose(model.weight[0].detach(), expected, rtol=0, atol=1e-12), (step, name)
    # without momentum and decay the second step differs: the check above can tell them apart
    assert not torch.allclose(w2, w1 - lr * gradient(w1), atol=1e-6)


def test_adam_adds_l2_to_the_gradient_and_adamw_decays_the_weights_apart():
    a, b, _ = _least_squares(n=16)
    lr, wd, (beta1, beta2), eps = 0.01, 0.5, (0.9, 0.999), 1e-8
    w0 = torch.linspace(-1, 1, 5, dtype=torch.float64)
    w = w0.clone().requires_grad_(True)
    g = torch.autograd.grad(_squared_error(a @ w[:, None], b).mean(), w)[0]

    def adam_first_step(grad):
        # first step, bias-corrected: m_hat = grad, v_hat = grad^2
        m_hat = (1 - beta1) * grad / (1 - beta1)
        v_hat = (1 - beta2) * grad ** 2 / (1 - beta2)
        return lr * m_hat / (v_hat.sqrt() + eps)

    expected = {"adam": w0 - adam_first_step(g + wd * w0),          # L2: decay enters the moments
                "adamw": w0 * (1 - lr * wd) - adam_first_step(g)}   # decoupled: decay bypasses them
    got = {}
    for name in ("adam", "adamw"):
        model = nn.Linear(5, 1, bias=False).double()
        with torch.no_grad():
            model.weight.copy_(w0[None])
        variant = _variant(name, model, lr=lr, weight_decay=wd, batch_size=16)
        variant.train_step(a, b)
        got[name] = model.weight[0].detach().clone()
        assert torch.allclose(got[name], expected[name], rtol=0, atol=1e-12), name
    assert (got["adam"] - got["adamw"]).abs().max() > 1e-4


# ---------------------------------------------------------------------------------------------
# variant state: BatchNorm statistics, Selective Backprop's history, SVRG's snapshot cadence


class _ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))

    def forward(self, x):
        return self.net(x)


def _image_batches(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def _bn_state(model):
    bn = model.net[1]
    return bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked)


def _after_one_training_forward(model, x):
    """BatchNorm's running statistics after exactly one training-mode forward of x."""
    import copy

    reference = copy.deepcopy(model).train()
    with torch.no_grad():
        reference(x)
    return _bn_state(reference)


def _assert_bn_equal(a, b):
    assert torch.allclose(a[0], b[0], atol=1e-7) and torch.allclose(a[1], b[1], atol=1e-7) and a[2] == b[2]


@pytest.mark.parametrize("name", ["svrg", "sgdselective"])
def test_auxiliary_passes_leave_batchnorm_running_statistics_alone(name):
    """SVRG's snapshot passes and Selective Backprop's selection forward do not move BatchNorm's statistics."""
    torch.manual_seed(0)
    model = _ConvBN().train()
    x, y = _image_batches(32)
    config = TrialConfig(variant=name, lr=0.05, batch_size=32).resolved()
    variant = VARIANTS[name](model, config, Split(torch.zeros(1), torch.zeros(1)), torch.Generator().manual_seed(0))
    before = _bn_state(model)
    variant.start_epoch(0, [(x, y), (x.flip(3), y)])  # SVRG: a full snapshot pass over two batches
    _assert_bn_equal(_bn_state(model), before)  # the snapshot ran on its own copy
    expected = _after_one_training_forward(model, x)
    variant.train_step(x, y)
    # SVRG: only g_B(w) ran on the model in training mode; Selective Backprop: only the forward of the
    # back-propagated batch (here all 32 examples, the first epoch selects all), not the selection
    # forward, which runs in eval mode as in the authors' code.
    _assert_bn_equal(_bn_state(model), expected)


def test_selective_backprop_counts_the_current_batch_in_the_cdf_and_defaults_to_beta_3():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    config = TrialConfig(variant="sgdselective", lr=0.05, batch_size=16).resolved()
    assert config.sb_beta == 3.0  # the authors' reference code
    variant = VARIANTS["sgdselective"](model, config, Split(torch.zeros(1), torch.zeros(1)),
                                       torch.Generator().manual_seed(0))
    variant.start_epoch(1, None)  # past the first epoch: selecting, with an empty history
    x, y = _image_batches(16)
    with torch.no_grad():
        losses = nn.functional.cross_entropy(model(x), y, reduction="none")
    variant.train_step(x, y)
    # the batch's own losses are in the history when P is computed: the lowest has CDF 0, P = 0
    # (an empty history would have selected everything)
    assert not variant.last_chosen[losses.argmin()]
    assert torch.equal(variant.history, losses)


def test_selective_backprop_history_holds_exactly_the_last_r_losses():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    config = TrialConfig(variant="sgdselective", lr=0.05, batch_size=16, sb_history=40).resolved()
    variant = VARIANTS["sgdselective"](model, config, Split(torch.zeros(1), torch.zeros(1)),
                                       torch.Generator().manual_seed(0))
    recorded = []
    for epoch in range(2):
        variant.start_epoch(epoch, None)
        for i in range(5):
            x, y = _image_batches(16, seed=10 * epoch + i)
            with torch.no_grad():
                recorded.append(nn.functional.cross_entropy(model(x), y, reduction="none"))
            variant.train_step(x, y)
            expected = torch.cat(recorded)[-40:]
            assert torch.equal(variant.history, expected), (epoch, i)
    assert len(variant.history) == 40


def _tiny_trial(mnist_root, mlflow_uri, **settings):
    values = {"data_root": str(mnist_root), "mlflow_tracking_uri": mlflow_uri, "device": "cpu", "subset": 300,
              "batch_size": 50, "test_subset": 100, "attack_subset": 20, "hessian_samples": 20, "pgd_steps": 1,
              "hessian_iters": 2, "eps": [0.1], **settings}
    return run_trial(make_trial_config(values))


def test_svrg_snapshot_every_two_epochs_snapshots_in_epochs_1_and_3_only(mnist_root, mlflow_uri):
    outcome = _tiny_trial(mnist_root, mlflow_uri, variant="svrg", epochs=4, svrg_snapshot_every=2)
    assert [h.get("snapshots", 0) for h in outcome.history] == [1, 0, 1, 0]
    assert [h["grad_evals"] for h in outcome.history] == [300 + 600, 600, 300 + 600, 600]


# ---------------------------------------------------------------------------------------------
# SAM and ASAM, by hand


class _TinyMLP(nn.Module):
    """4 -> 3 -> 3 with biases: parameters hidden.weight (3x4), hidden.bias, out.weight (3x3), out.bias."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(4, 3)
        self.out = nn.Linear(3, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.hidden(x)))


def _mlp_loss(flat, x, y):
    """_TinyMLP's mean cross-entropy written out on its 27 flat parameters (in parameters() order)."""
    w1, b1, w2, b2 = flat[:12].view(3, 4), flat[12:15], flat[15:24].view(3, 3), flat[24:27]
    return nn.functional.cross_entropy(torch.tanh(x @ w1.T + b1) @ w2.T + b2, y)


#: Which of the 27 flat parameters are weights (ASAM scales those by |w| + eta), which biases.
_MLP_IS_WEIGHT = torch.cat([torch.ones(12), torch.zeros(3), torch.ones(9), torch.zeros(3)]).bool()


def _flat_gradient(w, x, y):
    w = w.detach().clone().requires_grad_(True)
    return torch.autograd.grad(_mlp_loss(w, x, y), w)[0]


def _hand_perturbation(name, w, g, rho, eta, normalize_biases=False, eta_on=True):
    """SAM: e = rho g / ||g||. ASAM: e = rho T^2 g / ||T g||, T = |w| + eta on weights, 1 on biases."""
    if name == "sam":
        t = torch.ones_like(w)
    else:
        scaled = w.abs() + (eta if eta_on else 0.0)
        t = scaled if normalize_biases else torch.where(_MLP_IS_WEIGHT, scaled, torch.ones_like(w))
    return rho * t ** 2 * g / (t * g).norm()


@pytest.mark.parametrize("name, rho", [("sam", 0.05), ("asam", 0.5)])
def test_sam_and_asam_follow_two_hand_computed_steps_with_momentum_and_weight_decay(name, rho):
    # The paper defaults (rho 0.05 for SAM, Foret et al.; 0.5 for ASAM, Kwon et al.; eta 0.01) are what
    # an unset sam_rho resolves to; the expected update is written out with them as literals.
    torch.manual_seed(0)
    model = _TinyMLP().double()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(8, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (8,), generator=g)
    lr, momentum, wd, eta = 0.1, 0.9, 0.1, 0.01
    config = TrialConfig(variant=name, lr=lr, momentum=momentum, weight_decay=wd, batch_size=8).resolved()
    assert (config.sam_rho, config.asam_eta) == (rho, eta)
    variant = VARIANTS[name](model, config, Split(torch.zeros(1), torch.zeros(1)), torch.Generator())

    def flat():
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    w0 = flat()
    e0 = _hand_perturbation(name, w0, _flat_gradient(w0, x, y), rho, eta)
    d0 = _flat_gradient(w0 + e0, x, y) + wd * w0      # the gradient at w + e; L2 decay at w
    w1 = w0 - lr * d0                                  # step 1: the momentum buffer starts as d0
    e1 = _hand_perturbation(name, w1, _flat_gradient(w1, x, y), rho, eta)
    buffer = momentum * d0 + _flat_gradient(w1 + e1, x, y) + wd * w1
    w2 = w1 - lr * buffer
    for step, expected in enumerate((w1, w2)):
        result = variant.train_step(x, y)
        assert torch.allclose(flat(), expected, rtol=0, atol=1e-12), (name, step)
    # the training metrics are the first pass's, at w (here w1, before the second step)
    assert float(result.loss_sum) == pytest.approx(8 * float(_mlp_loss(w1, x, y)), rel=1e-12)
    assert variant.end_epoch()["grad_evals"] == 2 * 2 * 8

    # The check tells apart what a SAM step could wrongly be: plain SGD; weight decay inside the
    # perturbed loss (Foret et al.'s JAX code: decay at w + e); for ASAM, the paper's T_w on the biases
    # too, and davda54/sam's adaptive mode (T_w = |w| on every parameter).
    g0 = _flat_gradient(w0, x, y)
    wrong = {"sgd": w0 - lr * (g0 + wd * w0),
             "decay at w + e": w0 - lr * (_flat_gradient(w0 + e0, x, y) + wd * (w0 + e0))}
    if name == "asam":
        for label, kwargs in (("biases normalized", {"normalize_biases": True}),
                              ("davda54 adaptive", {"normalize_biases": True, "eta_on": False})):
            e = _hand_perturbation(name, w0, g0, rho, eta, **kwargs)
            wrong[label] = w0 - lr * (_flat_gradient(w0 + e, x, y) + wd * w0)
        sam_e = _hand_perturbation("sam", w0, g0, rho, eta)
        wrong["sam's perturbation"] = w0 - lr * (_flat_gradient(w0 + sam_e, x, y) + wd * w0)
    for label, other in wrong.items():
        assert (other - w1).abs().max() > 1e-6, label


def _sam_bn_variant(name, model, **settings):
    config = TrialConfig(variant=name, lr=0.05, batch_size=32, **settings).resolved()
    return VARIANTS[name](model, config, Split(torch.zeros(1), torch.zeros(1)), torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ["sam", "asam"])
def test_sam_moves_batchnorm_running_statistics_once_per_step_as_sgd_does(name):
    import copy

    torch.manual_seed(0)
    model = _ConvBN().train()
    initial = copy.deepcopy(model)
    plain = copy.deepcopy(model)
    x, y = _image_batches(32)
    _sam_bn_variant(name, model).train_step(x, y)
    _sam_bn_variant("sgd", plain).train_step(x, y)
    # the same weights before the step, so the same running statistics after it as a plain SGD step's
    _assert_bn_equal(_bn_state(model), _bn_state(plain))
    assert _bn_state(model)[2] == 1
    after_first = {n: p.detach().clone() for n, p in model.named_parameters()}
    # and again from weights of SAM's own: exactly one training-mode forward at w per step
    x2, y2 = _image_batches(32, seed=1)
    expected = _after_one_training_forward(model, x2)
    _sam_bn_variant(name, model).train_step(x2, y2)
    _assert_bn_equal(_bn_state(model), expected)

    # The first step's weights by hand: both passes in training mode (batch statistics), the
    # perturbation from the first pass's gradient, ASAM's T_w = |w| + eta on the 'weight' tensors
    # (BatchNorm's scale included) and 1 on the biases (BatchNorm's shift included).
    w0 = {n: p.detach().clone() for n, p in initial.named_parameters()}

    def gradient(params):
        params = {n: p.clone().requires_grad_(True) for n, p in params.items()}
        out = torch.func.functional_call(copy.deepcopy(initial), params, (x,))
        return dict(zip(params, torch.autograd.grad(nn.functional.cross_entropy(out, y), list(params.values()))))

    rho = 0.05 if name == "sam" else 0.5
    g = gradient(w0)
    t = {n: w.abs() + 0.01 if name == "asam" and n.endswith("weight") else torch.ones_like(w) for n, w in w0.items()}
    norm = torch.sqrt(sum(((t[n] * g[n]) ** 2).sum() for n in w0))
    g_sam = gradient({n: w0[n] + rho * t[n] ** 2 * g[n] / norm for n in w0})
    for n in w0:
        assert torch.allclose(after_first[n], w0[n] - 0.05 * g_sam[n], rtol=0, atol=1e-6), n
    # which is not SGD's step (by far more than the tolerance)
    assert max((after_first[n] - (w0[n] - 0.05 * g[n])).abs().max() for n in w0) > 1e-4


@pytest.mark.parametrize("values, fragment", [
    ({"sam_rho": 0}, "sam_rho=0.0: must be a finite number > 0"),
    ({"sam_rho": -0.05}, "sam_rho=-0.05: must be a finite number > 0"),
    ({"sam_rho": float("inf")}, "sam_rho=inf: must be a finite number > 0"),
    ({"sam_rho": "wide"}, "sam_rho='wide': expected a number or null"),
    ({"asam_eta": -0.01}, "asam_eta=-0.01: must be a finite number >= 0"),
    ({"asam_eta": float("nan")}, "asam_eta=nan: must be a finite number >= 0"),
    ({"asam_eta": None}, "asam_eta=None: expected a number"),
])
def test_sam_rho_and_asam_eta_are_validated(values, fragment):
    from robustsweep.errors import ConfigError

    with pytest.raises(ConfigError) as error:
        make_trial_config({"variant": "asam", **values})
    assert fragment in str(error.value)


def test_sam_rho_resolves_per_variant_and_leaves_other_variants_alone(capsys):
    assert TrialConfig(variant="sam").resolved().sam_rho == 0.05      # Foret et al. 2021
    assert TrialConfig(variant="asam").resolved().sam_rho == 0.5      # Kwon et al. 2021, CIFAR
    assert TrialConfig(variant="asam", sam_rho=1.0).resolved().sam_rho == 1.0
    assert TrialConfig(variant="sgd").resolved().sam_rho is None       # other trials: unchanged
    assert TrialConfig().resolved().asam_eta == 0.01
    # through the command line: one paragraph, exit 2
    assert main(["run", "variant=sam", "sam_rho=-1"]) == 2
    err = capsys.readouterr().err
    assert "sam_rho=-1.0: must be a finite number > 0" in err and "Traceback" not in err


def test_sam_runs_through_robustsweep_run_with_autoattack_and_the_trace(mnist_root, mlflow_uri, capsys):
    from robustsweep import metrics as keys

    code = main(["run", "dataset=mnist", "variant=sam", "attacks=[fgsm,pgd,autoattack]",
                 "curvature=[top_eig,trace]", f"data_root={mnist_root}", "device=cpu",
                 f"mlflow_tracking_uri={mlflow_uri}", "subset=2000", "epochs=1", "batch_size=32", "lr=0.05",
                 "test_subset=300", "attack_subset=60", "pgd_steps=10", "eps=[0.1]", "autoattack_subset=40",
                 "autoattack_steps=10", "autoattack_targets=3", "hessian_samples=100", "hessian_iters=20",
                 "hessian_trace_probes=5", "--quiet"])
    assert code == 0, capsys.readouterr()
    client = MlflowClient(mlflow_uri)
    (run,) = trial_runs_only(client.search_runs([client.get_experiment_by_name("robustsweep").experiment_id]))
    metrics = run.data.metrics
    config = make_trial_config({"variant": "sam", "attacks": ["fgsm", "pgd", "autoattack"], "eps": [0.1],
                                "curvature": ["top_eig", "trace"]}).resolved()
    assert set(keys.trial_metric_keys(config)) <= set(metrics)
    assert {"autoattack_acc_eps0.1", "hessian_trace", "hessian_trace_se"} <= set(metrics)
    assert run.data.params["variant"] == "sam" and run.data.params["sam_rho"] == "0.05"
    assert metrics["grad_evals"] == 2 * 2000
    assert metrics["clean_acc"] >= 0.5  # five times chance after one epoch on 2000 examples
    # AutoAttack ran on the first 40 of PGD's 60 images: it can do no better than PGD there, up to the
    # 20 images it did not see
    assert metrics["autoattack_acc_eps0.1"] * 40 <= metrics["pgd_acc_eps0.1"] * 60
