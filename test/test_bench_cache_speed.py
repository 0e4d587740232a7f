"""bench/cache_speed.py's choice of a stored bac schedule (the shipped one) in place of a calibrated one."""

import importlib.util
from pathlib import Path

import pytest
import torch

from dream_policy.bac import CacheSchedule

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "checkpoints" / "tiny_D" / "bac_budget2.json"  # the shipped BAC schedule (off by default)
# budget 2 with a head distilled to run under it (session 23: within 0.1 of uncached at budget 2's speed),
# the checkpoint's default since session 24 (cache=auto picks it up)
DISTILLED = ROOT / "checkpoints" / "tiny_D" / "cache_schedule.json"
# the shipped schedules: budget 2 (head 2.6x, costs avg_seq_len), budget 5 (keeps it, session 22), distilled
SHIPPED_ALL = [SHIPPED, ROOT / "checkpoints" / "tiny_D" / "bac_budget5.json", DISTILLED]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("cache_speed", ROOT / "bench" / "cache_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _shape(schedule: CacheSchedule) -> tuple[int, int, int]:
    return schedule.depth, schedule.width, schedule.num_steps


@pytest.mark.parametrize("path", SHIPPED_ALL, ids=lambda p: p.stem)
def test_the_shipped_schedules_load_at_their_budgets(bench, path):
    shipped = CacheSchedule.load(path)
    loaded = bench.load_bac_schedule(path, int(shipped.budget), shipped.reuse, *_shape(shipped))
    assert loaded.steps == shipped.steps and loaded.mode == "bac"


def test_another_budget_or_reuse_is_refused_by_name(bench):
    shipped = CacheSchedule.load(SHIPPED)
    with pytest.raises(ValueError, match="--budget"):
        bench.load_bac_schedule(SHIPPED, int(shipped.budget) + 1, shipped.reuse, *_shape(shipped))
    other = "increment" if shipped.reuse == "regate" else "regate"
    with pytest.raises(ValueError, match="--reuse"):
        bench.load_bac_schedule(SHIPPED, int(shipped.budget), other, *_shape(shipped))


def test_a_schedule_of_another_mode_or_model_is_refused(bench, tmp_path):
    shipped = CacheSchedule.load(SHIPPED)
    uniform = CacheSchedule("uniform", shipped.num_steps, shipped.depth, shipped.width, dict(shipped.steps),
                            shipped.budget, reuse=shipped.reuse)
    path = uniform.save(tmp_path / "uniform.json")
    with pytest.raises(ValueError, match="uniform schedule"):
        bench.load_bac_schedule(path, int(shipped.budget), shipped.reuse, *_shape(shipped))
    with pytest.raises(ValueError, match="depth"):
        bench.load_bac_schedule(SHIPPED, int(shipped.budget), shipped.reuse, shipped.depth + 2, shipped.width,
                                shipped.num_steps)


def test_a_stored_search_schedule_loads_at_its_own_budget_and_other_modes_are_refused(bench, tmp_path):
    shipped = CacheSchedule.load(SHIPPED)
    search = CacheSchedule("search", shipped.num_steps, shipped.depth, shipped.width, dict(shipped.steps), 2.8,
                           reuse=shipped.reuse)
    path = search.save(tmp_path / "search.json")
    loaded = bench.load_search_schedule(path, shipped.reuse, *_shape(shipped))
    assert loaded.mode == "search" and loaded.budget == 2.8 and loaded.steps == shipped.steps
    other = "increment" if shipped.reuse == "regate" else "regate"
    with pytest.raises(ValueError, match="--search-schedule needs a search schedule"):
        bench.load_search_schedule(path, other, *_shape(shipped))
    with pytest.raises(ValueError, match="bac schedule"):
        bench.load_search_schedule(SHIPPED, shipped.reuse, *_shape(shipped))
    recorded = ROOT / "bench" / "schedules" / "tiny_D_search_rollouts.json"  # session 21's, in RESULTS
    assert bench.load_search_schedule(recorded, shipped.reuse, *_shape(shipped)).budget == 2.786


def test_the_shipped_checkpoint_runs_its_distilled_schedule_by_default_and_its_schedules_fit_it():
    """Session 21: the training-free BAC schedule cost ~0.2 avg_seq_len in closed loop, so it ships beside
    the weights (``cache=PATH`` turns it on), as does session 22's budget-5 schedule. Session 24: the
    budget-2 schedule with its distilled head (within 0.1 of uncached over 1,050 paired rollouts) is the
    ``cache_schedule.json`` that ``cache=auto`` picks up; ``cache=none`` runs the checkpoint's own head."""
    from test_runtime import FakeText

    from dream_policy.runtime import DreamPolicy

    ckpt = SHIPPED.parent
    default = DreamPolicy.from_checkpoint(ckpt, text_encoder=FakeText()).schedule
    assert default is not None and default.head == "bac_budget2_distilled_head.safetensors"
    assert default.steps == CacheSchedule.load(SHIPPED).steps and default.budget == 2
    assert DreamPolicy.from_checkpoint(ckpt, text_encoder=FakeText(), cache="none").schedule is None
    described = DreamPolicy.from_checkpoint(ckpt, text_encoder=FakeText()).describe()  # what eval records
    assert described["cache"] == str(ckpt / "cache_schedule.json") and described["cache_budget"] == 2
    assert described["cache_head"] == str(ckpt / "bac_budget2_distilled_head.safetensors")
    assert DreamPolicy.from_checkpoint(ckpt, text_encoder=FakeText(), cache="none").describe() == {"cache": "none"}
    for path in SHIPPED_ALL:
        cached = DreamPolicy.from_checkpoint(ckpt, text_encoder=FakeText(), cache=str(path))
        assert cached.schedule is not None and cached.schedule.steps == CacheSchedule.load(path).steps


def test_the_distilled_schedule_runs_its_own_head_and_leaves_the_checkpoints():
    from test_runtime import FakeText

    from dream_policy.runtime import DreamPolicy

    ckpt = SHIPPED.parent
    distilled = CacheSchedule.load(DISTILLED)
    assert distilled.steps == CacheSchedule.load(SHIPPED).steps and distilled.head_path().is_file()
    own = DreamPolicy.from_checkpoint(ckpt, text_encoder=FakeText(), cache="none").model.dit.state_dict()
    policy = DreamPolicy.from_checkpoint(ckpt, text_encoder=FakeText(), cache=str(DISTILLED))
    swapped = policy.model.dit.state_dict()
    assert any(not torch.equal(swapped[k], own[k]) for k in own)
    info = distilled.info["distill"]
    assert info["error_after"]["first_action"] < info["error_before"]["first_action"]
    policy.set_schedule(None)
    assert all(torch.equal(v, own[k]) for k, v in policy.model.dit.state_dict().items())


def test_the_bench_runs_the_checkpoints_own_schedule_by_default(bench, tmp_path):
    ckpt = SHIPPED.parent
    assert bench.shipped_setting(ckpt, "auto", None) == (ckpt / "cache_schedule.json", 2)
    assert bench.shipped_setting(ckpt, "auto", 2) == (ckpt / "cache_schedule.json", 2)
    assert bench.shipped_setting(ckpt, "auto", 5) == (None, 5)  # another budget: calibrated in the bench
    assert bench.shipped_setting(ckpt, "none", None) == (None, 3)
    assert bench.shipped_setting(tmp_path, "auto", None) == (None, 3)  # a checkpoint without a schedule
    assert bench.shipped_setting(ckpt, str(SHIPPED_ALL[1]), None) == (SHIPPED_ALL[1], 5)
    with pytest.raises(ValueError, match="--bac-schedule .*missing.json: no such file"):
        bench.shipped_setting(ckpt, str(tmp_path / "missing.json"), None)
