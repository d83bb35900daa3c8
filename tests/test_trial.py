"""The trial engine through its public entry points: `robustsweep run` and `run_trial`."""

import math

import pytest
import torch
from mlflow.tracking import MlflowClient

from robustsweep import metrics as keys
from robustsweep.cli import main
from robustsweep.config import make_trial_config
from robustsweep.data import DeviceBatches, Split, random_crop
from robustsweep.trial import lr_at_epoch, run_trial

from .conftest import TINY_EVAL


def _runs(uri, experiment="robustsweep"):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id]) if exp else []


def test_cli_trains_m1_on_real_mnist_and_logs_one_finished_run(mnist_root, mlflow_uri, capsys):
    code = main(["run", f"data_root={mnist_root}", f"mlflow_tracking_uri={mlflow_uri}", "device=cpu",
                 "subset=4000", "epochs=1", "batch_size=32", "lr=0.05", *TINY_EVAL, "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    client, runs = _runs(mlflow_uri)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    expected = set(keys.final_metric_keys([0.03, 0.15])) | {"train_loss", "train_acc", "test_acc", "lr"}
    assert expected <= set(run.data.metrics)
    # 4000 examples, one epoch (125 steps at lr 0.05) reach ~0.8 here; chance is 0.1. 0.5 is five
    # times chance and leaves room for CPU-to-CPU numeric differences.
    assert run.data.metrics["clean_acc"] >= 0.5
    for e in (0.03, 0.15):
        assert run.data.metrics[keys.attack_key("pgd", "acc", e)] <= run.data.metrics[keys.ATTACKED_CLEAN_ACC]
    assert run.data.metrics[keys.HESSIAN_TOP_EIG] > 0
    assert run.data.params["lr"] == "0.05" and run.data.params["model"] == "m1"
    assert {"git_commit", "torch_version", "device_name"} <= set(run.data.tags)
    assert run.data.tags["outcome"] == "finished"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model.pt", "config.yaml"} <= artifacts
    assert "clean_acc" in out and "hessian_top_eig" in out  # the final table


def test_saved_weights_reproduce_clean_accuracy(mnist_root, mlflow_uri, tmp_path):
    config = make_trial_config({"data_root": str(mnist_root), "mlflow_tracking_uri": mlflow_uri, "device": "cpu",
                                "subset": 1000, "epochs": 1, "test_subset": 300, "attack_subset": 50,
                                "hessian_samples": 50, "pgd_steps": 2, "hessian_iters": 5})
    outcome = run_trial(config)
    client = MlflowClient(mlflow_uri)
    path = client.download_artifacts(outcome.run_id, "model.pt", str(tmp_path))
    from robustsweep.attacks import clean_accuracy
    from robustsweep.data import load_split
    from robustsweep.models import M1

    model = M1()
    model.load_state_dict(torch.load(path))
    test = load_split("mnist", mnist_root, train=False).head(300)
    assert clean_accuracy(model, *test.floats()) == pytest.approx(outcome.metrics["clean_acc"])


def test_same_seed_and_device_give_the_same_numbers(mnist_root, mlflow_uri):
    values = {"data_root": str(mnist_root), "mlflow_tracking_uri": mlflow_uri, "device": "cpu", "subset": 600,
              "epochs": 2, "batch_size": 50, "test_subset": 200, "attack_subset": 50, "hessian_samples": 50,
              "pgd_steps": 2, "hessian_iters": 5}
    a = run_trial(make_trial_config(values))
    b = run_trial(make_trial_config(values))
    assert a.history[-1]["train_loss"] == b.history[-1]["train_loss"]
    assert a.metrics == b.metrics
    c = run_trial(make_trial_config({**values, "seed": 1}))
    assert c.history[-1]["train_loss"] != a.history[-1]["train_loss"]


def test_diverging_trial_is_tagged_and_does_not_crash(mnist_root, mlflow_uri, capsys):
    code = main(["run", f"data_root={mnist_root}", f"mlflow_tracking_uri={mlflow_uri}", "device=cpu",
                 "subset=500", "epochs=3", "lr=1e6", "momentum=0.9", *TINY_EVAL, "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert "diverged" in out
    _, runs = _runs(mlflow_uri)
    (run,) = runs
    assert run.info.status == "FINISHED"
    assert run.data.tags["outcome"] == "diverged"
    assert run.data.metrics["diverged"] == 1.0
    assert run.data.metrics["diverged_epoch"] == 1.0  # stopped right away, not after all 3 epochs
    assert keys.CLEAN_ACC not in run.data.metrics


def test_missing_dataset_offline_is_a_clear_error(tmp_path, mlflow_uri, capsys):
    empty = tmp_path / "nodata"
    code = main(["run", f"data_root={empty}", "download=false", f"mlflow_tracking_uri={mlflow_uri}",
                 "device=cpu", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"The mnist dataset is not in {empty}/MNIST/raw" in err
    assert "ROBUSTSWEEP_DATA_ROOT" in err and "Traceback" not in err
    # the run that had started is marked FAILED with the reason, not left RUNNING
    _, runs = _runs(mlflow_uri)
    assert [r.info.status for r in runs] == ["FAILED"]
    assert "dataset is not in" in runs[0].data.tags["error"]


def test_cifar10_path_trains_vgg11_on_cifar_format_batches(cifar_root, mlflow_uri):
    config = make_trial_config({
        "dataset": "cifar10", "data_root": str(cifar_root), "verify_checksums": False, "download": False,
        "mlflow_tracking_uri": mlflow_uri, "device": "cpu", "epochs": 1, "batch_size": 16, "lr": 0.01,
        "attack_subset": 8, "hessian_samples": 8, "pgd_steps": 2, "hessian_iters": 3, "eval_batch_size": 16})
    outcome = run_trial(config)
    assert outcome.status == "finished"
    assert set(keys.final_metric_keys([0.02])) <= set(outcome.metrics)
    assert all(math.isfinite(v) for v in outcome.metrics.values())


def test_cifar10_checksums_are_verified_by_default(cifar_root, mlflow_uri, capsys):
    code = main(["run", "dataset=cifar10", f"data_root={cifar_root}", "download=false",
                 f"mlflow_tracking_uri={mlflow_uri}", "device=cpu", "--quiet"])
    assert code == 2
    assert "cifar10 dataset is not in" in capsys.readouterr().err


def test_step_schedule_and_ratio():
    mnist = make_trial_config({"schedule": "step", "lr": 0.1}).resolved()
    assert [lr_at_epoch(mnist, e) for e in (0, 9, 10, 19, 20)] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])
    cifar = make_trial_config({"dataset": "cifar10", "schedule": "step", "lr": 0.1}).resolved()
    assert [lr_at_epoch(cifar, e) for e in (0, 59, 60, 89)] == pytest.approx([0.1, 0.1, 0.01, 0.01])
    ratio = make_trial_config({"lr_batch_ratio": 0.005 / 32, "batch_size": 512}).resolved()
    assert lr_at_epoch(ratio, 5) == pytest.approx(0.08)


def test_device_batches_shuffle_flip_and_crop_on_tensors():
    images = torch.arange(4 * 3 * 8 * 8, dtype=torch.uint8).reshape(4, 3, 8, 8)
    split = Split(images, torch.arange(4))
    g = torch.Generator().manual_seed(0)
    batches = list(DeviceBatches(split, 3, g))
    assert [len(y) for _, y in batches] == [3, 1]
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == [0, 1, 2, 3]
    x = torch.rand(6, 3, 8, 8)
    cropped = random_crop(x, 2, torch.Generator().manual_seed(1))
    assert cropped.shape == x.shape
    # each crop is a shifted window of the zero-padded image
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(6):
        assert any(torch.equal(cropped[i], padded[i, :, dy:dy + 8, dx:dx + 8]) for dy in range(5) for dx in range(5))
    flipper = DeviceBatches(Split(images, torch.arange(4)), 4, torch.Generator().manual_seed(0), flip=True)
    flipped = flipper.augment(x)
    assert all(torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(2)) for i in range(6))
