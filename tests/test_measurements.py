"""The measurement functions against exact math: the Hessian's top eigenvalue and the attacks."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from robustsweep.attacks import attack_accuracy, build_attack, clean_accuracy
from robustsweep.hessian import top_eigenvalue, top_eigenvalue_with_iterations
from robustsweep.lanczos import top_eigenvalue_lanczos


def _exact_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The full Hessian of the mean cross-entropy in float64, by autograd on the flat parameters."""
    names = [n for n, p in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()

    def loss(theta):
        params = {n: t.reshape(s) for n, t, s in zip(names, theta.split(sizes), shapes)}
        return F.cross_entropy(functional_call(model.double(), params, (x.double(),)), y)

    h = torch.autograd.functional.hessian(loss, flat)
    model.float()
    return h


def _exact_hessian_eigenvalues(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.linalg.eigvalsh(_exact_hessian(model, x, y))


def _data(n=40, d=5, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, k, (n,), generator=g)


METHODS = pytest.mark.parametrize("method", ["lanczos", "power"])


def _matrix_with_spectrum(values: torch.Tensor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(values), len(values), generator=g, dtype=torch.float64))
    return q @ torch.diag(values) @ q.T


def test_lanczos_meets_its_error_bound_on_a_known_spectrum_in_few_products():
    # Top eigenvalue 1.0 with a gap of only 1% to a bulk that reaches down to -2: power iteration
    # converges like 0.99^k (hundreds of products); Lanczos needs a few dozen.
    values = torch.cat([torch.linspace(-2.0, 0.99, 299, dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64)])
    a = _matrix_with_spectrum(values)
    start = torch.randn(300, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for tol in (1e-3, 1e-6):
        result = top_eigenvalue_lanczos(lambda v: a @ v, start, tol=tol, max_iter=300)
        assert abs(result.eigenvalue - 1.0) <= tol * 1.0  # the residual bound holds
        assert result.residual <= tol * abs(result.eigenvalue)
        assert result.iterations < 100


def test_lanczos_is_exact_once_the_krylov_space_is_exhausted():
    values = torch.tensor([-3.0, 0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    a = _matrix_with_spectrum(values, seed=2)
    result = top_eigenvalue_lanczos(lambda v: a @ v, torch.ones(5, dtype=torch.float64), tol=0.0, max_iter=50)
    assert result.iterations <= 5
    assert result.eigenvalue == pytest.approx(4.0, abs=1e-10)


@METHODS
def test_top_eigenvalue_matches_exact_hessian_of_softmax_regression(method):
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    x, y = _data()
    exact = _exact_hessian_eigenvalues(model, x, y)
    # Softmax regression is convex: the top eigenvalue is also the largest in magnitude.
    assert exact.min() > -1e-8
    got = top_eigenvalue(model, x, y, max_iter=1000, tol=1e-8, method=method)
    assert got == pytest.approx(float(exact.max()), rel=1e-4 if method == "lanczos" else 0.01)


@METHODS
def test_top_eigenvalue_matches_exact_hessian_of_a_small_mlp(method):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    x, y = _data(seed=1)
    exact = _exact_hessian_eigenvalues(model, x, y)
    # Power iteration converges to the eigenvalue of largest magnitude; here that is the top one.
    assert exact.max() > abs(exact.min())
    result = top_eigenvalue_with_iterations(model, x, y, max_iter=1000, tol=1e-8, method=method)
    assert result.eigenvalue == pytest.approx(float(exact.max()), rel=1e-4 if method == "lanczos" else 0.01)
    assert 1 < result.iterations <= 1000


def test_lanczos_top_eigenvalue_of_a_nonconvex_loss_is_the_largest_not_the_largest_in_magnitude():
    # An untrained MLP's Hessian can have a negative eigenvalue larger in magnitude than the top one:
    # Lanczos must still return the top (algebraically largest) eigenvalue, "the largest eigenvalue".
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)  # large weights: saturated tanh units give negative curvature
    x, y = _data()
    exact = _exact_hessian_eigenvalues(model, x, y)
    assert abs(exact.min()) > exact.max() > 0  # here: about -0.58 and 0.52
    got = top_eigenvalue(model, x, y, max_iter=200, tol=1e-8)
    assert got == pytest.approx(float(exact.max()), rel=1e-4)


def test_lanczos_chunks_add_up_to_the_mean_loss_hessian_and_beat_power_iteration():
    # Chunking the retained graphs (the trial passes eval_batch_size) must not change the operator;
    # and on a real conv net Lanczos needs far fewer Hessian-vector products than PyHessian's power
    # iteration for at least the same accuracy.
    from robustsweep.models import M1

    torch.manual_seed(0)
    model = M1()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(60, 1, 28, 28, generator=g), torch.randint(0, 10, (60,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(30):  # a little training, so the top eigenvalue is positive and dominant
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    whole = top_eigenvalue_with_iterations(model, x, y, tol=1e-6, max_iter=60)
    chunked = top_eigenvalue_with_iterations(model, x, y, tol=1e-6, max_iter=60, chunk_size=7)
    assert chunked.eigenvalue == pytest.approx(whole.eigenvalue, rel=1e-5)
    lanczos = top_eigenvalue_with_iterations(model, x, y, tol=1e-3)
    assert lanczos.eigenvalue == pytest.approx(whole.eigenvalue, rel=1e-3)
    # Power iteration's stop rule (relative change) needs a much tighter tol to be as accurate.
    power = top_eigenvalue_with_iterations(model, x, y, method="power", tol=1e-6, max_iter=300)
    assert power.eigenvalue == pytest.approx(whole.eigenvalue, rel=1e-3)
    assert lanczos.iterations < power.iterations


@METHODS
def test_top_eigenvalue_restores_mode_clears_grads_and_skips_unused_parameters(method):
    torch.manual_seed(0)

    class WithUnused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(5, 3)
            self.unused = nn.Linear(5, 3)

        def forward(self, x):
            return self.used(x)

    model = WithUnused().train()
    x, y = _data()
    exact = _exact_hessian_eigenvalues(model.used, x, y)
    got = top_eigenvalue(model, x, y, max_iter=500, tol=1e-8, method=method)
    assert got == pytest.approx(float(exact.max()), rel=0.01)
    assert model.training
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


@METHODS
def test_top_eigenvalue_is_seeded_and_leaves_the_global_rng_alone(method):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    x, y = _data()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = top_eigenvalue(model, x, y, max_iter=3, tol=0.0, seed=7, method=method)
    assert torch.equal(before, torch.get_rng_state())
    assert a == top_eigenvalue(model, x, y, max_iter=3, tol=0.0, seed=7, method=method)
    assert a != top_eigenvalue(model, x, y, max_iter=3, tol=0.0, seed=8, method=method)


class _TinyImageModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))

    def forward(self, x):
        return self.net(x)


def _images(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_fgsm_equals_a_hand_computed_sign_gradient_step():
    torch.manual_seed(0)
    model = _TinyImageModel()
    x, y = _images()
    eps = 0.1
    xr = x.clone().requires_grad_(True)
    grad, = torch.autograd.grad(F.cross_entropy(model(xr), y), xr)
    expected = (x + eps * grad.sign()).clamp(0, 1)
    adversarial = build_attack(model, "fgsm", eps)(x, y)
    assert torch.allclose(adversarial, expected, atol=1e-7)
    hand_accuracy = float((model(expected).argmax(1) == y).float().mean())
    assert attack_accuracy(model, x, y, "fgsm", eps) == pytest.approx(hand_accuracy)


def _trained_tiny_model():
    torch.manual_seed(0)
    model = _TinyImageModel()
    x, _ = _images(256)
    teacher = torch.randn(16, 3, generator=torch.Generator().manual_seed(1))
    y = (x.flatten(1) - 0.5).matmul(teacher).argmax(1)  # labels a linear model can learn
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(200):  # clean accuracy well above chance (1/3)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model, x, y


def test_pgd_breaks_a_trained_model_beats_fgsm_and_stays_in_the_ball():
    model, x, y = _trained_tiny_model()
    eps = 0.1
    clean = clean_accuracy(model, x, y)
    fgsm = attack_accuracy(model, x, y, "fgsm", eps)
    pgd = attack_accuracy(model, x, y, "pgd", eps, steps=10)
    assert clean >= 0.6
    # An attack that returned its input would score `clean`. PGD-10 from a random start must take
    # at least a third of the correct answers away, and (it includes a sign-gradient step of the
    # same size among its iterates) leave at most FGSM's accuracy, with 2 examples of slack.
    assert pgd <= clean * 2 / 3
    assert pgd <= fgsm + 2 / len(y)
    adversarial = build_attack(model, "pgd", eps, steps=10)(x, y)
    assert (adversarial - x).abs().max() <= eps + 1e-6
    assert adversarial.min() >= 0 and adversarial.max() <= 1


def test_pgd_step_size_is_madrys_rule_unless_given():
    model = _TinyImageModel()
    for eps, steps in ((0.03, 20), (0.15, 7)):
        attack = build_attack(model, "pgd", eps, steps=steps)
        assert attack.alpha == pytest.approx(2.5 * eps / steps) and attack.steps == steps and attack.eps == eps
        assert attack.random_start
    assert build_attack(model, "pgd", 0.1, steps=5, step_size=0.01).alpha == 0.01


def test_pgd_equals_hand_computed_projected_sign_gradient_steps():
    model, x, y = _trained_tiny_model()
    eps, alpha, steps = 0.1, 0.03, 3
    attack = build_attack(model, "pgd", eps, steps=steps, step_size=alpha, random_start=False)
    expected = x.clone()
    for _ in range(steps):
        xr = expected.clone().requires_grad_(True)
        grad, = torch.autograd.grad(F.cross_entropy(model(xr), y), xr)
        expected = (x + (expected + alpha * grad.sign() - x).clamp(-eps, eps)).clamp(0, 1).detach()
    assert torch.allclose(attack(x, y), expected, atol=1e-6)


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_eps_zero_gives_clean_accuracy(attack):
    torch.manual_seed(0)
    model = _TinyImageModel()
    x, y = _images()
    assert attack_accuracy(model, x, y, attack, 0.0, batch_size=16) == clean_accuracy(model, x, y)


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_attack_accuracy_does_not_depend_on_batch_size_or_memory_format(attack):
    # eval_batch_size defaults per device and trials keep M1 channels-last: neither may move a result.
    from robustsweep.models import M1

    torch.manual_seed(0)
    model = M1()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(90, 1, 28, 28, generator=g), torch.randint(0, 10, (90,), generator=g)
    reference = attack_accuracy(model, x, y, attack, 0.1, steps=3, batch_size=90)
    assert attack_accuracy(model, x, y, attack, 0.1, steps=3, batch_size=13) == reference
    model = model.to(memory_format=torch.channels_last)
    assert attack_accuracy(model, x, y, attack, 0.1, steps=3, batch_size=32) == reference


def test_attack_accuracy_is_a_fraction_and_restores_training_mode():
    model = _TinyImageModel().train()
    x, y = _images()
    acc = attack_accuracy(model, x, y, "pgd", 0.3, steps=3)
    assert 0.0 <= acc <= 1.0
    assert model.training
    with pytest.raises(ValueError, match="unknown attack"):
        attack_accuracy(model, x, y, "cw", 0.1)
