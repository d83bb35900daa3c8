"""The trial engine through its public entry points: `robustsweep run` and `run_trial`."""

import math

import pytest
import torch
from mlflow.tracking import MlflowClient

from robustsweep import metrics as keys
from robustsweep.cli import main
from robustsweep.config import make_trial_config
from robustsweep.data import DeviceBatches, Split
from robustsweep.trial import run_trial

from .conftest import TINY_EVAL, trial_runs_only


def _runs(uri, experiment="robustsweep"):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client, trial_runs_only(client.search_runs([exp.experiment_id])) if exp else []


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
    # MLflow 3's UI opens the experiment on its runs, whose Dataset column names the data
    assert client.get_experiment_by_name("robustsweep").tags["mlflow.experimentKind"] == "custom_model_development"
    inputs = {i.dataset.name: i for i in client.get_run(run.info.run_id).inputs.dataset_inputs}
    assert set(inputs) == {"mnist-train-4000", "mnist-test-500"}
    assert [t.value for t in inputs["mnist-train-4000"].tags] == ["training"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model.pt", "config.yaml"} <= artifacts
    assert "clean_acc" in out and "hessian_top_eig" in out  # the final table


def test_saved_weights_reproduce_every_final_metric_and_ratios_are_attack_over_attacked_clean(
        mnist_root, mlflow_uri, tmp_path):
    config = make_trial_config({"data_root": str(mnist_root), "mlflow_tracking_uri": mlflow_uri, "device": "cpu",
                                "subset": 1000, "epochs": 1, "test_subset": 300, "attack_subset": 50,
                                "hessian_samples": 50, "pgd_steps": 3, "hessian_iters": 5,
                                "eval_batch_size": 40})
    outcome = run_trial(config)
    m = outcome.metrics
    client = MlflowClient(mlflow_uri)
    logged = client.get_run(outcome.run_id).data.metrics
    assert {k: logged[k] for k in m} == m  # MLflow holds what the trial measured
    path = client.download_artifacts(outcome.run_id, "model.pt", str(tmp_path))
    from robustsweep.attacks import attack_accuracy, clean_accuracy
    from robustsweep.data import load_split
    from robustsweep.hessian import hessian_sample, top_eigenvalue_with_iterations
    from robustsweep.models import M1

    model = M1().to(memory_format=torch.channels_last)  # as the trial holds it on a CPU
    model.load_state_dict(torch.load(path, weights_only=True))
    test = load_split("mnist", mnist_root, train=False)
    assert clean_accuracy(model, *test.head(300).floats()) == m["clean_acc"]
    x, y = test.head(50).floats()
    assert clean_accuracy(model, x, y) == m[keys.ATTACKED_CLEAN_ACC]
    for eps in (0.03, 0.15):
        fgsm = attack_accuracy(model, x, y, "fgsm", eps, batch_size=40, seed=0)
        pgd = attack_accuracy(model, x, y, "pgd", eps, batch_size=40, seed=0, steps=3)
        assert (m[keys.attack_key("fgsm", "acc", eps)], m[keys.attack_key("pgd", "acc", eps)]) == (fgsm, pgd)
        # the ratio divides by clean accuracy on the attacked examples, not on the whole test set
        assert m[keys.attack_key("fgsm", "ratio", eps)] == pytest.approx(fgsm / m[keys.ATTACKED_CLEAN_ACC])
        assert m[keys.attack_key("pgd", "ratio", eps)] == pytest.approx(pgd / m[keys.ATTACKED_CLEAN_ACC])
    assert m["clean_acc"] != m[keys.ATTACKED_CLEAN_ACC]  # so the check above tells the two apart
    train = load_split("mnist", mnist_root, train=True).head(1000)
    xh, yh = train.floats(hessian_sample(1000, 50, seed=0))
    eig = top_eigenvalue_with_iterations(model, xh, yh, max_iter=5, tol=1e-3, seed=0, chunk_size=40)
    assert (eig.eigenvalue, float(eig.iterations)) == (m[keys.HESSIAN_TOP_EIG], m[keys.HESSIAN_ITERS])


def test_same_seed_and_device_give_the_same_numbers(mnist_root, mlflow_uri):
    values = {"data_root": str(mnist_root), "mlflow_tracking_uri": mlflow_uri, "device": "cpu", "subset": 600,
              "epochs": 2, "batch_size": 50, "test_subset": 200, "attack_subset": 50, "hessian_samples": 50,
              "pgd_steps": 2, "hessian_iters": 5}
    a = run_trial(make_trial_config(values))
    b = run_trial(make_trial_config(values))
    assert a.history[-1]["train_loss"] == b.history[-1]["train_loss"]

    def measured(metrics):  # all but the wall-clock seconds of each phase
        return {k: v for k, v in metrics.items() if not keys.is_timing(k)}
    assert measured(a.metrics) == measured(b.metrics) and set(a.metrics) == set(b.metrics)
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
    # the data is read before anything is logged: no experiment, no FAILED run to clean up
    client, runs = _runs(mlflow_uri)
    assert runs == [] and client.get_experiment_by_name("robustsweep") is None


def test_cifar10_path_trains_vgg11_on_cifar_format_batches(cifar_root, mlflow_uri):
    config = make_trial_config({
        "dataset": "cifar10", "data_root": str(cifar_root), "verify_checksums": False, "download": False,
        "mlflow_tracking_uri": mlflow_uri, "device": "cpu", "epochs": 1, "batch_size": 16, "lr": 0.01,
        "attack_subset": 8, "hessian_samples": 8, "pgd_steps": 2, "hessian_iters": 3, "eval_batch_size": 16})
    outcome = run_trial(config)
    # a few dozen synthetic images and 1-2 epochs leave VGG-11 near chance: "collapsed" is the right
    # outcome then; either way every measurement ran
    assert outcome.status in ("finished", "collapsed")
    assert set(keys.final_metric_keys([0.02])) <= set(outcome.metrics)
    assert all(math.isfinite(v) for v in outcome.metrics.values())


def test_cifar10_checksums_are_verified_by_default(cifar_root, mlflow_uri, capsys):
    code = main(["run", "dataset=cifar10", f"data_root={cifar_root}", "download=false",
                 f"mlflow_tracking_uri={mlflow_uri}", "device=cpu", "--quiet"])
    assert code == 2
    assert "cifar10 dataset is not in" in capsys.readouterr().err


def test_step_schedule_and_ratio():
    mnist = make_trial_config({"schedule": "step", "lr": 0.1}).resolved()
    assert [mnist.lr_at_epoch(e) for e in (0, 9, 10, 19, 20)] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])
    cifar = make_trial_config({"dataset": "cifar10", "schedule": "step", "lr": 0.1}).resolved()
    assert [cifar.lr_at_epoch(e) for e in (0, 59, 60, 89)] == pytest.approx([0.1, 0.1, 0.01, 0.01])
    ratio = make_trial_config({"lr_batch_ratio": 0.005 / 32, "batch_size": 512}).resolved()
    assert ratio.lr_at_epoch(5) == pytest.approx(0.08)


def _tiny_values(mnist_root, mlflow_uri, **settings):
    return {"data_root": str(mnist_root), "mlflow_tracking_uri": mlflow_uri, "device": "cpu", "subset": 300,
            "batch_size": 50, "test_subset": 100, "attack_subset": 20, "hessian_samples": 20, "pgd_steps": 1,
            "hessian_iters": 2, "eps": [0.1], **settings}


@pytest.mark.parametrize("variant", ["sgd", "adam"])
def test_step_schedule_sets_the_optimizers_learning_rate_every_epoch(variant, mnist_root, mlflow_uri):
    used = []

    def on_epoch_end(epoch, metrics, state):
        used.append((state()["variant"]["optimizer"]["param_groups"][0]["lr"], metrics["lr"]))

    config = make_trial_config(_tiny_values(mnist_root, mlflow_uri, variant=variant, lr=0.08, schedule="step",
                                            lr_step_every=1, lr_gamma=0.5, epochs=3))
    run_trial(config, on_epoch_end=on_epoch_end)
    # the rate the optimizer actually stepped with, and the one logged, halve every epoch
    assert used == [(0.08, 0.08), (0.04, 0.04), (0.02, 0.02)]


def _identified_images(n=1000, size=8, seed=0):
    """Random, non-zero images: each one and each of its flips and padded crops can be told apart."""
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randint(1, 256, (n, 1, size, size), generator=g, dtype=torch.uint8), torch.arange(n))


def _flip_and_offset(out: torch.Tensor, original: torch.Tensor, padding: int) -> tuple[bool, int, int]:
    for flipped in (False, True):
        source = original.flip(2) if flipped else original
        padded = torch.nn.functional.pad(source, (padding,) * 4)
        h, w = original.shape[1:]
        for dy in range(2 * padding + 1):
            for dx in range(2 * padding + 1):
                if torch.equal(padded[:, dy:dy + h, dx:dx + w], out):
                    return flipped, dy, dx
    raise AssertionError("the batch holds an image that is no flip or crop of its original")


def test_device_batches_shuffle_and_every_example_is_seen_once():
    split = _identified_images(10)
    batches = list(DeviceBatches(split, 3, torch.Generator().manual_seed(0)))
    assert [len(y) for _, y in batches] == [3, 3, 3, 1]
    order = torch.cat([y for _, y in batches]).tolist()
    assert sorted(order) == list(range(10)) and order != list(range(10))
    for x, y in batches:  # without augmentation a batch is exactly its examples, in [0, 1]
        assert torch.equal(x, split.floats(y)[0])


def test_flips_are_half_the_examples_and_crops_cover_every_offset():
    split = _identified_images(1000)
    padding = 2
    batches = DeviceBatches(split, 250, torch.Generator().manual_seed(0), flip=True, crop_padding=padding)
    flips, offsets = [], []
    for x, y in batches:
        for out, index in zip(x, y):
            flipped, dy, dx = _flip_and_offset(out, split.floats(index)[0], padding)
            flips.append(flipped)
            offsets.append((dy, dx))
    # 1000 fair coin flips: sd 0.016, so 0.45..0.55 is over three sd either side
    assert 0.45 <= sum(flips) / len(flips) <= 0.55
    counts = torch.tensor([offsets.count((dy, dx)) for dy in range(5) for dx in range(5)], dtype=torch.float)
    assert (counts > 0).all()  # all 25 offsets seen (each is expected 40 times)
    assert counts.max() < 80  # and none dominates, as a centre-biased crop would


def test_augmented_batches_repeat_for_a_seed_and_differ_across_seeds():
    split = _identified_images(200)

    def epoch(seed):
        batches = DeviceBatches(split, 50, torch.Generator().manual_seed(seed), flip=True, crop_padding=2)
        return [(x.clone(), y.clone()) for x, y in batches]

    a, b, c = epoch(0), epoch(0), epoch(1)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not torch.equal(a[0][1], c[0][1])  # another order
    same_order = {int(i): x for (xs, ys) in a for x, i in zip(xs, ys)}
    other = {int(i): x for (xs, ys) in c for x, i in zip(xs, ys)}
    differing = sum(not torch.equal(same_order[i], other[i]) for i in range(200))
    assert differing > 150  # and other flips and crops of the same examples


def test_trial_wires_the_flip_setting_into_training(mnist_root, mlflow_uri):
    flipped = run_trial(make_trial_config(_tiny_values(mnist_root, mlflow_uri, epochs=1, augment_flip=True)))
    plain = run_trial(make_trial_config(_tiny_values(mnist_root, mlflow_uri, epochs=1, augment_flip=False)))
    assert flipped.history[0]["train_loss"] != plain.history[0]["train_loss"]


def test_experiments_made_before_the_kind_tag_get_it(mlflow_uri):
    from robustsweep.tracking import get_or_create_experiment

    client = MlflowClient(mlflow_uri)
    old = client.create_experiment("old")  # as MLflow makes it: the UI would open its GenAI overview
    assert get_or_create_experiment(client, "old", mlflow_uri) == old
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"


def test_cuda_numerics_are_exact_float32_unless_fast_math_and_cpu_is_left_alone():
    # The logic of the GPU path, checked without a GPU: the flags are process-wide torch settings.
    from robustsweep.trial import prepare_device

    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    try:
        torch.backends.cudnn.allow_tf32 = True  # PyTorch's default for convolutions
        prepare_device(make_trial_config({}), torch.device("cpu"))
        assert torch.backends.cudnn.allow_tf32 is True
        prepare_device(make_trial_config({}), torch.device("cuda"))
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                torch.backends.cudnn.benchmark) == (False, False, False)
        prepare_device(make_trial_config({"cuda_fast_math": True}), torch.device("cuda:0"))
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                torch.backends.cudnn.benchmark) == (True, True, True)
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = flags


def test_eval_batch_and_memory_format_default_per_device():
    from robustsweep.config import EVAL_BATCH_CPU, EVAL_BATCH_CUDA
    from robustsweep.trial import build_trial_model

    config = make_trial_config({})
    assert (config.eval_batch_for("cpu"), config.eval_batch_for("cuda")) == (EVAL_BATCH_CPU, EVAL_BATCH_CUDA)
    assert make_trial_config({"eval_batch_size": 77}).eval_batch_for("cuda") == 77
    assert (config.channels_last_for("cpu"), config.channels_last_for("cuda")) == (True, False)
    assert make_trial_config({"channels_last": True}).channels_last_for("cuda")
    assert not make_trial_config({"channels_last": False}).channels_last_for("cpu")
    conv = build_trial_model(config.resolved(), torch.device("cpu")).features[3].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    plain = build_trial_model(make_trial_config({"channels_last": False}).resolved(),
                              torch.device("cpu")).features[3].weight
    assert plain.is_contiguous()
    assert config.hessian_method == "lanczos" and not config.cuda_fast_math


def test_phase_clock_synchronizes_a_gpu_before_reading_the_time(monkeypatch):
    # CUDA kernels run asynchronously: a phase's seconds must wait for them (checked without a GPU).
    from robustsweep.trial import _PhaseClock

    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
    out: dict[str, float] = {}
    for device in (torch.device("cpu"), torch.device("cuda:0")):
        with _PhaseClock(device, out)("pgd") as seconds:
            pass
        assert seconds[0] >= 0
    assert synced == [torch.device("cuda:0")]
    with _PhaseClock(torch.device("cpu"), out)("pgd"):
        pass
    assert set(out) == {"seconds_pgd"}  # one key per phase, the eps of a phase added up


def test_opt_in_measurements_log_every_key_and_autoattack_is_no_weaker_than_pgd(mnist_root, mlflow_uri):
    config = make_trial_config(_tiny_values(mnist_root, mlflow_uri, subset=2000, epochs=1, batch_size=32,
                                            lr=0.05, attack_subset=60, pgd_steps=10, eps=[0.1, 0.2],
                                            attacks=["fgsm", "pgd", "autoattack"], autoattack_subset=40,
                                            autoattack_steps=10, autoattack_targets=3,
                                            curvature=["top_eig", "top_k", "trace"], hessian_top_k=3,
                                            hessian_iters=30, hessian_trace_probes=5))
    outcome = run_trial(config)
    client, (run,) = _runs(mlflow_uri)
    metrics = run.data.metrics
    expected = set(keys.trial_metric_keys(config.resolved()))
    assert {"autoattack_acc_eps0.1", "autoattack_ratio_eps0.2", "hessian_trace", "hessian_trace_se",
            "hessian_eig_1", "hessian_eig_3", "seconds_autoattack", "seconds_hessian_trace"} <= expected
    assert expected <= set(metrics) and expected <= set(outcome.metrics)
    assert metrics["hessian_eig_1"] >= metrics["hessian_eig_2"] >= metrics["hessian_eig_3"]
    assert metrics["hessian_eig_1"] == pytest.approx(metrics[keys.HESSIAN_TOP_EIG], rel=1e-2)
    assert metrics["hessian_trace_se"] > 0
    for e in (0.1, 0.2):
        # AutoAttack ran on the first 40 of the 60 attacked images; PGD's accuracy on those same 40 is logged
        # beside it, and AutoAttack is no weaker there
        aa, pgd_there = metrics[f"autoattack_acc_eps{e:g}"], metrics[f"autoattack_pgd_acc_eps{e:g}"]
        assert aa <= pgd_there
        assert metrics[f"autoattack_ratio_eps{e:g}"] == pytest.approx(aa / metrics[keys.AUTOATTACK_CLEAN_ACC])


def test_stop_train_acc_stops_at_the_first_epoch_that_reaches_it_and_a_resume_trains_no_further(
        mnist_root, mlflow_uri):
    states = []
    config = make_trial_config(_tiny_values(mnist_root, mlflow_uri, epochs=6, lr=0.1, batch_size=20,
                                            stop_train_acc=0.5))
    outcome = run_trial(config, on_epoch_end=lambda epoch, metrics, state: states.append(state()))
    accuracies = [h["train_acc"] for h in outcome.history]
    stopped = next(i for i, a in enumerate(accuracies, 1) if a >= 0.5)
    assert stopped < 6 and outcome.epochs_run == stopped == len(accuracies)
    assert outcome.metrics[keys.STOPPED_EPOCH] == stopped and outcome.metrics[keys.REACHED_STOP_TRAIN_ACC] == 1.0
    client, (run,) = _runs(mlflow_uri)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "clean_acc")] == [stopped]
    assert max(m.step for m in client.get_metric_history(run.info.run_id, "train_loss")) == stopped
    # a retry from the checkpoint of the stopping epoch (killed during its measurements) goes straight to them
    client.set_terminated(run.info.run_id, "FAILED")
    again = run_trial(config, resume_state=states[-1])
    assert again.run_id == run.info.run_id and again.epochs_run == stopped and len(again.history) == stopped
    # the cap: a target never reached trains every epoch and says so
    capped = run_trial(make_trial_config(_tiny_values(mnist_root, mlflow_uri, epochs=2, stop_train_acc=1.0)))
    assert capped.epochs_run == 2 and capped.metrics[keys.REACHED_STOP_TRAIN_ACC] == 0.0


def test_a_closed_output_pipe_does_not_end_the_trial(mnist_root, mlflow_uri, tmp_path):
    # `robustsweep run ... | head -3`: the reader leaves after three lines; the trial must still finish
    import subprocess
    import sys

    command = (f"{sys.executable} -c 'from robustsweep.cli import console_main; console_main()' run "
               f"data_root={mnist_root} mlflow_tracking_uri={mlflow_uri} device=cpu subset=500 epochs=3 "
               f"batch_size=50 test_subset=100 attack_subset=20 hessian_samples=20 pgd_steps=1 hessian_iters=2 "
               f"eps=[0.1] --quiet | head -1")
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300)
    assert len(result.stdout.splitlines()) == 1
    client, runs = _runs(mlflow_uri)
    assert [r.info.status for r in runs] == ["FINISHED"], result.stderr[-2000:]
    assert "BrokenPipeError" not in result.stderr
