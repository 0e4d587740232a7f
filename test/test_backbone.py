import pytest
import torch

from dream_policy.attention_mask import TokenLayout, block_attention_mask
from dream_policy.backbone import Backbone, BackboneConfig


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
