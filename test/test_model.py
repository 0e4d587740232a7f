import dataclasses
import math

import pytest
import torch

from dream_policy.model import DreamVLA, DreamVLAConfig, load_model_config
from dream_policy.world_heads import (
    cosine_feature_loss,
    dynamic_region_loss,
    flagged_mean,
    scale_invariant_log_loss,
    semantic_ce_loss,
)


def random_batch(config: DreamVLAConfig, b: int = 2, t: int | None = None, targets: bool = True,
                 size: tuple[int, int] = (200, 84)) -> dict:
    g = torch.Generator().manual_seed(1)
    t = t or config.backbone.history
    batch = {
        "rgb_static": torch.randint(0, 256, (b, t, 3, size[0], size[0]), generator=g, dtype=torch.uint8),
        "rgb_gripper": torch.randint(0, 256, (b, t, 3, size[1], size[1]), generator=g, dtype=torch.uint8),
        "robot_obs": torch.randn(b, t, 15, generator=g),
        "lang_emb": torch.randn(b, config.lang_dim, generator=g),
        "actions": torch.rand(b, config.chunk, 7, generator=g) * 2 - 1,
    }
    if targets:
        batch["targets"] = {}
        for view, s in zip(("static", "gripper"), size):
            batch["targets"][f"depth_{view}"] = torch.rand(b, s, s, generator=g) + 0.5
            batch["targets"][f"seg_{view}"] = torch.randint(0, 11, (b, s, s), generator=g, dtype=torch.uint8)
            batch["targets"][f"dynamic_{view}"] = torch.rand(b, s, s, generator=g) > 0.8
        batch["has_target"] = {k: torch.ones(b, dtype=torch.bool) for k in batch["targets"]}
    return batch


@pytest.fixture(scope="module")
def tiny() -> DreamVLAConfig:
    return load_model_config("tiny")


def test_tiny_forward_backward(tiny):
    torch.manual_seed(0)
    model = DreamVLA(tiny)
    loss, info = model(random_batch(tiny))
    loss.backward()
    assert set(info) == {"loss", "action", "dynamic", "depth", "semantic", "world_terms"}
    assert info["world_terms"] == 3 and all(info[k] > 0 for k in ("dynamic", "depth", "semantic"))
    expected = info["action"] + 0.1 * info["dynamic"] + 0.001 * info["depth"] + 0.01 * info["semantic"]
    assert math.isclose(info["loss"], expected, rel_tol=1e-5)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.dream_queries.grad.abs().sum() > 0  # (the DiT's adaLN-Zero init blocks the action path's first step)
    print("tiny params", model.num_params())
    assert 1e6 < model.num_params() < 10e6


def test_world_losses_skip_cleanly(tiny):
    torch.manual_seed(0)
    model = DreamVLA(tiny).eval()
    batch = random_batch(tiny, targets=False)
    torch.manual_seed(3)
    loss, info = model(batch)
    assert info["world_terms"] == 0 and info["dynamic"] == info["depth"] == info["semantic"] == 0.0
    assert math.isclose(info["loss"], info["action"], rel_tol=1e-6)
    loss.backward()
    flagged_off = random_batch(tiny)
    flagged_off["has_target"] = {k: torch.zeros(2, dtype=torch.bool) for k in flagged_off["targets"]}
    torch.manual_seed(3)
    assert model(flagged_off)[1]["world_terms"] == 0
    only_depth = random_batch(tiny)
    only_depth["targets"] = {k: v for k, v in only_depth["targets"].items() if k.startswith("depth_")}
    torch.manual_seed(3)
    info = model(only_depth)[1]
    assert info["world_terms"] == 1 and info["depth"] > 0 and info["semantic"] == 0.0


def test_partial_flags_count_only_flagged_samples(tiny):
    torch.manual_seed(0)
    model = DreamVLA(tiny).eval()
    batch = random_batch(tiny)
    batch["has_target"]["seg_static"] = torch.tensor([True, False])
    torch.manual_seed(3)
    both = model(batch)[1]["semantic"]
    batch["targets"]["seg_static"][1] = 5  # an unflagged sample's target does not count
    torch.manual_seed(3)
    assert model(batch)[1]["semantic"] == both


def test_overfit_one_batch_reduces_action_loss(tiny):
    torch.manual_seed(0)
    model = DreamVLA(tiny)
    batch = random_batch(tiny, b=4, t=2, targets=False, size=(64, 64))

    def eval_loss() -> float:
        model.eval()
        torch.manual_seed(123)
        with torch.no_grad():
            return sum(model(batch)[1]["action"] for _ in range(4)) / 4

    before = eval_loss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(30):
        loss, _ = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    print(f"action loss {before:.3f} -> {after:.3f}")
    assert after < 0.7 * before


def test_earlier_timesteps_learn_their_own_chunks(tiny):
    cfg = dataclasses.replace(tiny, dense_action_weight=0.5)
    torch.manual_seed(0)
    model = DreamVLA(cfg).eval()  # no condition dropout or augmentation: the terms are reproducible
    with torch.no_grad():  # the DiT's zero-initialised gates would hide the condition from its output
        for p in model.dit.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    batch = random_batch(cfg, b=2, targets=False, size=(64, 64))
    history = torch.rand(2, cfg.backbone.history, cfg.chunk, 7) * 2 - 1
    batch["actions_history"] = history

    def terms(b: dict) -> dict:
        torch.manual_seed(3)
        return model(b)[1]

    info = terms(batch)
    assert info["dense_action"] > 0
    assert math.isclose(info["loss"], info["action"] + 0.5 * info["dense_action"], rel_tol=1e-5)
    last_frame = {**batch, "rgb_static": batch["rgb_static"].clone(), "actions_history": history.clone()}
    last_frame["rgb_static"][:, -1] = 255 - last_frame["rgb_static"][:, -1]
    last_frame["actions_history"][:, -1] = 0.0
    changed = terms(last_frame)  # block-causal time: the earlier timesteps never see the newest frame
    assert changed["dense_action"] == pytest.approx(info["dense_action"], rel=1e-6, abs=0)
    assert changed["action"] != pytest.approx(info["action"], rel=1e-5, abs=0)
    first = {**batch, "rgb_static": batch["rgb_static"].clone()}
    first["rgb_static"][:, 0] = 255 - first["rgb_static"][:, 0]  # the oldest frame conditions every timestep
    assert terms(first)["dense_action"] != pytest.approx(info["dense_action"], rel=1e-5, abs=0)
    targets = {**batch, "actions_history": history.clone()}
    targets["actions_history"][:, 0] = -targets["actions_history"][:, 0]
    assert terms(targets)["dense_action"] != pytest.approx(info["dense_action"], rel=1e-5, abs=0)
    with pytest.raises(KeyError, match="actions_history"):
        model({k: v for k, v in batch.items() if k != "actions_history"})
    with pytest.raises(ValueError, match="actions_history must be"):
        model({**batch, "actions_history": history[:, :2]})
    assert "dense_action" not in DreamVLA(tiny)(batch)[1]  # off by default: the batch's extra key is unused


def test_predict_chunk_shape_and_determinism(tiny):
    torch.manual_seed(0)
    model = DreamVLA(tiny).eval()
    obs = random_batch(tiny, t=3, targets=False)
    del obs["actions"]
    a = model.predict_chunk(obs, generator=torch.Generator().manual_seed(7))
    b = model.predict_chunk({"history": {k: obs[k] for k in ("rgb_static", "rgb_gripper", "robot_obs")},
                             "lang_emb": obs["lang_emb"]}, generator=torch.Generator().manual_seed(7))
    c = model.predict_chunk(obs, generator=torch.Generator().manual_seed(8))
    assert a.shape == (2, 3, 7) and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_loss_functions():
    depth = torch.rand(2, 8, 8) + 0.5
    shifted = depth.log() + 0.3  # a global scale error
    assert torch.allclose(scale_invariant_log_loss(shifted, depth, lam=1.0), torch.zeros(2), atol=1e-6)
    assert torch.allclose(scale_invariant_log_loss(shifted, depth), torch.full((2,), 0.5 * 0.09), atol=1e-6)
    invalid = depth.clone()
    invalid[:, :4] = 0.0
    invalid[:, 4, 0] = float("nan")
    pred = torch.zeros(2, 8, 8, requires_grad=True)
    loss = scale_invariant_log_loss(pred, invalid)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(pred.grad).all() and pred.grad[:, :4].abs().sum() == 0
    mask = torch.rand(2, 8, 8) > 0.5
    assert dynamic_region_loss((mask.float() * 2 - 1) * 20, mask).max() < 1e-6
    ids = torch.randint(0, 5, (2, 8, 8))
    assert semantic_ce_loss(torch.nn.functional.one_hot(ids, 5).permute(0, 3, 1, 2) * 30.0, ids).max() < 1e-6
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        semantic_ce_loss(torch.zeros(1, 5, 2, 2), torch.full((1, 2, 2), 7))
    feats = torch.randn(2, 6, 4, 4)
    assert cosine_feature_loss(feats * 3, feats).abs().max() < 1e-5
    assert flagged_mean(torch.tensor([1.0, 3.0]), torch.tensor([False, False])) is None
    assert flagged_mean(torch.tensor([1.0, 3.0]), torch.tensor([False, True])) == 3.0


def test_semantic_feature_mode(tiny):
    config = dataclasses.replace(tiny, world=dataclasses.replace(tiny.world, semantic="features", feature_dim=8))
    torch.manual_seed(0)
    model = DreamVLA(config)
    batch = random_batch(config, targets=False)
    batch["targets"] = {"semfeat_static": torch.randn(2, 8, 14, 14)}
    info = model(batch)[1]
    assert info["world_terms"] == 1 and info["semantic"] > 0


def test_pooled_patch_readout_trains_and_acts(tiny):
    """vision.readout=pool: 16 pooled patch tokens per view reach the backbone (layout sized by them)."""
    config = load_model_config("tiny_pool")
    assert config == dataclasses.replace(tiny, lang_query=0,  # (a config of session 13, before the query)
                                         vision=dataclasses.replace(tiny.vision, readout="pool", num_latents=16))
    torch.manual_seed(0)
    model = DreamVLA(config)
    image = model.layout.step_slice("image_static")
    assert image.stop - image.start == 16
    loss, _ = model(random_batch(config))
    loss.backward()
    encoder = model.vision.encoders["shared"].encoder
    assert sum(p.grad.abs().sum() for p in encoder.parameters()) > 0
    assert model.eval().predict_chunk(random_batch(config)).shape == (2, config.chunk, 7)


def test_language_film_starts_as_the_identity_and_then_gates_the_image_tokens(tiny):
    """lang_film: zero-initialised, so a model with it acts exactly as the same weights without it; once
    trained, the instruction changes the image tokens (and only them) and gradients reach it."""
    torch.manual_seed(0)
    plain = DreamVLA(tiny).eval()
    assert plain.film is None
    filmed = DreamVLA(dataclasses.replace(tiny, lang_film=True)).eval()
    assert filmed.load_state_dict(plain.state_dict(), strict=False).missing_keys == ["film.weight", "film.bias"]
    batch = random_batch(tiny)
    torch.testing.assert_close(filmed.tokens(batch), plain.tokens(batch), atol=0, rtol=0)
    g = torch.Generator().manual_seed(3)
    torch.testing.assert_close(filmed.predict_chunk(batch, generator=g),
                               plain.predict_chunk(batch, generator=torch.Generator().manual_seed(3)))
    with torch.no_grad():
        filmed.film.weight.normal_(0, 0.1)
    other = dict(batch, lang_emb=torch.randn_like(batch["lang_emb"]))
    frames = filmed.encode_frames(batch)
    a, b = filmed.tokens({"frame_tokens": frames, **batch}), filmed.tokens({"frame_tokens": frames, **other})
    layout = filmed.layout
    for name in ("image_static", "cls_gripper"):
        assert not torch.allclose(a[:, :, layout.step_slice(name)], b[:, :, layout.step_slice(name)])
    for name in ("state", "action"):
        torch.testing.assert_close(a[:, :, layout.step_slice(name)], b[:, :, layout.step_slice(name)])
    loss, _ = filmed.train()(batch)
    loss.backward()
    assert filmed.film.weight.grad.abs().sum() > 0


def test_language_query_starts_as_the_identity_then_reads_the_named_patches(tiny):
    """lang_query: zero-initialised output, so with the same weights it acts as the model without it; once
    trained, the sentence changes the views' CLS tokens (and nothing else among the inputs), gradients reach
    its queries, and the runtime's per-frame tokens carry the patches it reads."""
    assert tiny.lang_query == 4  # on in the tiny config since session 26 (bench/RESULTS.md)
    torch.manual_seed(0)
    off = dataclasses.replace(tiny, lang_query=0)
    plain = DreamVLA(off).eval()
    assert plain.lang_query is None and not any(k.startswith("patches_") for k in plain.encode_frames(random_batch(off)))
    queried = DreamVLA(tiny).eval()
    missing = queried.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("lang_query.") for k in missing)
    batch = random_batch(tiny)
    torch.testing.assert_close(queried.tokens(batch), plain.tokens(batch), atol=0, rtol=0)
    frames = queried.encode_frames(batch)
    assert frames["patches_static"].shape == (2, tiny.backbone.history, tiny.vision.grid ** 2, tiny.vision.width)
    with torch.no_grad():
        for module in queried.lang_query.values():
            module.out[-1].weight.normal_(0, 0.1)
    other = dict(batch, lang_emb=torch.randn_like(batch["lang_emb"]))
    a, b = queried.tokens({"frame_tokens": frames, **batch}), queried.tokens({"frame_tokens": frames, **other})
    layout = queried.layout
    for name in ("cls_static", "cls_gripper"):
        assert not torch.allclose(a[:, :, layout.step_slice(name)], b[:, :, layout.step_slice(name)])
    for name in ("image_static", "state", "action"):
        torch.testing.assert_close(a[:, :, layout.step_slice(name)], b[:, :, layout.step_slice(name)])
    loss, _ = queried.train()(batch)
    loss.backward()
    assert queried.lang_query["static"].q.weight.grad.abs().sum() > 0


def test_language_query_looks_where_its_key_matches():
    """The attention of a query that matches one patch's key sits on that patch, and the expected (x, y)
    the module reads out is that patch's centre on the grid (x to the right, y down, in [-1, 1])."""
    from dream_policy.encoders import LanguageQuery

    torch.manual_seed(0)
    module = LanguageQuery(lang_dim=8, patch_width=8, width=16, heads=1)
    with torch.no_grad():
        module.q.weight.copy_(torch.eye(8) * 50)
        module.q.bias.zero_()
        module.kv.weight.zero_()
        module.kv.weight[:8].copy_(torch.eye(8))
        module.kv.bias.zero_()
    patches = torch.zeros(1, 1, 16, 8)  # a 4 x 4 grid
    patches[0, 0, 6] = torch.tensor([1.0, -1, 1, -1, 1, -1, 1, -1])  # row 1, column 2
    lang = module.ln(patches)[0, 0, 6][None]  # the query the sentence makes is that patch's key
    weights, _ = module.attention(lang, patches)
    assert weights.shape == (1, 1, 1, 16) and weights[0, 0, 0].argmax() == 6 and weights[0, 0, 0, 6] > 0.99
    captured = {}
    module.out.register_forward_hook(lambda m, inputs, out: captured.update(x=inputs[0]))
    module(lang, patches)
    torch.testing.assert_close(captured["x"][0, 0, -2:], torch.tensor([0.25, -0.25]), atol=1e-2, rtol=0)
    with pytest.raises(ValueError, match="square patch grid"):
        module(lang, torch.zeros(1, 1, 15, 8))
    with pytest.raises(ValueError, match="heads=3"):
        LanguageQuery(8, 8, 16, heads=3)


@pytest.mark.parametrize("change,match", [
    ({"cfg_dropout": 1.5}, "cfg_dropout.*1.5"), ({"guidance": 0.5}, "guidance.*0.5"),
    ({"depth_weight": -1}, "depth_weight.*-1"), ({"text_encoder": "bert"}, "'bert'"),
    ({"ddim_steps": 200}, "ddim_steps=200"), ({"chunk": 4}, "dit.chunk=3 must equal 4"),
    ({"noise_scale": -0.5}, "noise_scale.*-0.5"), ({"block_weight": -1}, "block_weight.*-1"),
    ({"action_horizon": 4}, r"action_horizon.*chunk=3.*4"), ({"action_horizon": 0}, "action_horizon.*0"),
    ({"action_horizon": 1.5}, "action_horizon.*1.5"), ({"lang_query": 3}, "lang_query.*width=128.*3"),
    ({"lang_query": -1}, "lang_query.*-1"), ({"dense_action_weight": -0.1}, "dense_action_weight.*-0.1"),
])
def test_config_errors_name_the_value(tiny, change, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(tiny, **change)


def test_config_loading_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'huge'.*paper.*tiny"):
        load_model_config("huge")
    (tmp_path / "bad.yaml").write_text("backbone:\n  widht: 64\n")
    with pytest.raises(ValueError, match=r"bad.yaml.*'widht'.*'backbone'"):
        load_model_config("bad", tmp_path)
    (tmp_path / "bad2.yaml").write_text("histroy: 3\n")
    with pytest.raises(ValueError, match="histroy"):
        load_model_config("bad2", tmp_path)
    (tmp_path / "ok.yaml").write_text("chunk: 5\nbackbone:\n  width: 64\n  heads: 4\n")
    config = load_model_config("ok", tmp_path)
    assert config.dit.chunk == 5 and config.dit.cond_dim == 64
    assert DreamVLAConfig.from_dict(config.to_dict()) == config


@pytest.mark.slow
def test_paper_config_one_step():
    config = load_model_config("paper")
    assert config.backbone.history == 10 and config.backbone.depth == 24 and config.backbone.width == 1024
    assert config.dit.depth == 12 and config.dit.width == 768 and config.vision.num_latents == 16
    assert config.dream_per_view == 9 and config.action_queries == 3
    torch.manual_seed(0)
    model = DreamVLA(config)
    n = model.num_params()
    print(f"paper DreamVLA parameters: {n / 1e6:.1f}M")
    assert 500e6 < n < 700e6
    assert model.layout.tokens_per_step == 1 + 1 + 32 + 2 + 54 + 3
    loss, info = model(random_batch(config, b=1))
    loss.backward()
    assert math.isfinite(info["loss"]) and info["world_terms"] == 3
