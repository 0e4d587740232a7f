"""CALVIN's long-horizon evaluation: roll a policy through 5-task chains and score the chains.

``run_chain`` is the protocol (no I/O); ``evaluate`` spreads chains over worker processes and
writes ``results.json``, ``chain_sr.png`` and videos; ``eval_command`` is the CLI entry point.
"""

from __future__ import annotations

import atexit
import json
import multiprocessing as mp
import queue as queue_module
import random
import sys
import textwrap
import traceback
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from sim.annotations import eval_instruction
from sim.calvin_pybullet import BACKEND_PREFIX, calvin_backend
from sim.chains import CHAIN_LENGTH, Chain
from sim.env import PlayTableEnv
from sim.eval_progress import PROGRESS_FILE, append_record, open_progress, read_progress
from sim.lockstep import Slot, run_lockstep
from sim.policy import POLICIES, Policy, make_policy
from sim.snapshot import Snapshot
from sim.symbolic_state import physical_state
from sim.task_oracle import TaskOracle

CHECKPOINT_POLICY = "checkpoint"
POLICY_INFO = "policy_info"  # results.json config key: what the policy resolved its options to (its describe())
NUM_CALVIN_CHAINS = 1000
VIDEO_SIZE = 256
VIDEO_FPS = 30
RESULTS_FILE, PLOT_FILE, VIDEO_DIR = "results.json", "chain_sr.png", "videos"
Record = dict[str, Any]  # one chain's outcome: index, tasks, num_successes, steps


class SubtaskOracle(Protocol):
    def succeeded(self, task: str, start: Snapshot, current: Snapshot) -> bool:
        """Whether ``task`` is achieved between the two snapshots."""


@dataclass
class ChainResult:
    """One chain's outcome; ``successes``/``steps`` cover the attempted subtasks only."""

    index: int
    tasks: tuple[str, ...]
    successes: list[bool] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    frames: list[np.ndarray] | None = None

    @property
    def num_successes(self) -> int:
        return sum(self.successes)

    def record(self) -> Record:
        return {"index": self.index, "tasks": list(self.tasks), "num_successes": self.num_successes,
                "steps": list(self.steps)}


# ---------------------------------------------------------------------------------------- protocol

def caption(frame: np.ndarray, text: str) -> np.ndarray:
    """``frame`` with ``text`` written on a dark band at its top."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(10, frame.shape[1] // 22))
    lines = textwrap.wrap(text, width=max(10, frame.shape[1] // 7))
    line_height = font.size + 2
    draw.rectangle((0, 0, frame.shape[1], 4 + line_height * len(lines)), fill=(0, 0, 0))
    for i, line in enumerate(lines):
        draw.text((4, 2 + i * line_height), line, fill=(255, 255, 255), font=font)
    return np.asarray(image)


def run_subtask(env: PlayTableEnv, policy: Policy, oracle: SubtaskOracle, obs: dict[str, np.ndarray],
                task: str, ep_len: int, frames: list[np.ndarray] | None, label: str = ""
                ) -> tuple[bool, int, dict[str, np.ndarray]]:
    """(success, steps taken, last obs) for one subtask; success at the first step the oracle agrees."""
    policy.reset()
    instruction = eval_instruction(task)
    start = env.snapshot()
    for step in range(1, ep_len + 1):
        obs, _, _, _, info = env.step(policy.step(obs, instruction))
        if frames is not None:
            frames.append(caption(env.render("static", VIDEO_SIZE), f"{label}{instruction}"))
        if oracle.succeeded(task, start, info["snapshot"]):
            return True, step, obs
    return False, ep_len, obs


def run_chain(env: PlayTableEnv, policy: Policy, chain: Chain, oracle: SubtaskOracle, ep_len: int = 360,
              record: bool = False, index: int = 0) -> ChainResult:
    """CALVIN's protocol for one chain: one env reset, subtasks in order, stop at the first failure."""
    if ep_len < 1:
        raise ValueError(f"ep_len must be >= 1 control step, got {ep_len}")
    robot_obs, scene_obs = physical_state(chain.initial_state)
    obs, _ = env.reset(options={"robot_obs": robot_obs, "scene_obs": scene_obs})
    result = ChainResult(index, chain.tasks, frames=[] if record else None)
    for number, task in enumerate(chain.tasks, start=1):
        label = f"{number}/{len(chain.tasks)}: "
        success, steps, obs = run_subtask(env, policy, oracle, obs, task, ep_len, result.frames, label)
        result.successes.append(success)
        result.steps.append(steps)
        if not success:
            break
    return result


# ----------------------------------------------------------------------------------------- metrics

def metrics_from_records(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """avg_seq_len, chain_sr (fraction with >= i successes, i = 1..5), per_task [successes, attempts]."""
    if not records:
        raise ValueError("no chain records to score; expected at least one {index, tasks, num_successes}")
    counts = np.array([r["num_successes"] for r in records])
    per_task: dict[str, list[int]] = {}
    for r in records:
        # A chain stops at its first failure, so the attempted tasks are the successes plus one.
        for i, task in enumerate(r["tasks"][: r["num_successes"] + 1]):
            tally = per_task.setdefault(task, [0, 0])
            tally[0] += int(i < r["num_successes"])
            tally[1] += 1
    return {
        "avg_seq_len": float(counts.mean()),
        "chain_sr": [float(np.mean(counts >= i)) for i in range(1, CHAIN_LENGTH + 1)],
        "per_task": dict(sorted(per_task.items())),
        "num_chains": len(records),
    }


def build_results(records: Iterable[Record], config: Mapping[str, Any], videos: Sequence[str] = ()
                  ) -> dict[str, Any]:
    """The content of results.json: metrics, config echo, per-chain records (sorted) and videos."""
    chains = sorted(records, key=lambda r: r["index"])
    return {**metrics_from_records(chains), "config": dict(config), "chains": chains, "videos": list(videos)}


def merge_results(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Shards' results as one: same config (but shard), chains deduplicated by index."""
    if not results:
        raise ValueError("nothing to merge; expected a list of results dicts")
    base = {k: v for k, v in results[0]["config"].items() if k != "shard"}
    chains: dict[int, Record] = {}
    for part in results:
        for key, value in part["config"].items():
            if key != "shard" and base.get(key) != value:
                raise ValueError(f"cannot merge results with different {key!r}: {base.get(key)!r} vs {value!r}")
        for record in part["chains"]:
            seen = chains.setdefault(record["index"], record)
            if seen != record:
                raise ValueError(f"chain {record['index']} appears twice with different outcomes: "
                                 f"{seen} vs {record}")
    shards = [part["config"].get("shard") for part in results]
    videos = [v for part in results for v in part.get("videos", [])]
    return build_results(chains.values(), {**base, "shard": shards}, list(dict.fromkeys(videos)))


# --------------------------------------------------------------------------------- worker processes

@dataclass(frozen=True)
class RunSetup:
    """What every worker needs to build its env and policy once."""

    policy_name: str
    policy_options: dict[str, Any]
    scene: str
    render: bool
    ep_len: int
    seed: int
    video_dir: str | None
    registry: dict[str, str] = field(default_factory=lambda: dict(POLICIES))
    batch: int = 1  # chains each worker runs in lockstep (sim.lockstep)


def seed_chain(policy: Policy, seed: int) -> None:
    """Seed the global RNGs (and torch if loaded) and the policy's own RNG if it has ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)
    if hasattr(policy, "seed"):
        policy.seed(seed)


def write_video(path: Path, frames: Sequence[np.ndarray]) -> None:
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    with imageio.get_writer(path, fps=VIDEO_FPS) as writer:
        for frame in frames:
            writer.append_data(frame)


def make_backend(scene: str, render: bool) -> tuple[Any, SubtaskOracle]:
    """(env, oracle) for a play-table scene ("A"-"D") or CALVIN's PyBullet env ("calvin:PATH")."""
    if scene.startswith(BACKEND_PREFIX):
        return calvin_backend(scene)
    return PlayTableEnv(scene, render=render), TaskOracle()


class ChainRunner:
    """One process's env, policy and oracle, built once and reused for many chains; with ``setup.batch``
    > 1, that many (env, oracle, policy) slots running chains in lockstep (``run_many``)."""

    def __init__(self, setup: RunSetup) -> None:
        self.setup = setup
        self.env, self.oracle = make_backend(setup.scene, setup.render)
        self.policy = make_policy(setup.policy_name, **setup.policy_options)
        self.slots: list[Slot] = []

    def __call__(self, job: tuple[int, Chain, bool]) -> tuple[Record, str | None]:
        index, chain, record = job
        seed_chain(self.policy, self.setup.seed + index)
        return self.outcome(run_chain(self.env, self.policy, chain, self.oracle, self.setup.ep_len, record, index))

    def run_many(self, jobs: Iterable[tuple[int, Chain, bool]]) -> Iterator[tuple[Record, str | None]]:
        """Every job's outcome, as chains end: one by one, or ``setup.batch`` at a time in lockstep."""
        if self.setup.batch <= 1:
            yield from map(self, jobs)
            return

        def start(slot: Slot, index: int) -> None:
            seed_chain(slot.policy, self.setup.seed + index)

        def new_result(index: int, chain: Chain, record: bool) -> ChainResult:
            return ChainResult(index, chain.tasks, frames=[] if record else None)

        def frame(slot: Slot) -> np.ndarray:
            return caption(slot.env.render("static", VIDEO_SIZE), f"{slot.label}{slot.instruction}")

        for result in run_lockstep(self.lockstep_slots(), jobs, self.setup.ep_len, start, new_result, frame):
            yield self.outcome(result)

    def lockstep_slots(self) -> list[Slot]:
        """``setup.batch`` slots, built once: siblings of the policy when it has ``sibling`` (one network for
        a batched ``step_batch``), else more policies from the registry; an env and oracle each."""
        setup = self.setup
        while len(self.slots) < setup.batch:
            if not self.slots:
                self.slots.append(Slot(self.env, self.oracle, self.policy))
                continue
            sibling = getattr(self.policy, "sibling", None)
            policy = sibling() if sibling else make_policy(setup.policy_name, **setup.policy_options)
            self.slots.append(Slot(*make_backend(setup.scene, setup.render), policy))
        return self.slots

    def outcome(self, result: ChainResult) -> tuple[Record, str | None]:
        """The chain's record (with what the policy resolved its options to) and its video, if recorded."""
        rec = result.record()
        if hasattr(self.policy, "describe"):  # what the policy resolved its options to (e.g. cache=auto)
            rec[POLICY_INFO] = self.policy.describe()
        if not result.frames:
            return rec, None
        path = Path(self.setup.video_dir or ".") / f"chain_{result.index:04d}.mp4"
        write_video(path, result.frames)
        return rec, str(path)

    def close(self) -> None:
        self.env.close()
        for slot in self.slots[1:]:
            slot.env.close()


_WORKER: dict[str, Any] = {}


def _init_worker(setup: RunSetup) -> None:
    # Spawned workers see the parent's registry, so policies registered at runtime resolve too.
    POLICIES.update(setup.registry)
    _WORKER["setup"] = setup


def _run_job(job: tuple[int, Chain, bool]) -> tuple[Record, str | None]:
    # Built on the first job, not in the initializer: an initializer error makes Pool respawn forever.
    if "runner" not in _WORKER:
        _WORKER["runner"] = ChainRunner(_WORKER["setup"])
        atexit.register(_WORKER["runner"].close)  # free EGL contexts before interpreter teardown
    return _WORKER["runner"](job)


def _lockstep_worker(setup: RunSetup, jobs: Sequence[tuple[int, Chain, bool]], queue: Any) -> None:
    """A lockstep worker process: its share of the chains, each outcome sent as its chain ends."""
    try:
        POLICIES.update(setup.registry)
        runner = ChainRunner(setup)
        try:
            for outcome in runner.run_many(jobs):
                queue.put(("outcome", outcome))
        finally:
            runner.close()
        queue.put(("done", None))
    except Exception:  # noqa: BLE001 (any failure goes to the parent, which raises it; it handles ^C itself)
        queue.put(("error", traceback.format_exc()))


def _in_lockstep_workers(setup: RunSetup, jobs: Sequence[tuple[int, Chain, bool]], workers: int
                         ) -> Iterator[tuple[Record, str | None]]:
    """``workers`` processes with every ``workers``-th job each, running ``setup.batch`` chains in lockstep
    and reporting each chain as it ends (a pool's task would report only when all its chains had)."""
    ctx = mp.get_context("spawn")  # MuJoCo/EGL contexts must be created in the worker, never inherited
    queue = ctx.Queue()
    procs = [ctx.Process(target=_lockstep_worker, args=(setup, list(jobs[w::workers]), queue), daemon=True)
             for w in range(workers)]
    for proc in procs:
        proc.start()
    done = 0
    try:
        while done < workers:
            try:
                kind, value = queue.get(timeout=5)
            except queue_module.Empty:
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"an eval worker died (exit code {dead[0]}) before reporting") from None
                continue
            if kind == "error":
                raise RuntimeError(f"an eval worker failed:\n{value}")
            if kind == "done":
                done += 1
            else:
                yield value
    finally:
        for proc in procs:
            if proc.is_alive() and done < workers:
                proc.terminate()
            proc.join()


def _in_process(setup: RunSetup, jobs: Sequence[tuple[int, Chain, bool]]) -> Iterator[tuple[Record, str | None]]:
    runner = ChainRunner(setup)
    try:
        yield from runner.run_many(jobs)
    finally:
        runner.close()


def _in_pool(setup: RunSetup, jobs: Sequence[tuple[int, Chain, bool]], workers: int
             ) -> Iterator[tuple[Record, str | None]]:
    # 'spawn': MuJoCo/EGL contexts must be created in the worker, never inherited through fork.
    pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(setup,))
    try:
        yield from pool.imap_unordered(_run_job, jobs)
        pool.close()  # lets workers exit normally, running their atexit cleanup
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


# -------------------------------------------------------------------------------------- evaluation

def evaluate(chains_with_index: Sequence[tuple[int, Chain]], policy_name: str,
             policy_options: Mapping[str, Any] | None = None, scene: str = "D", workers: int = 1,
             ep_len: int = 360, seed: int = 0, num_videos: int = 0, out_dir: str | Path = "runs/eval",
             render: bool = True, shard: str | None = None, resume: bool = False, batch: int = 1
             ) -> dict[str, Any]:
    """Run the chains (in ``workers`` processes when > 1) and write results.json, the plot and videos.

    ``batch`` > 1: each worker runs that many chains in lockstep, one batched policy call per control step
    (``sim.lockstep``); a chain's outcome then follows its own seed too, but batched matrix products round
    differently from one-row ones, so a closed loop can part from the ``batch=1`` run's after a while.

    Every finished chain is appended to ``out_dir/chains.jsonl`` at once (``sim.eval_progress``); with
    ``resume`` the chains that log already holds (from a run with the same settings) are not run again."""
    from tqdm import tqdm

    if not chains_with_index:
        raise ValueError("no chains to evaluate; expected a list of (index, Chain)")
    out = Path(out_dir)
    if num_videos > 0 and not render:
        print(f"render=false: not writing the {num_videos} requested videos", file=sys.stderr)
        num_videos = 0
    if isinstance(batch, bool) or int(batch) != batch or batch < 1:
        raise ValueError(f"batch must be an integer >= 1 (chains per worker in lockstep), got {batch!r}")
    setup = RunSetup(policy_name, dict(policy_options or {}), scene, render, ep_len, seed,
                     str(out / VIDEO_DIR) if num_videos > 0 else None, batch=int(batch))
    config = {"policy": policy_name, "policy_options": setup.policy_options, "scene": scene,
              "ep_len": ep_len, "seed": seed, "shard": shard}
    if batch > 1:  # (kept out at 1, so logs written before lockstep existed still resume)
        config["batch"] = int(batch)
    progress = out / PROGRESS_FILE
    finished = read_progress(progress, config, [(i, c.tasks) for i, c in chains_with_index]) if resume else {}
    if finished:
        print(f"resume: {len(finished)} of {len(chains_with_index)} chains already in {progress}", file=sys.stderr)
    recorded = {i for i, _ in sorted(chains_with_index, key=lambda ic: ic[0])[:num_videos]}
    jobs = [(i, chain, i in recorded) for i, chain in chains_with_index if i not in finished]
    records = [dict(record) for record, _ in finished.values()]
    videos = [video for _, video in finished.values() if video]
    with open_progress(progress, config, resume) as log, \
            tqdm(total=len(chains_with_index), initial=len(finished), desc="chains", unit="chain") as bar:
        if jobs:
            workers = min(max(workers, 1), len(jobs))
            if workers == 1:
                outcomes = _in_process(setup, jobs)
            elif setup.batch > 1:
                outcomes = _in_lockstep_workers(setup, jobs, workers)
            else:
                outcomes = _in_pool(setup, jobs, workers)
            for record, video in outcomes:
                append_record(log, record, video)
                records.append(record)
                videos += [video] if video else []
                bar.set_postfix(avg_seq_len=f"{np.mean([r['num_successes'] for r in records]):.2f}")
                bar.update()
    infos = [r.pop(POLICY_INFO) for r in records if POLICY_INFO in r]
    if infos:
        config[POLICY_INFO] = infos[0]
    results = build_results(records, config, sorted(videos))
    write_results(results, out)
    return results


def write_results(results: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write results.json and the chain success-rate bar chart; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, plot_path = out_dir / RESULTS_FILE, out_dir / PLOT_FILE
    json_path.write_text(json.dumps(results, indent=1), encoding="utf-8")
    plot_chain_sr(results, plot_path)
    return json_path, plot_path


def plot_chain_sr(results: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    x = range(1, len(results["chain_sr"]) + 1)
    bars = ax.bar(x, results["chain_sr"], color="tab:blue")
    ax.bar_label(bars, labels=[f"{v:.0%}" for v in results["chain_sr"]])
    ax.set(xlabel="tasks completed in a row", ylabel="fraction of chains", ylim=(0, 1.1), xticks=list(x),
           title=f"avg_seq_len {results['avg_seq_len']:.2f} ({results['num_chains']} chains)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_results(results: Mapping[str, Any]) -> str:
    """The results table printed by ``eval_command``."""
    lines = [f"{results['num_chains']} chains, tasks completed in a row:"]
    lines += [f"  {i}: {sr:6.1%}" for i, sr in enumerate(results["chain_sr"], start=1)]
    lines.append(f"avg_seq_len: {results['avg_seq_len']:.3f}")
    info = results.get("config", {}).get(POLICY_INFO)
    if info:
        lines.append("policy: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    lines.append("per task (successes / attempts):")
    width = max(map(len, results["per_task"]), default=0)
    lines += [f"  {task:<{width}}  {s:4d} / {n:<4d} {s / n:6.1%}" for task, (s, n) in results["per_task"].items()]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- CLI

def policy_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Options for ``make_policy``: a learned checkpoint gets ``ckpt``, a scripted policy the scene it plans in."""
    if cfg["policy"] != CHECKPOINT_POLICY:
        return {"scene": str(cfg["scene"])}
    if not cfg.get("ckpt"):
        raise ValueError(f"policy={CHECKPOINT_POLICY} needs ckpt=PATH to a checkpoint")
    options = {"ckpt": str(cfg["ckpt"])}
    if cfg.get("action_horizon") is not None:
        options["action_horizon"] = int(cfg["action_horizon"])
    if cfg.get("cache") is not None:
        options["cache"] = str(cfg["cache"])
    if cfg.get("ddim_steps") is not None:
        options["ddim_steps"] = int(cfg["ddim_steps"])
    if cfg.get("guidance") is not None:
        options["guidance"] = float(cfg["guidance"])
    if cfg.get("noise_scale") is not None:
        options["noise_scale"] = float(cfg["noise_scale"])
    if cfg.get("ensemble_decay") is not None:
        options["ensemble_decay"] = float(cfg["ensemble_decay"])
    if cfg.get("stall_steps") is not None:
        options["stall_steps"] = int(cfg["stall_steps"])
    if cfg.get("gripper_hold") is not None:
        options["gripper_hold"] = int(cfg["gripper_hold"])
    for key in ("stall_tol", "stall_noise"):
        if cfg.get(key) is not None:
            options[key] = float(cfg[key])
    return options


def select_chains(num_sequences: int, shard_spec: str | None, chains_file: str | None = None, first: int = 0
                  ) -> list[tuple[int, Chain]]:
    """Chains ``first`` .. ``first + num_sequences - 1`` of CALVIN's 1000 (or of ``chains_file``), each with
    its index there (which also seeds its rollout), optionally one shard of them."""
    from sim.chains import generate_chains, read_chains, shard

    chains = read_chains(chains_file) if chains_file else generate_chains(NUM_CALVIN_CHAINS)
    if not 0 <= first < len(chains):
        raise ValueError(f"first must be in 0..{len(chains) - 1} (there are {len(chains)} chains), got {first}")
    if not 1 <= num_sequences <= len(chains) - first:
        raise ValueError(f"num_sequences must be in 1..{len(chains) - first} (from chain {first} of "
                         f"{len(chains)}), got {num_sequences}")
    chains = chains[first:first + num_sequences]
    selected = shard(chains, shard_spec) if shard_spec else list(enumerate(chains))
    return [(first + i, chain) for i, chain in selected]


def merge_dirs(dirs: Sequence[str], out_dir: Path) -> dict[str, Any]:
    """Merge the results.json of shard directories and write the merged results into ``out_dir``."""
    parts = []
    for d in dirs:
        path = Path(d) / RESULTS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"merge: no {RESULTS_FILE} in {d}")
        parts.append(json.loads(path.read_text(encoding="utf-8")))
    results = merge_results(parts)
    write_results(results, out_dir)
    return results


def eval_command(cfg: Mapping[str, Any]) -> None:
    """CLI: evaluate ``cfg.policy`` on the chains (or merge shard results) and print the table."""
    out = Path(cfg["out_dir"])
    if cfg.get("merge"):
        results = merge_dirs([str(d) for d in cfg["merge"]], out)
    else:
        chains = select_chains(int(cfg["num_sequences"]), cfg.get("shard"), cfg.get("chains_file"),
                               int(cfg.get("first") or 0))
        results = evaluate(chains, cfg["policy"], policy_options(cfg), str(cfg["scene"]), int(cfg["workers"]),
                           int(cfg["ep_len"]), int(cfg["seed"]), int(cfg["num_videos"]), out,
                           bool(cfg["render"]), cfg.get("shard"), bool(cfg.get("resume", False)),
                           int(cfg.get("batch") or 1))
    print(format_results(results))
    print(f"results: {out / RESULTS_FILE}\nplot:    {out / PLOT_FILE}")
    for video in results["videos"]:
        print(f"video:   {video}")
