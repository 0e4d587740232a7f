"""Pure conversions between ROS 2 messages and the policy's features and commands.

Messages are the objects the ``rosbags`` typestore builds and deserialises (attributes as in the
.msg files: ``msg.header.stamp.sec``, ``msg.data``); any object with the same attributes works
(e.g. cyclonedds samples). Outgoing messages are built with ``TYPESTORE`` (ROS 2 Jazzy), so they
serialise with ``TYPESTORE.serialize_cdr``. Orientations use CALVIN's extrinsic XYZ Euler angles,
through ``sim.rotations`` like the play-table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import imageio.v3 as iio
import numpy as np
from PIL import Image as PILImage
from rosbags.typesys import Stores, get_typestore

from ros_nodes.contract import COMPRESSED_FORMATS, RAW_ENCODINGS
from ros_nodes.types import POSITION_STEP, ROTATION_STEP, Command
from sim.rotations import euler_to_quat, quat_to_euler

TYPESTORE = get_typestore(Stores.ROS2_JAZZY)
_T = TYPESTORE.types


def stamp_seconds(header: Any) -> float:
    """``header.stamp`` as seconds."""
    return header.stamp.sec + header.stamp.nanosec * 1e-9


def _sec_nanosec(seconds: float) -> tuple[int, int]:
    """Whole seconds and nanoseconds (rounded, carried into the seconds)."""
    sec = math.floor(seconds)
    nanosec = round((seconds - sec) * 1e9)
    return (sec + 1, 0) if nanosec >= 1_000_000_000 else (sec, nanosec)


def header(stamp: float, frame_id: str) -> Any:
    """A std_msgs/msg/Header at ``stamp`` seconds."""
    sec, nanosec = _sec_nanosec(stamp)
    return _T["std_msgs/msg/Header"](stamp=_T["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec),
                                     frame_id=frame_id)


def _bytes(data: Any) -> np.ndarray:
    """Message ``data`` (NumPy array, bytes or list of ints) as a flat uint8 array without copying."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    return np.asarray(data, dtype=np.uint8).reshape(-1)


def _check_shape(rgb: np.ndarray, expected_shape: Sequence[int] | None, source: str) -> np.ndarray:
    if expected_shape is not None and rgb.shape[:2] != tuple(expected_shape)[:2]:
        raise ValueError(f"{source}: image is {rgb.shape[0]}x{rgb.shape[1]} (HxW); "
                         f"expected {expected_shape[0]}x{expected_shape[1]}")
    return rgb


def image_to_rgb(msg: Any, expected_shape: Sequence[int] | None = None, topic: str = "image") -> np.ndarray:
    """(H, W, 3) uint8 RGB of a sensor_msgs/msg/Image; rows may be padded (``step``).

    ``expected_shape`` is (H, W) or (H, W, 3); errors name ``topic``, the encoding and the size.
    """
    source = f"{topic} ({msg.encoding}, {msg.height}x{msg.width}, step {msg.step})"
    if msg.encoding not in RAW_ENCODINGS:
        raise ValueError(f"{source}: unsupported encoding; supported: {list(RAW_ENCODINGS)}")
    channels, order = RAW_ENCODINGS[msg.encoding]
    height, width, step = msg.height, msg.width, msg.step
    if height == 0 or width == 0:
        raise ValueError(f"{source}: empty image")
    if step < width * channels:
        raise ValueError(f"{source}: step is smaller than width * {channels} channels = {width * channels}")
    data = _bytes(msg.data)
    if data.size != step * height:
        raise ValueError(f"{source}: data is {data.size} bytes; expected step * height = {step * height}")
    pixels = data.reshape(height, step)[:, :width * channels].reshape(height, width, channels)
    return _check_shape(np.ascontiguousarray(pixels[..., list(order)]), expected_shape, source)


def compressed_to_rgb(msg: Any, expected_shape: Sequence[int] | None = None,
                      topic: str = "compressed image") -> np.ndarray:
    """(H, W, 3) uint8 RGB of a sensor_msgs/msg/CompressedImage (jpeg or png, found from the data)."""
    source = f"{topic} (format {msg.format!r})"
    data = _bytes(msg.data)
    try:  # mode RGB: gray, palette and RGBA images all become (H, W, 3)
        rgb = iio.imread(data.tobytes(), plugin="pillow", mode="RGB")
    except (OSError, ValueError, SyntaxError) as e:  # what imageio/Pillow raise on bad or truncated data
        raise ValueError(f"{source}: cannot decode {data.size} bytes as an image: {e}") from None
    return _check_shape(rgb, expected_shape, source)


def _checked_rgb(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {array.dtype} {array.shape}")
    return np.ascontiguousarray(array)


def rgb_to_image(array: np.ndarray, stamp: float, frame_id: str) -> Any:
    """A sensor_msgs/msg/Image (rgb8, unpadded rows) of an (H, W, 3) uint8 array."""
    rgb = _checked_rgb(array)
    height, width, _ = rgb.shape
    return _T["sensor_msgs/msg/Image"](header=header(stamp, frame_id), height=height, width=width,
                                       encoding="rgb8", is_bigendian=0, step=width * 3,
                                       data=rgb.reshape(-1).copy())


def rgb_to_compressed(array: np.ndarray, stamp: float, frame_id: str, fmt: str = "jpeg",
                      quality: int = 90) -> Any:
    """A sensor_msgs/msg/CompressedImage (jpeg or png); ``format`` as image_transport writes it."""
    if fmt not in COMPRESSED_FORMATS:
        raise ValueError(f"compression format {fmt!r} is not one of {list(COMPRESSED_FORMATS)}")
    options = {"quality": quality} if fmt == "jpeg" else {}
    encoded = iio.imwrite("<bytes>", _checked_rgb(array), plugin="pillow", extension=COMPRESSED_FORMATS[fmt],
                          **options)
    return _T["sensor_msgs/msg/CompressedImage"](header=header(stamp, frame_id),
                                                 format=f"rgb8; {fmt} compressed bgr8",
                                                 data=np.frombuffer(encoded, dtype=np.uint8).copy())


def fit_rgb(rgb: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``rgb`` centre-cropped to the aspect ratio of ``shape`` (H, W[, 3]) and resized (bilinear)."""
    height, width = rgb.shape[:2]
    out_h, out_w = shape[0], shape[1]
    if (height, width) == (out_h, out_w):
        return rgb
    crop_w = min(width, round(height * out_w / out_h))
    crop_h = min(height, round(width * out_h / out_w))
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    cropped = PILImage.fromarray(rgb[top:top + crop_h, left:left + crop_w])
    return np.asarray(cropped.resize((out_w, out_h), PILImage.Resampling.BILINEAR))


def joint_positions(msg: Any, names: Sequence[str], topic: str = "joint_states") -> np.ndarray:
    """Positions of the joints ``names`` in that order from a sensor_msgs/msg/JointState."""
    index = {name: i for i, name in enumerate(msg.name)}
    missing = [n for n in names if n not in index]
    if missing:
        raise ValueError(f"{topic}: joint(s) {missing} not in the message; it has {list(msg.name)}")
    position = np.asarray(msg.position, dtype=np.float64)
    if position.size != len(msg.name):
        raise ValueError(f"{topic}: {len(msg.name)} names but {position.size} positions")
    return position[[index[n] for n in names]]


def finger_width(msg: Any, finger_names: Sequence[str], topic: str = "gripper joint_states") -> float:
    """Gripper opening (m) as the sum of the finger joint positions (as on the play-table)."""
    return float(joint_positions(msg, finger_names, topic).sum())


def pose_to_tcp(msg: Any) -> tuple[np.ndarray, np.ndarray]:
    """(position (3,), XYZ Euler (3,)) of a geometry_msgs/msg/PoseStamped."""
    p, q = msg.pose.position, msg.pose.orientation
    quat = np.array([q.w, q.x, q.y, q.z], dtype=np.float64)
    norm = np.linalg.norm(quat)
    if not np.isfinite(norm) or norm < 1e-6:
        raise ValueError(f"pose orientation is not a rotation quaternion: {quat.tolist()} (w, x, y, z)")
    return np.array([p.x, p.y, p.z], dtype=np.float64), quat_to_euler(quat / norm)


def robot_obs_from(pose_msg: Any, joint_msg: Any, joint_names: Sequence[str], gripper_width: float,
                   last_gripper_action: float) -> np.ndarray:
    """CALVIN's robot_obs (15,) float64 from a tcp pose and a joint state message.

    Tcp xyz, tcp XYZ Euler, gripper width, 7 joints, last gripper action (as the play-table: 1 if
    it was > 0, else -1).
    """
    position, euler = pose_to_tcp(pose_msg)
    joints = joint_positions(joint_msg, joint_names)
    if joints.shape != (7,):
        raise ValueError(f"robot_obs needs 7 arm joints, got {len(joint_names)} names: {list(joint_names)}")
    gripper_action = 1.0 if last_gripper_action > 0 else -1.0
    obs = np.concatenate([position, euler, [gripper_width], joints, [gripper_action]])
    if not np.all(np.isfinite(obs)):
        raise ValueError(f"robot_obs has non-finite values: {obs.tolist()}")
    return obs


def relative_to_command(action: np.ndarray, target_pos: np.ndarray, target_euler: np.ndarray,
                        stamp: float) -> Command:
    """The absolute Command of a CALVIN relative action (7,), as sim/controller.relative_to_target.

    Clip to [-1, 1], scale by POSITION_STEP / ROTATION_STEP and add onto ``target_pos`` /
    ``target_euler`` (the previous command's pose; the measured tcp only for the first action);
    gripper 1 (open) if action[6] > 0, else -1. Non-finite actions raise ValueError.
    """
    action = np.asarray(action, dtype=np.float64)
    if action.shape != (7,) or not np.all(np.isfinite(action)):
        raise ValueError(f"a relative action is 7 finite values, got {action.tolist()}")
    delta = np.clip(action[:6], -1.0, 1.0)
    return Command(stamp, np.asarray(target_pos, dtype=np.float64) + delta[:3] * POSITION_STEP,
                   np.asarray(target_euler, dtype=np.float64) + delta[3:] * ROTATION_STEP,
                   1.0 if action[6] > 0 else -1.0)


def command_to_pose(command: Command, frame_id: str) -> Any:
    """A geometry_msgs/msg/PoseStamped of the command's tcp target."""
    w, x, y, z = euler_to_quat(command.euler)
    px, py, pz = (float(v) for v in command.position)
    pose = _T["geometry_msgs/msg/Pose"](position=_T["geometry_msgs/msg/Point"](x=px, y=py, z=pz),
                                        orientation=_T["geometry_msgs/msg/Quaternion"](x=x, y=y, z=z, w=w))
    return _T["geometry_msgs/msg/PoseStamped"](header=header(command.stamp, frame_id), pose=pose)


def command_to_gripper(command: Command, open_value: float = 1.0, closed_value: float = -1.0) -> Any:
    """A std_msgs/msg/Float64: ``open_value`` if the command opens the gripper, else ``closed_value``."""
    return _T["std_msgs/msg/Float64"](data=float(open_value if command.gripper > 0 else closed_value))


def command_to_joint_trajectory(positions: np.ndarray, joint_names: Sequence[str], stamp: float,
                                frame_id: str, time_from_start_s: float) -> Any:
    """A trajectory_msgs/msg/JointTrajectory with one point.

    The point reaches ``positions`` (rad, in the order of ``joint_names``) ``time_from_start_s``
    after ``stamp`` (stamp 0: when the controller gets it).
    """
    positions = np.asarray(positions, dtype=np.float64)
    if positions.shape != (len(joint_names),) or not np.all(np.isfinite(positions)):
        raise ValueError(f"joint targets must be {len(joint_names)} finite values for {list(joint_names)}, "
                         f"got {positions.tolist()}")
    if time_from_start_s <= 0:
        raise ValueError(f"time_from_start_s must be > 0, got {time_from_start_s}")
    sec, nanosec = _sec_nanosec(time_from_start_s)
    empty = np.zeros(0, dtype=np.float64)
    point = _T["trajectory_msgs/msg/JointTrajectoryPoint"](
        positions=positions.copy(), velocities=empty, accelerations=empty, effort=empty,
        time_from_start=_T["builtin_interfaces/msg/Duration"](sec=sec, nanosec=nanosec))
    return _T["trajectory_msgs/msg/JointTrajectory"](header=header(stamp, frame_id),
                                                     joint_names=list(joint_names), points=[point])
