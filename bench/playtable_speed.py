"""Play-table speed: control steps per second without cameras, with the fast camera rig (sim/cameras.py)
and with the old one-``mujoco.Renderer``-per-camera rendering, all measured in one process.

Also the scripted expert's evaluation throughput: CALVIN chains per minute through the evaluator
(cameras on, as ``dream-policy eval`` runs), in-process and with 2 worker processes.

Usage: MUJOCO_GL=egl python bench/playtable_speed.py [--steps N] [--scene D] [--chains N]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
import time

import mujoco
import numpy as np

from sim.cameras import CAMERAS, segment_ids
from sim.chains import generate_chains
from sim.env import PlayTableEnv
from sim.evaluate import evaluate
from sim.scene_config import SceneConfig

WARMUP_STEPS = 30
BAR_STEPS_PER_S = 200  # the target for rendered control steps on a 2-core CPU


class RendererCameras:
    """The previous rig, as the baseline: a ``mujoco.Renderer`` per camera, one pass per image kind."""

    def __init__(self, model: mujoco.MjModel, seg_ids: np.ndarray, segmentation: bool) -> None:
        self.renderers = {c.name: mujoco.Renderer(model, c.size, c.size) for c in CAMERAS}
        self.seg_ids, self.segmentation = seg_ids, segmentation

    def render(self, data: mujoco.MjData) -> dict[str, np.ndarray]:
        out = {}
        for c in CAMERAS:
            r = self.renderers[c.name]
            r.update_scene(data, c.name)
            out[f"rgb_{c.name}"] = r.render()
            r.enable_depth_rendering()
            out[f"depth_{c.name}"] = np.minimum(r.render(), c.far).astype(np.float32)
            r.disable_depth_rendering()
            if self.segmentation:
                r.enable_segmentation_rendering()
                geom = r.render()[..., 0]
                r.disable_segmentation_rendering()
                out[f"seg_{c.name}"] = np.where(geom >= 0, self.seg_ids[np.maximum(geom, 0)], 0).astype(np.uint8)
        return out

    def close(self) -> None:
        for r in self.renderers.values():
            r.close()


def make_env(scene: str, variant: str) -> PlayTableEnv:
    """variant: physics | fast | fast_seg | renderer | renderer_seg."""
    fast = variant.startswith("fast")
    env = PlayTableEnv(SceneConfig(name=scene, render=fast, segmentation=variant.endswith("_seg")))
    if variant.startswith("renderer"):
        p = env.physics
        env.cameras = RendererCameras(p.model, segment_ids(p.geom_owner), variant.endswith("_seg"))
    return env


def steps_per_second(env: PlayTableEnv, steps: int, seed: int = 0) -> float:
    """Control steps/s under small random relative actions (a random walk of the gripper), after a warm-up."""
    rng = np.random.default_rng(seed)
    actions = np.concatenate([rng.uniform(-0.2, 0.2, (WARMUP_STEPS + steps, 6)),
                              np.sign(rng.uniform(-1, 1, (WARMUP_STEPS + steps, 1)))], axis=1)
    env.reset(seed=seed)
    for a in actions[:WARMUP_STEPS]:
        env.step(a)
    start = time.perf_counter()
    for a in actions[WARMUP_STEPS:]:
        env.step(a)
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="timed control steps per variant")
    parser.add_argument("--rounds", type=int, default=2, help="variants run interleaved this often; best kept")
    parser.add_argument("--scene", default="D")
    parser.add_argument("--chains", type=int, default=10, help="chains for the expert throughput (0: skip)")
    args = parser.parse_args()
    if args.steps < 1 or args.rounds < 1:
        parser.error(f"--steps and --rounds must be >= 1, got {args.steps} and {args.rounds}")

    variants = {
        "physics": "no cameras (render=False)",
        "fast": "cameras.py: RGB+depth, both cameras",
        "fast_seg": "cameras.py: RGB+depth+segmentation",
        "renderer": "mujoco.Renderer: RGB+depth (old way)",
        "renderer_seg": "mujoco.Renderer: RGB+depth+seg (old default)",
    }
    envs = {name: make_env(args.scene, name) for name in variants}
    # Interleaved rounds, best kept: other jobs on the machine only ever slow a round down.
    rates = {name: 0.0 for name in variants}
    for _ in range(args.rounds):
        for name, env in envs.items():
            rates[name] = max(rates[name], steps_per_second(env, args.steps))
    for env in envs.values():
        env.close()

    print(f"# Play-table speed, scene {args.scene}, best of {args.rounds} rounds of {args.steps} steps "
          f"per variant (+{WARMUP_STEPS} warm-up steps each)")
    print(f"# {datetime.datetime.now():%Y-%m-%d %H:%M}, {platform.processor() or platform.machine()}, "
          f"{len(os.sched_getaffinity(0))} cores usable ({os.cpu_count()} total), "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
          f"MUJOCO_GL={os.environ.get('MUJOCO_GL')}, LP_NUM_THREADS={os.environ.get('LP_NUM_THREADS')}")
    print(f"| {'variant':<13} | {'steps/s':>8} | {'ms/step':>8} | what")
    print(f"|{'-' * 15}|{'-' * 10}|{'-' * 10}|------")
    for name, what in variants.items():
        print(f"| {name:<13} | {rates[name]:8.1f} | {1e3 / rates[name]:8.2f} | {what}")
    print(f"fast / renderer = {rates['fast'] / rates['renderer']:.2f}x, "
          f"fast_seg / renderer_seg = {rates['fast_seg'] / rates['renderer_seg']:.2f}x, "
          f"fast / physics = {rates['fast'] / rates['physics']:.2f}, "
          f"fast_seg / fast = {rates['fast_seg'] / rates['fast']:.2f}")
    camera_ms = {k: 1e3 / rates[k] - 1e3 / rates["physics"] for k in variants if k != "physics"}
    print("camera ms/step (variant minus physics): " + ", ".join(f"{k} {v:.2f}" for k, v in camera_ms.items()))
    print(f"bar >= {BAR_STEPS_PER_S} rendered steps/s (fast): {'met' if rates['fast'] >= BAR_STEPS_PER_S else 'missed'}")
    if args.chains > 0:
        report_expert_throughput(args.chains, args.scene)


def chains_per_minute(n_chains: int, workers: int, scene: str) -> tuple[float, float]:
    """(chains per minute, avg_seq_len) of the expert on CALVIN's first ``n_chains`` chains."""
    chains = list(enumerate(generate_chains(1000)[:n_chains]))
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        results = evaluate(chains, "expert", {"scene": scene}, scene=scene, workers=workers, out_dir=out)
        minutes = (time.perf_counter() - start) / 60
    return n_chains / minutes, results["avg_seq_len"]


def report_expert_throughput(n_chains: int, scene: str) -> None:
    rates = {w: chains_per_minute(n_chains, w, scene) for w in (1, 2)}
    print(f"# Expert evaluation throughput, CALVIN chains 0-{n_chains - 1}, cameras on, start-up included")
    for workers, (rate, avg_len) in rates.items():
        print(f"expert eval, {workers} worker(s): {rate:.1f} chains/min (avg_seq_len {avg_len:.2f})")
    print(f"2 workers / 1 worker = {rates[2][0] / rates[1][0]:.2f}x")


if __name__ == "__main__":
    main()
