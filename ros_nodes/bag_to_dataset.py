"""Rosbag2 recordings of teleoperation -> a CALVIN-format data set (``dream-policy bag2data``).

One bag (a rosbag2 folder with sqlite3 or mcap storage, or one .db3 / .mcap file) becomes one episode.
Its messages are replayed in the order they were received through the policy node's own
preprocessing: ``policy_node.message_sample`` turns a message of a contract stream into a Sample
(image decoding, size check and resize to the policy's size with ``convert.fit_rgb``, joint order,
finite checks), the runner's StreamAligner (same stream configs and reference stream) aligns the
streams and ``convert.robot_obs_from`` assembles robot_obs. A control tick every 1 / ``rate_hz`` s
from the bag's first message to its last sees the messages received up to it, as the live node
would; a tick the aligner rejects (a required stream missing or older than its ``stale_s``) writes
no frame and is counted. A message that does not convert (a NaN joint state, a wrong image size)
is dropped and counted, as the live node drops it.

Actions of the frame of tick t_k (CALVIN's: the target the robot is sent after that observation):
``actions`` is the target in force at the next tick t_k+1 (tcp position, XYZ Euler, gripper 1 open
/ -1 closed); ``rel_actions`` its difference from the target in force at t_k in units of
POSITION_STEP / ROTATION_STEP (Euler differences wrapped to [-pi, pi)), clipped to [-1, 1]: the
inverse of ``convert.relative_to_command``. The target is the newest message on the contract's
command topic (PoseStamped, ``actions.mode: pose``) when the bag has it, else (and before the
first command) the newest measured tcp pose, i.e. the next frame's pose. The gripper is the newest
gripper command (1 when nearer the contract's ``open`` value) or, without one, follows the measured
width (closing: -1, opening: 1).

Language: each non-empty std_msgs/String on the contract's instruction topic annotates the frames
from its receipt to the next one (or the end); a bag without one is annotated whole with
``instruction``. Real robots have no depth, segmentation or simulator state: no depth_* or seg_*
keys are written, and ``scene_obs`` (a key the loader requires) is zeros unless the contract has
its sim-only stream and the bag holds it.

The data set is written into ``<out>.partial`` (frames by sim.collect's EpisodeWriter, splits by
sim.collect.split_episodes; a split without episodes is not written) and renamed to ``out`` only
when every bag converted; an existing ``out`` is replaced only with ``overwrite``.
"""

from __future__ import annotations

import math
import os
import shutil
import sqlite3
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rosbags.rosbag2 import Reader, ReaderError
from rosbags.serde import SerdeError
from rosbags.typesys import Stores, get_typestore
from tqdm import tqdm

from ros_nodes.alignment import Rejected, StreamAligner
from ros_nodes.contract import (
    ARM_JOINT_POSITIONS,
    FLOAT64,
    GRIPPER_WIDTH,
    IMAGE_FEATURES,
    OPTIONAL_FEATURES,
    SCENE_OBS,
    STRING,
    TCP_POSE,
    Contract,
    ContractError,
    Stream,
    feature_shape,
    load_contract,
)
from ros_nodes.convert import TYPESTORE, pose_to_tcp, robot_obs_from
from ros_nodes.policy_node import PolicyNodeConfig, message_sample, resolve_name
from ros_nodes.policy_runner import OPEN, PolicyRunnerConfig, stream_config
from ros_nodes.types import POSITION_STEP, ROTATION_STEP
from sim.annotations import task_for_sentence
from sim.calvin_dataset import EP_IDS_FILE, LANG_FILE, SCENE_INFO_FILE, STATISTICS_FILE, frame_file
from sim.collect import (
    EPISODES_DIR,
    SPLITS,
    Attempt,
    EpisodeWriter,
    episode_dir,
    language_annotations,
    split_episodes,
    statistics,
)
from sim.language import embed_sentences

ACTION_SOURCES = ("auto", "command", "measured")
STEPS = np.array([POSITION_STEP] * 3 + [ROTATION_STEP] * 3)  # units of a relative action's pose dims
GRIPPER_MOTION_M = 1e-3  # width change between two ticks that counts as the gripper moving
CUSTOM_TASK = "custom"  # task name of an instruction that is not one of CALVIN's sentences
NODE_NAME = PolicyNodeConfig.node_name  # ``~/x`` topics of the contract resolve in the policy node
Embedder = Callable[[list[str]], np.ndarray]


class BagError(ValueError):
    """A bag (or a bag2data setting) that cannot be converted; the message names what is wrong."""


# ---- settings -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Bag2DataConfig:
    """Settings of ``dream-policy bag2data`` (configs/bag2data.yaml)."""

    bags: tuple[str, ...]
    contract_file: str = "franka_hw"  # a YAML path or the name of a contract in configs/contract/
    out: str = "data/teleop"
    rate_hz: float | None = None  # None: the contract's actions.rate_hz
    instruction: str | None = None
    action_source: str = "auto"
    validation_fraction: float = 0.1
    seed: int = 0
    overwrite: bool = False

    def __post_init__(self) -> None:
        bags = (self.bags,) if isinstance(self.bags, (str, Path)) else self.bags
        paths_ok = isinstance(bags, (list, tuple)) and all(isinstance(b, (str, Path)) for b in bags)
        if not paths_ok or not bags:
            raise BagError(f"bag2data: bags must be a path or a non-empty list of paths, got {self.bags!r}")
        object.__setattr__(self, "bags", tuple(str(b) for b in bags))
        rate = self.rate_hz
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float))
                                 or not 0 < rate < math.inf):
            raise BagError(f"bag2data: rate_hz must be a number > 0 or null, got {rate!r}")
        text = self.instruction
        if text is not None and (not isinstance(text, str) or not text.strip()):
            raise BagError(f"bag2data: instruction must be non-empty text or null, got {text!r}")
        if self.action_source not in ACTION_SOURCES:
            raise BagError(f"bag2data: action_source must be one of {list(ACTION_SOURCES)}, "
                           f"got {self.action_source!r}")
        fraction = self.validation_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
            raise BagError(f"bag2data: validation_fraction must be in [0, 1), got {fraction!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise BagError(f"bag2data: seed must be an integer >= 0, got {self.seed!r}")
        if not isinstance(self.overwrite, bool):
            raise BagError(f"bag2data: overwrite must be true or false, got {self.overwrite!r}")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> Bag2DataConfig:
        """The config of a plain mapping; unknown keys are errors listing the valid ones."""
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(cfg) - set(valid))
        if unknown:
            raise BagError(f"bag2data: unknown config keys {unknown}; valid keys: {valid}")
        return cls(**cfg)


def contract_path(value: str) -> Path:
    """A contract YAML path, or the shipped contract ``configs/contract/<value>.yaml`` for a bare name."""
    if not isinstance(value, (str, Path)) or not str(value):
        raise BagError(f"bag2data: contract_file must be a contract name or a YAML path, got {value!r}")
    path = Path(value)
    if path.suffix in (".yaml", ".yml") or path.parent != Path("."):
        if not path.is_file():
            raise BagError(f"bag2data: contract file {path} does not exist")
        return path
    from dream_policy.cli import find_config_dir

    folder = find_config_dir() / "contract"
    shipped = folder / f"{value}.yaml"
    if not shipped.is_file():
        names = sorted(p.stem for p in folder.glob("*.yaml"))
        raise BagError(f"bag2data: no contract named {value!r} in {folder} (there: {names}); "
                       "or give a YAML path")
    return shipped


# ---- which topics a bag must have and what they give --------------------------------------------

@dataclass(frozen=True)
class TopicPlan:
    """What to read from one bag: the observation streams by topic and the optional topics."""

    streams: dict[str, Stream]  # resolved topic -> stream
    command: str | None  # commanded tcp target (PoseStamped) the actions come from
    gripper: str | None  # gripper command (Float64)
    instruction: str | None  # instruction text (String)
    notes: tuple[str, ...] = ()

    @property
    def topics(self) -> list[str]:
        return [*self.streams, *(t for t in (self.command, self.gripper, self.instruction) if t)]


def _topic_list(bag_topics: Mapping[str, tuple[str | None, int]]) -> str:
    listed = [f"{topic} ({kind or 'mixed types'})" for topic, (kind, _) in sorted(bag_topics.items())]
    return ", ".join(listed) or "none"


def plan_topics(contract: Contract, bag_topics: Mapping[str, tuple[str | None, int]], action_source: str,
                bag: str = "bag") -> TopicPlan:
    """The topics of ``bag`` (topic -> (type, message count)) to read under ``contract``.

    Every observation stream but the optional (sim-only) ones must be there with the contract's
    type; the command, gripper command and instruction topics are optional but must have the right
    type when present. ``action_source``: auto (the command topic when it can give tcp targets and
    has messages), command (it must) or measured (never).
    """
    problems, notes, streams = [], [], {}
    missing = []
    for stream in contract.observations:
        topic = resolve_name(stream.topic, NODE_NAME)
        if topic not in bag_topics:
            if stream.feature in OPTIONAL_FEATURES:
                notes.append(f"no {stream.feature} stream ({topic}): written as zeros")
            else:
                missing.append(f"{topic} ({stream.feature}, {stream.type})")
            continue
        kind = bag_topics[topic][0]
        if kind != stream.type:
            problems.append(f"topic {topic} is {kind or 'of mixed types'}; {contract.source} expects "
                            f"{stream.type} for {stream.feature}")
        streams[topic] = stream
    if missing:
        problems.insert(0, f"topic(s) {', '.join(missing)} of {contract.source} not in the bag")

    def optional(topic: str, expected: str, what: str) -> str | None:
        topic = resolve_name(topic, NODE_NAME)
        if topic not in bag_topics:
            return None
        if bag_topics[topic][0] != expected:
            problems.append(f"{what} topic {topic} is {bag_topics[topic][0] or 'of mixed types'}; "
                            f"{contract.source} expects {expected}")
        return topic

    actions = contract.actions
    command = optional(actions.target.topic, actions.target.type, "command")
    gripper = optional(actions.gripper.topic, FLOAT64, "gripper command")
    instruction = optional(contract.instruction.topic, STRING, "instruction")
    if problems:
        raise BagError(f"{bag}: {'; '.join(problems)}. The bag's topics: {_topic_list(bag_topics)}")
    command = _command_topic(command, actions.mode, action_source, bag_topics, bag, notes)
    return TopicPlan(streams, command, gripper, instruction, tuple(notes))


def _command_topic(topic: str | None, mode: str, action_source: str,
                   bag_topics: Mapping[str, tuple[str | None, int]], bag: str,
                   notes: list[str]) -> str | None:
    """The command topic the actions come from, or None for measured poses (with a note why)."""
    if action_source == "measured":
        return None
    why = None
    if mode != "pose":
        why = f"the contract commands {mode} (joint space), not tcp poses"
    elif topic is None:
        why = "the bag has no command topic"
    elif bag_topics[topic][1] == 0:
        why = f"the command topic {topic} has no messages"
    if why is None:
        return topic
    if action_source == "command":
        raise BagError(f"{bag}: action_source=command, but {why}; use action_source=auto or measured")
    notes.append(f"actions from measured tcp poses: {why}")
    return None


# ---- pure decisions -----------------------------------------------------------------------------

def tick_times_ns(start_ns: int, last_ns: int, rate_hz: float) -> np.ndarray:
    """Control ticks (int ns) every 1 / ``rate_hz`` s from ``start_ns`` up to ``last_ns`` inclusive."""
    count = math.floor((last_ns - start_ns) * rate_hz / 1e9 + 1e-6) + 1
    ticks = start_ns + np.round(np.arange(max(count, 0)) * (1e9 / rate_hz)).astype(np.int64)
    return ticks[ticks <= last_ns]


def wrap_angles(angles: np.ndarray) -> np.ndarray:
    """Angles (rad) wrapped to [-pi, pi)."""
    return (np.asarray(angles, dtype=np.float64) + np.pi) % (2 * np.pi) - np.pi


def relative_action(base: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, bool]:
    """CALVIN's relative action (7,) that moves the target ``base`` (6+,) to ``target`` (7,); whether clipped.

    The inverse of ``convert.relative_to_command`` (and sim.controller.relative_to_target): position
    and Euler differences (wrapped) divided by POSITION_STEP / ROTATION_STEP, clipped to [-1, 1];
    the gripper is 1 when ``target[6] > 0``, else -1.
    """
    delta = np.asarray(target[:6], dtype=np.float64) - np.asarray(base[:6], dtype=np.float64)
    delta[3:] = wrap_angles(delta[3:])
    scaled = delta / STEPS
    clipped = np.clip(scaled, -1.0, 1.0)
    return np.concatenate([clipped, [1.0 if target[6] > 0 else -1.0]]), bool(np.any(clipped != scaled))


def gripper_from_command(value: float, open_value: float, closed_value: float) -> float:
    """1 (open) when a gripper command is nearer the contract's open value than its closed one, else -1."""
    return OPEN if abs(value - open_value) < abs(value - closed_value) else -OPEN


def gripper_from_width(previous_action: float, previous_width: float | None, width: float | None,
                       threshold: float = GRIPPER_MOTION_M) -> float:
    """The gripper action a width change shows: -1 closing, 1 opening, else ``previous_action``."""
    if previous_width is None or width is None or abs(width - previous_width) <= threshold:
        return previous_action
    return OPEN if width > previous_width else -OPEN


def instruction_spans(frame_ticks_ns: Sequence[int], instructions: Sequence[tuple[int, str]]
                      ) -> list[tuple[int, int, str]]:
    """Inclusive (first, last, sentence) frame ranges: each instruction until the next one or the end.

    ``frame_ticks_ns``: the tick of each frame, ascending; ``instructions``: (receipt ns, text),
    ascending. A frame belongs to the newest instruction received at or before its tick; an
    instruction replaced before any frame annotates nothing.
    """
    ticks = np.asarray(frame_ticks_ns, dtype=np.int64)
    spans = []
    for i, (stamp, text) in enumerate(instructions):
        first = int(np.searchsorted(ticks, stamp, side="left"))
        end = len(ticks) if i + 1 == len(instructions) else int(
            np.searchsorted(ticks, instructions[i + 1][0], side="left"))
        if first < end:
            spans.append((first, end - 1, text))
    return spans


def task_name(sentence: str) -> str:
    """CALVIN's task of ``sentence``, or CUSTOM_TASK for a sentence of its own."""
    try:
        return task_for_sentence(sentence)
    except ValueError:
        return CUSTOM_TASK


# ---- the target in force ------------------------------------------------------------------------

class TargetTracker:
    """The tcp target and gripper action in force, from the newest messages received.

    Pose: the newest command when there is one, else the newest measured tcp pose. Gripper: the
    newest gripper command, else the measured width's trend (updated at each tick).
    """

    def __init__(self, open_value: float, closed_value: float) -> None:
        self.open_value, self.closed_value = open_value, closed_value
        self.command: np.ndarray | None = None
        self.measured: np.ndarray | None = None
        self.gripper_command: float | None = None
        self.width: float | None = None
        self._tick_width: float | None = None
        self._width_action = OPEN  # CALVIN's robot starts open

    def on_command(self, msg: Any) -> None:
        command = np.concatenate(pose_to_tcp(msg))
        if not np.all(np.isfinite(command)):
            raise ValueError(f"command pose has non-finite values: {command.tolist()}")
        self.command = command

    def on_measured(self, msg: Any) -> None:
        self.measured = np.concatenate(pose_to_tcp(msg))

    def on_gripper(self, value: float) -> None:
        if not math.isfinite(value):
            raise ValueError(f"gripper command {value!r} is not finite")
        self.gripper_command = gripper_from_command(value, self.open_value, self.closed_value)

    def at_tick(self) -> np.ndarray | None:
        """The target (7,) in force now (None before any pose); call once per tick, in order."""
        self._width_action = gripper_from_width(self._width_action, self._tick_width, self.width)
        self._tick_width = self.width
        pose = self.command if self.command is not None else self.measured
        if pose is None:
            return None
        gripper = self.gripper_command if self.gripper_command is not None else self._width_action
        return np.concatenate([pose, [gripper]])


# ---- one bag ------------------------------------------------------------------------------------

@dataclass
class EpisodeReport:
    """What converting one bag did."""

    bag: str
    frames: int = 0
    ticks: int = 0
    dropped_ticks: Counter[str] = field(default_factory=Counter)  # why -> ticks without a frame
    dropped_messages: Counter[str] = field(default_factory=Counter)  # topic -> messages not converted
    action_source: str = ""
    gripper_source: str = ""
    clipped: int = 0  # frames whose relative action was clipped (teleop faster than one step a tick)
    spans: list[tuple[int, int, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines for the console."""
        dropped = sum(self.dropped_ticks.values())
        lines = [f"{self.bag}: {self.frames} frames of {self.ticks} ticks; dropped ticks: {dropped}"
                 + (f" {dict(self.dropped_ticks)}" if dropped else ""),
                 (f"  actions from {self.action_source}; gripper from {self.gripper_source}; "
                  f"clipped relative actions: {self.clipped}"),
                 f"  dropped messages: {dict(self.dropped_messages) or 'none'}",
                 *(f"  instruction frames {a}-{b}: {text!r}" for a, b, text in self.spans),
                 *(f"  note: {note}" for note in self.notes)]
        return "\n".join(lines)


def _typestore(distro: str | None) -> Any:
    """Humble's message definitions for a Humble bag, else Jazzy's (the nodes' own)."""
    return get_typestore(Stores.ROS2_HUMBLE) if distro == "humble" else TYPESTORE


class _Episode:
    """The replay of one bag: feeds messages and ticks, writes each frame once its action is known."""

    def __init__(self, contract: Contract, plan: TopicPlan, writer: EpisodeWriter,
                 report: EpisodeReport) -> None:
        self.contract, self.plan, self.writer, self.report = contract, plan, writer, report
        streams = list(plan.streams.values())
        self.features = {s.feature: s for s in streams}
        self.aligner = StreamAligner([stream_config(s) for s in streams], PolicyRunnerConfig().reference)
        gripper = contract.actions.gripper
        self.tracker = TargetTracker(gripper.open, gripper.closed)
        self.instructions: list[tuple[int, str]] = []
        self.frame_ticks: list[int] = []
        self._pending: tuple[dict[str, np.ndarray], np.ndarray] | None = None  # frame, target at its tick

    def on_message(self, topic: str, stamp_ns: int, msg: Any) -> None:
        """One deserialised message received at ``stamp_ns``; a ValueError means it was not usable."""
        plan = self.plan
        if topic in plan.streams:
            stream = plan.streams[topic]
            sample = message_sample(stream, msg, stamp_ns * 1e-9)
            if stream.feature == TCP_POSE:
                self.tracker.on_measured(sample.value)
            elif stream.feature == GRIPPER_WIDTH:
                self.tracker.width = float(sample.value[0])
            self.aligner.push(stream.feature, sample)
        elif topic == plan.command:
            self.tracker.on_command(msg)
        elif topic == plan.gripper:
            self.tracker.on_gripper(float(msg.data))
        elif topic == plan.instruction and msg.data.strip():
            self.instructions.append((stamp_ns, msg.data.strip()))

    def on_tick(self, tick_ns: int) -> None:
        """The control tick ``tick_ns``: finish the previous frame, then align this tick's observation."""
        self.report.ticks += 1
        target = self.tracker.at_tick()
        if self._pending is not None:
            self._finish(target)
        aligned = self.aligner.observation(tick_ns * 1e-9)
        if isinstance(aligned, Rejected):
            self.report.dropped_ticks[f"{aligned.reason} {aligned.stream}"] += 1
            return
        values, joints = aligned.values, self.features[ARM_JOINT_POSITIONS].joint_names
        last_gripper = OPEN if target is None else target[6]
        try:
            robot_obs = robot_obs_from(values[TCP_POSE], values[ARM_JOINT_POSITIONS], joints,
                                       float(values[GRIPPER_WIDTH][0]), last_gripper)
        except ValueError:
            self.report.dropped_ticks["bad robot_obs"] += 1
            return
        scene_obs = values.get(SCENE_OBS, np.zeros(feature_shape(SCENE_OBS)))
        frame = {**{f: values[f] for f in IMAGE_FEATURES}, "robot_obs": robot_obs, SCENE_OBS: scene_obs}
        base = target if target is not None else np.concatenate([robot_obs[:6], [last_gripper]])
        self._pending = (frame, base)
        self.frame_ticks.append(tick_ns)

    def finish(self) -> None:
        """The last frame's action: the target in force after the bag's last message."""
        if self._pending is not None:
            self._finish(self.tracker.at_tick())

    def _finish(self, target: np.ndarray | None) -> None:
        frame, base = self._pending
        self._pending = None
        target = base if target is None else target
        rel, clipped = relative_action(base, target)
        self.report.clipped += clipped
        actions = np.asarray(target, dtype=np.float64)
        self.writer(self.report.frames, {**frame, "actions": actions, "rel_actions": rel})
        self.report.frames += 1


def _open_bag(path: Path) -> Reader:
    """An open Reader; a missing or unreadable bag is a BagError naming it and the cause."""
    if not path.exists():
        raise BagError(f"bag {path} does not exist")
    try:
        reader = Reader(path)
        reader.open()
    except (ReaderError, OSError, ValueError, KeyError) as error:
        raise BagError(f"bag {path} is not a readable rosbag2 bag (a folder with metadata.yaml and its "
                       f".db3 / .mcap files, or one such file): {error}") from None
    return reader


def convert_bag(path: Path, contract: Contract, writer: EpisodeWriter, rate_hz: float,
                instruction: str | None, action_source: str = "auto", progress: bool = True) -> EpisodeReport:
    """Write the bag at ``path`` as one episode with ``writer``; returns what was done (raises BagError)."""
    report = EpisodeReport(str(path))
    reader = _open_bag(path)
    try:
        if reader.message_count == 0:
            raise BagError(f"bag {path} is empty: no messages (topics: {list(reader.topics) or 'none'})")
        topics = {t: (info.msgtype, info.msgcount) for t, info in reader.topics.items()}
        plan = plan_topics(contract, topics, action_source, str(path))
        report.notes += plan.notes
        episode = _Episode(contract, plan, writer, report)
        _replay(reader, plan, episode, rate_hz, report, progress)
    except (ReaderError, sqlite3.Error) as error:
        raise BagError(f"bag {path} is corrupt: {error}") from None
    finally:
        reader.close()
    if report.frames == 0:
        raise BagError(f"bag {path}: no tick had every stream fresh, so there is no frame; dropped ticks: "
                       f"{dict(report.dropped_ticks)}, dropped messages: {dict(report.dropped_messages)}")
    report.action_source = (f"the commanded target {plan.command}" if plan.command else
                            f"the measured tcp pose of the next frame ({_topic_of(plan, TCP_POSE)})")
    report.gripper_source = (f"the gripper command {plan.gripper}" if plan.gripper else
                             f"the measured gripper width ({_topic_of(plan, GRIPPER_WIDTH)})")
    report.spans = instruction_spans(episode.frame_ticks, episode.instructions)
    if not report.spans:
        if instruction is None:
            raise BagError(f"bag {path} has no instruction: no messages on "
                           f"{resolve_name(contract.instruction.topic, NODE_NAME)} before its last frame "
                           "and no instruction= given")
        report.spans = [(0, report.frames - 1, instruction.strip())]
    return report


def _topic_of(plan: TopicPlan, feature: str) -> str:
    return next(t for t, s in plan.streams.items() if s.feature == feature)


def _replay(reader: Reader, plan: TopicPlan, episode: _Episode, rate_hz: float, report: EpisodeReport,
            progress: bool) -> None:
    """Feed the plan's messages in receipt order, running every tick once all messages up to it are in."""
    connections = [c for c in reader.connections if c.topic in plan.topics]
    typestore = _typestore(reader.ros_distro)
    first_ns, last_ns = reader.start_time, reader.end_time - 1
    ticks = tick_times_ns(first_ns, last_ns, rate_hz)
    total = sum(c.msgcount for c in connections)
    k = 0
    with tqdm(total=total, unit="msg", desc=Path(report.bag).name, disable=not progress) as bar:
        for connection, stamp_ns, raw in reader.messages(connections):
            while k < len(ticks) and ticks[k] < stamp_ns:
                episode.on_tick(int(ticks[k]))
                k += 1
            try:
                msg = _deserialize(typestore, raw, connection.msgtype)
                episode.on_message(connection.topic, stamp_ns, msg)
            except ValueError:
                report.dropped_messages[connection.topic] += 1
            bar.update()
    for tick in ticks[k:]:
        episode.on_tick(int(tick))
    episode.finish()


def _deserialize(typestore: Any, raw: bytes, msgtype: str) -> Any:
    """The message of CDR bytes; truncated or garbled data is a ValueError (the message is dropped)."""
    try:
        return typestore.deserialize_cdr(raw, msgtype)
    except SerdeError as error:
        raise ValueError(f"cannot deserialise a {msgtype}: {error}") from None


# ---- the data set -------------------------------------------------------------------------------

@dataclass
class Bag2DataResult:
    """The written data set: its split folders and one report per bag (episode index order)."""

    out: Path
    splits: dict[str, list[int]]
    reports: list[EpisodeReport]


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse an existing ``out`` unless ``overwrite`` and it holds nothing but data set splits."""
    if not out.exists():
        return
    if not out.is_dir():
        raise BagError(f"bag2data: out {out} exists and is not a folder")
    if not overwrite:
        raise FileExistsError(f"bag2data: out {out} exists; choose another out or set overwrite=true "
                              "to replace it")
    others = sorted(p.name for p in out.iterdir() if p.name not in SPLITS)
    if others:
        raise BagError(f"bag2data: out {out} holds {others[:5]}, not only the splits {list(SPLITS)}; "
                       "overwrite=true replaces only a data set folder")


def _publish(partial: Path, out: Path, overwrite: bool) -> None:
    """Move the finished ``partial`` folder to ``out``; an old ``out`` goes once the new one is there."""
    check_output(out, overwrite)
    if not out.exists():
        os.replace(partial, out)
        return
    old = out.with_name(f"{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out, old)
    os.replace(partial, out)
    shutil.rmtree(old)


def write_split(root: Path, split: str, indices: list[int], reports: list[EpisodeReport],
                stats: dict[str, Any], scene: str, embed: Embedder) -> Path:
    """One split folder of ``root``: its episodes' frames renumbered (moved), ids, statistics, language."""
    folder = root / split
    (folder / LANG_FILE).parent.mkdir(parents=True)
    ep_ids, spans, next_id = [], [], 0
    for index in indices:
        frames = reports[index].frames
        for local in range(frames):
            os.replace(frame_file(episode_dir(root, index), local), frame_file(folder, next_id + local))
        ep_ids.append((next_id, next_id + frames - 1))
        spans += [(next_id + a, next_id + b, task_name(text), text) for a, b, text in reports[index].spans]
        next_id += frames
    np.save(folder / EP_IDS_FILE, np.asarray(ep_ids, dtype=np.int64).reshape(-1, 2))
    np.save(folder / SCENE_INFO_FILE, {scene: [0, next_id - 1]})
    (folder / STATISTICS_FILE).write_text(yaml.safe_dump(stats, sort_keys=False), encoding="utf-8")
    np.save(folder / LANG_FILE, language_annotations(spans, embed))
    return folder


def convert_bags(config: Bag2DataConfig, embed: Embedder = embed_sentences, progress: bool = True
                 ) -> Bag2DataResult:
    """Convert every bag of ``config`` into the data set ``config.out`` (all or nothing)."""
    out = Path(config.out)
    check_output(out, config.overwrite)
    contract = load_contract(contract_path(config.contract_file))
    rate_hz = float(config.rate_hz or contract.actions.rate_hz)
    partial = out.with_name(f"{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted run
    try:
        reports = []
        for index, bag in enumerate(config.bags):
            writer = EpisodeWriter(episode_dir(partial, index))
            report = convert_bag(Path(bag), contract, writer, rate_hz, config.instruction,
                                 config.action_source, progress)
            writer.finish([Attempt(task_name(text), a, b, True, text) for a, b, text in report.spans])
            reports.append(report)
        splits = split_episodes(len(reports), config.validation_fraction, config.seed)
        stats = statistics(partial, splits["training"])  # both splits normalise with the training statistics
        for split in SPLITS:
            if splits[split]:
                write_split(partial, split, splits[split], reports, stats, contract.name, embed)
        shutil.rmtree(partial / EPISODES_DIR)
        _publish(partial, out, config.overwrite)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return Bag2DataResult(out, splits, reports)


def bag2data_command(cfg: Mapping[str, Any]) -> None:
    """CLI: ``dream-policy bag2data`` with the keys of configs/bag2data.yaml."""
    from omegaconf import DictConfig, OmegaConf

    from dream_policy.cli import UsageError

    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    try:
        result = convert_bags(Bag2DataConfig.from_mapping(plain))
    except (BagError, ContractError, FileExistsError) as error:
        raise UsageError(str(error)) from None
    for report in result.reports:
        print(report.summary())
    for split, indices in result.splits.items():
        frames = sum(result.reports[i].frames for i in indices)
        where = result.out / split if indices else "not written (no episodes)"
        print(f"{split}: {len(indices)} episodes, {frames} frames -> {where}")
