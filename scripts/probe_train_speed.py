"""Training steps per second of a model on a packed data set, measured with the real Trainer.

    python scripts/probe_train_speed.py DATA [--model tiny] [--batch 512] [--precision bf16] [--steps 60]
        [--set lang_query=4 ...]

``scripts/train_shipped.sh`` uses it to size the cosine schedule (``trainer.total_steps``) to the time
it has: the first ``--warmup`` steps (CUDA start-up, allocator) are not counted. Prints one line,
``steps_per_s=<float>``, last.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import yaml

from dream_policy.data.packed import PackedWindowDataset
from dream_policy.model import DreamVLA, DreamVLAConfig, load_model_config, merge_config
from dream_policy.trainer import Trainer, TrainerConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="a packed data set (dream-policy pack)")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--precision", default="bf16" if torch.cuda.is_available() else "fp32")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=15, help="steps not counted (start-up, compilation)")
    parser.add_argument("--forecast-n", type=int, default=3)
    parser.add_argument("--compile", default=None, help="trainer.compile mode (default: off)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a top-level model config field to change (YAML value), e.g. --set lang_query=4")
    args = parser.parse_args()
    cfg = load_model_config(args.model)
    if args.set:
        changes = {}
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                parser.error(f"--set needs FIELD=VALUE, got {item!r}")
            changes[key] = yaml.safe_load(value)
        cfg = DreamVLAConfig.from_dict(merge_config(cfg.to_dict(), changes))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    data = PackedWindowDataset(args.data, "training", history=cfg.backbone.history, chunk=cfg.chunk,
                               forecast_n=args.forecast_n, device=device, image_size=cfg.vision.image_size,
                               target_size=cfg.world.target_size)
    with tempfile.TemporaryDirectory() as out:
        config = TrainerConfig(out_dir=out, lr=1e-3, warmup_steps=10, total_steps=args.warmup + args.steps,
                               ema_decay=0.999, batch_size=args.batch, eval_every=0, save_every=0,
                               log_every=10**9, precision=args.precision, compile=args.compile)
        trainer = Trainer(DreamVLA(cfg), data, None, config)
        trainer.fit(until_step=args.warmup)
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        trainer.fit()
        sync()
        elapsed = time.perf_counter() - start
        trainer.close()
    rate = args.steps / elapsed
    print(f"batch={args.batch} precision={args.precision} device={device} samples_per_s={rate * args.batch:.0f}")
    print(f"steps_per_s={rate:.3f}")


if __name__ == "__main__":
    main()
