"""Two CPU processes (gloo) train the toy model through the torchrun environment variables."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp
from test_trainer import ToyMap, ToyRegressor, ToyStream, toy_config

from dream_policy.checkpoint import load_tensors
from dream_policy.trainer import Trainer

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, tmp: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.manual_seed(100 + rank)  # different initial weights: DDP must start every rank from rank 0's
    train = ToyStream()
    # A separate out_dir per rank, so that any file rank 1 wrote would show.
    config = toy_config(Path(tmp) / f"out{rank}", total_steps=6, warmup_steps=2, eval_every=3, save_every=3)
    trainer = Trainer(ToyRegressor(), train, ToyMap(), config)
    try:
        metrics = trainer.fit()
        result = {"weights": trainer.module.state_dict(), "val": trainer.evaluate(),
                  "shard": (train.rank, train.world_size), "metrics": metrics}
        torch.save(result, Path(tmp) / f"result{rank}.pt")
    finally:
        trainer.close()


def test_two_gloo_ranks_train_in_lockstep(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"result{r}.pt", weights_only=False) for r in range(WORLD)]
    assert [r["shard"] for r in results] == [(0, 2), (1, 2)]
    w0, w1 = (r["weights"] for r in results)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert results[0]["val"] == results[1]["val"]  # averaged over ranks
    saved = load_tensors(tmp_path / "out0/checkpoints/step_00000006")
    assert all(torch.equal(saved[k], w0[k]) for k in w0)
    assert (tmp_path / "out0/metrics.csv").is_file() and (tmp_path / "out0/loss.png").is_file()
    assert not (tmp_path / "out1").exists()  # rank 1 wrote nothing
