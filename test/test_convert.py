"""Message <-> feature conversions: round trips, every raw encoding, CDR, and the errors."""

from __future__ import annotations

import numpy as np
import pytest

from ros_nodes.contract import RAW_ENCODINGS
from ros_nodes.convert import (
    TYPESTORE,
    command_to_gripper,
    command_to_joint_trajectory,
    command_to_pose,
    compressed_to_rgb,
    finger_width,
    fit_rgb,
    header,
    image_to_rgb,
    joint_positions,
    pose_to_tcp,
    relative_to_command,
    rgb_to_compressed,
    rgb_to_image,
    robot_obs_from,
    stamp_seconds,
)
from ros_nodes.types import Command
from sim.controller import gripper_open, relative_to_target
from sim.rotations import euler_to_quat, quat_to_euler

T = TYPESTORE.types
JOINTS = [f"joint{i}" for i in range(1, 8)]
# The play-table's initial robot state (docs/calvin.md).
TCP_POS = np.array([0.02587, -0.23131, 0.57128])
TCP_EULER = np.array([3.09045, -0.02909, 1.50014])
ARM = np.array([-1.21779, 1.03988, 2.11978, -2.34205, -0.87016, 1.64119, 0.55345])


def _rgb(height=6, width=5, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _cdr_round_trip(msg):
    data = TYPESTORE.serialize_cdr(msg, msg.__msgtype__)
    return TYPESTORE.deserialize_cdr(data, msg.__msgtype__)


def _raw_image(pixels: np.ndarray, encoding: str, padding: int = 0):
    """An Image message holding ``pixels`` (H, W, C) with ``padding`` junk bytes after each row."""
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1)
    padded = np.concatenate([rows, np.full((height, padding), 7, np.uint8)], axis=1)
    return T["sensor_msgs/msg/Image"](header=header(1.0, "cam"), height=height, width=width, encoding=encoding,
                                      is_bigendian=0, step=padded.shape[1], data=padded.reshape(-1))


def _pose_msg(position, euler, scale=1.0):
    w, x, y, z = euler_to_quat(euler) * scale
    return T["geometry_msgs/msg/PoseStamped"](
        header=header(2.0, "world"),
        pose=T["geometry_msgs/msg/Pose"](position=T["geometry_msgs/msg/Point"](x=position[0], y=position[1],
                                                                              z=position[2]),
                                         orientation=T["geometry_msgs/msg/Quaternion"](x=x, y=y, z=z, w=w)))


def _joint_msg(names, positions):
    return T["sensor_msgs/msg/JointState"](header=header(2.0, ""), name=list(names),
                                           position=np.asarray(positions, dtype=np.float64),
                                           velocity=np.zeros(0), effort=np.zeros(0))


# ---- stamps --------------------------------------------------------------------------------------

@pytest.mark.parametrize("stamp", [0.0, 12.5, 1_700_000_000.123456789, 3.9999999999])
def test_header_stamp_round_trip(stamp):
    h = header(stamp, "world")
    assert 0 <= h.stamp.nanosec < 1_000_000_000 and h.frame_id == "world"
    assert stamp_seconds(h) == pytest.approx(stamp, abs=1e-6)


# ---- raw images ----------------------------------------------------------------------------------

def test_rgb_image_round_trip_and_cdr():
    rgb = _rgb(200, 200)
    msg = rgb_to_image(rgb, 3.25, "static_camera")
    assert (msg.encoding, msg.height, msg.width, msg.step) == ("rgb8", 200, 200, 600)
    np.testing.assert_array_equal(image_to_rgb(msg, (200, 200, 3)), rgb)
    back = _cdr_round_trip(msg)
    assert back.header.frame_id == "static_camera" and stamp_seconds(back.header) == 3.25
    np.testing.assert_array_equal(image_to_rgb(back, (200, 200)), rgb)


@pytest.mark.parametrize("encoding", list(RAW_ENCODINGS))
@pytest.mark.parametrize("padding", [0, 3])
def test_every_raw_encoding_with_row_padding(encoding, padding):
    rgb = _rgb(4, 5)
    alpha = np.full((4, 5, 1), 200, np.uint8)
    pixels = {"rgb8": rgb, "bgr8": rgb[..., ::-1], "rgba8": np.concatenate([rgb, alpha], axis=2),
              "bgra8": np.concatenate([rgb[..., ::-1], alpha], axis=2), "mono8": rgb[..., :1]}[encoding]
    expected = np.repeat(rgb[..., :1], 3, axis=2) if encoding == "mono8" else rgb
    out = image_to_rgb(_raw_image(pixels, encoding, padding))
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, expected)


def test_image_data_as_bytes_is_accepted():
    msg = _raw_image(_rgb(), "rgb8")
    msg.data = msg.data.tobytes()
    np.testing.assert_array_equal(image_to_rgb(msg), _rgb())


@pytest.mark.parametrize(("change", "fragments"), [
    (lambda m: setattr(m, "encoding", "16UC1"), ["wrist", "16UC1", "supported", "rgb8"]),
    (lambda m: setattr(m, "data", m.data[:-1]), ["wrist", "rgb8, 6x5", "89 bytes", "step * height = 90"]),
    (lambda m: setattr(m, "step", 14), ["wrist", "step 14", "width * 3 channels = 15"]),
    (lambda m: setattr(m, "height", 0), ["wrist", "empty image"]),
])
def test_image_errors_name_topic_encoding_and_size(change, fragments):
    msg = _raw_image(_rgb(), "rgb8")
    change(msg)
    with pytest.raises(ValueError) as info:
        image_to_rgb(msg, topic="wrist")
    for fragment in fragments:
        assert fragment in str(info.value)


def test_image_of_unexpected_size():
    with pytest.raises(ValueError, match=r"/cam \(rgb8, 6x5, step 15\): image is 6x5 \(HxW\); expected 84x84"):
        image_to_rgb(rgb_to_image(_rgb(), 0.0, "c"), (84, 84, 3), topic="/cam")


def test_rgb_to_image_rejects_non_rgb():
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        rgb_to_image(np.zeros((4, 4), np.uint8), 0.0, "c")
    with pytest.raises(ValueError, match="float32"):
        rgb_to_image(np.zeros((4, 4, 3), np.float32), 0.0, "c")


# ---- compressed images ---------------------------------------------------------------------------

def test_png_round_trip_is_exact_and_survives_cdr():
    rgb = _rgb(84, 84)
    msg = _cdr_round_trip(rgb_to_compressed(rgb, 1.5, "wrist", "png"))
    assert msg.format == "rgb8; png compressed bgr8" and stamp_seconds(msg.header) == 1.5
    np.testing.assert_array_equal(compressed_to_rgb(msg, (84, 84)), rgb)


def test_jpeg_round_trip_is_close():
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[:, :32] = (200, 30, 30)  # flat areas: jpeg keeps them within a few levels
    rgb[:, 32:] = (20, 40, 220)
    msg = rgb_to_compressed(rgb, 0.0, "static", "jpeg", quality=95)
    assert msg.format.startswith("rgb8; jpeg")
    out = compressed_to_rgb(msg, (48, 64, 3))
    assert np.abs(out.astype(int) - rgb).mean() < 3


@pytest.mark.parametrize("channels", [1, 4])
def test_gray_and_rgba_png_become_rgb(channels):
    import imageio.v3 as iio

    rgb = _rgb()
    pixels = rgb[..., 0] if channels == 1 else np.concatenate([rgb, np.full((6, 5, 1), 9, np.uint8)], axis=2)
    encoded = iio.imwrite("<bytes>", pixels, extension=".png")
    msg = T["sensor_msgs/msg/CompressedImage"](header=header(0.0, ""), format="png",
                                               data=np.frombuffer(encoded, np.uint8))
    expected = np.repeat(rgb[..., :1], 3, axis=2) if channels == 1 else rgb
    np.testing.assert_array_equal(compressed_to_rgb(msg), expected)


@pytest.mark.parametrize("data", [b"", b"not an image at all", "truncated"])
def test_undecodable_compressed_image(data):
    if data == "truncated":
        data = rgb_to_compressed(_rgb(64, 64), 0.0, "c").data[:300].tobytes()
    msg = T["sensor_msgs/msg/CompressedImage"](header=header(0.0, ""), format="jpeg",
                                               data=np.frombuffer(data, np.uint8))
    with pytest.raises(ValueError, match=r"/static_camera/compressed \(format 'jpeg'\): cannot decode"):
        compressed_to_rgb(msg, topic="/static_camera/compressed")


def test_compressed_of_unexpected_size_and_format():
    msg = rgb_to_compressed(_rgb(), 0.0, "c", "png")
    with pytest.raises(ValueError, match="expected 200x200"):
        compressed_to_rgb(msg, (200, 200))
    with pytest.raises(ValueError, match="'webp'"):
        rgb_to_compressed(_rgb(), 0.0, "c", "webp")


def test_fit_rgb_crops_the_centre_then_resizes():
    wide = np.zeros((4, 8, 3), np.uint8)
    wide[:, 2:6] = (10, 20, 30)  # centre square; the side bands are black and must be cropped away
    out = fit_rgb(wide, (2, 2, 3))
    assert out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out, np.broadcast_to(np.array([10, 20, 30], np.uint8), (2, 2, 3)))
    assert fit_rgb(_rgb(480, 640), (200, 200)).shape == (200, 200, 3)
    tall = _rgb(6, 5)
    assert fit_rgb(tall, (6, 5)) is tall


# ---- robot state ---------------------------------------------------------------------------------

def test_joint_positions_reordered_by_name():
    names = ["finger_left", *reversed(JOINTS), "finger_right"]
    msg = _joint_msg(names, [0.01, *ARM[::-1], 0.02])
    np.testing.assert_array_equal(joint_positions(msg, JOINTS), ARM)
    assert finger_width(msg, ["finger_left", "finger_right"]) == pytest.approx(0.03)


def test_joint_errors_name_the_joints():
    msg = _joint_msg(JOINTS[:6], ARM[:6])
    with pytest.raises(ValueError, match=r"/joint_states: joint\(s\) \['joint7'\] not in the message"):
        joint_positions(msg, JOINTS, topic="/joint_states")
    msg = _joint_msg(JOINTS, ARM[:6])
    with pytest.raises(ValueError, match="7 names but 6 positions"):
        joint_positions(msg, JOINTS)


def test_robot_obs_matches_the_play_table_layout():
    pose = _cdr_round_trip(_pose_msg(TCP_POS, TCP_EULER, scale=2.0))  # unnormalised quaternion
    joints = _joint_msg(list(reversed(JOINTS)), ARM[::-1])
    obs = robot_obs_from(pose, joints, JOINTS, 0.08, last_gripper_action=0.7)
    assert obs.shape == (15,) and obs.dtype == np.float64
    np.testing.assert_allclose(obs[:3], TCP_POS)
    np.testing.assert_allclose(obs[3:6], TCP_EULER, atol=1e-9)
    np.testing.assert_allclose(obs[3:6], quat_to_euler(euler_to_quat(TCP_EULER)), atol=1e-12)
    assert obs[6] == 0.08 and obs[14] == 1.0
    np.testing.assert_array_equal(obs[7:14], ARM)
    assert robot_obs_from(pose, joints, JOINTS, 0.0, last_gripper_action=0.0)[14] == -1.0


def test_robot_obs_errors():
    joints = _joint_msg(JOINTS, ARM)
    with pytest.raises(ValueError, match="not a rotation quaternion"):
        robot_obs_from(_pose_msg(TCP_POS, TCP_EULER, scale=0.0), joints, JOINTS, 0.08, 1.0)
    with pytest.raises(ValueError, match="7 arm joints"):
        robot_obs_from(_pose_msg(TCP_POS, TCP_EULER), joints, JOINTS[:6], 0.08, 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        robot_obs_from(_pose_msg(TCP_POS, TCP_EULER), joints, JOINTS, float("nan"), 1.0)


# ---- commands ------------------------------------------------------------------------------------

def test_relative_action_agrees_with_the_play_table_controller():
    rng = np.random.default_rng(0)
    pos, euler = TCP_POS.copy(), TCP_EULER.copy()
    for step in range(20):
        action = rng.uniform(-1.5, 1.5, 7)  # beyond [-1, 1]: both clip
        command = relative_to_command(action, pos, euler, stamp=step / 30)
        sim_pos, sim_euler = relative_to_target(pos, euler, action)
        np.testing.assert_array_equal(command.position, sim_pos)
        np.testing.assert_array_equal(command.euler, sim_euler)
        assert command.gripper == (1.0 if gripper_open(action) else -1.0)
        assert command.stamp == step / 30
        pos, euler = command.position, command.euler  # accumulate onto the target, as the sim does


def test_relative_action_rejects_bad_input():
    with pytest.raises(ValueError, match="7 finite values"):
        relative_to_command(np.array([0, 0, 0, 0, 0, np.nan, 1.0]), TCP_POS, TCP_EULER, 0.0)
    with pytest.raises(ValueError, match="7 finite values"):
        relative_to_command(np.zeros(6), TCP_POS, TCP_EULER, 0.0)


def test_pose_command_round_trip_and_cdr():
    command = Command(4.5, TCP_POS, TCP_EULER, 1.0)
    msg = _cdr_round_trip(command_to_pose(command, "world"))
    assert msg.header.frame_id == "world" and stamp_seconds(msg.header) == 4.5
    position, euler = pose_to_tcp(msg)
    np.testing.assert_allclose(position, TCP_POS)
    np.testing.assert_allclose(euler, TCP_EULER, atol=1e-9)


def test_gripper_command_values():
    open_cmd, closed_cmd = Command(0.0, TCP_POS, TCP_EULER, 1.0), Command(0.0, TCP_POS, TCP_EULER, -1.0)
    assert command_to_gripper(open_cmd).data == 1.0 and command_to_gripper(closed_cmd).data == -1.0
    assert command_to_gripper(open_cmd, open_value=0.08, closed_value=0.0).data == 0.08
    msg = _cdr_round_trip(command_to_gripper(closed_cmd, open_value=0.08, closed_value=0.0))
    assert msg.data == 0.0


def test_joint_trajectory_command():
    msg = _cdr_round_trip(command_to_joint_trajectory(ARM, JOINTS, 10.0, "base", time_from_start_s=1 / 30))
    assert msg.joint_names == JOINTS and msg.header.frame_id == "base" and stamp_seconds(msg.header) == 10.0
    (point,) = msg.points
    np.testing.assert_array_equal(point.positions, ARM)
    assert (point.time_from_start.sec, point.time_from_start.nanosec) == (0, 33_333_333)
    with pytest.raises(ValueError, match="7 finite values"):
        command_to_joint_trajectory(ARM[:6], JOINTS, 0.0, "base", 0.1)
    with pytest.raises(ValueError, match="time_from_start_s must be > 0"):
        command_to_joint_trajectory(ARM, JOINTS, 0.0, "base", 0.0)
