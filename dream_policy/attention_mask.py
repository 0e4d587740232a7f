"""DreamVLA's block-structured attention mask over a history window.

Every timestep contributes the same token layout: context tokens (group A: text, state, image
tokens, CLS) and query tokens (group B: dream queries, action queries). The rules:

- time is block-causal: no token sees a later timestep;
- context tokens see every context token of their own and earlier timesteps;
- no token sees any query token, so dream queries read only context tokens (never another dream
  query, nor themselves) and the three forecasts stay disentangled;
- the exception: action queries see the dream queries of their own timestep (only of that one).

Action queries therefore do not see themselves or other action queries. Every row keeps at least
the context tokens of its own timestep, so no row is empty (a layout must have a context group).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CONTEXT, DREAM, ACTION = "context", "dream", "action"
ROLES = (CONTEXT, DREAM, ACTION)


@dataclass(frozen=True)
class TokenGroup:
    """``size`` consecutive tokens of one kind within a timestep; ``role`` is one of ``ROLES``."""

    name: str
    size: int
    role: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"TokenGroup.name must be a non-empty string, got {self.name!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"TokenGroup {self.name!r}: size must be a positive int, got {self.size!r}")
        if self.role not in ROLES:
            raise ValueError(f"TokenGroup {self.name!r}: role {self.role!r} is not one of {list(ROLES)}")


@dataclass(frozen=True)
class TokenLayout:
    """The token groups of one timestep, in sequence order."""

    groups: tuple[TokenGroup, ...]

    def __post_init__(self) -> None:
        groups = tuple(self.groups)
        object.__setattr__(self, "groups", groups)
        if not groups or not all(isinstance(g, TokenGroup) for g in groups):
            raise ValueError(f"TokenLayout.groups must be a non-empty sequence of TokenGroup, got {groups!r}")
        names = [g.name for g in groups]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"TokenLayout: group names must be unique, repeated: {duplicates}")
        if not any(g.role == CONTEXT for g in groups):
            raise ValueError(
                f"TokenLayout needs at least one {CONTEXT!r} group (it keeps every attention row "
                f"non-empty), got roles {[g.role for g in groups]}"
            )

    @classmethod
    def dreamvla(
        cls,
        views: tuple[str, ...] = ("static", "gripper"),
        image_tokens: int = 16,
        dream_per_view: int = 9,
        action_queries: int = 3,
    ) -> TokenLayout:
        """The paper's layout: A = [text, state, image tokens per view, CLS per view],
        B = [dynamic, depth, semantic dream queries (``dream_per_view`` per view each), actions]."""
        context = [TokenGroup("text", 1, CONTEXT), TokenGroup("state", 1, CONTEXT)]
        context += [TokenGroup(f"image_{v}", image_tokens, CONTEXT) for v in views]
        context += [TokenGroup(f"cls_{v}", 1, CONTEXT) for v in views]
        dream_size = dream_per_view * len(views)
        queries = [TokenGroup(kind, dream_size, DREAM) for kind in ("dynamic", "depth", "semantic")]
        return cls((*context, *queries, TokenGroup("action", action_queries, ACTION)))

    @property
    def tokens_per_step(self) -> int:
        return sum(g.size for g in self.groups)

    def step_slice(self, name: str) -> slice:
        """Positions of group ``name`` within one timestep."""
        start = 0
        for g in self.groups:
            if g.name == name:
                return slice(start, start + g.size)
            start += g.size
        raise ValueError(f"unknown token group {name!r}; groups: {[g.name for g in self.groups]}")

    def roles(self) -> list[str]:
        """The role of every token of one timestep, in order."""
        return [g.role for g in self.groups for _ in range(g.size)]


def _check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps (number of timesteps) must be a positive int, got {steps!r}")


def block_attention_mask(
    layout: TokenLayout, steps: int, device: torch.device | str | None = None, window: int | None = None
) -> torch.Tensor:
    """Bool mask (L, L), L = steps * layout.tokens_per_step; [query, key] True = may attend.

    Usable directly as ``attn_mask`` of ``F.scaled_dot_product_attention`` (True = take part).
    ``window``: a timestep sees the context of itself and of the ``window - 1`` timesteps before it
    only (the streaming backbone's sliding window); None: of every earlier timestep.
    """
    _check_steps(steps)
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(f"window must be a positive int or None, got {window!r}")
    per_step = layout.tokens_per_step
    roles = layout.roles()
    is_context = torch.tensor([r == CONTEXT for r in roles], device=device).repeat(steps)  # (L,)
    is_dream = torch.tensor([r == DREAM for r in roles], device=device).repeat(steps)  # (L,)
    is_action = torch.tensor([r == ACTION for r in roles], device=device).repeat(steps)  # (L,)
    step = torch.arange(steps * per_step, device=device) // per_step  # (L,)
    q_step, k_step = step[:, None], step[None, :]  # (L, 1), (1, L)
    sees_context = is_context[None, :] & (k_step <= q_step)  # (L, L)
    if window is not None:
        sees_context &= q_step - k_step < window
    action_sees_dream = is_action[:, None] & is_dream[None, :] & (k_step == q_step)  # (L, L)
    return sees_context | action_sees_dream


def group_indices(
    layout: TokenLayout, name: str, steps: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Long (steps, size): sequence positions of group ``name`` at each timestep.

    ``features[:, group_indices(layout, "action", T)]`` turns (B, L, D) into (B, T, size, D).
    """
    _check_steps(steps)
    s = layout.step_slice(name)
    within = torch.arange(s.start, s.stop, device=device)  # (size,)
    return torch.arange(steps, device=device)[:, None] * layout.tokens_per_step + within[None, :]


def to_additive(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Float mask (L, L): 0 where ``mask`` is True, -inf where False (for additive attention biases)."""
    if mask.dtype != torch.bool:
        raise ValueError(f"to_additive expects a bool mask, got dtype {mask.dtype}")
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))
