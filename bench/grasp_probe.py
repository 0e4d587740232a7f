"""Where does a policy close its gripper? The first subtask of CALVIN's evaluation chains of one task
family (lift, rotate, push, ...), run like the evaluation runs it (same start states, instructions,
seeds and 360-step budget), with every gripper closing recorded against the blocks.

    MUJOCO_GL=egl python bench/grasp_probe.py --family lift --attempts 24 [--policy expert]
        [--ckpt checkpoints/tiny_D] [--noise-scale s] [--ensemble-decay m] [--out F.json] [--plot F.png]

For each closing (the gripper command going from open to close) it records the named block's position
relative to the TCP and which block was nearest; per family it prints the success rate, how often the
first closing was nearest the named block, and the median distance and mean offset (x, y, z) from the
TCP to the named block at the first closing, and how far the TCP follows the block across attempts
(``first_close_tracking``: the slope of the TCP's x and y at the first closings on the block's; 1 follows
it, 0 goes to one place wherever the block is). The scripted expert closes within millimetres of the block
(a reference for what the task needs); a policy's offsets say whether it goes to the wrong block, or
to the right one but not close enough, and in which direction.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from sim.chains import Chain, generate_chains
from sim.snapshot import BLOCKS

COLOURS = {f"_{b.split('_')[1]}_": b for b in BLOCKS}  # "_red_" -> "block_red"


def named_block(task: str) -> str | None:
    """The block a task names ("lift_red_block_table" -> "block_red"), None if it names none."""
    found = [block for key, block in COLOURS.items() if key in f"_{task}_"]
    return found[0] if len(found) == 1 else None


def close_events(gripper: np.ndarray, tcp: np.ndarray, blocks: dict[str, np.ndarray], named: str
                 ) -> list[dict[str, Any]]:
    """Every step where the gripper command goes from open (> 0) to close (<= 0), the command before the
    first step counting as open: the step, the named block's offset from the TCP (block - tcp, metres),
    the block nearest the TCP, and the TCP's and the named block's positions (``tcp``, ``block``).
    ``gripper`` (T,), ``tcp`` (T, 3), ``blocks[name]`` (T, 3)."""
    if named not in blocks:
        raise KeyError(f"named block {named!r} is not among the recorded blocks {sorted(blocks)}")
    previous = np.concatenate([[1.0], gripper[:-1]])
    events = []
    for t in np.flatnonzero((gripper <= 0) & (previous > 0)):
        offsets = {name: pos[t] - tcp[t] for name, pos in blocks.items()}
        nearest = min(offsets, key=lambda name: float(np.linalg.norm(offsets[name])))
        events.append({"step": int(t), "offset": offsets[named].round(4).tolist(), "nearest": nearest,
                       "tcp": np.round(tcp[t], 4).tolist(), "block": np.round(blocks[named][t], 4).tolist()})
    return events


def summarise(attempts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Success rate, first closings nearest the named block, median |offset| and mean offset at them."""
    if not attempts:
        raise ValueError("no attempts to summarise")
    closed = [a for a in attempts if a["closes"]]
    firsts = [a["closes"][0] for a in closed]
    offsets = np.array([c["offset"] for c in firsts]).reshape(-1, 3)
    return {
        "attempts": len(attempts),
        "success": float(np.mean([a["success"] for a in attempts])),
        "closed": len(firsts),
        "first_close_on_named": float(np.mean([a["closes"][0]["nearest"] == a["named"] for a in closed]))
        if firsts else float("nan"),
        "first_close_median_dist": float(np.median(np.linalg.norm(offsets, axis=1))) if firsts else float("nan"),
        "first_close_mean_offset": offsets.mean(axis=0).round(4).tolist() if firsts else [],
        "closes_per_attempt": float(np.mean([len(a["closes"]) for a in attempts])),
        "first_close_tracking": tracking([c["tcp"] for c in firsts if "tcp" in c],
                                         [c["block"] for c in firsts if "block" in c]),
    }


def tracking(tcp: Sequence[Sequence[float]], block: Sequence[Sequence[float]]) -> list[float]:
    """How far the TCP follows the named block across attempts, per horizontal axis: the least-squares slope
    of the TCP's x (y) at the first closings on the block's x (y). 1: it goes wherever the block is; 0: it goes
    to one place whatever the block's position (nan with fewer than 3 closings or blocks that never move)."""
    tcp_xy, block_xy = np.asarray(tcp, float).reshape(-1, 3)[:, :2], np.asarray(block, float).reshape(-1, 3)[:, :2]
    if len(tcp_xy) < 3:
        return [float("nan"), float("nan")]
    spread = block_xy - block_xy.mean(axis=0)
    var = (spread ** 2).sum(axis=0)
    cov = (spread * (tcp_xy - tcp_xy.mean(axis=0))).sum(axis=0)
    return [round(float(c / v), 3) if v > 1e-12 else float("nan") for c, v in zip(cov, var)]


_WORKER: dict[str, Any] = {}


def _rollout(job: tuple[int, Chain, str, dict[str, Any], int]) -> dict[str, Any]:
    from sim.annotations import eval_instruction
    from sim.evaluate import make_backend, seed_chain
    from sim.policy import make_policy
    from sim.symbolic_state import physical_state

    index, chain, policy_name, options, ep_len = job
    if "env" not in _WORKER:
        _WORKER["env"], _WORKER["oracle"] = make_backend("D", True)
        _WORKER["policy"] = make_policy(policy_name, **options)
    env, oracle, policy = _WORKER["env"], _WORKER["oracle"], _WORKER["policy"]
    seed_chain(policy, index)  # the evaluation's seed for this chain
    robot_obs, scene_obs = physical_state(chain.initial_state)
    obs, _ = env.reset(options={"robot_obs": robot_obs, "scene_obs": scene_obs})
    task = chain.tasks[0]
    policy.reset()
    instruction, start = eval_instruction(task), env.snapshot()
    gripper, tcp, blocks = [], [], {b: [] for b in BLOCKS}
    success, steps = False, ep_len
    for t in range(ep_len):
        action = policy.step(obs, instruction)
        snap = env.snapshot()
        gripper.append(float(action[6]))
        tcp.append(snap.robot_obs[:3].copy())
        for b in BLOCKS:
            blocks[b].append(snap.block_pos(b).copy())
        obs, _, _, _, info = env.step(action)
        if oracle.succeeded(task, start, info["snapshot"]):
            success, steps = True, t + 1
            break
    named = named_block(task)
    closes = close_events(np.array(gripper), np.array(tcp), {b: np.array(v) for b, v in blocks.items()},
                          named) if named else []
    return {"chain": index, "task": task, "named": named, "success": success, "steps": steps, "closes": closes}


def run(policy_name: str, options: dict[str, Any], family: str, attempts: int, workers: int, ep_len: int
        ) -> list[dict[str, Any]]:
    chains = [(i, c) for i, c in enumerate(generate_chains(1000)) if c.tasks[0].startswith(family)][:attempts]
    if not chains:
        raise ValueError(f"no evaluation chain starts with a {family!r} task")
    jobs = [(i, c, policy_name, options, ep_len) for i, c in chains]
    if workers <= 1:  # in this process ('spawn' workers: MuJoCo/EGL contexts must not be inherited)
        out = [_rollout(job) for job in tqdm(jobs, desc=f"{family} attempts")]
        _WORKER.pop("env").close()
        _WORKER.clear()
    else:
        with mp.get_context("spawn").Pool(workers) as pool:
            out = list(tqdm(pool.imap_unordered(_rollout, jobs), total=len(jobs), desc=f"{family} attempts"))
    return sorted(out, key=lambda a: a["chain"])


def plot(attempts: Sequence[dict[str, Any]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for label, colour, keep in (("nearest the named block", "tab:green", True), ("nearest another block", "tab:red", False)):
        pts = np.array([c["offset"][:2] for a in attempts for c in a["closes"][:1]
                        if (c["nearest"] == a["named"]) == keep]).reshape(-1, 2)
        ax.scatter(-pts[:, 0] * 100, -pts[:, 1] * 100, c=colour, label=label, s=25)
    ax.scatter([0], [0], marker="+", c="k", s=200, label="named block")
    ax.set_xlabel("TCP x - block x at first closing (cm)")
    ax.set_ylabel("TCP y - block y (cm)")
    ax.set_title(title, fontsize=9)
    ax.axis("equal")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="checkpoint", choices=("checkpoint", "expert"))
    parser.add_argument("--ckpt", default="checkpoints/tiny_D")
    parser.add_argument("--cache", default="auto", help="DiT cache: auto (the checkpoint's schedule, as the eval), none, or a path")
    parser.add_argument("--noise-scale", type=float, default=None)
    parser.add_argument("--action-horizon", type=int, default=None)
    parser.add_argument("--ensemble-decay", type=float, default=None)
    parser.add_argument("--gripper-hold", type=int, default=None, help="gripper changes after n requests (1: off)")
    parser.add_argument("--family", default="lift", help="task name prefix: lift, rotate, push, ...")
    parser.add_argument("--attempts", type=int, default=24)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ep-len", type=int, default=360)
    parser.add_argument("--out", type=Path, default=None, help="write every attempt's closings as JSON")
    parser.add_argument("--plot", type=Path, default=None, help="scatter of the first closings (PNG)")
    args = parser.parse_args(argv)
    options: dict[str, Any] = {"scene": "D"}
    if args.policy == "checkpoint":
        options = {"ckpt": args.ckpt, "cache": args.cache}
        for key in ("noise_scale", "action_horizon", "ensemble_decay", "gripper_hold"):
            if getattr(args, key) is not None:
                options[key] = getattr(args, key)
    attempts = run(args.policy, options, args.family, args.attempts, args.workers, args.ep_len)
    for a in attempts:
        first = a["closes"][0] if a["closes"] else None
        where = f"first close t={first['step']} offset {first['offset']} nearest {first['nearest']}" if first else "never closed"
        print(f"chain {a['chain']:4d} {a['task']:26s} {'ok  ' if a['success'] else 'fail'} "
              f"closes {len(a['closes'])}  {where}")
    summary = summarise(attempts)
    label = args.policy if args.policy == "expert" else f"{args.ckpt} {options}"
    print(f"# grasp probe, {label}, family {args.family}")
    print(json.dumps(summary))
    if args.out:
        args.out.write_text(json.dumps({"policy": label, "summary": summary, "attempts": attempts}, indent=1))
    if args.plot:
        plot(attempts, f"{label}\n{args.family}: success {summary['success']:.2f}, first closings", args.plot)


if __name__ == "__main__":
    main()
