import pytest

from robustsweep.cli import main
from robustsweep.config import TrialConfig, load_trial_config, make_trial_config
from robustsweep.errors import ConfigError


def test_defaults_resolve_to_the_study_settings():
    mnist = TrialConfig().resolved()
    assert (mnist.model, mnist.epochs, mnist.eps, mnist.augment_crop) == ("m1", 30, (0.03, 0.15), 0)
    cifar = TrialConfig(dataset="cifar10", schedule="step").resolved()
    assert (cifar.model, cifar.eps, cifar.augment_crop, cifar.lr_milestones, cifar.lr_gamma) == (
        "vgg11", (0.02,), 4, (60,), 0.1)
    step = TrialConfig(schedule="step").resolved()
    assert (step.lr_step_every, step.lr_gamma) == (10, 0.5)


def test_ratio_sets_the_learning_rate():
    config = TrialConfig(lr_batch_ratio=0.005 / 32, batch_size=256).resolved()
    assert config.effective_lr == pytest.approx(0.04)


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "trial.yaml"
    path.write_text("dataset: mnist\nlr: 0.1\neps: [0.03]\n")
    config = load_trial_config(path, ["batch_size=64", "eps=[0.1, 0.2]", "momentum=0.9"])
    assert (config.lr, config.batch_size, config.eps, config.momentum) == (0.1, 64, (0.1, 0.2), 0.9)


@pytest.mark.parametrize("values, fragment", [
    ({"learning_rate": 0.1}, "Unknown trial setting 'learning_rate'"),
    ({"lr": "fast"}, "lr='fast': expected a number"),
    ({"batch_size": 32.5}, "batch_size=32.5: expected an integer"),
    ({"download": "yes"}, "download='yes': expected true/false"),
    ({"lr": 0}, "lr=0.0: must be a finite number > 0"),
    ({"lr": -0.1}, "lr=-0.1: must be a finite number > 0"),
    ({"batch_size": 0}, "batch_size=0: must be a finite number > 0"),
    ({"dataset": "imagenet"}, "dataset='imagenet': allowed datasets are mnist, cifar10"),
    ({"model": "resnet"}, "model='resnet'"),
    ({"variant": "lion"}, "variant='lion': allowed variants are adam, adamw, asam, sam, sgd, sgdnoise, sgdselective, svrg"),
    ({"dataset": "cifar10", "model": "m1"}, "dataset cifar10 is trained with model vgg11"),
    ({"lr": 0.1, "lr_batch_ratio": 0.001}, "both set"),
    ({"momentum": 1.0}, "momentum=1.0: must be in [0, 1)"),
    ({"eps": [0.03, 2]}, "radii in [0, 1]"),
    ({"lr_milestones": [20, 10]}, "strictly increasing"),
    ({"device": "tpu"}, "device='tpu'"),
])
def test_bad_values_name_the_key(values, fragment):
    with pytest.raises(ConfigError, match=None) as info:
        make_trial_config(values)
    assert fragment in str(info.value)


def test_unknown_key_suggests_the_close_name():
    with pytest.raises(ConfigError, match="Did you mean 'momentum'"):
        make_trial_config({"momentun": 0.9})


def test_cli_config_error_is_one_paragraph_exit_2(tmp_path, capsys):
    code = main(["run", "lr=-1", "device=cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("robustsweep: error: Invalid trial setting lr=-1.0")
    assert "Traceback" not in err


def test_cli_missing_config_file(capsys):
    assert main(["run", "nope.yaml"]) == 2
    assert "Config file nope.yaml does not exist" in capsys.readouterr().err


def test_options_lists_every_setting(capsys):
    assert main(["options"]) == 0
    out = capsys.readouterr().out
    for name in ("lr_batch_ratio", "hessian_samples", "svrg_snapshot_batch", "sb_beta"):
        assert name in out


def test_scientific_notation_reads_as_a_number(tmp_path):
    path = tmp_path / "trial.yaml"
    path.write_text("lr: 1e-3\nhessian_tol: 1e-6\n")
    config = load_trial_config(path, ["weight_decay=5e-4"])
    assert (config.lr, config.hessian_tol, config.weight_decay) == (0.001, 1e-6, 0.0005)


def test_checking_the_study_file_does_not_import_torch():
    """`robustsweep run` starts its MLflow process before torch is imported, so checking a config must not
    import it; the variants' names are declared in config.VARIANT_NAMES for that."""
    import subprocess
    import sys
    from pathlib import Path

    study = Path(__file__).resolve().parents[1] / "sweeps" / "table1.yaml"
    script = ("import sys\nfrom robustsweep.sweep import load_sweep\n"
              f"spec = load_sweep({str(study)!r})\n"
              "from robustsweep.config import load_trial_config\nload_trial_config(None, ['variant=svrg']).resolved()\n"
              "print(len(spec.trials), 'torch' in sys.modules)\n"
              "from robustsweep.config import VARIANT_NAMES\nfrom robustsweep.variants import VARIANTS\n"
              "print(sorted(VARIANTS) == sorted(VARIANT_NAMES))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["160", "False", "True"], out.stderr[-2000:]
