import pytest
import torch
import torch.nn.functional as F

from dream_policy.attention_mask import (
    TokenGroup,
    TokenLayout,
    block_attention_mask,
    group_indices,
    to_additive,
)

T = 3
LAYOUT = TokenLayout(
    (
        TokenGroup("text", 1, "context"),
        TokenGroup("state", 1, "context"),
        TokenGroup("image_static", 2, "context"),
        TokenGroup("image_gripper", 2, "context"),
        TokenGroup("cls_static", 1, "context"),
        TokenGroup("cls_gripper", 1, "context"),
        TokenGroup("dynamic", 2, "dream"),
        TokenGroup("depth", 2, "dream"),
        TokenGroup("semantic", 2, "dream"),
        TokenGroup("action", 2, "action"),
    )
)
DREAM_KINDS = {"dynamic", "depth", "semantic"}


def tokens(layout: TokenLayout, steps: int) -> list[tuple[int, str]]:
    """(timestep, group name) of every sequence position, written out independently of the module."""
    out = []
    for t in range(steps):
        for g in layout.groups:
            out += [(t, g.name)] * g.size
    return out


def reference_may_attend(query: tuple[int, str], key: tuple[int, str]) -> bool:
    q_step, q_group = query
    k_step, k_group = key
    if k_step > q_step:  # block-causal time
        return False
    key_is_query_token = k_group in DREAM_KINDS or k_group == "action"
    if not key_is_query_token:  # any token sees the context (A) tokens of its own and earlier steps
        return True
    # the only B key anyone sees: a dream query of the action query's own step
    return q_group == "action" and k_group in DREAM_KINDS and k_step == q_step


def positions(group: str, step: int) -> list[int]:
    return [i for i, tok in enumerate(tokens(LAYOUT, T)) if tok == (step, group)]


@pytest.fixture(scope="module")
def mask() -> torch.Tensor:
    return block_attention_mask(LAYOUT, T)


def test_shape_and_dtype(mask):
    assert LAYOUT.tokens_per_step == 16
    assert mask.shape == (T * 16, T * 16) and mask.dtype == torch.bool


def test_every_pair_matches_reference(mask):
    toks = tokens(LAYOUT, T)
    expected = torch.tensor([[reference_may_attend(q, k) for k in toks] for q in toks])
    assert torch.equal(mask, expected)


def test_every_row_non_empty(mask):
    assert mask.any(dim=1).all()
    paper = block_attention_mask(TokenLayout.dreamvla(), 10)
    assert paper.any(dim=1).all()


def test_text_sees_earlier_cls(mask):
    for q in positions("text", 1):
        for k in positions("cls_static", 0) + positions("cls_gripper", 0):
            assert mask[q, k]


def test_action_sees_own_step_depth_only(mask):
    for q in positions("action", 1):
        assert all(mask[q, k] for k in positions("depth", 1))
        assert not any(mask[q, k] for k in positions("depth", 0))
        assert not any(mask[q, k] for k in positions("depth", 2))


def test_action_never_sees_actions(mask):
    acts = [p for t in range(T) for p in positions("action", t)]
    assert not mask[acts][:, acts].any()


def test_dream_never_sees_dream(mask):
    dreams = [p for t in range(T) for kind in DREAM_KINDS for p in positions(kind, t)]
    assert not mask[dreams][:, dreams].any()


def test_nothing_sees_a_later_step(mask):
    step = torch.arange(mask.shape[0]) // LAYOUT.tokens_per_step
    later = step[None, :] > step[:, None]
    assert not (mask & later).any()


def test_context_sees_all_context_of_own_and_earlier_steps(mask):
    ctx = LAYOUT.roles()
    for q in range(mask.shape[0]):
        q_step = q // 16
        for k in range(mask.shape[0]):
            if ctx[k % 16] == "context" and k // 16 <= q_step:
                assert mask[q, k]


def test_group_indices():
    idx = group_indices(LAYOUT, "action", T)
    assert idx.tolist() == [[14, 15], [30, 31], [46, 47]]
    feats = torch.arange(T * 16).view(1, T * 16, 1).float()  # (B, L, D)
    assert feats[:, idx].shape == (1, T, 2, 1)
    assert group_indices(LAYOUT, "text", T).tolist() == [[0], [16], [32]]


def test_paper_layout():
    layout = TokenLayout.dreamvla()
    assert layout.tokens_per_step == 1 + 1 + 32 + 2 + 54 + 3
    assert layout.step_slice("action") == slice(90, 93)
    assert layout.step_slice("depth") == slice(54, 72)


def test_to_additive_matches_bool_mask_in_sdpa(mask):
    add = to_additive(mask)
    assert add.dtype == torch.float32
    assert (add[mask] == 0).all() and torch.isinf(add[~mask]).all()
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, mask.shape[0], 8, generator=g) for _ in range(3))
    out_bool = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out_add = F.scaled_dot_product_attention(q, k, v, attn_mask=add)
    assert torch.allclose(out_bool, out_add, atol=1e-6) and torch.isfinite(out_bool).all()
    with pytest.raises(ValueError, match="bool"):
        to_additive(add)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: TokenLayout(()), "non-empty"),
        (lambda: TokenLayout((TokenGroup("a", 1, "context"), TokenGroup("a", 2, "context"))), "repeated"),
        (lambda: TokenLayout((TokenGroup("act", 1, "action"),)), "at least one 'context'"),
        (lambda: TokenLayout(("text",)), "TokenGroup"),
        (lambda: TokenGroup("text", 0, "context"), "positive int"),
        (lambda: TokenGroup("text", 1, "image"), "role 'image'"),
        (lambda: TokenGroup("", 1, "context"), "non-empty string"),
        (lambda: block_attention_mask(LAYOUT, 0), "positive int"),
        (lambda: group_indices(LAYOUT, "wrist", 2), "unknown token group 'wrist'"),
    ],
)
def test_layout_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()
