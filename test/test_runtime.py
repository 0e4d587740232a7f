"""DreamPolicy: a checkpoint written as ``dream-policy train`` writes it, restored and stepped
with play-table observations (CALVIN's ``model.step`` contract)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from dream_policy.checkpoint import save_checkpoint
from dream_policy.data.normalization import Normalizer, clip_actions
from dream_policy.model import DreamVLA, load_model_config
from dream_policy.runtime import DreamPolicy, ensemble_action, held_gripper, make_checkpoint_policy, stalled


class FakeText:
    """A 384-d stand-in for MiniLM (which takes seconds to load)."""

    dim = 384

    def encode(self, sentences):
        return torch.stack([torch.full((384,), float(len(s) % 7) / 7) for s in sentences])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    config = load_model_config("tiny")
    model = DreamVLA(config)
    normalizer = Normalizer(obs_mean=np.zeros(15), obs_std=np.ones(15))
    root = tmp_path_factory.mktemp("ckpt")
    return save_checkpoint(root, 1, model.state_dict(), config={"model_config": config.to_dict()},
                           normalization=normalizer.to_dict())


def obs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"rgb_static": rng.integers(0, 255, (200, 200, 3), dtype=np.uint8),
            "rgb_gripper": rng.integers(0, 255, (84, 84, 3), dtype=np.uint8),
            "robot_obs": rng.normal(size=15)}


def test_step_gives_a_calvin_action(checkpoint):
    policy = DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText())
    rng = np.random.default_rng(0)
    for _ in range(policy.history_len + 2):  # the history fills, then rolls
        action = policy.step(obs(rng), "open the drawer")
        assert action.shape == (7,) and np.all(np.abs(action) <= 1) and action[6] in (-1.0, 1.0)
    assert len(policy._frames) == policy.history_len
    assert policy.predict_chunk(obs(rng), "open the drawer").shape == (policy.model.config.chunk, 7)


def test_a_run_folder_loads_its_latest_checkpoint(checkpoint):
    """``ckpt=`` may name the run (or its ``latest`` pointer) instead of the step folder."""
    first = obs(np.random.default_rng(1))
    actions = []
    for path in (checkpoint, checkpoint.parent, checkpoint.parent / "latest"):
        policy = DreamPolicy.from_checkpoint(path, text_encoder=FakeText())
        policy.seed(5)
        actions.append(policy.step(first, "open the drawer"))
    assert all(np.array_equal(actions[0], a) for a in actions[1:])


def test_same_seed_same_actions_and_reset_forgets(checkpoint):
    a = DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText())
    b = DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText())
    first = obs(np.random.default_rng(1))
    a.step(obs(np.random.default_rng(2)), "x")
    a.reset()
    a.seed(3)
    b.seed(3)
    assert np.array_equal(a.step(first, "push the block"), b.step(first, "push the block"))


@pytest.mark.parametrize("horizon", [1, 2, 3])
def test_step_plays_action_horizon_actions_per_chunk(checkpoint, horizon):
    policy = DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText(), action_horizon=horizon)
    chunks = []
    real = policy.sample_chunk
    policy.sample_chunk = lambda instruction, noise=None: chunks.append(real(instruction, noise)) or chunks[-1]
    rng = np.random.default_rng(4)
    actions = [policy.step(obs(rng), "open the drawer") for _ in range(6)]
    assert len(chunks) == 6 // horizon
    expected = [a for chunk in chunks for a in chunk[:horizon]]
    assert all(np.array_equal(a, e) for a, e in zip(actions, expected, strict=True))
    assert len(policy._frames) == policy.history_len  # every observation entered the history


def test_new_instruction_or_reset_drops_queued_actions(checkpoint):
    policy = DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText(), action_horizon=3)
    calls = []
    real = policy.sample_chunk
    policy.sample_chunk = lambda instruction, noise=None: calls.append(instruction) or real(instruction, noise)
    rng = np.random.default_rng(5)
    policy.step(obs(rng), "open the drawer")
    policy.step(obs(rng), "close the drawer")
    policy.reset()
    policy.step(obs(rng), "close the drawer")
    assert calls == ["open the drawer", "close the drawer", "close the drawer"]
    with pytest.raises(ValueError, match="action_horizon=4"):
        DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText(), action_horizon=4)


def test_history_cache_gives_the_actions_of_full_recomputation(checkpoint):
    cached = DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText(), action_horizon=1)
    full = DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText(), action_horizon=1, history_cache=False)
    assert cached.history_cache and not full.history_cache
    encoded = []
    real = cached.model.encode_frames
    cached.model.encode_frames = lambda obs: encoded.append(obs["robot_obs"].shape[1]) or real(obs)
    rng = np.random.default_rng(6)
    for i in range(9):  # the window fills, rolls, is reset
        if i == 6:
            cached.reset(), full.reset()
        o = obs(rng)
        cached.seed(i), full.seed(i)
        np.testing.assert_allclose(cached.step(o, "open the drawer"), full.step(o, "open the drawer"), atol=1e-5)
    assert encoded == [1] * 9  # each frame encoded once, whatever the window length


def test_an_instruction_query_model_acts_the_same_with_and_without_the_history_cache(tmp_path):
    """lang_query reads the cached frames' patch tokens with the current instruction: the per-frame cache
    must give full recomputation's actions, also right after the instruction changes."""
    torch.manual_seed(0)
    config = dataclasses.replace(load_model_config("tiny"), lang_query=4)
    model = DreamVLA(config)
    with torch.no_grad():
        for module in model.lang_query.values():
            module.out[-1].weight.normal_(0, 0.5)  # trained-like: the query changes the CLS tokens
    path = save_checkpoint(tmp_path, 1, model.state_dict(), config={"model_config": config.to_dict()},
                           normalization=Normalizer(obs_mean=np.zeros(15), obs_std=np.ones(15)).to_dict())
    cached = DreamPolicy.from_checkpoint(path, text_encoder=FakeText(), action_horizon=1)
    full = DreamPolicy.from_checkpoint(path, text_encoder=FakeText(), action_horizon=1, history_cache=False)
    rng = np.random.default_rng(7)
    actions = {}
    for i, instruction in enumerate(["open the drawer"] * 4 + ["lift the red block"] * 3):
        o = obs(rng)
        cached.seed(i), full.seed(i)
        actions[i] = cached.step(o, instruction)
        np.testing.assert_allclose(actions[i], full.step(o, instruction), atol=1e-5)
    frames = cached._encoded_frames()
    assert "patches_static" in frames
    batch = {"frame_tokens": frames, "lang_emb": FakeText().encode(["open the drawer"])}
    other = {"frame_tokens": frames, "lang_emb": FakeText().encode(["lift the red block"])}
    assert not torch.allclose(cached.model.features(batch)["action"], cached.model.features(other)["action"])


def test_observe_every_frame_then_sample_is_predict_chunk(checkpoint):
    split = DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText())
    whole = DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText())
    frames = [obs(np.random.default_rng(10 + i)) for i in range(3)]
    with pytest.raises(RuntimeError, match="observe"):
        split.sample_chunk("open the drawer")
    for frame in frames:  # a node's control ticks: every frame enters the history ...
        split.observe({**frame, "scene_obs": np.zeros(24)})  # (keys the policy does not use are ignored)
    assert len(split._frames) == 3
    for frame in frames[:2]:  # ... as when each frame came with a step()
        whole.step(frame, "open the drawer")
    split.seed(7), whole.seed(7)
    np.testing.assert_array_equal(split.sample_chunk("open the drawer"), whole.predict_chunk(frames[2], "open the drawer"))
    assert len(split._frames) == 3  # sampling adds no frame


def test_missing_observation_key_is_named(checkpoint):
    policy = DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText())
    with pytest.raises(KeyError, match="rgb_gripper"):
        policy.step({"rgb_static": np.zeros((200, 200, 3), np.uint8), "robot_obs": np.zeros(15)}, "x")


def test_checkpoint_policy_needs_a_path():
    with pytest.raises(ValueError, match="ckpt=PATH"):
        make_checkpoint_policy(None)


def test_a_folder_that_is_not_a_training_checkpoint(tmp_path):
    folder = save_checkpoint(tmp_path, 1, {"w": torch.zeros(1)}, config={"something": 1})
    with pytest.raises(ValueError, match="model_config"):
        DreamPolicy.from_checkpoint(folder, text_encoder=FakeText())


@pytest.mark.slow
def test_eval_runs_a_checkpoint_on_the_play_table(checkpoint, tmp_path):
    """policy=checkpoint through the evaluator: rendered play-table observations, real MiniLM."""
    from sim.chains import generate_chains
    from sim.evaluate import evaluate

    results = evaluate([(0, generate_chains(1)[0])], "checkpoint", {"ckpt": str(checkpoint)}, workers=1,
                       ep_len=2, out_dir=tmp_path, render=True)
    assert results["num_chains"] == 1 and (tmp_path / "results.json").is_file()


def spy_sampler(policy: DreamPolicy, keyword: str) -> list:
    """The values of ``keyword`` the policy's DDIM sampler is called with, from now on."""
    seen = []
    sample = policy.model.schedule.ddim_sample

    def spy(*args, **kwargs):
        seen.append(kwargs[keyword])
        return sample(*args, **kwargs)

    policy.model.schedule.ddim_sample = spy
    return seen


def test_ddim_steps_override_reaches_the_sampler(checkpoint):
    more = DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText(), ddim_steps=20)
    assert more.model.config.ddim_steps == 20
    seen = spy_sampler(more, "steps")
    assert more.predict_chunk(obs(np.random.default_rng(4)), "x").shape == (more.model.config.chunk, 7)
    assert seen == [20]
    with pytest.raises(ValueError, match="ddim_steps"):
        DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText(), ddim_steps=1000)  # > train_steps
    assert make_checkpoint_policy(str(checkpoint), ddim_steps=20).model.config.ddim_steps == 20


def test_guidance_override_reaches_the_sampler(checkpoint):
    policy = DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText(), guidance=3.0)
    seen = spy_sampler(policy, "guidance")
    policy.predict_chunk(obs(np.random.default_rng(4)), "x")
    assert seen == [3.0]
    with pytest.raises(ValueError, match="guidance"):
        DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText(), guidance=0.5)
    assert make_checkpoint_policy(str(checkpoint), guidance=1.0).model.config.guidance == 1.0


def test_noise_scale_zero_makes_the_policy_deterministic(checkpoint):
    policy = make_checkpoint_policy(str(checkpoint), noise_scale=0.0)
    policy.text_encoder = FakeText()
    assert policy.model.config.noise_scale == 0.0
    observation = obs(np.random.default_rng(5))
    policy.seed(0)
    first = policy.predict_chunk(observation, "x")
    policy.seed(1)
    assert np.array_equal(first, policy.predict_chunk(observation, "x"))
    noisy = DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText())
    noisy.seed(0)
    a = noisy.predict_chunk(observation, "x")
    noisy.seed(1)
    assert not np.array_equal(a, noisy.predict_chunk(observation, "x"))


def tiny_checkpoint_with(root, **changes):
    """A random tiny checkpoint whose model config has ``changes`` (runtime settings the checkpoint carries)."""
    torch.manual_seed(0)
    config = dataclasses.replace(load_model_config("tiny"), **changes)
    normalizer = Normalizer(obs_mean=np.zeros(15), obs_std=np.ones(15))
    return save_checkpoint(root, 1, DreamVLA(config).state_dict(), config={"model_config": config.to_dict()},
                           normalization=normalizer.to_dict())


def test_the_checkpoint_sets_the_action_horizon_unless_the_caller_does(tmp_path):
    path = tiny_checkpoint_with(tmp_path, action_horizon=1)
    policy = DreamPolicy.from_checkpoint(path, text_encoder=FakeText())
    assert policy.action_horizon == 1
    calls = []
    real = policy.sample_chunk
    policy.sample_chunk = lambda instruction, noise=None: calls.append(1) or real(instruction, noise)
    rng = np.random.default_rng(6)
    for _ in range(3):
        policy.step(obs(rng), "open the drawer")
    assert len(calls) == 3  # a chunk per step
    assert make_checkpoint_policy(str(path), action_horizon=3).action_horizon == 3


def test_ensemble_action_weights_the_predictions_for_this_step_by_age():
    chunk = lambda fill, grip: np.column_stack([np.full((3, 6), fill), np.full(3, grip)])
    newest, middle, oldest = chunk(0.3, 1.0), chunk(-0.6, -1.0), chunk(0.9, -1.0)
    newest[0, 0], middle[1, 0], oldest[2, 0] = 0.1, 0.2, 0.4  # what each predicted for now
    w = np.exp(-0.5 * np.arange(3))
    action = ensemble_action([newest, middle, oldest], 0.5)
    assert action[0] == pytest.approx((w @ [0.1, 0.2, 0.4]) / w.sum())
    assert action[1] == pytest.approx((w @ [0.3, -0.6, 0.9]) / w.sum())
    assert action[6] == 1.0  # weighted vote: open 1 against close 0.61 + 0.37
    assert ensemble_action([newest, middle, oldest], 0.0)[6] == -1.0  # equal weights: close 2 against 1
    assert ensemble_action([newest, middle, oldest], -5.0)[0] == pytest.approx(0.4, abs=0.01)  # oldest wins
    assert ensemble_action([newest, middle], 0.0)[6] == 1.0  # a tie goes to the newest chunk
    np.testing.assert_array_equal(ensemble_action([newest], 3.0), newest[0])
    with pytest.raises(ValueError, match="1..chunk=3 chunks, got 4"):
        ensemble_action([newest] * 4, 0.5)


def test_ensembling_step_samples_every_step_and_averages_the_last_chunks(checkpoint):
    policy = DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText(), ensemble_decay=0.3)
    assert policy.action_horizon == 1
    chunks = []
    real = policy.sample_chunk
    policy.sample_chunk = lambda instruction, noise=None: chunks.append(real(instruction, noise)) or chunks[-1]
    rng = np.random.default_rng(8)
    actions = [policy.step(obs(rng), "open the drawer") for _ in range(5)]
    assert len(chunks) == 5
    for t, action in enumerate(actions):
        recent = chunks[max(0, t - 2): t + 1][::-1]  # newest first, at most chunk=3 of them
        np.testing.assert_allclose(action, ensemble_action(recent, 0.3))
    np.testing.assert_array_equal(actions[0], chunks[0][0])  # one chunk: its first action
    policy.step(obs(rng), "close the drawer")  # a new instruction forgets the old chunks
    np.testing.assert_array_equal(policy._chunks[0], chunks[-1])
    assert len(policy._chunks) == 1
    policy.reset()
    assert not policy._chunks
    with pytest.raises(ValueError, match="needs action_horizon=1, got 3"):
        DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText(), ensemble_decay=0.3, action_horizon=3)
    with pytest.raises(ValueError, match="finite"):
        DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText(), ensemble_decay=float("nan"))


def test_the_checkpoint_can_turn_ensembling_on(tmp_path):
    path = tiny_checkpoint_with(tmp_path, ensemble_decay=0.5)
    policy = make_checkpoint_policy(str(path))
    assert policy.ensemble_decay == 0.5 and policy.action_horizon == 1
    assert make_checkpoint_policy(str(path), ensemble_decay=0.0).ensemble_decay == 0.0
    with pytest.raises(ValueError, match="ensemble_decay must be null or a finite number"):
        dataclasses.replace(load_model_config("tiny"), ensemble_decay="fast")


def test_the_checkpoint_can_turn_the_stall_escape_on(tmp_path):
    path = tiny_checkpoint_with(tmp_path, stall_steps=8, stall_tol=0.01, stall_noise=1.5)
    policy = make_checkpoint_policy(str(path))
    assert (policy.stall_steps, policy.stall_tol, policy.stall_noise) == (8, 0.01, 1.5)
    assert make_checkpoint_policy(str(path), stall_steps=0).stall_steps is None  # 0: off
    assert make_checkpoint_policy(str(path), stall_noise=3.0).stall_noise == 3.0
    with pytest.raises(ValueError, match="stall_steps must be null or an integer >= 2"):
        dataclasses.replace(load_model_config("tiny"), stall_steps=1)
    with pytest.raises(ValueError, match="stall_tol must be a finite number >= 0"):
        dataclasses.replace(load_model_config("tiny"), stall_tol=-0.1)


def test_stalled_needs_the_whole_window_within_the_tolerance():
    still = [np.array([0.1, 0.2, 0.5]) + 0.001 * k for k in range(5)]  # 5 steps, 4*sqrt(3) mm apart
    assert not stalled(still[:4], 5, 0.005)  # too few positions yet
    assert stalled(still, 5, 0.004)  # half the 6.9 mm diagonal: 3.5 mm
    assert not stalled(still, 5, 0.003)
    moved = still + [still[-1] + [0.02, 0, 0]]
    assert not stalled(moved, 5, 0.005)  # the newest step left the box
    assert stalled(moved + [moved[-1]] * 4, 5, 0.005)  # the last five are still again


def test_a_stalled_arm_samples_at_the_stall_temperature(checkpoint):
    """With stall_steps=n the chunk after n still observations comes from stall_noise; a moving
    arm, a fresh instruction and a policy without the escape keep the checkpoint's temperature."""
    policy = DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText(), stall_steps=3,
                                         stall_noise=2.0, action_horizon=1)
    noises = []
    real = policy.temperature
    policy.temperature = lambda noise_scale=None: noises.append(real(noise_scale)) or noises[-1]
    base = policy.model.config.noise_scale
    rng = np.random.default_rng(3)
    frame = obs(rng)
    for _ in range(4):
        policy.step(frame, "open the drawer")
    assert noises == [base, base, 2.0, 2.0]
    moving = obs(rng)
    moving["robot_obs"][:3] += 0.05
    policy.step(moving, "open the drawer")
    policy.step(frame, "close the drawer")  # a new instruction starts a new window
    policy.step(frame, "close the drawer")
    assert noises[4:] == [base, base, base]
    for _ in range(2):  # the ROS node's way: observe every tick, sample when it wants actions
        policy.observe(frame)
    policy.sample_chunk("close the drawer")
    assert noises[7:] == [2.0]
    policy.reset()
    policy.observe(frame)
    policy.sample_chunk("close the drawer")
    assert noises[8:] == [base]  # reset forgets the positions
    cond = torch.randn(1, policy.model.config.action_queries, policy.model.config.backbone.width)
    sample = lambda seed, noise: policy.model.sample_actions(cond, torch.Generator().manual_seed(seed),
                                                             noise_scale=noise)
    torch.testing.assert_close(sample(1, 0.0), sample(2, 0.0))  # the override reaches the sampler
    assert not torch.allclose(sample(1, None), sample(2, None))  # the config's temperature: 1
    with pytest.raises(ValueError, match="stall_steps=1 must be >= 2"):
        DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText(), stall_steps=1)
    with pytest.raises(ValueError, match="stall_noise=nan"):
        make_checkpoint_policy(str(checkpoint), stall_steps=4, stall_noise=float("nan"))


@pytest.fixture(scope="module")
def streaming_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    config = load_model_config("tiny_streaming")
    model = DreamVLA(config)
    normalizer = Normalizer(obs_mean=np.zeros(15), obs_std=np.ones(15))
    return save_checkpoint(tmp_path_factory.mktemp("stream"), 1, model.state_dict(),
                           config={"model_config": config.to_dict()}, normalization=normalizer.to_dict())


def test_the_kv_history_cache_gives_the_actions_of_full_recomputation(streaming_checkpoint):
    """A streaming backbone: keys/values of earlier timesteps are kept, each new frame is the only timestep
    the backbone computes, and the actions equal recomputing the window - while it fills, after it rolls,
    across an instruction change and when frames arrive faster than chunks are sampled."""
    cached = DreamPolicy.from_checkpoint(streaming_checkpoint, text_encoder=FakeText())
    full = DreamPolicy.from_checkpoint(streaming_checkpoint, text_encoder=FakeText(), kv_cache=False)
    assert cached.kv_cache and not full.kv_cache and cached.history_len == 5
    steps = []
    step = cached.model.backbone.step
    cached.model.backbone.step = lambda x, cache: steps.append(x.shape) or step(x, cache)
    rng = np.random.default_rng(7)
    plan = [("open the drawer", 1)] * 6 + [("push the block", 1)] * 2 + [("push the block", 3)] * 2
    for k, (instruction, frames) in enumerate(plan):
        for _ in range(frames):
            o = obs(rng)
            cached.observe(o)
            full.observe(o)
        cached.seed(k)
        full.seed(k)
        np.testing.assert_allclose(cached.sample_chunk(instruction), full.sample_chunk(instruction), atol=1e-5)
    # one timestep per new frame, plus the 5 held frames streamed again after the instruction change
    assert len(steps) == 6 + (5 + 1) + 2 * 3
    cached.seed(99)
    full.seed(99)  # sampling again without a new frame streams nothing and gives the same condition
    np.testing.assert_allclose(cached.sample_chunk("push the block"), full.sample_chunk("push the block"), atol=1e-5)
    assert len(steps) == 6 + (5 + 1) + 2 * 3


def test_a_streaming_model_trains_and_checks_its_receptive_field():
    config = load_model_config("tiny_streaming")
    assert config.backbone.streaming and config.backbone.receptive_field == config.backbone.history == 5
    from test_model import random_batch

    model = DreamVLA(config)
    loss, _ = model(random_batch(config, b=2))
    loss.backward()
    assert model.backbone.time_emb is None and torch.isfinite(loss)


@pytest.mark.parametrize("which", ["window", "streaming"])
def test_the_condition_sink_sees_every_condition_a_chunk_is_sampled_from(checkpoint, streaming_checkpoint, which):
    """``condition_sink`` gets the DiT condition of each chunk, before sampling, on both condition paths, and
    recording does not change the actions."""
    path = checkpoint if which == "window" else streaming_checkpoint
    recorded, plain = DreamPolicy.from_checkpoint(path, text_encoder=FakeText()), DreamPolicy.from_checkpoint(
        path, text_encoder=FakeText())
    assert recorded.kv_cache == (which == "streaming")
    seen = []
    recorded.condition_sink = seen.append
    rng = np.random.default_rng(3)
    for k in range(4):
        o = obs(rng)
        np.testing.assert_array_equal(recorded.step(o, "open the drawer"), plain.step(o, "open the drawer"))
    chunks = -(-4 // recorded.action_horizon)
    actions = recorded.model.layout.step_slice("action")
    shape = (1, actions.stop - actions.start, recorded.model.config.backbone.width)
    assert len(seen) == chunks and all(c.shape == shape for c in seen)
    recorded.seed(5)
    chunk = recorded.sample_chunk("open the drawer")  # no new frame: the same condition again
    assert len(seen) == chunks + 1
    torch.testing.assert_close(seen[-1], seen[-2])
    again = recorded.model.sample_actions(seen[-1], torch.Generator().manual_seed(5))[0].numpy()
    np.testing.assert_allclose(chunk, clip_actions(again.astype(np.float64)), atol=1e-6)


def test_held_gripper_changes_only_after_hold_requests_for_the_other_state():
    assert held_gripper(None, [-1.0], 3) == -1.0  # nothing played yet: the newest request goes
    assert held_gripper(1.0, [1.0, -1.0, -1.0], 3) == 1.0  # two of three: held open
    assert held_gripper(1.0, [-1.0, -1.0, -1.0], 3) == -1.0  # three in a row: closes
    assert held_gripper(-1.0, [1.0, 1.0, 1.0, -1.0], 3) == -1.0  # the newest asks to stay closed
    assert held_gripper(-1.0, [1.0, 1.0], 3) == -1.0  # fewer requests than the hold: unchanged
    assert held_gripper(1.0, [-1.0], 1) == -1.0  # hold 1: every request goes
    with pytest.raises(ValueError, match="newest request"):
        held_gripper(1.0, [], 2)


def test_step_holds_the_gripper_across_single_requests_and_instructions(checkpoint):
    policy = DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText(), gripper_hold=2, action_horizon=1)
    requests = iter([1.0, -1.0, 1.0, -1.0, -1.0, 1.0, 1.0])
    real = policy.sample_chunk

    def sample(instruction, noise=None):
        chunk = real(instruction, noise).copy()
        chunk[:, 6] = next(requests)
        return chunk

    policy.sample_chunk = sample
    rng = np.random.default_rng(3)
    played = [policy.step(obs(rng), "open the drawer" if t < 4 else "lift the red block")[6] for t in range(7)]
    assert played == [1.0, 1.0, 1.0, 1.0, -1.0, -1.0, 1.0]  # single closings ignored, kept across the new instruction
    policy.reset()
    policy.sample_chunk = lambda instruction, noise=None: np.tile([0, 0, 0, 0, 0, 0, -1.0], (3, 1))
    assert policy.step(obs(rng), "open the drawer")[6] == -1.0  # reset forgets what was played
    assert DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText(), gripper_hold=1).gripper_hold is None
    with pytest.raises(ValueError, match="gripper_hold=0 must be an integer >= 1"):
        DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText(), gripper_hold=0)


def test_the_checkpoint_can_turn_the_gripper_hold_on(tmp_path):
    path = tiny_checkpoint_with(tmp_path, gripper_hold=3)
    assert make_checkpoint_policy(str(path)).gripper_hold == 3
    assert make_checkpoint_policy(str(path), gripper_hold=1).gripper_hold is None  # 1: off
    with pytest.raises(ValueError, match="gripper_hold must be null or an integer >= 1"):
        dataclasses.replace(load_model_config("tiny"), gripper_hold=0)
