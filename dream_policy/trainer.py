"""One generic trainer for any ``nn.Module`` whose ``forward(batch)`` returns ``(loss, info)``.

``info`` maps names to Python floats or scalar tensors (logged as they are). Features: AdamW
(no weight decay on biases, norms and embeddings), linear warmup + cosine (``schedule.lr_at``),
gradient clipping, an EMA of the weights (validation runs on it), TensorBoard + ``metrics.csv`` +
``loss.png`` in ``out_dir``, atomic checkpoints in ``out_dir/checkpoints`` and exact resume.

Exact resume: a checkpoint holds the weights, EMA, optimizer, global step, the data position
(epoch and batches consumed in it) and every rank's python/numpy/torch RNG states. On resume the
data loader restarts the saved epoch (``set_epoch(epoch)`` on datasets that have it; map-style
datasets are shuffled from (seed, epoch) by ``EpochSampler``), skips the consumed batches, and only
then restores the RNG states, so the run continues exactly as if it had never stopped. Validation
runs under a fixed seed with the training RNG saved and restored around it, so ``eval_every`` does
not change the training trajectory.

Distributed (``torchrun --nproc_per_node=N ...``, multi-node likewise): when the torch.distributed
environment variables (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) are set, the trainer joins the
process group (nccl on CUDA, gloo on CPU), wraps the model in DistributedDataParallel, logs and
saves on rank 0 only and averages validation metrics over ranks. ``batch_size`` is per rank.
Datasets are sharded per rank as follows:

* map-style datasets: by ``EpochSampler`` (each rank a contiguous, equal part of the epoch order);
* ``IterableDataset`` with ``set_rank(rank, world_size)``: the trainer calls it;
* other ``IterableDataset``: give the rank to its constructor (``CalvinWindowDataset(...,
  rank=r, world_size=w)``), or build it after ``init_distributed()``, from which it reads them;
  the trainer checks its ``rank``/``world_size`` attributes and refuses a mismatch.

Every rank must yield the same number of batches per epoch (DDP steps in lockstep).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler
from tqdm import tqdm

from .checkpoint import (
    EMA_WEIGHTS,
    load_tensors,
    load_trainer_state,
    load_weights,
    resolve_checkpoint,
    save_checkpoint,
)
from .schedule import lr_at

PRECISIONS = ("fp32", "bf16")
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped before applying that update."""


@dataclass
class TrainerConfig:
    """Training hyper-parameters; every check names the bad field and value."""

    out_dir: str = "runs/train"
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 1000
    total_steps: int = 100_000
    min_lr_ratio: float = 0.1
    grad_clip: float | None = 1.0  # None or 0: no clipping
    ema_decay: float | None = None  # None: no EMA
    batch_size: int = 32  # per rank
    eval_every: int = 1000  # 0: only at the end
    save_every: int = 5000  # 0: only at the end
    log_every: int = 50
    keep_last: int = 3
    seed: int = 0
    precision: str = "fp32"  # "bf16": autocast on CUDA only; fp32 on CPU
    num_workers: int = 0
    find_unused_parameters: bool = False
    time_limit_min: float | None = None  # stop (and save) once fit() has run this many minutes
    # torch.compile the training forward: None (off), "default", "reduce-overhead" (CUDA graphs) or
    # "max-autotune". Small models on a GPU are bound by kernel launches (the tiny DreamVLA runs ~13k
    # kernels per step), which compilation fuses. compile_backend "aot_eager" checks the capture quickly.
    compile: str | None = None
    compile_backend: str = "inductor"

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]  # YAML gives a list
        checks = {
            "lr": self.lr > 0, "weight_decay": self.weight_decay >= 0,
            "betas": len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "warmup_steps": 0 <= self.warmup_steps <= self.total_steps, "total_steps": self.total_steps > 0,
            "min_lr_ratio": 0 <= self.min_lr_ratio <= 1,
            "grad_clip": self.grad_clip is None or self.grad_clip >= 0,
            "ema_decay": self.ema_decay is None or 0 < self.ema_decay < 1,
            "batch_size": self.batch_size >= 1, "eval_every": self.eval_every >= 0,
            "save_every": self.save_every >= 0, "log_every": self.log_every >= 1, "keep_last": self.keep_last >= 1,
            "precision": self.precision in PRECISIONS, "num_workers": self.num_workers >= 0,
            "time_limit_min": self.time_limit_min is None or self.time_limit_min > 0,
            "compile": self.compile in COMPILE_MODES,
        }
        bad = [f"{name}={getattr(self, name)!r}" for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid TrainerConfig: {', '.join(bad)} (lr > 0, 0 <= warmup_steps <= total_steps, "
                             f"betas in [0, 1), 0 < ema_decay < 1 or None, precision in {PRECISIONS}, ...)")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainerConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrainerConfig key(s) {unknown}; valid keys: {sorted(known)}")
        return cls(**values)


# ---- EMA ---------------------------------------------------------------------------------------


class EMA:
    """Exponential moving average of a model's state_dict; the decay ramps up as min(decay, (1+n)/(10+n))."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay, self.updates = decay, 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        shadow, current = [], []
        for key, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                shadow.append(self.shadow[key])
                current.append(value.detach())
            else:
                self.shadow[key].copy_(value)
        if shadow:  # one fused update instead of a kernel per tensor (matters on GPUs)
            torch._foreach_lerp_(shadow, current, 1.0 - decay)

    def load(self, shadow: Mapping[str, torch.Tensor], updates: int) -> None:
        missing = sorted(set(self.shadow) - set(shadow))
        if missing:
            raise KeyError(f"EMA weights lack keys {missing}")
        for key, value in self.shadow.items():
            value.copy_(shadow[key])
        self.updates = updates

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """Run with the EMA weights in ``model``; its own weights come back afterwards."""
        backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield
        finally:
            model.load_state_dict(backup)


# ---- distributed -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistContext:
    """Join the process group described by the torchrun environment (if any); idempotent."""
    env = os.environ
    if dist.is_available() and not dist.is_initialized() and "RANK" in env and "WORLD_SIZE" in env:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext(0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    device = torch.device("cpu")
    if torch.cuda.is_available():
        device = torch.device("cuda", int(env.get("LOCAL_RANK", dist.get_rank() % torch.cuda.device_count())))
        torch.cuda.set_device(device)
    return DistContext(dist.get_rank(), dist.get_world_size(), device)


def shard_iterable(dataset: Dataset | None, ctx: DistContext) -> None:
    """Give an IterableDataset this process's rank (see the module docstring)."""
    if not isinstance(dataset, IterableDataset):
        return
    if hasattr(dataset, "set_rank"):
        dataset.set_rank(ctx.rank, ctx.world_size)
        return
    found = (getattr(dataset, "rank", None), getattr(dataset, "world_size", None))
    if ctx.distributed and found != (ctx.rank, ctx.world_size):
        raise ValueError(
            f"{type(dataset).__name__} has no set_rank(rank, world_size) and its (rank, world_size) is {found}, "
            f"but this process is rank {ctx.rank} of {ctx.world_size}: construct it with rank= and world_size= "
            "or after dream_policy.trainer.init_distributed()")


class EpochSampler(Sampler[int]):
    """This rank's contiguous, equal share of epoch ``epoch``'s order (shuffled from seed + epoch),
    from position ``start`` on. ``len % world_size`` samples are left out per epoch."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1, seed: int = 0, epoch: int = 0,
                 shuffle: bool = True, start: int = 0) -> None:
        per_rank = size // world_size
        order = (torch.randperm(size, generator=torch.Generator().manual_seed(seed + epoch)) if shuffle
                 else torch.arange(size))
        self.indices = order[rank * per_rank:(rank + 1) * per_rank][start:].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


# ---- small helpers -----------------------------------------------------------------------------


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on weight matrices only, not on biases, norms or embeddings."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        exempt = isinstance(module, nn.Embedding) or "norm" in type(module).__name__.lower()
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if exempt or p.ndim < 2 or name.endswith("bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def scalars(info: Mapping[str, Any]) -> dict[str, float]:
    """``info`` as floats; a non-scalar value is an error naming its key."""
    out = {}
    for key, value in info.items():
        if isinstance(value, torch.Tensor) and value.numel() != 1:
            raise ValueError(f"info[{key!r}] must be a scalar, got a tensor of shape {tuple(value.shape)}")
        out[key] = float(value)
    return out


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states, in types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached": float(cached)},
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run under ``seed``, then put every RNG back where it was."""
    saved = rng_state()
    seed_everything(seed)
    try:
        yield
    finally:
        set_rng_state(saved)


def autocast_for(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    if precision == "bf16" and device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    if precision == "bf16":
        warnings.warn("precision='bf16' requested but training runs on CPU: using fp32 "
                      "(bf16 autocast is used only on CUDA)", stacklevel=3)
    return contextlib.nullcontext


# ---- logging -----------------------------------------------------------------------------------


class MetricsLog:
    """TensorBoard (``tb/``), ``metrics.csv`` (step, split, metric, value) and ``loss.png`` in ``out_dir``.

    ``resume_step``: rows and events after it (from a run that died after its last checkpoint) are dropped.
    """

    FIELDS = ("step", "split", "metric", "value")

    def __init__(self, out_dir: Path, resume_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        out_dir.mkdir(parents=True, exist_ok=True)
        self.csv, self.png = out_dir / "metrics.csv", out_dir / "loss.png"
        if resume_step is not None and self.csv.is_file():
            self._rewrite([r for r in self.rows() if int(r["step"]) <= resume_step])
        elif not self.csv.is_file() or resume_step is None:
            self._rewrite([])
        self.writer = SummaryWriter(str(out_dir / "tb"), purge_step=None if resume_step is None else resume_step + 1)

    def rows(self) -> list[dict[str, str]]:
        with self.csv.open(newline="") as f:
            return list(csv.DictReader(f))

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        with self.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, self.FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        with self.csv.open("a", newline="") as f:
            writer = csv.writer(f)
            for name, value in metrics.items():
                writer.writerow((step, split, name, repr(float(value))))
                self.writer.add_scalar(f"{split}/{name}", value, step)
        self.writer.flush()

    def plot(self) -> None:
        from matplotlib.figure import Figure  # no pyplot: no global backend state

        fig = Figure(figsize=(7, 4))
        ax = fig.subplots()
        for split in ("train", "val"):
            points = [(int(r["step"]), float(r["value"])) for r in self.rows()
                      if r["split"] == split and r["metric"] == "loss"]
            if points:
                ax.plot(*zip(*points), label=f"{split} loss", marker="o" if split == "val" else None)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        if ax.get_legend_handles_labels()[0]:  # nothing logged yet (a run shorter than log_every)
            ax.legend()
        fig.tight_layout()
        fig.savefig(self.png, dpi=100)

    def close(self) -> None:
        self.writer.close()


# ---- the trainer -------------------------------------------------------------------------------


class Trainer:
    """Train ``model`` on ``train_dataset`` (validate on ``val_dataset``) as ``config`` says.

    ``normalization`` (e.g. ``Normalizer.to_dict()``) and ``full_config`` (the resolved run config;
    default: this TrainerConfig) are saved in every checkpoint. ``resume``: a checkpoint folder or
    ``"latest"`` (in ``out_dir/checkpoints``) to continue exactly from.
    """

    def __init__(self, model: nn.Module, train_dataset: Dataset, val_dataset: Dataset | None,
                 config: TrainerConfig, collate: Callable[[list[Any]], Any] | None = None,
                 normalization: Mapping[str, Any] | None = None, full_config: Any = None,
                 resume: str | Path | None = None) -> None:
        self.config, self.collate, self.normalization = config, collate, dict(normalization or {})
        self.full_config = full_config if full_config is not None else {"trainer": dataclasses.asdict(config)}
        self.ctx = init_distributed()
        seed_everything(config.seed + self.ctx.rank)
        self.clock = time.monotonic  # seconds; replaceable in tests
        self.module = model.to(self.ctx.device)
        self.model: nn.Module = self.module
        if self.ctx.distributed:
            self.model = DistributedDataParallel(
                self.module, device_ids=[self.ctx.device] if self.ctx.device.type == "cuda" else None,
                find_unused_parameters=config.find_unused_parameters)
        if config.compile:
            mode = config.compile if config.compile_backend == "inductor" else None
            self.model = torch.compile(self.model, mode=mode, backend=config.compile_backend)
        # fused AdamW on CUDA: one kernel for every parameter instead of several per parameter
        self.optimizer = torch.optim.AdamW(param_groups(self.module, config.weight_decay), lr=config.lr,
                                           betas=config.betas, fused=self.ctx.device.type == "cuda" or None)
        self.ema = EMA(self.module, config.ema_decay) if config.ema_decay else None
        self.autocast = autocast_for(config.precision, self.ctx.device)
        self.train_dataset, self.val_dataset = train_dataset, val_dataset
        for dataset in (train_dataset, val_dataset):
            shard_iterable(dataset, self.ctx)
        self.out_dir = Path(config.out_dir)
        self.checkpoint_dir = self.out_dir / "checkpoints"
        self.global_step = self.epoch = self.batches_in_epoch = 0
        self.last_checkpoint: Path | None = None
        self._saved_step = -1
        self._pending_rng: dict[str, Any] | None = None
        self._resumed = resume is not None
        self.log: MetricsLog | None = None
        self._fit_completed = False
        if resume is not None:
            self._restore(resume)

    # ---- data ----------------------------------------------------------------------------------

    def _loader(self, dataset: Dataset, train: bool, epoch: int, start: int = 0) -> DataLoader:
        """Epoch ``epoch``'s loader; map-style ones start at batch ``start`` (iterable ones: see _batches)."""
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        sampler = None
        if not isinstance(dataset, IterableDataset):
            sampler = EpochSampler(len(dataset), self.ctx.rank, self.ctx.world_size, self.config.seed, epoch,
                                   shuffle=train, start=start * self.config.batch_size)
        # A private generator: creating a loader must not draw from the global torch RNG.
        generator = torch.Generator().manual_seed(self.config.seed + 7919 * epoch + 104729 * self.ctx.rank)
        # Datasets that build whole batches (``__getitems__`` + ``collate``, e.g. data.packed) may hold
        # them on the GPU already: those run in this process and need no pinned copies.
        on_gpu = getattr(getattr(dataset, "device", None), "type", "cpu") != "cpu"
        return DataLoader(dataset, self.config.batch_size, sampler=sampler,
                          num_workers=0 if on_gpu else self.config.num_workers,
                          collate_fn=self.collate or getattr(dataset, "collate", None), drop_last=train,
                          generator=generator, pin_memory=self.ctx.device.type == "cuda" and not on_gpu)

    def _batches(self) -> Iterator[Any]:
        """Training batches forever, tracking (epoch, batches_in_epoch); resumes mid-epoch."""
        skip = self.batches_in_epoch
        while True:
            iterable = isinstance(self.train_dataset, IterableDataset)
            batches = iter(self._loader(self.train_dataset, train=True, epoch=self.epoch,
                                        start=0 if iterable else skip))
            for _ in range(skip if iterable else 0):
                next(batches)
            skip = 0
            if self._pending_rng is not None:  # after skipping, which may have drawn random numbers
                set_rng_state(self._pending_rng)
                self._pending_rng = None
            fresh = self.batches_in_epoch == 0
            for batch in batches:
                self.batches_in_epoch += 1
                yield batch
            if fresh and self.batches_in_epoch == 0:
                raise ValueError(f"the training dataset yields no full batch of {self.config.batch_size} "
                                 f"per epoch on rank {self.ctx.rank}")
            self.epoch, self.batches_in_epoch = self.epoch + 1, 0

    # ---- training ------------------------------------------------------------------------------

    def fit(self, until_step: int | None = None) -> dict[str, float]:
        """Train to ``config.total_steps`` (or stop early at ``until_step``, schedule unchanged) and save.

        Returns the last step's training metrics, plus ``val_<name>`` from the final validation.
        """
        cfg = self.config
        stop = cfg.total_steps if until_step is None else min(until_step, cfg.total_steps)
        self.log = MetricsLog(self.out_dir, self.global_step if self._resumed else None) if self.ctx.is_main else None
        self._resumed = True  # a second fit() continues the same files
        bar = tqdm(total=stop, initial=self.global_step, desc="train", disable=not self.ctx.is_main)
        batches = self._batches()
        metrics: dict[str, float] = {}
        self.model.train()
        deadline = None if cfg.time_limit_min is None else self.clock() + 60 * cfg.time_limit_min
        timed_out = False
        try:
            while self.global_step < stop:
                metrics = self._train_step(next(batches))
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.4g}", lr=f"{metrics['lr']:.3g}")
                self._after_step(metrics)
                if deadline is not None and self._past(deadline):
                    tqdm.write(f"time limit of {cfg.time_limit_min} min reached at step {self.global_step}")
                    stop, timed_out = self.global_step, True
            if (self.global_step == cfg.total_steps or timed_out) and self.val_dataset is not None and not (
                    cfg.eval_every and self.global_step % cfg.eval_every == 0):
                metrics |= {f"val_{k}": v for k, v in self._validate().items()}
            if self._saved_step != self.global_step:
                self.save()
            if self.log is not None:
                self.log.plot()
            self._fit_completed = True
        finally:
            bar.close()
            batches.close()
            if self.log is not None:
                self.log.close()
        return metrics

    def _train_step(self, batch: Any) -> dict[str, float]:
        cfg, step = self.config, self.global_step
        lr = lr_at(step, cfg.lr, cfg.warmup_steps, cfg.total_steps, cfg.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with self.autocast():
            loss, info = self.model(to_device(batch, self.ctx.device))
        self._check_finite(loss, step + 1)
        loss.backward()
        metrics = {**scalars(info), "loss": loss.item(), "lr": lr}
        if cfg.grad_clip:
            metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.module.parameters(), cfg.grad_clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.module)
        self.global_step += 1
        return metrics

    def _past(self, deadline: float) -> bool:
        """Whether ``deadline`` has passed on any rank (all ranks agree, so they stop on the same step)."""
        late = torch.tensor(float(self.clock() > deadline), device=self.ctx.device)
        if self.ctx.distributed:
            dist.all_reduce(late, op=dist.ReduceOp.MAX)
        return bool(late.item())

    def _check_finite(self, loss: torch.Tensor, step: int) -> None:
        """Every rank stops together (a lone rank raising would leave the others hanging in all-reduce)."""
        bad = torch.tensor(0.0 if bool(torch.isfinite(loss.detach()).all()) else 1.0, device=self.ctx.device)
        if self.ctx.distributed:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bad.item():
            raise NonFiniteLossError(
                f"non-finite loss ({loss.detach().float().cpu().tolist()} on rank {self.ctx.rank}) at step {step} "
                f"(after {step - 1} completed steps); stopped before that update and saved nothing new; "
                f"last good checkpoint: {self.last_checkpoint or 'none'}")

    def _after_step(self, metrics: Mapping[str, float]) -> None:
        cfg, step = self.config, self.global_step
        if self.log is not None and step % cfg.log_every == 0:
            self.log.write(step, "train", metrics)
        if cfg.eval_every and step % cfg.eval_every == 0 and self.val_dataset is not None:
            self._validate()
        if cfg.save_every and step % cfg.save_every == 0:
            self.save()

    def _validate(self) -> dict[str, float]:
        results = self.evaluate()
        if self.log is not None:
            self.log.write(self.global_step, "val", results)
            self.log.plot()
        return results

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean validation loss and info over all ranks' batches, on the EMA weights when EMA is on."""
        if self.val_dataset is None:
            raise ValueError("evaluate() needs a val_dataset")
        sums: dict[str, float] = {}
        count = 0
        self.model.eval()
        weights = self.ema.applied(self.module) if self.ema is not None else contextlib.nullcontext()
        with seeded(self.config.seed), weights:
            for batch in self._loader(self.val_dataset, train=False, epoch=0):
                with self.autocast():
                    loss, info = self.module(to_device(batch, self.ctx.device))
                for key, value in {**scalars(info), "loss": float(loss)}.items():
                    sums[key] = sums.get(key, 0.0) + value
                count += 1
        self.model.train()
        return self._mean_over_ranks(sums, count)

    def _mean_over_ranks(self, sums: Mapping[str, float], count: int) -> dict[str, float]:
        keys = sorted(sums)
        totals = torch.tensor([sums[k] for k in keys] + [count], dtype=torch.float64, device=self.ctx.device)
        if self.ctx.distributed:
            dist.all_reduce(totals)
        if totals[-1] == 0:
            raise ValueError("the validation dataset yields no batch")
        return {k: float(totals[i] / totals[-1]) for i, k in enumerate(keys)}

    # ---- checkpoints ---------------------------------------------------------------------------

    def save(self) -> Path | None:
        """Checkpoint the current step (rank 0 writes; every rank must call it). Returns the folder on rank 0."""
        rngs = [rng_state()]
        if self.ctx.distributed:
            rngs = [None] * self.ctx.world_size
            dist.all_gather_object(rngs, rng_state())
        if self.ctx.is_main:
            self.last_checkpoint = save_checkpoint(
                self.checkpoint_dir, self.global_step, self.module.state_dict(),
                ema_state=self.ema.shadow if self.ema is not None else None, config=self.full_config,
                normalization=self.normalization, trainer_state=self._trainer_state(rngs),
                keep_last=self.config.keep_last)
        if self.ctx.distributed:
            dist.barrier()
        self._saved_step = self.global_step
        return self.last_checkpoint

    def _trainer_state(self, rngs: list[Any]) -> dict[str, Any]:
        return {"global_step": self.global_step, "epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch,
                "optimizer": self.optimizer.state_dict(), "scheduler": {"step": self.global_step},
                "ema_updates": self.ema.updates if self.ema is not None else 0, "rng": rngs,
                "world_size": self.ctx.world_size}

    def _restore(self, resume: str | Path) -> None:
        path = resolve_checkpoint(resume, self.checkpoint_dir)
        load_weights(path, self.module)
        state = load_trainer_state(path)
        if self.ema is not None:
            self.ema.load(load_tensors(path, EMA_WEIGHTS), state["ema_updates"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.global_step, self.epoch = state["global_step"], state["epoch"]
        self.batches_in_epoch = state["batches_in_epoch"]
        rngs = state["rng"]
        if len(rngs) != self.ctx.world_size:
            warnings.warn(f"{path} was saved by {len(rngs)} rank(s), this run has {self.ctx.world_size}: "
                          "random streams and data shards will differ from the original run", stacklevel=3)
        self._pending_rng = rngs[self.ctx.rank % len(rngs)]
        self.last_checkpoint, self._saved_step = path, self.global_step

    def close(self) -> None:
        """Leave the process group (if one is up). After a completed fit() the ranks first meet at a
        barrier: a rank tearing gloo down while another still talks to it can abort the process."""
        if dist.is_available() and dist.is_initialized():
            if self._fit_completed:
                dist.barrier()
            dist.destroy_process_group()
