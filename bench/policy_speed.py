"""Policy speed on this machine: ``DreamPolicy.step()`` latency (p50/p95) of a checkpoint on
play-table observations, replanning every step (``action_horizon=1``) and playing whole chunks
(the default), and training throughput (samples/s) of the same model through the real loader.

Usage: MUJOCO_GL=egl python bench/policy_speed.py [--ckpt checkpoints/tiny_D] [--steps 200]
       [--data DIR (CALVIN-format; default: collect 2 short episodes into a temp folder)]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dream_policy.runtime import DreamPolicy, find_schedule
from sim.env import PlayTableEnv
from sim.state_sampler import default_robot_obs, sample_scene_obs

INSTRUCTION = "open the drawer"


def step_latency(ckpt: Path, steps: int, action_horizon: int | None, history_cache: bool,
                 cache: str = "none", kv_cache: bool = True) -> np.ndarray:
    """Seconds per ``step()`` over ``steps`` control steps of the rendered play-table (rendering excluded)."""
    policy = DreamPolicy.from_checkpoint(ckpt, action_horizon=action_horizon, history_cache=history_cache,
                                         cache=cache, kv_cache=kv_cache)
    env = PlayTableEnv("D", render=True)
    rng = np.random.default_rng(0)
    obs, _ = env.reset(options={"robot_obs": default_robot_obs(), "scene_obs": sample_scene_obs(rng, env.cfg)})
    policy.reset()
    times = []
    for i in range(steps + 5):
        t = time.perf_counter()
        action = policy.step(obs, INSTRUCTION)
        if i >= 5:  # warm-up: first calls allocate
            times.append(time.perf_counter() - t)
        obs, *_ = env.step(action)
    env.close()
    return np.asarray(times)


def random_checkpoint(model_name: str, out: Path) -> Path:
    """A randomly initialised checkpoint of ``configs/model/<model_name>.yaml`` (timing only)."""
    from dream_policy.checkpoint import save_checkpoint
    from dream_policy.data.normalization import Normalizer
    from dream_policy.model import DreamVLA, load_model_config

    torch.manual_seed(0)
    config = load_model_config(model_name)
    normalizer = Normalizer(obs_mean=np.zeros(15), obs_std=np.ones(15))
    return save_checkpoint(out, 0, DreamVLA(config).state_dict(), config={"model_config": config.to_dict()},
                           normalization=normalizer.to_dict())


def training_throughput(ckpt: Path, data: Path, steps: int, batch: int) -> float:
    """Samples/s of forward + backward + AdamW on batches from the streaming loader (fp32, this CPU)."""
    from dream_policy.data.loader import CalvinWindowDataset
    from dream_policy.trainer import Trainer, TrainerConfig

    policy = DreamPolicy.from_checkpoint(ckpt)
    model, cfg = policy.model.train(), policy.model.config
    with tempfile.TemporaryDirectory() as out:
        dataset = CalvinWindowDataset(data, "training", history=cfg.backbone.history, chunk=cfg.chunk,
                                      forecast_n=3, stats_path=Path(out) / "stats.json")
        config = TrainerConfig(out_dir=out, lr=1e-4, warmup_steps=0, total_steps=steps + 2, batch_size=batch,
                               eval_every=0, save_every=0, log_every=1, ema_decay=0.999)
        trainer = Trainer(model, dataset, None, config, normalization=dataset.normalizer.to_dict())
        trainer.fit(until_step=2)  # warm-up
        t = time.perf_counter()
        trainer.fit(until_step=steps + 2)
        elapsed = time.perf_counter() - t
        trainer.close()
    return steps * batch / elapsed


def collect_small(out: Path) -> Path:
    from sim.collect import CollectConfig, collect

    collect(CollectConfig(scene="D", num_episodes=2, episode_len=200, out=str(out), workers=1, window=32))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, default=Path("checkpoints/tiny_D"))
    parser.add_argument("--steps", type=int, default=200, help="control steps timed per mode")
    parser.add_argument("--cache", default="auto", help="BAC schedule to time: auto (the checkpoint's) or a path")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--data", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"# policy speed, {datetime.date.today()}, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, 1 thread, checkpoint {args.ckpt}")
    shipped = DreamPolicy.from_checkpoint(args.ckpt)
    params = sum(p.numel() for p in shipped.model.parameters())
    chunk = shipped.model.config.chunk
    print(f"parameters: {params / 1e6:.2f} M; the checkpoint plays {shipped.action_horizon} of {chunk} actions "
          "per sampled chunk")
    modes = [("replan every step, no caches", 1, False, "none"),
             ("replan every step, history cache", 1, True, "none"),
             ("whole chunk, history cache", chunk, True, "none")]
    if find_schedule(args.ckpt, args.cache) is None:
        print(f"(no BAC schedule: cache={args.cache}; pass --cache PATH to time one)")
    else:
        modes += [(f"replan every step, history cache, BAC (cache={args.cache})", 1, True, args.cache),
                  (f"whole chunk, history cache, BAC (cache={args.cache})", chunk, True, args.cache)]
    for name, horizon, history_cache, cache in modes:
        ms = 1000 * step_latency(args.ckpt, args.steps, horizon, history_cache, cache)
        print(f"step() {name}: p50 {np.percentile(ms, 50):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms, "
              f"mean {ms.mean():.1f} ms over {len(ms)} steps")
    with tempfile.TemporaryDirectory() as tmp:  # the key/value history cache needs a streaming backbone
        stream = random_checkpoint("tiny_streaming", Path(tmp))
        for name, kv_cache in (("window recomputed", False), ("keys/values kept (kv cache)", True)):
            ms = 1000 * step_latency(stream, args.steps, 1, True, "none", kv_cache=kv_cache)
            print(f"step() tiny_streaming (random weights), replan every step, {name}: "
                  f"p50 {np.percentile(ms, 50):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms")
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or collect_small(Path(tmp) / "data")
        rate = training_throughput(args.ckpt, data, args.train_steps, args.batch)
    print(f"training (fp32, batch {args.batch}, loader in-process): {rate:.1f} samples/s")


if __name__ == "__main__":
    main()
