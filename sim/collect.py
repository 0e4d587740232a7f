"""Record scripted-expert play as a CALVIN data set (layout: ``sim/calvin_dataset.py``).

Each episode starts from a random valid scene and chains random feasible tasks; every frame
is recorded. With ``siblings=k`` episodes come in groups of k that share their start scene and begin
with different tasks (one task in several block colours where the start allows it), so the same first
frames lead to different blocks only through the instruction. Episodes are written to
``out/.episodes/ep_XXXX`` (renamed there from ``ep_XXXX.partial`` when complete), so an interrupted run loses only unfinished episodes;
the ``training/`` and ``validation/`` split folders are assembled from them at the end.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import yaml
from tqdm import tqdm

from sim.annotations import training_sentences
from sim.calvin_dataset import (
    EP_IDS_FILE,
    LANG_FILE,
    SCENE_INFO_FILE,
    STATISTICS_FILE,
    STATISTICS_KEYS,
    frame_file,
)
from sim.chains import task_names
from sim.controller import relative_to_target
from sim.language import EMBEDDING_DIM, embed_sentences
from sim.policy import Policy, make_policy
from sim.scene_config import SCENES, SceneConfig
from sim.scene_reading import feasible_tasks, symbolic_state
from sim.snapshot import Snapshot
from sim.state_sampler import calvin_start, default_robot_obs, sample_scene_obs

MAX_TASK_STEPS = 360  # CALVIN's budget per subtask
SETTLE_STEPS = 5  # unrecorded steps after reset so freshly placed blocks touch their surfaces
HOLD_ACTION = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
EPISODES_DIR = ".episodes"
SETTINGS_FILE = "settings.json"
SPLITS = ("training", "validation")
SPLIT_STREAM = 1  # keeps the split draw independent of the episode seeds (seed, index)
SIBLING_STREAM = 2  # a sibling group's start scene and first tasks: (seed, SIBLING_STREAM, group)
BLOCK_COLOURS = ("red", "blue", "pink")

Frame = dict[str, np.ndarray]
FrameSink = Callable[[int, Frame], None]
PolicyFactory = Callable[[str, int, float], Policy]  # (scene name, seed, action noise) -> policy
Embedder = Callable[[list[str]], np.ndarray]


class Oracle(Protocol):
    def succeeded(self, task: str, start: Snapshot, current: Snapshot) -> bool: ...


LABEL_MODES = ("calvin", "attempt")  # how a successful attempt's frames get its instruction (label_span)
COLLECT_POLICIES = ("expert", "checkpoint")  # who drives: the expert, or a learner it labels (sim/dagger.py)
START_MODES = ("random", "calvin")  # an episode's first scene: sample_scene_obs, or calvin_start (the evaluation's kind)


@dataclass(frozen=True)
class CollectConfig:
    """Settings of ``dream-policy collect`` (configs/collect.yaml)."""

    scene: str = "D"
    num_episodes: int = 4
    episode_len: int = 1024
    out: str = "data/playtable_D"
    workers: int = 2
    seed: int = 0
    action_noise: float = 0.05
    validation_fraction: float = 0.1
    window: int = 64
    label: str = "calvin"
    policy: str = "expert"  # expert, or checkpoint: DAgger data (sim/dagger.py), needs ckpt
    ckpt: str | None = None
    expert_share: float = 0.3  # policy=checkpoint: the share of stretches the expert drives
    segment: int = 20  # policy=checkpoint: steps per stretch
    task_steps: int = MAX_TASK_STEPS  # steps before an attempt is given up
    starts: str = "random"  # random: blocks anywhere on their surfaces; calvin: CALVIN's reset states (fresh yaws)
    siblings: int = 1  # > 1: episodes in groups of this many share their start scene and begin with different tasks

    def __post_init__(self) -> None:
        if self.scene not in SCENES:
            raise ValueError(f"collect: scene {self.scene!r} is not one of {list(SCENES)}")
        for name in ("num_episodes", "episode_len", "workers", "window", "segment", "task_steps", "siblings"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"collect: {name} must be an integer >= 1, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"collect: seed must be an integer >= 0, got {self.seed!r}")
        if not self.action_noise >= 0:
            raise ValueError(f"collect: action_noise must be >= 0, got {self.action_noise!r}")
        if self.label not in LABEL_MODES:
            raise ValueError(f"collect: label must be one of {list(LABEL_MODES)}, got {self.label!r}")
        if self.starts not in START_MODES:
            raise ValueError(f"collect: starts must be one of {list(START_MODES)}, got {self.starts!r}")
        if self.policy not in COLLECT_POLICIES:
            raise ValueError(f"collect: policy must be one of {list(COLLECT_POLICIES)}, got {self.policy!r}")
        if self.policy == "checkpoint" and not self.ckpt:
            raise ValueError("collect: policy=checkpoint needs ckpt=PATH (the learner that drives)")
        if not 0 <= self.expert_share <= 1:
            raise ValueError(f"collect: expert_share must be in [0, 1], got {self.expert_share!r}")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(f"collect: validation_fraction must be in [0, 1), got {self.validation_fraction!r}")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> CollectConfig:
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(cfg) - set(valid))
        if unknown:
            raise ValueError(f"collect: unknown config keys {unknown}; valid keys: {valid}")
        return cls(**{k: cfg[k] for k in cfg})

    def episode_settings(self) -> dict[str, Any]:
        """The settings a recorded episode depends on (must not change when resuming)."""
        settings = {"scene": self.scene, "episode_len": self.episode_len, "seed": self.seed,
                    "action_noise": float(self.action_noise)}
        if self.policy != "expert" or self.task_steps != MAX_TASK_STEPS:
            settings.update(policy=self.policy, ckpt=self.ckpt, expert_share=float(self.expert_share),
                            segment=self.segment, task_steps=self.task_steps)
        if self.starts != "random":
            settings["starts"] = self.starts
        if self.siblings > 1:
            settings["siblings"] = self.siblings
        return settings

    def policy_factory(self) -> PolicyFactory:
        """Who drives: the scripted expert, or (``policy=checkpoint``) a learner labelled by it."""
        if self.policy == "expert":
            return expert_policy
        from sim.dagger import labelled_policy_factory

        return labelled_policy_factory(str(self.ckpt), self.expert_share, self.segment)


@dataclass(frozen=True)
class Attempt:
    """One task attempt: frames ``start``..``end``; if it succeeded, ``end`` is the first frame
    showing success and ``sentence`` the training instruction that annotates it."""

    task: str
    start: int
    end: int
    succeeded: bool
    sentence: str | None = None
    relabelled: bool = False  # every frame carries the expert's action (DAgger): annotate it whatever the outcome


# ---- one episode ------------------------------------------------------------------------------

def expert_policy(scene: str, seed: int, noise: float) -> Policy:
    """The scripted expert; it adds the action noise itself so its stored target stays in sync."""
    return make_policy("expert", scene=scene, seed=seed, noise=noise)


def episode_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


def sent_action(action: np.ndarray) -> np.ndarray:
    """The relative action as sent and recorded: pose dims clipped to [-1, 1], gripper +-1."""
    action = np.asarray(action, dtype=float)
    if action.shape != (7,):
        raise ValueError(f"policy returned an action of shape {action.shape}; expected (7,)")
    return np.concatenate([np.clip(action[:6], -1.0, 1.0), [1.0 if action[6] > 0 else -1.0]])


def choose_task(snapshot: Snapshot, cfg: SceneConfig, rng: np.random.Generator) -> str:
    """A uniformly random task feasible in the snapshot's symbolic state (any task if none is)."""
    tasks = feasible_tasks(symbolic_state(snapshot, cfg)) or list(task_names())
    return str(rng.choice(tasks))


def task_colour(task: str) -> str | None:
    """The one block colour a task's name contains (``lift_red_block_table``: red), else None."""
    named = [part for part in task.split("_") if part in BLOCK_COLOURS]
    return named[0] if len(named) == 1 else None


def colour_template(task: str) -> str | None:
    """The task's name with its block colour replaced by ``{}`` (``lift_{}_block_table``); None if it names none."""
    colour = task_colour(task)
    return None if colour is None else "_".join("{}" if part == colour else part for part in task.split("_"))


def sibling_tasks(feasible: list[str], count: int, rng: np.random.Generator) -> list[str]:
    """The first tasks of ``count`` sibling episodes that share one start, so that the same frames lead to
    different blocks only by what the instruction names: one task in as many colours as the start allows
    (the template with the most feasible colours, ties drawn), then the other colour-naming tasks, each next
    one naming the colour named least so far (ties drawn), then the rest in random order; repeated from the
    beginning if the start has fewer feasible tasks than ``count``. Any task when none is feasible."""
    if count < 1:
        raise ValueError(f"sibling_tasks: count must be >= 1, got {count}")
    tasks = list(dict.fromkeys(feasible)) or list(task_names())
    by_template: dict[str, list[str]] = {}
    for task in tasks:
        template = colour_template(task)
        if template is not None:
            by_template.setdefault(template, []).append(task)
    order: list[str] = []
    if by_template:
        most = max(len(group) for group in by_template.values())
        widest = sorted(t for t, group in by_template.items() if len(group) == most)
        chosen = widest[int(rng.integers(len(widest)))]
        order += [str(t) for t in rng.permutation(by_template[chosen])]
        named = [str(t) for t in rng.permutation([t for t in tasks if colour_template(t) is not None
                                                  and t not in order])]
        uses = {colour: sum(task_colour(t) == colour for t in order) for colour in BLOCK_COLOURS}
        while named:  # the least named colour next; the random order above breaks ties
            task = min(named, key=lambda t: uses[task_colour(t)])
            named.remove(task)
            order.append(task)
            uses[task_colour(task)] += 1
    rest = [t for t in tasks if t not in order]
    order += [str(t) for t in rng.permutation(rest)] if rest else []
    return [order[i % len(order)] for i in range(count)]


def sibling_rng(seed: int, group: int) -> np.random.Generator:
    """The draws a sibling group shares: its start scene, then its first tasks (``sibling_tasks``)."""
    return np.random.default_rng([seed, SIBLING_STREAM, group])


class Rollout:
    """An episode in progress: steps the policy, records each frame, tracks the latest snapshot. It starts
    with the arm at CALVIN's neutral pose in a scene drawn by ``starts``: ``random`` (``sample_scene_obs``:
    articulations anywhere, blocks anywhere on their surfaces) or ``calvin`` (``calvin_start``)."""

    def __init__(self, env: Any, policy: Policy, rng: np.random.Generator, sink: FrameSink,
                 starts: str = "random") -> None:
        """``rng`` draws the start scene (an episode's own, or its sibling group's: ``sibling_rng``)."""
        self.env, self.policy, self.sink = env, policy, sink
        scene_obs = calvin_start(rng) if starts == "calvin" else sample_scene_obs(rng, env.cfg)
        start = {"robot_obs": default_robot_obs(), "scene_obs": scene_obs}
        self.obs, info = env.reset(options=start)
        for _ in range(SETTLE_STEPS):
            self.obs, _, _, _, info = env.step(HOLD_ACTION)
        self.snapshot: Snapshot = info["snapshot"]
        self.frame = 0

    def step(self, instruction: str) -> None:
        """Send the policy's action; record it, or the policy's ``label`` for this step if it has one
        (the expert's action while a learner drives: ``sim/dagger.py``)."""
        target = (self.env.target_pos, self.env.target_euler)
        rel = sent_action(self.policy.step(self.obs, instruction))
        label = getattr(self.policy, "label", None)
        recorded = rel if label is None else sent_action(label)
        next_obs, _, _, _, info = self.env.step(rel)
        pos, euler = relative_to_target(*target, recorded)
        absolute = np.concatenate([pos, euler, recorded[6:]])
        self.sink(self.frame, {**self.obs, "actions": absolute, "rel_actions": recorded})
        self.obs, self.snapshot = next_obs, info["snapshot"]
        self.frame += 1


def attempt_task(rollout: Rollout, oracle: Oracle, task: str, episode_len: int,
                 max_steps: int = MAX_TASK_STEPS, instruction: str | None = None) -> bool:
    """Run the policy on ``task`` (told ``instruction``, default the task's name) until the oracle
    reports success within the recorded frames."""
    rollout.policy.reset()
    start = rollout.snapshot
    for _ in range(max_steps):
        if rollout.frame >= episode_len:
            return False
        rollout.step(instruction or task)
        if oracle.succeeded(task, start, rollout.snapshot):
            return rollout.frame < episode_len  # the success frame itself must be recorded
    return False


def collect_episode(env: Any, policy: Policy, oracle: Oracle, rng: np.random.Generator, sink: FrameSink,
                    episode_len: int, max_task_steps: int = MAX_TASK_STEPS, starts: str = "random",
                    sibling: tuple[np.random.Generator, int, int] | None = None) -> list[Attempt]:
    """Play random feasible tasks until ``episode_len`` frames are recorded, from a ``starts`` scene (see
    ``Rollout``); every attempt made. ``sibling`` = (group rng, group size, place in the group): the start
    scene comes from the group's rng and the first task is the episode's ``sibling_tasks`` entry, so the
    episodes of a group share their first frame and differ in what they are asked to do first."""
    sentences = training_sentences()
    rollout = Rollout(env, policy, rng if sibling is None else sibling[0], sink, starts)
    first = None
    if sibling is not None:
        group_rng, size, place = sibling
        first = sibling_tasks(feasible_tasks(symbolic_state(rollout.snapshot, env.cfg)), size, group_rng)[place]
    relabelled = hasattr(policy, "label")
    attempts = []
    while rollout.frame < episode_len:
        start = rollout.frame
        task = first if first is not None and not attempts else choose_task(rollout.snapshot, env.cfg, rng)
        if relabelled:  # a learner drives: it is told a sentence, as in evaluation, not the task's name
            sentence = str(rng.choice(sentences[task]))
            succeeded = attempt_task(rollout, oracle, task, episode_len, max_task_steps, instruction=sentence)
        else:
            succeeded = attempt_task(rollout, oracle, task, episode_len, max_task_steps)
            sentence = str(rng.choice(sentences[task])) if succeeded else None
        end = rollout.frame if succeeded else rollout.frame - 1
        attempts.append(Attempt(task, start, end, succeeded, sentence, relabelled))
    return attempts


# ---- episode folders ----------------------------------------------------------------------------

def episode_dir(out: Path, index: int) -> Path:
    return out / EPISODES_DIR / f"ep_{index:04d}"


class EpisodeWriter:
    """Frame sink writing ``episode_%07d.npz`` (episode-local ids) and keeping low-dim arrays."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True)
        self.lowdim: dict[str, list[np.ndarray]] = {k: [] for k in STATISTICS_KEYS}

    def __call__(self, frame_id: int, frame: Frame) -> None:
        np.savez(frame_file(self.folder, frame_id), **frame)
        for key, values in self.lowdim.items():
            values.append(frame[key])

    def finish(self, attempts: list[Attempt]) -> None:
        np.savez(self.folder / "lowdim.npz", **{k: np.stack(v) for k, v in self.lowdim.items()})
        meta = {"frames": len(self.lowdim["actions"]), "attempts": [asdict(a) for a in attempts]}
        (self.folder / "episode.json").write_text(json.dumps(meta), encoding="utf-8")


def record_episode(index: int, config: CollectConfig, env: Any, policy_factory: PolicyFactory,
                   oracle: Oracle) -> Path:
    """Collect episode ``index`` into its temp folder and mark it done by renaming."""
    final = episode_dir(Path(config.out), index)
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    rng = episode_rng(config.seed, index)
    policy = policy_factory(config.scene, int(rng.integers(2**31)), config.action_noise)
    writer = EpisodeWriter(partial)
    sibling = None
    if config.siblings > 1:
        sibling = (sibling_rng(config.seed, index // config.siblings), config.siblings, index % config.siblings)
    writer.finish(collect_episode(env, policy, oracle, rng, writer, config.episode_len, config.task_steps,
                                  config.starts, sibling))
    os.replace(partial, final)
    return final


def check_settings(config: CollectConfig) -> None:
    """Record the episode settings in a new output folder; refuse to mix with other settings."""
    path = Path(config.out) / EPISODES_DIR / SETTINGS_FILE
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved != config.episode_settings():
            raise ValueError(f"{config.out} holds episodes recorded with {saved}, not "
                             f"{config.episode_settings()}; choose another out or delete that folder")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config.episode_settings()), encoding="utf-8")


# ---- running episodes (in worker processes) ----------------------------------------------------

_worker: dict[str, Any] = {}


def _init_worker(config: CollectConfig, policy_factory: PolicyFactory, oracle: Oracle | None) -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    from sim.env import PlayTableEnv  # after MUJOCO_GL is set
    from sim.task_oracle import TaskOracle

    _worker.update(config=config, env=PlayTableEnv(config.scene, render=True, segmentation=True),
                   policy_factory=policy_factory, oracle=oracle or TaskOracle())


def _run_episode(index: int) -> int:
    w = _worker
    record_episode(index, w["config"], w["env"], w["policy_factory"], w["oracle"])
    return index


def _close_worker() -> None:
    if "env" in _worker:
        _worker.pop("env").close()
    _worker.clear()


def run_episodes(config: CollectConfig, indices: list[int], policy_factory: PolicyFactory,
                 oracle: Oracle | None) -> None:
    """Record the episodes ``indices``: in this process if ``workers`` is 1, else in a spawn pool."""
    bar = tqdm(total=len(indices) * config.episode_len, unit="frame", desc="collect", smoothing=0.1)
    workers = min(config.workers, len(indices))
    try:
        if workers <= 1:
            _init_worker(config, policy_factory, oracle)
            try:
                for _ in map(_run_episode, indices):
                    bar.update(config.episode_len)
            finally:
                _close_worker()
            return
        ctx = mp.get_context("spawn")
        with ctx.Pool(workers, _init_worker, (config, policy_factory, oracle), maxtasksperchild=None) as pool:
            for _ in pool.imap_unordered(_run_episode, indices):
                bar.update(config.episode_len)
    finally:
        bar.close()


# ---- assembling the split folders -------------------------------------------------------------

def split_episodes(num_episodes: int, validation_fraction: float, seed: int,
                   group: int = 1) -> dict[str, list[int]]:
    """Episode indices per split: ``validation_fraction`` (>= 1 when there are 2+) go to validation. With
    ``group`` > 1 (sibling episodes, which share their first frame) whole groups of consecutive indices are
    split, so no start is seen in both splits."""
    if group > 1:
        groups = split_episodes(-(-num_episodes // group), validation_fraction, seed)
        return {split: [i for g in members for i in range(g * group, min((g + 1) * group, num_episodes))]
                for split, members in groups.items()}
    n_val = min(max(round(validation_fraction * num_episodes), 1), num_episodes - 1) if num_episodes >= 2 else 0
    rng = np.random.default_rng([seed, SPLIT_STREAM])
    validation = sorted(int(i) for i in rng.choice(num_episodes, n_val, replace=False))
    return {"training": [i for i in range(num_episodes) if i not in validation], "validation": validation}


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard link (no extra disk, temp episodes stay intact for re-assembly); copy where unsupported."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _episode_meta(out: Path, index: int) -> dict[str, Any]:
    return json.loads((episode_dir(out, index) / "episode.json").read_text(encoding="utf-8"))


def statistics(out: Path, indices: list[int]) -> dict[str, dict[str, list[float]]]:
    """Per-dimension mean/std of STATISTICS_KEYS over the frames of the given episodes."""
    stats = {}
    for key in STATISTICS_KEYS:
        values = np.concatenate([np.load(episode_dir(out, i) / "lowdim.npz")[key] for i in indices])
        stats[key] = {"mean": values.mean(0).tolist(), "std": values.std(0).tolist()}
    return stats


def label_span(start: int, end: int, first: int, window: int, mode: str) -> tuple[int, int]:
    """The frames annotated with a successful attempt's instruction (``start``..``end``: the attempt,
    ``first``: its episode's first frame, all in split numbering). ``calvin``: the last ``window``
    frames up to the success, which may begin inside the attempt before (CALVIN's convention);
    ``attempt``: the attempt's own frames, at most the last ``window`` of them."""
    begin = end - window + 1
    if mode == "attempt":
        begin = max(begin, start)
    elif mode != "calvin":
        raise ValueError(f"label mode must be one of {list(LABEL_MODES)}, got {mode!r}")
    return max(first, begin), end


def language_annotations(spans: list[tuple[int, int, str, str]], embed: Embedder) -> dict[str, Any]:
    """CALVIN's ``auto_lang_ann`` dict from (start, end, task, sentence) windows."""
    sentences = [s for _, _, _, s in spans]
    unique = sorted(set(sentences))
    vectors = dict(zip(unique, embed(unique))) if unique else {}
    emb = np.stack([vectors[s] for s in sentences]).astype(np.float32) if spans else \
        np.zeros((0, EMBEDDING_DIM), np.float32)
    return {
        "language": {"ann": sentences, "task": [t for _, _, t, _ in spans], "emb": emb[:, None, :]},
        "info": {"episodes": [], "indx": [(start, end) for start, end, _, _ in spans]},
    }


def assemble_split(config: CollectConfig, split: str, indices: list[int],
                   stats: dict[str, Any], embed: Embedder) -> Path:
    """Write one split folder: renumbered frames, episode ids, scene info, statistics, language."""
    out = Path(config.out)
    folder = out / split
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    ep_ids, spans, next_id = [], [], 0
    for index in indices:
        meta = _episode_meta(out, index)
        for local in range(meta["frames"]):
            _link_or_copy(frame_file(episode_dir(out, index), local), frame_file(folder, next_id + local))
        ep_ids.append((next_id, next_id + meta["frames"] - 1))
        for a in meta["attempts"]:
            if a.get("relabelled") and a["end"] >= a["start"]:  # expert labels on every frame: all of it
                spans.append((next_id + a["start"], next_id + a["end"], a["task"], a["sentence"]))
            elif a["succeeded"]:
                begin, end = label_span(next_id + a["start"], next_id + a["end"], next_id, config.window,
                                        config.label)
                spans.append((begin, end, a["task"], a["sentence"]))
        next_id += meta["frames"]
    np.save(folder / EP_IDS_FILE, np.asarray(ep_ids, dtype=np.int64).reshape(-1, 2))
    np.save(folder / SCENE_INFO_FILE, {f"calvin_scene_{config.scene}": [0, next_id - 1]} if next_id else {})
    (folder / STATISTICS_FILE).write_text(yaml.safe_dump(stats, sort_keys=False), encoding="utf-8")
    (folder / LANG_FILE).parent.mkdir()
    np.save(folder / LANG_FILE, language_annotations(spans, embed))
    return folder


# ---- entry points -----------------------------------------------------------------------------

def collect(config: CollectConfig, policy_factory: PolicyFactory | None = None,
            oracle: Oracle | None = None, embed: Embedder | None = None) -> dict[str, Path]:
    """Record the missing episodes, then (re)assemble both split folders; returns them by name."""
    out = Path(config.out)
    check_settings(config)
    pending = [i for i in range(config.num_episodes) if not episode_dir(out, i).is_dir()]
    if pending:
        run_episodes(config, pending, policy_factory or config.policy_factory(), oracle)
    splits = split_episodes(config.num_episodes, config.validation_fraction, config.seed, config.siblings)
    stats = statistics(out, splits["training"])  # both splits normalise with the training statistics
    embed = embed or embed_sentences
    return {split: assemble_split(config, split, splits[split], stats, embed) for split in SPLITS}


def collect_command(cfg: Mapping[str, Any]) -> None:
    """CLI: ``dream-policy collect`` with the keys of configs/collect.yaml."""
    config = CollectConfig.from_mapping(cfg)
    folders = collect(config)
    for split, folder in folders.items():
        ids = np.load(folder / EP_IDS_FILE)
        frames = int((ids[:, 1] - ids[:, 0] + 1).sum()) if ids.size else 0
        print(f"{split}: {len(ids)} episodes, {frames} frames -> {folder}")
