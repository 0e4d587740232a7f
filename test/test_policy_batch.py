"""Policies stepped together (``dream_policy.policy_batch``): each gets the actions it gets stepped alone."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from test_runtime import FakeText, obs, tiny_checkpoint_with

from dream_policy.bac import CacheSchedule, uniform_steps
from dream_policy.checkpoint import save_checkpoint
from dream_policy.data.normalization import Normalizer
from dream_policy.model import DreamVLA, load_model_config
from dream_policy.policy_batch import sample_chunks, stack, step_batch
from dream_policy.runtime import DreamPolicy

SUB_BLOCKS = ("attn", "cross", "ff")

# Batched and one-row matrix products round differently in float32; ~1e-6 on a random tiny network.
ATOL = 1e-4
INSTRUCTIONS = ["open the drawer", "push the red block left", "turn on the led"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint_with(tmp_path_factory.mktemp("ckpt"))


def saved(root, config) -> str:
    torch.manual_seed(0)
    model = DreamVLA(config)
    normalizer = Normalizer(obs_mean=np.zeros(15), obs_std=np.ones(15))
    return save_checkpoint(root, 1, model.state_dict(), config={"model_config": config.to_dict()},
                           normalization=normalizer.to_dict())


@pytest.fixture(scope="module")
def query_checkpoint(tmp_path_factory):  # the shipped checkpoint's kind: an instruction query over patches
    return saved(tmp_path_factory.mktemp("query"), dataclasses.replace(load_model_config("tiny"), lang_query=4))


@pytest.fixture(scope="module")
def streaming_checkpoint(tmp_path_factory):
    return saved(tmp_path_factory.mktemp("stream"), load_model_config("tiny_streaming"))


def run_both(checkpoint, steps: int = 7, **options) -> tuple[list, list, list[DreamPolicy]]:
    """Three siblings stepped together and three lone policies with the same seeds stepped one by one,
    on the same observations (one stream per policy) and instructions (the second changes mid-way)."""
    lead = DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText(), **options)
    lead.seed(10)
    together = [lead, lead.sibling(11), lead.sibling(12)]
    alone = []
    for seed in (10, 11, 12):
        p = DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText(), **options)
        p.seed(seed)
        alone.append(p)
    streams = [np.random.default_rng(k) for k in range(3)]
    batched, single = [], []
    for t in range(steps):
        frames = [obs(rng) for rng in streams]
        instructions = list(INSTRUCTIONS)
        if t >= steps // 2:
            instructions[1] = "close the drawer"
        batched.append(step_batch(together, frames, instructions))
        single.append([p.step(f, i) for p, f, i in zip(alone, frames, instructions, strict=True)])
    return batched, single, together


@pytest.mark.parametrize("options", [{"action_horizon": 1}, {"action_horizon": 3}, {"action_horizon": 2},
                                     {"action_horizon": 1, "history_cache": False},
                                     {"ensemble_decay": 0.5}, {"action_horizon": 1, "gripper_hold": 2}],
                         ids=["every-step", "whole-chunk", "horizon-2", "no-history-cache", "ensembling",
                              "gripper-hold"])
def test_batched_siblings_act_as_lone_policies(checkpoint, options):
    batched, single, _ = run_both(checkpoint, **options)
    for t, (a, b) in enumerate(zip(batched, single, strict=True)):
        np.testing.assert_allclose(np.stack(a), np.stack(b), rtol=0, atol=ATOL, err_msg=f"step {t}")
    rows = np.stack([np.stack(a) for a in batched])  # (steps, policies, 7)
    assert not np.allclose(rows[:, 0], rows[:, 1], atol=1e-3)  # the rows are not one policy repeated


@pytest.mark.parametrize("kv_cache", [True, False], ids=["kv-cache", "window"])
def test_streaming_siblings_act_as_lone_policies(streaming_checkpoint, kv_cache):
    batched, single, _ = run_both(streaming_checkpoint, action_horizon=1, kv_cache=kv_cache)
    np.testing.assert_allclose(np.array(batched), np.array(single), rtol=0, atol=ATOL)


def test_instruction_query_siblings_act_as_lone_policies(query_checkpoint):
    batched, single, _ = run_both(query_checkpoint, action_horizon=1)
    np.testing.assert_allclose(np.array(batched), np.array(single), rtol=0, atol=ATOL)


def test_cached_head_siblings_act_as_lone_policies(checkpoint, tmp_path):
    """Under a BAC schedule the cache holds every row of the batch; each row still gets its own actions."""
    lead = DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText())
    cfg = lead.model.config
    steps = {(b, kind): uniform_steps(cfg.ddim_steps, 3) for b in range(cfg.dit.depth) for kind in SUB_BLOCKS}
    path = tmp_path / "schedule.json"
    CacheSchedule("uniform", cfg.ddim_steps, cfg.dit.depth, cfg.dit.width, steps, budget=3).save(path)
    batched, single, together = run_both(checkpoint, action_horizon=1, cache=str(path))
    assert together[0].schedule is not None and together[0].schedule is together[2].schedule
    np.testing.assert_allclose(np.array(batched), np.array(single), rtol=0, atol=ATOL)


def test_one_network_call_per_step_for_all_policies(checkpoint):
    lead = DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText(), action_horizon=2)
    policies = [lead, lead.sibling(1), lead.sibling(2)]
    calls = {"features": [], "encode_frames": [], "sample_actions": []}
    for name, seen in calls.items():
        real = getattr(lead.model, name)
        setattr(lead.model, name, lambda *a, real=real, seen=seen, **k: seen.append(a[0]) or real(*a, **k))
    rng = np.random.default_rng(0)
    for _ in range(4):
        step_batch(policies, [obs(rng) for _ in policies], INSTRUCTIONS)
    assert len(calls["sample_actions"]) == 2  # a chunk every other step (action_horizon 2)
    assert [c.shape[0] for c in calls["sample_actions"]] == [3, 3]
    assert [b["lang_emb"].shape[0] for b in calls["features"]] == [3, 3]
    assert [x["robot_obs"].shape[:2] for x in calls["encode_frames"]] == [(1, 3), (1, 6)]  # new frames only


def test_a_stalled_sibling_samples_hotter_alone(checkpoint):
    """Each row's noise comes from its own policy: its generator and its stall temperature."""
    lead = DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText(), action_horizon=1, stall_steps=2,
                                       stall_noise=0.0)
    policies = [lead, lead.sibling(1)]
    rng = np.random.default_rng(2)
    still = obs(rng)
    for _ in range(3):
        moving = obs(rng)
        step_batch(policies, [still, moving], INSTRUCTIONS[:2])
    assert [p.temperature() for p in policies] == [0.0, 1.0]
    noise = torch.cat([p.start_noise() for p in policies])
    assert torch.all(noise[0] == 0) and noise[1].abs().sum() > 0


def test_siblings_share_the_network_but_not_the_history(checkpoint):
    lead = DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText())
    lead.step(obs(np.random.default_rng(0)), "x")
    other = lead.sibling(3)
    assert other.model is lead.model and other.schedule is lead.schedule
    assert len(lead._frames) == 1 and len(other._frames) == 0 and other.generator is not lead.generator
    stranger = DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText())
    stranger.observe(obs(np.random.default_rng(1)))
    with pytest.raises(ValueError, match="sibling"):
        sample_chunks([lead, stranger], ["x", "x"])
    with pytest.raises(RuntimeError, match="history"):
        sample_chunks([lead, other], ["x", "x"])
    with pytest.raises(ValueError, match="2 policies, 1 observations"):
        step_batch([lead, other], [obs(np.random.default_rng(1))], ["x", "x"])


def test_stack_concatenates_nested_batches():
    rows = [{"a": torch.zeros(1, 2), "b": {"c": torch.ones(1, 3)}},
            {"a": torch.ones(1, 2), "b": {"c": torch.zeros(1, 3)}}]
    out = stack(rows)
    assert out["a"].shape == (2, 2) and out["b"]["c"].shape == (2, 3) and out["a"][1].sum() == 2


@pytest.mark.slow
def test_eval_runs_checkpoint_chains_in_lockstep(checkpoint, tmp_path):
    """policy=checkpoint batch=2 through the evaluator: five chains in two workers, two slots each, a video
    (real MiniLM, rendered views)."""
    from sim.evaluate import VIDEO_DIR, evaluate, select_chains

    results = evaluate(select_chains(5, None), "checkpoint", {"ckpt": str(checkpoint), "cache": "none"},
                       workers=2, ep_len=3, out_dir=tmp_path, render=True, num_videos=1, batch=2)
    assert [c["index"] for c in results["chains"]] == [0, 1, 2, 3, 4]
    assert all(c["steps"] == [3] for c in results["chains"])  # a random network finishes nothing in 3 steps
    assert results["config"]["batch"] == 2 and results["videos"] == [str(tmp_path / VIDEO_DIR / "chain_0000.mp4")]
