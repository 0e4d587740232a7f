import json

import numpy as np
import pytest
import torch

from dream_policy.encoders import (
    TEXT_ENCODERS,
    CLIPTextEncoder,
    ImagePreprocessor,
    MiniLMTextEncoder,
    PatchPool,
    PerceiverResampler,
    ProprioEncoder,
    SpatialKeypoints,
    VisionConfig,
    VisionEncoder,
    build_text_encoder,
    random_color,
    random_shift,
    soft_argmax_2d,
)


def images(b: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"static": torch.randint(0, 256, (b, 3, 200, 200), generator=g, dtype=torch.uint8),
            "gripper": torch.randint(0, 256, (b, 3, 84, 84), generator=g, dtype=torch.uint8)}


def test_minilm_caches_each_sentence():
    calls: list[list[str]] = []

    def fake_embed(sentences: list[str]) -> np.ndarray:
        calls.append(sentences)
        return np.ones((len(sentences), 384), np.float32) * np.arange(len(sentences))[:, None]

    enc = MiniLMTextEncoder(embed_fn=fake_embed)
    first = enc.encode(["open the drawer", "push the button"])
    again = enc.encode(["push the button", "open the drawer", "open the drawer"])
    assert first.shape == (2, 384) and again.shape == (3, 384)
    assert len(calls) == 1  # the second call is served from the cache
    assert torch.equal(again[1], first[0])
    enc.encode(["lift the red block"])
    assert calls[-1] == ["lift the red block"]


def test_minilm_real_model_is_384_unit_norm():
    emb = MiniLMTextEncoder().encode(["open the drawer"])
    assert emb.shape == (1, 384)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(1), atol=1e-4)


def _tiny_clip_dir(path) -> None:
    """A randomly initialised tiny CLIP text model + a character-level CLIP BPE vocabulary (no merges)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz"
    tokens = list(letters) + [c + "</w>" for c in letters] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), pad_token="<|endoftext|>")
    tokenizer.save_pretrained(str(path))
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=77,
                            bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                            pad_token_id=vocab["<|endoftext|>"])
    CLIPTextModel(config).save_pretrained(str(path))


def test_clip_text_encoder_from_local_files(tmp_path):
    _tiny_clip_dir(tmp_path)
    enc = build_text_encoder("clip", path=tmp_path)
    assert isinstance(enc, CLIPTextEncoder) and enc.dim == 32
    emb = enc.encode(["open the drawer", "push the button"])
    assert emb.shape == (2, 32) and torch.isfinite(emb).all()
    assert not any(p.requires_grad for p in enc.model.parameters())
    assert torch.equal(enc.encode(["push the button"])[0], emb[1])  # cached
    ids = enc.tokenizer(["open the drawer"], return_tensors="pt")["input_ids"]
    assert torch.allclose(enc.embed_ids(ids)[0], emb[0], atol=1e-5)  # padding does not change the pooled token


def test_clip_missing_directory_and_unknown_encoder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        CLIPTextEncoder.from_local(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"'bert'.*\['clip', 'minilm'\]"):
        build_text_encoder("bert")
    assert set(TEXT_ENCODERS) == {"clip", "minilm"}


@pytest.mark.parametrize("kind,shared", [("vit", True), ("vit", False), ("resnet", True)])
def test_vision_encoder_shapes(kind, shared):
    torch.manual_seed(0)
    config = VisionConfig(kind=kind, image_size=64, patch=16, width=32, depth=1, heads=4, num_latents=3,
                          resampler_heads=4, shared=shared)
    enc = VisionEncoder(config, ("static", "gripper"))
    assert len(enc.encoders) == (1 if shared else 2)
    out = enc(images())
    for view in ("static", "gripper"):
        cls, latents = out[view]
        assert cls.shape == (2, 32) and latents.shape == (2, 3, 32)
        assert torch.isfinite(latents).all()


def test_vision_rejects_float_images_and_missing_views():
    enc = VisionEncoder(VisionConfig(image_size=32, width=32, depth=1), ("static",))
    with pytest.raises(ValueError, match="uint8"):
        enc({"static": torch.rand(1, 3, 32, 32)})
    with pytest.raises(KeyError, match="static"):
        enc({"gripper": images()["gripper"]})


def test_timm_kind_is_lazy_and_clear():
    config = VisionConfig(kind="timm", timm_name="vit_tiny_patch16_224", width=192, heads=4, resampler_heads=4)
    try:
        import timm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="timm"):
            VisionEncoder(config, ("static",))
    else:
        cls, latents = VisionEncoder(config, ("static",))({"static": images(1)["static"]})["static"]
        assert cls.shape == (1, 192) and latents.shape == (1, config.num_latents, 192)


@pytest.mark.parametrize("kwargs,match", [({"kind": "mae"}, "'mae'"), ({"image_size": 90}, "image_size=90"),
                                          ({"kind": "resnet", "patch": 12}, "patch=12"),
                                          ({"kind": "timm"}, "timm_name"), ({"num_latents": 0}, "num_latents"),
                                          ({"readout": "mlp"}, "'mlp'"),
                                          ({"readout": "pool", "num_latents": 8}, "num_latents=8"),
                                          ({"keypoints": -1}, "keypoints=-1")])
def test_vision_config_errors_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VisionConfig(**kwargs)


def test_patch_pool_averages_grid_regions_in_row_major_order():
    grid = torch.arange(64.0).view(1, 64, 1)  # an 8x8 grid, patch (r, c) holds 8r + c
    pooled = PatchPool(16)(grid)  # 4x4: each token the mean of a 2x2 block
    expected = torch.tensor([[8 * (2 * r) + 2 * c + 4.5 for c in range(4)] for r in range(4)]).view(1, 16, 1)
    torch.testing.assert_close(pooled, expected)
    with pytest.raises(ValueError, match="square patch grid"):
        PatchPool(4)(torch.zeros(1, 10, 1))


def test_pool_readout_has_no_resampler_parameters():
    kw = {"image_size": 64, "patch": 8, "width": 32, "depth": 1, "heads": 4, "resampler_heads": 4}
    pooled = VisionEncoder(VisionConfig(readout="pool", num_latents=16, **kw), ("static", "gripper"))
    perceiver = VisionEncoder(VisionConfig(num_latents=16, **kw), ("static", "gripper"))
    assert not any("resampler" in name for name, _ in pooled.named_parameters())
    n_pooled = sum(p.numel() for p in pooled.parameters())
    assert n_pooled < sum(p.numel() for p in perceiver.parameters())
    cls, tokens = pooled(images())["gripper"]
    assert cls.shape == (2, 32) and tokens.shape == (2, 16, 32)
    tokens.sum().backward()  # gradients reach the patch encoder
    assert all(p.grad is not None for p in pooled.parameters() if p.requires_grad)


def test_perceiver_resampler_compresses_tokens():
    r = PerceiverResampler(num_latents=5, width=32, depth=2, heads=4)
    assert r(torch.randn(3, 49, 32)).shape == (3, 5, 32)


def test_proprio_encoder_one_hot_gripper():
    torch.manual_seed(0)
    enc = ProprioEncoder(width=16)
    obs = torch.zeros(2, 4, 15)
    obs[0, :, 14] = 1.0
    obs[1, :, 14] = -1.0
    out = enc(obs)
    assert out.shape == (2, 4, 16)
    assert not torch.allclose(out[0], out[1])
    obs[1, :, 14] = -0.5  # same side of the threshold: same one-hot
    assert torch.allclose(enc(obs)[1], out[1])
    with pytest.raises(ValueError, match="15"):
        enc(torch.zeros(2, 14))


def test_random_shift_moves_whole_images_within_the_pad():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 16, 16)
    y = random_shift(x, 2)
    assert y.shape == x.shape
    seen = set()
    for a, b in zip(x, y):  # every output is the input shifted by some (dy, dx) in [-2, 2]^2, edges replicated
        padded = torch.nn.functional.pad(a[None], (2, 2, 2, 2), mode="replicate")[0]
        match = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(padded[:, dy:dy + 16, dx:dx + 16], b)]
        assert match
        seen.add(match[0])
    assert len(seen) > 10  # offsets differ between images


def test_random_color_keeps_range_and_varies():
    torch.manual_seed(0)
    x = torch.rand(8, 3, 8, 8)
    y = random_color(x, 0.2)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert not torch.allclose(y, x)
    torch.testing.assert_close(random_color(x, 0.0), x)


def test_augmentation_only_in_training_mode():
    config = VisionConfig(image_size=16, patch=8, augment_shift=2, augment_color=0.1)
    pre = ImagePreprocessor(config)
    images = torch.randint(0, 256, (4, 3, 20, 20), dtype=torch.uint8)
    pre.eval()
    assert torch.equal(pre(images), pre(images))
    pre.train()
    assert not torch.equal(pre(images), pre(images))
    with pytest.raises(ValueError, match="augment_shift=8"):
        VisionConfig(image_size=16, patch=8, augment_shift=8)


def test_soft_argmax_finds_a_sharp_peak_and_centres_a_flat_map():
    logits = torch.zeros(1, 2, 8, 16)
    logits[0, 0, 6, 3] = 50.0  # row 6 of 8, column 3 of 16: pixel centres at -1 + (2i + 1) / n
    points = soft_argmax_2d(logits)
    torch.testing.assert_close(points[0, 0], torch.tensor([-1 + 7 / 16, -1 + 13 / 8]), atol=1e-4, rtol=0)
    torch.testing.assert_close(points[0, 1], torch.zeros(2), atol=1e-6, rtol=0)  # flat: the image centre


def test_keypoint_readout_starts_as_a_no_op_and_then_trains():
    kw = {"image_size": 64, "patch": 8, "width": 32, "depth": 1, "heads": 4, "resampler_heads": 4, "num_latents": 4}
    plain = VisionEncoder(VisionConfig(**kw), ("static",)).eval()
    torch.manual_seed(1)
    with_kp = VisionEncoder(VisionConfig(keypoints=8, **kw), ("static",)).eval()
    missing, unexpected = with_kp.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(".keypoints." in k for k in missing)
    x = {"static": images(3)["static"]}
    torch.testing.assert_close(with_kp(x)["static"][1], plain(x)["static"][1])  # zero last layer: unchanged
    _, latents = with_kp.train()(x)["static"]
    latents.square().sum().backward()
    grads = {n: p.grad for n, p in with_kp.named_parameters() if ".keypoints." in n}
    assert grads["encoders.shared.keypoints.proj.2.weight"].abs().sum() > 0  # learning starts at the last layer


def test_spatial_keypoints_learn_where_a_square_is():
    """A keypoint net and a linear read-out of its (x, y) learn to place a red square in a 32x32 image
    to within a pixel or two: what the 8x8 patch grid blurs."""
    g = torch.Generator().manual_seed(0)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        corners = torch.randint(0, 28, (n, 2), generator=g)
        img = torch.rand(n, 3, 32, 32, generator=g) * 0.2
        for i, (r, c) in enumerate(corners.tolist()):
            img[i, 0, r:r + 4, c:c + 4] = 1.0
        centre = (corners.float() + 2.0) / 16 - 1  # (row, col) in [-1, 1]
        return img, centre.flip(-1)  # (x, y)

    torch.manual_seed(0)
    net = SpatialKeypoints(keypoints=4, num_tokens=1, width=8, channels=8)
    head = torch.nn.Linear(8, 2)
    opt = torch.optim.Adam([*net.features.parameters(), net.log_temperature, *head.parameters()], lr=1e-2)
    for _ in range(300):
        img, target = batch(32)
        loss = (head(net.keypoints(img).flatten(1)) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    img, target = batch(256)
    with torch.no_grad():
        error_px = (head(net.keypoints(img).flatten(1)) - target).abs().mean() * 16
    assert error_px < 1.5, f"mean position error {error_px:.2f} px"
