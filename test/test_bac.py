"""BAC: the scheduler's dynamic programme against brute force, the Bubbling Union, the cached DiT
forward against the uncached one, schedule files and mismatches."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from test_model import random_batch

from dream_policy.bac import (
    CacheSchedule,
    adaptive_steps,
    brute_force_steps,
    bubbling_union,
    greedy_prune,
    schedule_score,
    segment_scores,
    uniform_steps,
)
from dream_policy.calibrate_cache import (
    block_statistics,
    build_schedule,
    record,
    search_schedule,
    similarity_matrix,
    sub_block_flops,
    variation,
)
from dream_policy.dit_cache import BlockRecorder, CachedBlocks, HookedDiT
from dream_policy.model import DreamVLA, load_model_config


def random_similarity(k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (k, k))


@pytest.mark.parametrize("k,budget,seed", [(k, m, s) for k in (1, 2, 4, 6, 8) for m in range(1, k + 1) for s in (0, 1)])
def test_dynamic_programme_equals_brute_force(k, budget, seed):
    S = random_similarity(k, seed)
    steps = adaptive_steps(S, budget)
    assert len(steps) == budget and steps[0] == 0 and steps == sorted(set(steps))
    _, best = brute_force_steps(S, budget)
    assert schedule_score(S, steps) == pytest.approx(best, abs=1e-9)


def test_segment_scores_by_hand():
    S = np.arange(16, dtype=float).reshape(4, 4)
    phi = segment_scores(S)
    assert phi[0, 0] == 0 and phi[0, 3] == S[0, 1] + S[0, 2] + S[0, 3] and phi[2, 3] == S[2, 3]
    assert schedule_score(S, [0, 2]) == phi[0, 1] + phi[2, 3]


def test_scheduler_updates_where_similarity_drops():
    # Outputs stay alike within steps 0-3 and within 4-9 but change at step 4: the 2-update schedule is [0, 4].
    groups = np.array([0] * 4 + [1] * 6)
    S = np.where(groups[:, None] == groups[None, :], 1.0, 0.1)
    assert adaptive_steps(S, 2) == [0, 4]


def test_uniform_steps():
    assert uniform_steps(10, 1) == [0]
    assert uniform_steps(10, 5) == [0, 2, 4, 6, 8]
    assert uniform_steps(10, 4) == [0, 2, 5, 7]
    assert uniform_steps(10, 10) == list(range(10))
    with pytest.raises(ValueError, match="budget=11"):
        uniform_steps(10, 11)


def test_bubbling_union_adds_exactly_the_downstream_ff_steps():
    keys = [(b, kind) for b in range(3) for kind in ("attn", "cross", "ff")]
    rng = np.random.default_rng(0)
    steps = {key: sorted({0, *rng.choice(np.arange(1, 10), 2, replace=False).tolist()}) for key in keys}
    var = {key: float(v) for key, v in zip(keys, rng.permutation(len(keys)))}
    top = sorted(keys, key=lambda key: -var[key])[:3]
    out = bubbling_union(steps, var, 3)
    order = {key: i for i, key in enumerate(keys)}
    for key in keys:
        if key in top:
            added = set().union(*(steps[k] for k in keys if k[1] == "ff" and order[k] > order[key]))
            assert set(out[key]) == set(steps[key]) | added
        else:
            assert out[key] == steps[key]
    assert bubbling_union(steps, var, 0) == steps
    last_ff = (2, "ff")  # nothing is downstream of the last feed-forward block
    assert bubbling_union(steps, {k: (1.0 if k == last_ff else 0.0) for k in keys}, 1)[last_ff] == steps[last_ff]


def test_statistics_of_recorded_outputs():
    x = torch.randn(5, 4, 3, 8)
    S = similarity_matrix(x)
    assert S.shape == (5, 5) and np.allclose(np.diag(S), 1.0) and np.allclose(S, S.T)
    const = x[:1].expand(5, -1, -1, -1)
    assert np.allclose(similarity_matrix(const), 1.0) and variation(const) == 0.0
    pairs = [(t, u) for t, u in itertools.product(range(5), repeat=2)]
    expected = sum((x[t] - x[u]).abs().mean().item() for t, u in pairs) / 25
    assert variation(x) == pytest.approx(expected, rel=1e-6)


def additive_error(weights):
    """An error that is the sum of the weights of the dropped (block, step) updates."""
    def error(steps):
        return sum(w for (key, step), w in weights.items() if step not in steps[key])
    return error


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("rounds_hint", [1, 4, 100])
def test_greedy_prune_finds_the_optimum_of_an_additive_error(seed, rounds_hint):
    # With unit costs and an additive error the best schedule drops the cheapest updates: greedy finds it,
    # in bulk rounds too, and never drops step 0.
    rng = np.random.default_rng(seed)
    blocks = [(0, "attn"), (0, "ff"), (1, "attn")]
    weights = {(key, step): float(rng.uniform(0.1, 1)) for key in blocks for step in range(1, 6)}
    seen = []
    steps = greedy_prune(blocks, 6, target=8, error=additive_error(weights), rounds_hint=rounds_hint,
                         progress=lambda steps, err: seen.append(sum(map(len, steps.values()))))
    assert sum(len(v) for v in steps.values()) == 8 and all(v[0] == 0 for v in steps.values())
    best_drop = sorted(weights.values())[:10]
    assert additive_error(weights)(steps) == pytest.approx(sum(best_drop))
    assert seen[-1] == 8 and seen == sorted(seen, reverse=True)
    # rounds_hint 1 drops all 10 in one round, 100 one per round, 4 a quarter of what is left per round
    assert len(seen) == 1 if rounds_hint == 1 else len(seen) == 10 if rounds_hint == 100 else 1 < len(seen) < 10


def test_greedy_prune_weighs_error_against_cost():
    # Dropping an update of the expensive block saves 4x the cost for 2x the error: it goes first.
    blocks = [(0, "attn"), (0, "ff")]
    weights = {((0, "attn"), 1): 1.0, ((0, "ff"), 1): 2.0}
    steps = greedy_prune(blocks, 2, target=6.5, error=additive_error(weights), cost={(0, "attn"): 1, (0, "ff"): 4})
    assert steps == {(0, "attn"): [0, 1], (0, "ff"): [0]}
    with pytest.raises(ValueError, match="below the cost of updating every block once"):
        greedy_prune(blocks, 2, target=4, error=additive_error(weights), cost={(0, "attn"): 1, (0, "ff"): 4})


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    config = load_model_config("tiny")
    model = DreamVLA(config).eval()
    for p in model.dit.parameters():  # adaLN-Zero starts at identity; give the head non-trivial weights
        p.data.add_(torch.randn_like(p) * 0.05)
    return model


def schedule_for(model, mode, stats, budget=4, n=2, reuse="regate"):
    cfg = model.config
    return build_schedule(mode, stats, cfg.ddim_steps, budget, n, cfg.dit.depth, cfg.dit.width, reuse)


@pytest.fixture(scope="module")
def stats(tiny_model):
    return block_statistics(record(tiny_model, [random_batch(tiny_model.config, b=3)]))


@pytest.mark.parametrize("reuse", ["regate", "increment"])
def test_every_step_schedule_reproduces_uncached_actions_bit_for_bit(tiny_model, stats, reuse):
    batch = random_batch(tiny_model.config, b=2)
    exact = tiny_model.predict_chunk(batch, generator=torch.Generator().manual_seed(7))
    hook = CachedBlocks(schedule_for(tiny_model, "none", stats, reuse=reuse))
    cached = tiny_model.predict_chunk(batch, generator=torch.Generator().manual_seed(7), block_hook=hook)
    assert torch.equal(exact, cached)
    assert hook.reused == 0 and hook.computed == 2 * 10 * 3 * tiny_model.config.dit.depth  # 2 guidance branches


@pytest.mark.parametrize("mode", ["uniform", "adaptive", "bac"])
@pytest.mark.parametrize("reuse", ["regate", "increment"])
def test_cached_modes_reuse_and_stay_close(tiny_model, stats, mode, reuse):
    schedule = schedule_for(tiny_model, mode, stats, reuse=reuse)
    batch = random_batch(tiny_model.config, b=2)
    exact = tiny_model.predict_chunk(batch, generator=torch.Generator().manual_seed(7))
    hook = CachedBlocks(schedule)
    cached = tiny_model.predict_chunk(batch, generator=torch.Generator().manual_seed(7), block_hook=hook)
    total = 2 * 10 * 3 * tiny_model.config.dit.depth
    assert hook.computed == round(2 * schedule.fraction() * 10 * len(schedule.steps)) and hook.computed < total
    assert hook.computed + hook.reused == total
    assert not torch.equal(exact, cached)  # (closeness is measured on the trained checkpoint: bench/cache_speed.py)
    if mode != "bac":
        assert all(len(v) == 4 for v in schedule.steps.values())


def per_branch_sample(model, cond, hook, seed):
    """The reference: the hooked DiT called once per guidance branch and step (each branch cached apart)."""
    hooked = HookedDiT(model.dit, hook)
    cfg = model.config
    shape = (cond.shape[0], cfg.chunk, cfg.action_dim)
    generator = torch.Generator().manual_seed(seed)
    return model.schedule.ddim_sample(lambda x, t, c: hooked(x, t, c), shape, cond, steps=cfg.ddim_steps,
                                      guidance=cfg.guidance, on_step=hook.start_step, generator=generator,
                                      clip_sample=cfg.clip_sample, dtype=cond.dtype)


@pytest.mark.parametrize("mode", ["none", "uniform", "bac"])
@pytest.mark.parametrize("reuse", ["regate", "increment"])
def test_batched_branches_cache_like_separate_calls(tiny_model, stats, mode, reuse):
    """Both guidance branches in one DiT call, one cache entry holding both: the same actions (up to
    rounding) and the same counts as one call and one cache entry per branch. Compared in float64: in
    float32 a batched and a per-branch matmul round differently (~1e-5 after ten cached steps, and by
    CPU), which would hide a real mismatch of that size."""
    schedule = schedule_for(tiny_model, mode, stats, budget=3, reuse=reuse)
    model = copy.deepcopy(tiny_model).double()
    with torch.no_grad():
        cond = tiny_model.features(random_batch(tiny_model.config, b=2))["action"].double()
    batched, separate = CachedBlocks(schedule), CachedBlocks(schedule)
    out = model.sample_actions(cond, torch.Generator().manual_seed(4), batched)
    reference = per_branch_sample(model, cond, separate, seed=4)
    assert out.dtype == torch.float64
    assert torch.allclose(out, reference, rtol=0, atol=1e-10), (out - reference).abs().max()
    assert (batched.computed, batched.reused) == (separate.computed, separate.reused)
    assert {branches for branches, _, _ in batched.cache} == {(0, 1)}
    assert {branches for branches, _, _ in separate.cache} == {(0,), (1,)}


def test_regate_reuses_the_ungated_output_times_the_current_gate(tiny_model, stats):
    """reuse="regate" caches each sub-block's output before its gate (gate * ungated = increment); at the
    same schedule it evaluates exactly as much as reuse="increment" and differs from it only by what a
    reused step adds (see the forward-path test below for the value)."""
    regate, increment = (CachedBlocks(schedule_for(tiny_model, "uniform", stats, reuse=r))
                         for r in ("regate", "increment"))
    assert regate.regate and not increment.regate
    cond = tiny_model.features(random_batch(tiny_model.config, b=2))["action"]
    a = tiny_model.sample_actions(cond, torch.Generator().manual_seed(3), regate)
    b = tiny_model.sample_actions(cond, torch.Generator().manual_seed(3), increment)
    assert not torch.allclose(a, b, atol=1e-4)
    assert (regate.computed, regate.reused) == (increment.computed, increment.reused)
    dit = tiny_model.dit
    sub = dit.blocks[1].ff
    c = dit.time_embed(torch.tensor([90, 40]))
    x = torch.randn(2, tiny_model.config.chunk, tiny_model.config.dit.width)
    memory = dit.cond_in(cond) + dit.cond_pos
    with torch.no_grad():
        assert torch.equal(sub.gate(c) * sub.ungated(x, c, memory), sub.increment(x, c, memory))
        assert not torch.allclose(sub.gate(c[:1]), sub.gate(c[1:]), atol=1e-4)  # the gate follows t


def test_regated_reuse_in_the_forward_path(tiny_model):
    """DiT.forward with a regate hook: computing hooks are bit-identical, and a replayed ungated output is
    multiplied by the gate of the timestep being run."""
    dit = tiny_model.dit
    cfg = tiny_model.config
    x = torch.randn(2, cfg.chunk, cfg.action_dim)
    cond = torch.randn(2, cfg.dit.cond_tokens, cfg.dit.cond_dim)
    t1, t2 = torch.tensor([80, 80]), torch.tensor([20, 20])
    stored: dict = {}

    class Record:
        regate = True

        def __call__(self, block, kind, compute):
            stored[block, kind] = compute()
            return stored[block, kind]

    class Replay:
        regate = True

        def __call__(self, block, kind, compute):
            return stored[block, kind]

    class ReplayGatedByHand:  # what regating means, spelled out with the increment protocol
        def __call__(self, block, kind, compute):
            sub = getattr(dit.blocks[block], kind)
            return sub.gate(dit.time_embed(t2)) * stored[block, kind]

    with torch.no_grad():
        assert torch.equal(dit(x, t1, cond, block_hook=Record()), dit(x, t1, cond))
        replayed = dit(x, t2, cond, block_hook=Replay())
        assert torch.allclose(replayed, dit(x, t2, cond, block_hook=ReplayGatedByHand()), atol=1e-6)
        assert not torch.allclose(replayed, dit(x, t2, cond), atol=1e-4)


def test_recorder_sees_every_step_and_branch(tiny_model):
    recorder = BlockRecorder()
    tiny_model.predict_chunk(random_batch(tiny_model.config, b=2), block_hook=recorder)
    trajectories = recorder.trajectories()
    assert len(trajectories) == 3 * tiny_model.config.dit.depth
    assert all(x.shape[:2] == (10, 4) for x in trajectories.values())  # 10 steps, 2 samples x 2 branches
    assert {branch for branch, _, _ in recorder.outputs} == {0, 1}


def test_recorder_splits_batched_branches_like_separate_calls(tiny_model):
    cond = tiny_model.features(random_batch(tiny_model.config, b=2))["action"]
    batched, separate = BlockRecorder(), BlockRecorder()
    tiny_model.sample_actions(cond, torch.Generator().manual_seed(4), batched)
    per_branch_sample(tiny_model, cond, separate, seed=4)
    assert batched.outputs.keys() == separate.outputs.keys()
    for key, ours in batched.trajectories().items():
        assert torch.allclose(ours, separate.trajectories()[key], rtol=0, atol=1e-5)


def test_schedule_file_roundtrip_and_mismatch(tmp_path, tiny_model, stats):
    schedule = schedule_for(tiny_model, "bac", stats)
    loaded = CacheSchedule.load(schedule.save(tmp_path / "s.json"))
    assert loaded.steps == schedule.steps and loaded.mode == "bac" and loaded.budget == 4
    assert loaded.reuse == "regate"
    old = schedule.to_dict()
    del old["reuse"]  # written before regated reuse existed: the increments are reused as they were
    assert CacheSchedule.from_dict(old).reuse == "increment"
    with pytest.raises(ValueError, match="reuse 'gated' is not one of"):
        CacheSchedule("bac", 10, 4, 128, {(0, "attn"): [0, 2]}, reuse="gated")
    cfg = tiny_model.config
    loaded.check_matches(cfg.dit.depth, cfg.dit.width, cfg.ddim_steps)
    with pytest.raises(ValueError, match="depth 4 != model's 6.*calibrate-cache"):
        loaded.check_matches(6, cfg.dit.width, cfg.ddim_steps)
    with pytest.raises(ValueError, match="denoising steps 10 != model's 20"):
        loaded.check_matches(cfg.dit.depth, cfg.dit.width, 20)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not a valid cache schedule"):
        CacheSchedule.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="start at 0"):
        CacheSchedule("bac", 10, 4, 128, {(0, "attn"): [1, 2]})


def test_search_schedule_stays_in_budget_and_beats_uniform(tiny_model, stats):
    batches = [random_batch(tiny_model.config, b=4)]
    costs = sub_block_flops(tiny_model, tiny_model.features(batches[0])["action"])
    kinds = {kind: {c for (_, k), c in costs.items() if k == kind} for kind in ("attn", "cross", "ff")}
    assert all(len(c) == 1 for c in kinds.values())  # equal blocks cost the same
    assert min(kinds["ff"]) > min(kinds["attn"]) > min(kinds["cross"]) > 0
    schedule = search_schedule(tiny_model, batches, budget=3, seed=0, show_progress=False)
    assert schedule.mode == "search" and schedule.budget == 3
    assert schedule.info["played_actions"] == (tiny_model.config.action_horizon or tiny_model.config.chunk)
    spent = sum(costs[key] * len(v) for key, v in schedule.steps.items())
    assert spent <= 3 * sum(costs.values()) + 1e-6 and schedule.info["flops_fraction"] <= 0.3 + 1e-4
    assert all(v[0] == 0 for v in schedule.steps.values())
    uniform = schedule_for(tiny_model, "uniform", stats, budget=3)
    played = schedule.info["played_actions"]

    def err(s):
        cond = tiny_model.features(batches[0])["action"]
        exact = tiny_model.sample_actions(cond, torch.Generator().manual_seed(0))
        cached = tiny_model.sample_actions(cond, torch.Generator().manual_seed(0), CachedBlocks(s))
        return (cached - exact)[:, :played].abs().mean().item()

    assert err(schedule) == pytest.approx(schedule.info["played_error"], rel=1e-5)
    assert err(schedule) < err(uniform)
    loaded = CacheSchedule.from_dict(schedule.to_dict())
    assert loaded.mode == "search" and loaded.steps == schedule.steps


def test_search_takes_conditions_and_averages_over_noise_seeds(tiny_model):
    """Conditions (as recorded in closed loop) work in place of window batches, and ``noise_seeds=2``
    scores a schedule by its error averaged over two noise draws."""
    batch = random_batch(tiny_model.config, b=4)
    cond = tiny_model.features(batch)["action"]
    from_windows = search_schedule(tiny_model, [batch], budget=3, seed=0, show_progress=False)
    from_cond = search_schedule(tiny_model, list(cond.split(2)), budget=3, seed=0, show_progress=False)
    assert from_cond.steps == from_windows.steps
    two = search_schedule(tiny_model, [cond], budget=3, seed=0, show_progress=False, noise_seeds=2)
    played = two.info["played_actions"]

    def err(s, seed):
        exact = tiny_model.sample_actions(cond, torch.Generator().manual_seed(seed))
        cached = tiny_model.sample_actions(cond, torch.Generator().manual_seed(seed), CachedBlocks(s))
        return (cached - exact)[:, :played].abs().mean().item()

    assert two.info["noise_seeds"] == 2
    assert two.info["played_error"] == pytest.approx((err(two, 0) + err(two, 1)) / 2, rel=1e-5)
    assert two.info["flops_fraction"] <= 0.3 + 1e-4
    with pytest.raises(ValueError, match="noise_seeds=0"):
        search_schedule(tiny_model, [cond], budget=3, noise_seeds=0, show_progress=False)
