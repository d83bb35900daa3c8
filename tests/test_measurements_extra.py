"""The opt-in measurements against exact math: top-k Hessian eigenvalues, Hutchinson's trace, AutoAttack."""

import pytest
import torch
import torch.nn.functional as F
import torchattacks
from torch import nn

from robustsweep.attacks import attack_accuracy, attack_correct, autoattack_robust, clean_accuracy
from robustsweep.hessian import hessian_operator, hutchinson_trace, lanczos_top
from robustsweep.lanczos import top_eigenvalues_lanczos

from .test_measurements import _data, _exact_hessian, _exact_hessian_eigenvalues, _matrix_with_spectrum


def _trained_ten_class_model():
    """A linear model on 4x4 images, trained on labels a linear teacher gives: 10 classes, as AutoAttack's
    DLR loss needs at least 4."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 10))
    x = torch.rand(300, 1, 4, 4, generator=g)
    y = (x.flatten(1) - 0.5).matmul(torch.randn(16, 10, generator=g)).argmax(1)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model, x, y


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))


def test_lanczos_top_k_meets_its_error_bound_on_a_known_spectrum():
    values = torch.cat([torch.tensor([50.0, 40.0, 30.0, 20.0]), torch.linspace(-1, 5, 196)]).double()
    a = _matrix_with_spectrum(values)
    start = torch.randn(200, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    result = top_eigenvalues_lanczos(lambda v: a @ v, start, k=4, tol=1e-6, max_iter=200)
    assert result.eigenvalues == pytest.approx((50.0, 40.0, 30.0, 20.0), rel=1e-6)
    assert result.iterations < 100  # far fewer than the dimension
    # k=1 is the top eigenvalue alone, with its own (earlier) stop
    top = top_eigenvalues_lanczos(lambda v: a @ v, start, k=1, tol=1e-6, max_iter=200)
    assert top.eigenvalues == pytest.approx((50.0,), rel=1e-6) and top.iterations <= result.iterations


def test_top_k_matches_the_exact_hessian_of_a_small_mlp():
    model = _mlp()
    x, y = _data()
    exact = _exact_hessian_eigenvalues(model, x, y).flip(0)[:3]
    with hessian_operator(model, x, y, chunk_size=7) as operator:
        result = lanczos_top(operator, k=3, max_iter=100, tol=1e-8)
    assert torch.tensor(result.eigenvalues, dtype=torch.float64) == pytest.approx(exact, rel=1e-4, abs=1e-6)
    assert result.iterations == operator.products


def test_hutchinson_probes_are_exact_quadratic_forms_and_the_estimate_brackets_the_trace():
    model = _mlp(1)
    x, y = _data(seed=1)
    h = _exact_hessian(model, x, y)
    probes = 400
    with hessian_operator(model, x, y) as operator:
        result = hutchinson_trace(operator, probes=probes, seed=5)
    # the same seeded Rademacher draws, applied to the exact Hessian, give the same mean and error
    g = torch.Generator().manual_seed(5)
    forms = []
    for _ in range(probes):
        v = (torch.randint(0, 2, (h.shape[0],), generator=g) * 2 - 1).double()
        forms.append(float(v @ h @ v))
    forms = torch.tensor(forms, dtype=torch.float64)
    assert result.trace == pytest.approx(float(forms.mean()), rel=1e-4, abs=1e-6)
    assert result.standard_error == pytest.approx(float(forms.std() / probes ** 0.5), rel=1e-3)
    exact = float(torch.trace(h))
    assert result.standard_error > 0 and abs(result.trace - exact) <= 4 * result.standard_error
    # a diagonal Hessian has no cross terms: every probe is the trace exactly
    diagonal = torch.diag(torch.tensor([3.0, 1.0, 2.0], dtype=torch.float64))

    class _Fixed:
        dim, device, dtype, products = 3, torch.device("cpu"), torch.float64, 0

        def __call__(self, v):
            return diagonal @ v

    fixed = hutchinson_trace(_Fixed(), probes=10, seed=0)
    assert fixed.trace == pytest.approx(6.0) and fixed.standard_error == pytest.approx(0.0, abs=1e-12)


def test_curvature_leaves_model_mode_grads_and_global_rng_alone():
    model = _mlp().train()
    x, y = _data()
    before = torch.get_rng_state()
    with hessian_operator(model, x, y) as operator:
        hutchinson_trace(operator, probes=3)
        lanczos_top(operator, k=2, max_iter=5)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert torch.equal(before, torch.get_rng_state())


def _hand_composed_autoattack(model, x, y, eps, steps, targets, seed, batch_size):
    """APGD-CE on every example, then APGD-T (``targets`` classes) on those still correct: torchattacks
    directly, batch by batch, the examples scored in eval mode."""
    model.eval()
    robust = model(x).argmax(1) == y
    ce = torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed, loss="ce")
    targeted = torchattacks.APGDT(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed, n_classes=10)
    targeted.n_target_classes = targets
    for attack in (ce, targeted):
        index = robust.nonzero().flatten()
        for start in range(0, len(index), batch_size):
            part = index[start:start + batch_size]
            adversarial = attack(x[part], y[part])
            assert (adversarial - x[part]).abs().max() <= eps + 1e-6
            robust[part] &= model(adversarial).argmax(1) == y[part]
    return robust


def test_autoattack_is_the_per_example_worst_case_of_apgd_ce_and_apgd_t_and_beats_pgd_and_fgsm():
    model, x, y = _trained_ten_class_model()
    eps, steps = 0.1, 20
    before = torch.get_rng_state()
    robust = autoattack_robust(model, x, y, eps, steps=steps, target_classes=3, seed=3, batch_size=100)
    assert torch.equal(before, torch.get_rng_state())
    expected = _hand_composed_autoattack(model, x, y, eps, steps, 3, 3, 100)
    assert torch.equal(robust, expected)
    acc = attack_accuracy(model, x, y, "autoattack", eps, steps=steps, target_classes=3, seed=3, batch_size=100)
    assert acc == pytest.approx(float(expected.float().mean()))
    clean = clean_accuracy(model, x, y)
    pgd = attack_accuracy(model, x, y, "pgd", eps, steps=20)
    fgsm = attack_accuracy(model, x, y, "fgsm", eps)
    assert acc <= pgd <= clean and acc <= fgsm
    assert acc < clean  # it does attack
    # APGD-T adds to APGD-CE: with no target classes left to try it could only be weaker
    ce_only = autoattack_robust(model, x, y, eps, steps=steps, target_classes=1, seed=3, batch_size=100)
    assert robust.sum() <= ce_only.sum()


def test_autoattack_restores_training_mode_checks_targets_and_is_clean_accuracy_at_eps_zero():
    model, x, y = _trained_ten_class_model()
    model.train()
    assert attack_accuracy(model, x, y, "autoattack", 0.0, steps=3, target_classes=1) == clean_accuracy(model, x, y)
    assert model.training
    with pytest.raises(ValueError, match="target_classes must be in 1..9"):
        autoattack_robust(model, x, y, 0.1, steps=3, target_classes=10)


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_per_example_results_of_the_first_n_are_those_of_attacking_the_first_n_alone(attack):
    # AutoAttack's PGD comparison reads PGD's results on its first n images from the whole attacked set
    model, x, y = _trained_ten_class_model()
    everything = attack_correct(model, x, y, attack, 0.1, steps=5, batch_size=64, seed=2)
    first = attack_correct(model, x[:100], y[:100], attack, 0.1, steps=5, batch_size=64, seed=2)
    assert everything.dtype == torch.bool and len(everything) == len(y)
    assert torch.equal(everything[:100], first)
    assert attack_accuracy(model, x, y, attack, 0.1, steps=5, batch_size=64, seed=2) == \
        int(everything.sum()) / len(y)
