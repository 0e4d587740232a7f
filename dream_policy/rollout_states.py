"""The DiT conditions a policy samples its chunks from in closed loop on the play-table.

A cache schedule calibrated on dataset windows (the expert's states) is judged on the policy's own
states, and those drift away from the expert's as soon as the policy errs. ``closed_loop_conditions``
runs the policy on CALVIN's evaluation protocol (``sim.evaluate.run_chain``) for a range of CALVIN's
chains and records every condition it samples from (``DreamPolicy.condition_sink``): the calibration
states of ``dream-policy calibrate-cache states=rollouts``. The default range, chains 300 onwards, stays
clear of the chains 0-299 that ``bench/RESULTS.md`` reports closed-loop results on.
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm import tqdm


def closed_loop_conditions(policy: Any, first: int, num_chains: int, scene: str = "D", ep_len: int = 360,
                           seed: int = 0, show_progress: bool = True) -> tuple[torch.Tensor, dict[str, Any]]:
    """(conditions (N, A, D), summary) of ``policy`` (a ``DreamPolicy``) on CALVIN's chains
    ``first`` .. ``first + num_chains - 1`` of ``scene``; each chain is seeded ``seed + index`` as in eval."""
    from sim.evaluate import make_backend, run_chain, seed_chain, select_chains

    chains = select_chains(num_chains, None, None, first)
    recorded: list[torch.Tensor] = []
    previous, policy.condition_sink = policy.condition_sink, recorded.append
    env, oracle = make_backend(scene, True)
    successes = []
    try:
        bar = tqdm(chains, desc="closed-loop calibration states", unit="chain", disable=not show_progress)
        for index, chain in bar:
            seed_chain(policy, seed + index)
            successes.append(run_chain(env, policy, chain, oracle, ep_len, False, index).record()["num_successes"])
            bar.set_postfix(states=len(recorded), avg_seq_len=f"{sum(successes) / len(successes):.2f}")
    finally:
        policy.condition_sink = previous
        env.close()
    if not recorded:
        raise ValueError("the rollouts recorded no DiT condition (ep_len too short?)")
    summary = {"states": "rollouts", "scene": scene, "chains": [first, first + num_chains - 1], "ep_len": ep_len,
               "seed": seed, "recorded": len(recorded), "avg_seq_len": round(sum(successes) / len(successes), 3)}
    return torch.cat(recorded), summary
