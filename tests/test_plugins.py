"""Users' plugins: a package outside the repository adds a variant (with its own setting) and an attack.

The plugin is "installed" the way pip installs one: a package folder and a ``.dist-info`` folder
with its entry points, on ``sys.path`` (in-process) or ``PYTHONPATH`` (a `robustsweep launch` on Ray).
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from robustsweep import plugins
from robustsweep.cli import main
from robustsweep.config import make_trial_config
from robustsweep.errors import UserError
from robustsweep.sweep import load_sweep
from robustsweep.trial import run_trial

from .conftest import trial_runs_only

PLUGIN = '''
"""A sign-SGD variant with a step scale of its own, and a random-noise attack."""
import torch

from robustsweep.datasets import Dataset
from robustsweep.datasets.mnist import read_mnist
from robustsweep.measurements import Attack
from robustsweep.models.base import Normalize
from robustsweep.plugin_settings import Setting
from robustsweep.variants import Variant


class SignSGD(Variant):
    name = "signsgd"
    settings = {"signsgd_scale": Setting(float, 1.0, "Multiplies the sign of each gradient entry.")}

    def train_step(self, x, y):
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.model(x)
        losses = self.loss_fn(logits, y)
        losses.mean().backward()
        with torch.no_grad():
            for p in self.model.parameters():
                p.grad.sign_().mul_(self.config.setting("signsgd_scale"))
        self.optimizer.step()
        self.counters["grad_evals"] += len(y)
        return self.result(logits, losses, y)


def read_parity(root, train, download, verify_checksums=True):
    images, labels = read_mnist(root, train, download)
    return images, labels % 2


PARITY = Dataset(name="parity", num_classes=2, image_shape=(1, 28, 28), mean=(0.1307,), std=(0.3081,),
                 read=read_parity, folder="MNIST/raw", default_model="tinymlp", epochs=2, eps=(0.1,))


class TinyMLP(torch.nn.Module):
    input_shape = (1, 28, 28)

    def __init__(self, num_classes=10, mean=(0.0,), std=(1.0,)):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 32), torch.nn.ReLU(),
                                       torch.nn.Linear(32, num_classes))

    def forward(self, x):
        return self.net(self.normalize(x))


class UniformNoise(Attack):
    name = "noise"
    label = "uniform noise"
    phase = "noise"

    def accuracy(self, ctx, x, y, eps):
        g = torch.Generator().manual_seed(ctx.config.seed)
        noisy = (x + eps * (2 * torch.rand(x.shape, generator=g) - 1)).clamp(0, 1)
        with torch.no_grad():
            return float((ctx.model.eval()(noisy).argmax(1) == y).float().mean())
'''


def _install(folder: Path, package: str, entry_points: str, code: str = PLUGIN) -> Path:
    (folder / package).mkdir(parents=True)
    (folder / package / "__init__.py").write_text(code)
    info = folder / f"{package}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package.replace('_', '-')}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    return folder


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    folder = _install(tmp_path / "site", "my_robust_plugin", """
        [robustsweep.variants]
        signsgd = my_robust_plugin:SignSGD
        [robustsweep.measurements]
        noise = my_robust_plugin:UniformNoise
        [robustsweep.datasets]
        parity = my_robust_plugin:PARITY
        [robustsweep.models]
        tinymlp = my_robust_plugin:TinyMLP
        """)
    monkeypatch.syspath_prepend(str(folder))
    plugins.refresh()
    yield folder
    sys.modules.pop("my_robust_plugin", None)
    monkeypatch.undo()
    plugins.refresh()


def _tiny(mnist_root, mlflow_uri, **settings):
    return {"data_root": str(mnist_root), "mlflow_tracking_uri": mlflow_uri, "device": "cpu", "subset": 300,
            "batch_size": 50, "test_subset": 100, "attack_subset": 40, "hessian_samples": 20, "pgd_steps": 1,
            "hessian_iters": 2, "eps": [0.1], "epochs": 1, **settings}


def test_a_plugin_variant_with_its_own_setting_and_a_plugin_attack_run_in_process(plugin_path, mnist_root,
                                                                                 mlflow_uri):
    config = make_trial_config(_tiny(mnist_root, mlflow_uri, variant="signsgd", lr=0.001, signsgd_scale=0.5,
                                     attacks=["fgsm", "noise"]))
    assert config.setting("signsgd_scale") == 0.5
    outcome = run_trial(config)
    run = MlflowClient(mlflow_uri).get_run(outcome.run_id)
    assert run.data.params["variant"] == "signsgd" and run.data.params["signsgd_scale"] == "0.5"
    assert {"noise_acc_eps0.1", "noise_ratio_eps0.1", "seconds_noise", "fgsm_acc_eps0.1"} <= set(run.data.metrics)
    # typed and validated like a built-in setting; its default is filled in and logged
    with pytest.raises(UserError, match=r"signsgd_scale='big': expected a number"):
        make_trial_config(_tiny(mnist_root, mlflow_uri, variant="signsgd", signsgd_scale="big"))
    assert make_trial_config({"variant": "signsgd"}).resolved().to_dict()["signsgd_scale"] == 1.0


def test_plugin_settings_are_part_of_trial_ids_only_when_not_default_and_listed_by_options(plugin_path, tmp_path,
                                                                                          capsys):
    sweep = tmp_path / "p.yaml"
    sweep.write_text("name: p\nbase: {variant: signsgd, attacks: [noise]}\ngroups:\n"
                     "  - name: g\n    grid: {signsgd_scale: [1.0, 0.5]}\n")
    ids = [t.trial_id for t in load_sweep(sweep).trials]
    assert len(set(ids)) == 2
    plain = tmp_path / "q.yaml"
    plain.write_text("name: q\nbase: {variant: signsgd, attacks: [noise]}\ngroups:\n  - name: g\n")
    assert load_sweep(plain).trials[0].trial_id == ids[0]  # the default, 1.0, is not in the id
    assert main(["options"]) == 0
    out = capsys.readouterr().out
    assert "plugin variant 'signsgd': my_robust_plugin:SignSGD" in out
    assert "signsgd_scale (default 1.0; setting of plugin variant signsgd)" in out
    assert "attacks fgsm, pgd, autoattack, noise" in out


def test_a_broken_or_clashing_plugin_is_one_paragraph_naming_its_package(tmp_path, monkeypatch, mlflow_uri):
    folder = _install(tmp_path / "site", "broken_plugin", """
        [robustsweep.variants]
        wobbly = broken_plugin:Wobbly
        """, code="raise RuntimeError('no GPU driver')\n")
    monkeypatch.syspath_prepend(str(folder))
    plugins.refresh()
    try:
        with pytest.raises(UserError) as error:
            make_trial_config({"variant": "wobbly"}).resolved()
        message = str(error.value)
        assert "package broken-plugin 0.1" in message and "RuntimeError: no GPU driver" in message
        _install(tmp_path / "site2", "clash_plugin", """
            [robustsweep.variants]
            sgd = clash_plugin:X
            """, code="X = 1\n")
        monkeypatch.syspath_prepend(str(tmp_path / "site2"))
        plugins.refresh()
        with pytest.raises(UserError, match=r"'sgd' .*package clash-plugin 0.1.* name of robustsweep's built-in"):
            make_trial_config({"variant": "wobbly"})
        assert main(["run", "variant=wobbly", f"mlflow_tracking_uri={mlflow_uri}"]) == 2
    finally:
        monkeypatch.undo()
        plugins.refresh()


def test_a_plugin_dataset_and_model_train_with_their_own_defaults_classes_and_chance(plugin_path, mnist_root,
                                                                                   mlflow_uri):
    config = make_trial_config({**_tiny(mnist_root, mlflow_uri), "dataset": "parity", "eps": None, "epochs": None})
    resolved = config.resolved()
    assert (resolved.model, resolved.epochs, resolved.eps) == ("tinymlp", 2, (0.1,))
    outcome = run_trial(config)
    run = MlflowClient(mlflow_uri).get_run(outcome.run_id)
    assert run.data.params["dataset"] == "parity" and run.data.params["model"] == "tinymlp"
    assert run.data.metrics["clean_acc"] > 0.5 + 0.05  # above the two-class chance, so not collapsed
    assert run.data.tags["outcome"] == "finished"
    # a model built for other images is refused before training, in one paragraph
    with pytest.raises(UserError, match=r"model='vgg11': it takes \(3, 32, 32\) images, dataset parity has"):
        run_trial(make_trial_config({**_tiny(mnist_root, mlflow_uri), "dataset": "parity", "model": "vgg11"}))


@pytest.mark.slow
def test_a_plugin_variant_runs_under_ray_through_robustsweep_launch(plugin_path, tmp_path, mnist_root):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    sweep = tmp_path / "ray.yaml"
    sweep.write_text(f"""
name: plugin-ray
mlflow: {{tracking_uri: "{uri}"}}
max_concurrent: 2
base: {{data_root: "{mnist_root}", dataset: mnist, device: cpu, subset: 200, test_subset: 100, attack_subset: 20,
        pgd_steps: 1, hessian_samples: 20, hessian_iters: 2, eps: [0.1], epochs: 1, variant: signsgd, lr: 0.001,
        attacks: [noise]}}
groups:
  - name: g
    grid: {{signsgd_scale: [1.0, 0.5]}}
""")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_path), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "robustsweep.cli", "launch", str(sweep), "--verbose", "0"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = MlflowClient(uri)
    runs = trial_runs_only(client.search_runs([client.get_experiment_by_name("plugin-ray").experiment_id]))
    assert len(runs) == 2 and all(r.info.status == "FINISHED" and r.data.tags["mode"] == "ray" for r in runs)
    assert sorted(r.data.params["signsgd_scale"] for r in runs) == ["0.5", "1.0"]
    assert all("noise_acc_eps0.1" in r.data.metrics for r in runs)
