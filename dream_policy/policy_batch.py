"""Several policies on one network, stepped together: one batched network call per control step.

``DreamPolicy.sibling`` makes policies that share a network; ``step_batch`` steps each of them on its own
observation and instruction (``step``'s contract, policy by policy) but samples all the chunks the step
needs in one call: the new frames of every policy through the vision encoder at once, the windows through
the backbone as one batch, and the DiT head over all the rows. Each row's starting noise comes from its
own policy's generator, so a policy's actions do not depend on which others share the batch, up to the
rounding of batched matrix products (~1e-6). The CALVIN evaluator runs chains in lockstep with it
(``dream-policy eval batch=E``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from dream_policy.data.loader import preprocess_history
from dream_policy.data.normalization import clip_actions
from dream_policy.dit_cache import CachedBlocks
from dream_policy.runtime import OBSERVATION_KEYS, DreamPolicy


def step_batch(policies: Sequence[DreamPolicy], observations: Sequence[dict[str, Any]],
               instructions: Sequence[str]) -> list[np.ndarray]:
    """One action per policy, as ``policy.step(obs, instruction)`` gives it, with one network call."""
    if not len(policies) == len(observations) == len(instructions):
        raise ValueError(f"step_batch needs one observation and instruction per policy, got {len(policies)} "
                         f"policies, {len(observations)} observations, {len(instructions)} instructions")
    needs = [p.begin_step(o, i) for p, o, i in zip(policies, observations, instructions, strict=True)]
    rows = [k for k, need in enumerate(needs) if need]
    chunks = dict(zip(rows, sample_chunks([policies[k] for k in rows], [instructions[k] for k in rows]),
                      strict=True))
    return [p.finish_step(chunks.get(k)) for k, p in enumerate(policies)]


@torch.no_grad()
def sample_chunks(policies: Sequence[DreamPolicy], instructions: Sequence[str]) -> list[np.ndarray]:
    """``policy.sample_chunk(instruction)`` for each policy (all on one network and cache schedule), as
    one batch: a chunk (chunk, 7) each."""
    if not policies:
        return []
    first = policies[0]
    for p in policies[1:]:
        if p.model is not first.model or p.schedule is not first.schedule:
            raise ValueError("sample_chunks batches policies on one network and cache schedule; make them "
                             "with DreamPolicy.sibling()")
    conds = conditions(policies, instructions)  # (B, A, D)
    noise = torch.cat([p.start_noise() for p in policies])  # (B, chunk, 7), each from its own generator
    hook = CachedBlocks(first.schedule) if first.schedule is not None else None
    chunks = first.model.sample_actions(conds, block_hook=hook, noise=noise)
    return [clip_actions(chunk) for chunk in chunks.cpu().numpy().astype(np.float64)]


def conditions(policies: Sequence[DreamPolicy], instructions: Sequence[str]) -> torch.Tensor:
    """The DiT conditions (B, A, D) of the policies' histories, in order. Windows of one length go through
    the backbone together; a policy that streams its keys and values (``kv_cache``) computes its own."""
    for p in policies:
        if not p._frames:
            raise RuntimeError("sample_chunks needs a history: observe(obs) at least one frame per policy")
    encode_missing(policies)
    conds: dict[int, torch.Tensor] = {}
    groups: dict[tuple, list[int]] = {}
    for k, p in enumerate(policies):
        if p.kv_cache:
            conds[k] = p.condition(instructions[k])
        else:
            groups.setdefault((len(p._frames) if p.streaming else p.history_len, p.history_cache), []).append(k)
    model = policies[0].model
    for members in groups.values():
        batch = stack([policies[k]._batch(instructions[k]) for k in members])
        for k, cond in zip(members, model.features(batch)["action"].split(1), strict=True):
            policies[k].sink(cond)
            conds[k] = cond
    return torch.cat([conds[k] for k in range(len(policies))])


def encode_missing(policies: Sequence[DreamPolicy]) -> None:
    """Encode every frame the policies' history caches lack in one call (frames are encoded one by one:
    their tokens do not depend on their neighbours)."""
    todo = [(p, i) for p in policies if p.history_cache for i, t in enumerate(p._frame_tokens) if t is None]
    if not todo:
        return
    first = policies[0]
    obs = preprocess_history([p._frames[i] for p, i in todo], OBSERVATION_KEYS, first.normalizer)
    encoded = first.model.encode_frames({k: v[None].to(first.device) for k, v in obs.items()})  # (1, n, ...)
    for j, (p, i) in enumerate(todo):
        p._frame_tokens[i] = {g: x[:, j:j + 1] for g, x in encoded.items()}


def stack(batches: Sequence[Any]) -> Any:
    """Batches of one row each (nested dicts of tensors (1, ...)) as one batch, concatenated on dim 0."""
    if isinstance(batches[0], dict):
        return {key: stack([b[key] for b in batches]) for key in batches[0]}
    return torch.cat(list(batches))
