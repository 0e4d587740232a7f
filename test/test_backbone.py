import pytest
import torch

from dream_policy.attention_mask import TokenLayout, block_attention_mask
from dream_policy.backbone import Backbone, BackboneConfig, StreamCache


def small_backbone(history: int = 3) -> tuple[Backbone, TokenLayout]:
    torch.manual_seed(0)
    layout = TokenLayout.dreamvla(image_tokens=2, dream_per_view=1, action_queries=2)
    return Backbone(BackboneConfig(width=32, depth=2, heads=4, history=history), layout).eval(), layout


def test_mask_is_block_attention_mask_for_every_history_length():
    backbone, layout = small_backbone(history=3)
    assert backbone.mask.dtype == torch.bool
    for steps in (1, 2, 3):
        assert torch.equal(backbone.attention_mask(steps), block_attention_mask(layout, steps))
    with pytest.raises(ValueError, match="steps"):
        backbone.attention_mask(4)


def test_forward_shape_and_time_causality():
    backbone, layout = small_backbone()
    P = layout.tokens_per_step
    x = torch.randn(2, 3, P, 32)
    y = backbone(x)
    assert y.shape == (2, 3, P, 32)
    x2 = x.clone()
    x2[:, 2] += torch.randn(2, x.shape[2], 32)  # a later timestep must not change earlier outputs
    assert torch.allclose(backbone(x2)[:, :2], y[:, :2], atol=1e-5)
    assert not torch.allclose(backbone(x2)[:, 2], y[:, 2])


def test_dream_queries_read_only_context():
    backbone, layout = small_backbone()
    x = torch.randn(1, 3, layout.tokens_per_step, 32)
    x2 = x.clone()
    x2[:, :, layout.step_slice("depth")] += torch.randn(1, 3, 2, 32)  # another kind of dream query
    y, y2 = backbone(x), backbone(x2)
    for kind in ("dynamic", "semantic"):
        s = layout.step_slice(kind)
        assert torch.allclose(y[:, :, s], y2[:, :, s], atol=1e-5)
    assert not torch.allclose(y[:, :, layout.step_slice("action")], y2[:, :, layout.step_slice("action")])


def test_shorter_history_and_bad_input():
    backbone, layout = small_backbone()
    assert backbone(torch.randn(1, 2, layout.tokens_per_step, 32)).shape == (1, 2, layout.tokens_per_step, 32)
    with pytest.raises(ValueError, match="backbone input"):
        backbone(torch.randn(1, 2, layout.tokens_per_step + 1, 32))


@pytest.mark.parametrize("kwargs,match", [({"width": 30, "heads": 4}, "width=30"),
                                          ({"history": 0}, "history"), ({"dropout": 1.5}, "1.5")])
def test_config_errors_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BackboneConfig(**kwargs)


def streaming_backbone(depth: int = 3, window: int = 2, history: int | None = None) -> tuple[Backbone, TokenLayout]:
    torch.manual_seed(0)
    layout = TokenLayout.dreamvla(image_tokens=2, dream_per_view=1, action_queries=2)
    history = history or depth * (window - 1) + 1
    config = BackboneConfig(width=32, depth=depth, heads=4, history=history, streaming=True, window=window)
    return Backbone(config, layout).eval(), layout


@pytest.mark.parametrize(("depth", "window"), [(3, 2), (2, 3), (1, 1)])
def test_streaming_step_equals_the_full_forward_over_the_receptive_field(depth, window):
    """Keys/values of earlier timesteps are reused and only the new timestep is computed, with the
    result of recomputing the window: from the first step on, and after the window has rolled."""
    backbone, layout = streaming_backbone(depth, window)
    R = backbone.config.receptive_field
    frames = torch.randn(2, R + 4, layout.tokens_per_step, 32)  # (B, N, P, D)
    cache = StreamCache(depth)
    for t in range(frames.shape[1]):
        streamed = backbone.step(frames[:, t], cache)  # (B, P, D)
        with torch.no_grad():
            full = backbone(frames[:, max(0, t - R + 1):t + 1])[:, -1]  # recompute the window
        torch.testing.assert_close(streamed, full, atol=2e-5, rtol=1e-4)
    assert all(len(layer) == window - 1 for layer in cache.layers) and cache.steps == R + 4


def test_streaming_attention_depends_on_time_differences_only():
    backbone, layout = streaming_backbone()
    x = torch.randn(1, 3, layout.tokens_per_step, 32)
    ahead = StreamCache(backbone.config.depth)
    ahead.steps = 1000  # the same frames streamed later in an episode
    plain = StreamCache(backbone.config.depth)
    for t in range(3):
        torch.testing.assert_close(backbone.step(x[:, t], ahead), backbone.step(x[:, t], plain), atol=1e-4,
                                   rtol=1e-4)


def test_streaming_config_checks():
    with pytest.raises(ValueError, match="history=3 must be at least that"):
        BackboneConfig(width=32, depth=3, heads=4, history=3, streaming=True, window=2)
    with pytest.raises(ValueError, match="window only applies with streaming"):
        BackboneConfig(window=2)
    assert BackboneConfig(depth=4, history=5, streaming=True, window=2).receptive_field == 5
    with pytest.raises(RuntimeError, match="streaming backbone"):
        small_backbone()[0].step(torch.zeros(1, 1, 1), StreamCache(1))


def test_a_window_limits_context_to_recent_timesteps():
    layout = TokenLayout.dreamvla(image_tokens=2, dream_per_view=1, action_queries=2)
    full, windowed = block_attention_mask(layout, 4), block_attention_mask(layout, 4, window=2)
    P = layout.tokens_per_step
    assert torch.equal(windowed[3 * P:, 2 * P:], full[3 * P:, 2 * P:])  # itself and the step before
    assert not windowed[3 * P:, :2 * P].any() and full[3 * P:, :2 * P].any()
    with pytest.raises(ValueError, match="window must be a positive int"):
        block_attention_mask(layout, 2, window=0)
