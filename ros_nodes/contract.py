"""The policy node's contract, loaded from a YAML file (``configs/contract/*.yaml``) and validated.

Which ROS topics feed which observation features, where the action goes, and the safety limits.

Every error names the file, the field path (``observations[1].alignment``) and what was expected;
unknown keys are errors. Each dataclass checks its own values (raising ``FieldError``); the loader
adds the file and the path. Plain Python: no rclpy, so tests and bag converters can use it.

Alignment of a stream to a control tick at time t:
- ``hold``: the latest message, whatever its stamp;
- ``asof``: the latest message stamped at or before t and not older than t - ``tolerance_s``;
- ``drop``: each message is used once; a tick without a new message has none.
A stream whose chosen message is older than ``stale_s`` (or that has none) makes the node publish
nothing for that tick. Messages without a header (std_msgs/msg/Float64, Float64MultiArray) are stamped
on receipt.

``scene_obs`` is optional and sim-only: privileged simulator state (CALVIN's scene_obs (24,):
articulations, lights, block poses) that no hardware contract has; a scripted expert needs it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ros_nodes.types import OBSERVATION_FEATURES
from sim.calvin_dataset import FRAME_KEYS

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
JOINT_STATE = "sensor_msgs/msg/JointState"
POSE_STAMPED = "geometry_msgs/msg/PoseStamped"
FLOAT64 = "std_msgs/msg/Float64"
FLOAT64_ARRAY = "std_msgs/msg/Float64MultiArray"
STRING = "std_msgs/msg/String"
JOINT_TRAJECTORY = "trajectory_msgs/msg/JointTrajectory"
HEADERLESS_TYPES = (FLOAT64, FLOAT64_ARRAY, STRING)

IMAGE_FEATURES = OBSERVATION_FEATURES[:2]  # rgb_static, rgb_gripper
# The streams robot_obs is assembled from (the last gripper action is the node's own command).
TCP_POSE, ARM_JOINT_POSITIONS, GRIPPER_WIDTH = ("robot_obs.tcp_pose", "robot_obs.arm_joints",
                                                "robot_obs.gripper_width")
ARM_JOINTS = 7  # robot_obs[7:14]
SCENE_OBS = "scene_obs"  # privileged simulator state (24,), sim contracts only
OPTIONAL_FEATURES = (SCENE_OBS,)
# Which message types may carry each stream feature; the gripper width from a JointState is the
# sum of the listed finger joints (each finger travels 0-0.04 m, as on the play-table).
FEATURE_TYPES: dict[str, tuple[str, ...]] = {
    **{f: (IMAGE, COMPRESSED_IMAGE) for f in IMAGE_FEATURES},
    TCP_POSE: (POSE_STAMPED,),
    ARM_JOINT_POSITIONS: (JOINT_STATE,),
    GRIPPER_WIDTH: (FLOAT64, JOINT_STATE),
    SCENE_OBS: (FLOAT64_ARRAY,),
}
# Raw image encodings -> (channels per pixel, the source channels that give R, G, B).
RAW_ENCODINGS: dict[str, tuple[int, tuple[int, int, int]]] = {
    "rgb8": (3, (0, 1, 2)), "bgr8": (3, (2, 1, 0)), "rgba8": (4, (0, 1, 2)), "bgra8": (4, (2, 1, 0)),
    "mono8": (1, (0, 0, 0)),
}
COMPRESSED_FORMATS = {"jpeg": ".jpg", "png": ".png"}  # format -> file extension of the encoder
ALIGNMENTS = ("hold", "asof", "drop")
COMMAND_MODES = {"pose": POSE_STAMPED, "joint_trajectory": JOINT_TRAJECTORY}
# ROS 2 names: tokens of letters, digits and underscores, not starting with a digit; `~` = node's.
_ROS_NAME = re.compile(r"^(~/|/)?[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*$")


class ContractError(ValueError):
    """A contract file that does not validate; the message names the file and the field path."""


class FieldError(ValueError):
    """A bad value of one field of a dataclass; the loader prefixes the file and the section path."""

    def __init__(self, name: str, expected: str, value: Any) -> None:
        super().__init__(f"{name}: expected {expected}, got {value!r}")
        self.name, self.expected, self.value = name, expected, value


def feature_shape(feature: str) -> tuple[int, ...]:
    """The policy's shape of an observation feature (the project's schema, sim.calvin_dataset)."""
    return FRAME_KEYS[feature][1]


# ---- value checks used by the dataclasses --------------------------------------------------------

def _number(name: str, value: Any, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FieldError(name, "a finite number", value)
    if positive and value <= 0:
        raise FieldError(name, "a number > 0", value)
    return float(value)


def _integer(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise FieldError(name, f"an integer >= {minimum}", value)
    return value


def _choice(name: str, value: Any, choices: tuple[str, ...] | Mapping[str, Any]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise FieldError(name, f"one of {list(choices)}", value)
    return value


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise FieldError(name, "a non-empty string", value)
    return value


def _ros_name(name: str, value: Any) -> str:
    if not isinstance(value, str) or not _ROS_NAME.match(value):
        raise FieldError(name, "a ROS 2 name like /camera/image_raw (letters, digits, _; no digit first)",
                         value)
    return value


def _names(name: str, value: Any, count: int | None = None) -> tuple[str, ...]:
    expected = f"a list of {count or 'one or more'} distinct joint names"
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) and v for v in value) \
            or len(set(value)) != len(value) or (count is not None and len(value) != count):
        raise FieldError(name, expected, value)
    return tuple(value)


def _xyz(name: str, value: Any) -> tuple[float, float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise FieldError(name, "3 numbers [x, y, z] in metres", value)
    x, y, z = (_number(name, v) for v in value)
    return x, y, z


def _set(obj: Any, **values: Any) -> None:
    """Normalised values on a frozen dataclass (lists to tuples, ints to floats)."""
    for key, value in values.items():
        object.__setattr__(obj, key, value)


# ---- the contract model -------------------------------------------------------------------------

@dataclass(frozen=True)
class QosProfile:
    """ROS 2 QoS; the names are rclpy's policy names in lower case (``HistoryPolicy[h.upper()]``)."""

    history: str = "keep_last"
    depth: int = 10
    reliability: str = "reliable"
    durability: str = "volatile"

    def __post_init__(self) -> None:
        _choice("history", self.history, ("keep_last", "keep_all"))
        _integer("depth", self.depth, 1)
        _choice("reliability", self.reliability, ("reliable", "best_effort"))
        _choice("durability", self.durability, ("volatile", "transient_local"))


QOS_PROFILES = {
    "sensor": QosProfile("keep_last", 5, "best_effort", "volatile"),
    "default": QosProfile("keep_last", 10, "reliable", "volatile"),
}


@dataclass(frozen=True)
class Alignment:
    policy: str
    tolerance_s: float | None = None

    def __post_init__(self) -> None:
        _choice("policy", self.policy, ALIGNMENTS)
        if self.policy == "asof":
            if self.tolerance_s is None:
                raise FieldError("tolerance_s", "a tolerance in seconds (> 0) for asof alignment", None)
            _set(self, tolerance_s=_number("tolerance_s", self.tolerance_s, positive=True))
        elif self.tolerance_s is not None:
            raise FieldError("tolerance_s", f"no tolerance for {self.policy!r} (only asof has one)",
                             self.tolerance_s)


@dataclass(frozen=True)
class ImageSpec:
    """What the topic delivers (not the policy's size): a raw encoding or a compressed format."""

    height: int
    width: int
    encoding: str

    def __post_init__(self) -> None:
        _integer("height", self.height, 1)
        _integer("width", self.width, 1)
        _choice("encoding", self.encoding, (*RAW_ENCODINGS, *COMPRESSED_FORMATS))


@dataclass(frozen=True)
class Stream:
    """One observation topic feeding ``feature``; ``joint_names`` for JointState streams, in order."""

    feature: str
    topic: str
    type: str
    qos: QosProfile
    alignment: Alignment
    stale_s: float
    image: ImageSpec | None = None
    joint_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _choice("feature", self.feature, FEATURE_TYPES)
        _ros_name("topic", self.topic)
        _choice("type", self.type, FEATURE_TYPES[self.feature])
        _set(self, stale_s=_number("stale_s", self.stale_s, positive=True))
        if self.alignment.policy == "asof" and self.type in HEADERLESS_TYPES:
            raise FieldError("alignment", f"hold or drop: {self.type} has no header stamp", "asof")
        self._check_image()
        if self.type == JOINT_STATE:
            count = ARM_JOINTS if self.feature == ARM_JOINT_POSITIONS else None
            _set(self, joint_names=_names("joint_names", self.joint_names, count))
        elif self.joint_names:
            raise FieldError("joint_names", f"no joint names for {self.type}", self.joint_names)

    def _check_image(self) -> None:
        if self.feature not in IMAGE_FEATURES:
            if self.image is not None:
                raise FieldError("image", f"no image section for {self.feature}", self.image)
            return
        if self.image is None:
            raise FieldError("image", "{height, width, encoding} for an image stream", None)
        allowed = tuple(RAW_ENCODINGS) if self.type == IMAGE else tuple(COMPRESSED_FORMATS)
        if self.image.encoding not in allowed:
            raise FieldError("image.encoding", f"one of {list(allowed)} for {self.type}", self.image.encoding)


@dataclass(frozen=True)
class Topic:
    topic: str
    qos: QosProfile = QOS_PROFILES["default"]
    type: str = STRING

    def __post_init__(self) -> None:
        _ros_name("topic", self.topic)


@dataclass(frozen=True)
class GripperOutput:
    """The gripper command topic (std_msgs/msg/Float64) and the values it sends to open and close."""

    topic: str
    qos: QosProfile = QOS_PROFILES["default"]
    open: float = 1.0
    closed: float = -1.0
    type: str = FLOAT64

    def __post_init__(self) -> None:
        _ros_name("topic", self.topic)
        _set(self, open=_number("open", self.open), closed=_number("closed", self.closed))


@dataclass(frozen=True)
class Actions:
    """Where commands go: ``pose`` (PoseStamped target) or ``joint_trajectory`` (with joint_names)."""

    mode: str
    target: Topic
    gripper: GripperOutput
    frame_id: str
    rate_hz: float = 30.0
    joint_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _choice("mode", self.mode, COMMAND_MODES)
        _text("frame_id", self.frame_id)
        _set(self, rate_hz=_number("rate_hz", self.rate_hz, positive=True))
        if self.mode == "joint_trajectory":
            _set(self, joint_names=_names("joint_names", self.joint_names, ARM_JOINTS))
        elif self.joint_names:
            raise FieldError("joint_names", "no joint names in pose mode", self.joint_names)

    @property
    def period_s(self) -> float:
        return 1.0 / self.rate_hz


@dataclass(frozen=True)
class Services:
    """Service names (relative ones resolve in the node's namespace)."""

    start: str = "~/start"
    stop: str = "~/stop"
    set_task: str = "~/set_task"

    def __post_init__(self) -> None:
        for f in fields(self):
            _ros_name(f.name, getattr(self, f.name))


@dataclass(frozen=True)
class Workspace:
    """Axis-aligned box (m, in the command frame) that commanded tcp positions are clamped to."""

    min: tuple[float, float, float]
    max: tuple[float, float, float]

    def __post_init__(self) -> None:
        _set(self, min=_xyz("min", self.min), max=_xyz("max", self.max))
        if not all(lo < hi for lo, hi in zip(self.min, self.max)):
            raise FieldError("max", f"every coordinate above min {list(self.min)}", list(self.max))


@dataclass(frozen=True)
class MaxStep:
    """Largest change between consecutive commands: position distance (m), per-axis Euler change (rad)."""

    position_m: float
    rotation_rad: float

    def __post_init__(self) -> None:
        _set(self, position_m=_number("position_m", self.position_m, positive=True),
             rotation_rad=_number("rotation_rad", self.rotation_rad, positive=True))


@dataclass(frozen=True)
class Safety:
    """Limits; the watchdog holds the last command after ``watchdog_periods`` missed control periods."""

    workspace: Workspace
    max_step: MaxStep
    watchdog_periods: int = 2
    stale_s: float = 0.2  # default for streams that set none

    def __post_init__(self) -> None:
        _integer("watchdog_periods", self.watchdog_periods, 1)
        _set(self, stale_s=_number("stale_s", self.stale_s, positive=True))


@dataclass(frozen=True)
class Contract:
    observations: tuple[Stream, ...]
    actions: Actions
    safety: Safety
    instruction: Topic = Topic("~/instruction")
    services: Services = Services()
    name: str = "contract"
    source: str = field(default="<memory>", compare=False)

    def __post_init__(self) -> None:
        _text("name", self.name)
        features = [s.feature for s in self.observations]
        for i, f in enumerate(features):
            if f in features[:i]:
                raise FieldError(f"observations[{i}].feature", "each feature once", f)
        required = [f for f in FEATURE_TYPES if f not in OPTIONAL_FEATURES]
        missing = [f for f in required if f not in features]
        if missing:
            raise FieldError("observations", f"streams for every feature in {required}; "
                             f"missing {missing}", features)

    def stream(self, feature: str) -> Stream:
        """The stream that feeds ``feature``."""
        for s in self.observations:
            if s.feature == feature:
                return s
        raise KeyError(f"{feature!r} is not a stream of {self.name}; its features: "
                       f"{[s.feature for s in self.observations]}")

    @property
    def watchdog_s(self) -> float:
        return self.safety.watchdog_periods * self.actions.period_s


# ---- loading ------------------------------------------------------------------------------------

Parser = Callable[[Any, str], Any]


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


class _Loader:
    """Builds the dataclasses from one YAML file; errors carry the file and the field path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, where: str, expected: str, value: Any) -> ContractError:
        return ContractError(f"{self.source}: {where or '<top level>'}: expected {expected}, got {value!r}")

    def build(self, cls: type, raw: Any, where: str, parsers: Mapping[str, Parser] | None = None,
              fixed: Mapping[str, Any] | None = None) -> Any:
        """``cls`` from the mapping ``raw``.

        ``parsers`` turn nested values into dataclasses, ``fixed`` fields are set by the loader and
        are not keys of the file.
        """
        parsers, fixed = parsers or {}, fixed or {}
        keys = [f.name for f in fields(cls) if f.name not in fixed]
        if not isinstance(raw, dict):
            raise self.error(where, f"a mapping with keys {keys}", raw)
        for key in raw:
            if key not in keys:
                raise self.error(_join(where, str(key)), f"one of the keys {keys} (unknown key)", raw[key])
        for f in fields(cls):
            if f.name in keys and f.name not in raw and f.default is MISSING and f.default_factory is MISSING:
                raise self.error(_join(where, f.name), "a value (required)", None)
        values = {k: parsers[k](v, _join(where, k)) if k in parsers else v for k, v in raw.items()}
        try:
            return cls(**values, **fixed)
        except FieldError as e:
            raise self.error(_join(where, e.name), e.expected, e.value) from None

    def qos(self, raw: Any, where: str) -> QosProfile:
        """A profile name (sensor, default) or explicit fields (defaults: the ``default`` profile)."""
        if isinstance(raw, str):
            if raw not in QOS_PROFILES:
                raise self.error(where, f"a QoS profile name in {list(QOS_PROFILES)} or a mapping", raw)
            return QOS_PROFILES[raw]
        return self.build(QosProfile, raw, where)

    def alignment(self, raw: Any, where: str) -> Alignment:
        """``hold`` / ``drop`` or a mapping ``{policy: asof, tolerance_s: 0.02}``."""
        return self.build(Alignment, {"policy": raw} if isinstance(raw, str) else raw, where)

    def topic(self, cls: type, message_type: str) -> Parser:
        return lambda raw, where: self.build(cls, raw, where, {"qos": self.qos}, {"type": message_type})

    def stream(self, raw: Any, where: str, stale_s: float) -> Stream:
        parsers = {"qos": self.qos, "alignment": self.alignment,
                   "image": lambda v, w: self.build(ImageSpec, v, w)}
        return self.build(Stream, {"stale_s": stale_s, **raw} if isinstance(raw, dict) else raw, where,
                          parsers)

    def actions(self, raw: Any, where: str) -> Actions:
        mode = raw.get("mode") if isinstance(raw, dict) else None
        target = self.topic(Topic, COMMAND_MODES.get(mode, POSE_STAMPED) if isinstance(mode, str)
                            else POSE_STAMPED)
        return self.build(Actions, raw, where,
                          {"target": target, "gripper": self.topic(GripperOutput, FLOAT64)})

    def safety(self, raw: Any, where: str) -> Safety:
        return self.build(Safety, raw, where, {"workspace": lambda v, w: self.build(Workspace, v, w),
                                               "max_step": lambda v, w: self.build(MaxStep, v, w)})

    def contract(self, raw: dict, name: str) -> Contract:
        """Safety first: its ``stale_s`` is the default of every stream."""
        safety = self.safety(raw.get("safety"), "safety")

        def observations(value: Any, where: str) -> tuple[Stream, ...]:
            if not isinstance(value, list) or not value:
                raise self.error(where, "a non-empty list of streams", value)
            return tuple(self.stream(s, f"{where}[{i}]", safety.stale_s) for i, s in enumerate(value))

        parsers = {"observations": observations, "actions": self.actions, "safety": lambda v, w: safety,
                   "instruction": self.topic(Topic, STRING),
                   "services": lambda v, w: self.build(Services, v, w)}
        return self.build(Contract, {"name": name, **raw}, "", parsers, {"source": self.source})


def load_contract(path: str | Path) -> Contract:
    """The validated contract in the YAML file ``path``; a ContractError names the file and field."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ContractError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ContractError(f"{path}: expected a mapping with keys observations, actions, safety, ...; "
                            f"got {raw!r}")
    return _Loader(str(path)).contract(raw, path.stem)
