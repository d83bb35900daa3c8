"""What goes into and comes out of Ray's saved state: readable checks of it, and a picklable callback."""

import builtins
import pickle

from robustsweep.launch import _ray_state_problem
from robustsweep.progress import ray_progress_callback


def test_the_searchers_pickled_state_is_whole_or_reported_cut_short(tmp_path):
    # Tune names it .json but writes a pickle: read as JSON, every resume set a sound state aside
    state = tmp_path / "basic-variant-state-2026-12-01_00-00-00.json"
    state.write_bytes(pickle.dumps({"_iterators": [1, 2, 3]}, protocol=5))
    assert _ray_state_problem(str(tmp_path)) is None
    state.write_bytes(state.read_bytes()[:-5])
    assert "not a whole pickle" in _ray_state_problem(str(tmp_path))
    state.write_bytes(b"")
    assert "(ValueError: empty, 0 bytes)" in _ray_state_problem(str(tmp_path))


def test_the_progress_callback_pickles_when_rays_tqdm_has_replaced_print(monkeypatch):
    from types import SimpleNamespace as Trial

    import ray.cloudpickle

    printed = []
    monkeypatch.setattr(builtins, "print", lambda *a, **k: printed.append(a))  # as ray.experimental.tqdm_ray does
    again = ray.cloudpickle.loads(ray.cloudpickle.dumps(ray_progress_callback(3)))
    ending = Trial(status="RUNNING", last_result={"trial_seconds": 60.0})
    again.on_trial_complete(0, [ending], ending)  # and prints through the print of the moment
    assert printed[0][0].startswith("robustsweep: 1/3 trials done; about 2 min left"), printed
