"""bag2data: synthetic rosbag2 teleoperation bags -> a CALVIN-format data set (ros_nodes.bag_to_dataset).

The bags follow an analytic teleoperation: the commanded tcp moves along x at V m/s and yaws at W rad/s
(crossing +-pi), the measured tcp follows LAG s behind, the gripper is commanded closed at 1 s, and
the instruction changes at 1.5 s. Expected actions are derived here from that motion and CALVIN's
scales (0.02 m, 0.05 rad per unit), not from the converter.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from rosbags.rosbag2 import StoragePlugin, Writer

from dream_policy import cli
from dream_policy.data.loader import CalvinWindowDataset
from ros_nodes.bag_to_dataset import Bag2DataConfig, BagError, convert_bags, relative_action
from ros_nodes.convert import (
    TYPESTORE,
    command_to_joint_trajectory,
    command_to_pose,
    relative_to_command,
    rgb_to_compressed,
)
from ros_nodes.types import Command
from sim.calvin_dataset import CalvinDataset, frame_file
from sim.language import embed_sentences

REPO = Path(__file__).resolve().parents[1]
T = TYPESTORE.types
START_NS = 1_700_000_000 * 10**9  # a realistic ROS time: float seconds lose sub-microsecond precision
SAMPLE_NS = 10_000_000  # 100 Hz: poses, joint states, gripper width, commands
IMAGE_HZ, RATE = 15, 30
DURATION_S = 3.0
V, W, LAG = 0.15, 0.3, 0.05  # m/s along x, rad/s of yaw, s the measured pose lags the command
P0, ROLL, PITCH, YAW0 = np.array([0.1, -0.2, 0.5]), 3.09, 0.1, 3.0
JOINTS = [f"joint{i}" for i in range(1, 8)]
ARM = np.array([-1.21779, 1.03988, 2.11978, -2.34205, -0.87016, 1.64119, 0.55345])
CLOSE_AT_S = 1.0
INSTRUCTIONS = ((0.0, "open the drawer"), (1.5, "lift the red block from the table"))
STATIC, GRIPPER = "/playtable/static/image_raw", "/playtable/gripper/image_raw"
TCP, JOINT_STATES, WIDTH = "/playtable/tcp_pose", "/playtable/joint_states", "/playtable/gripper_width"
TARGET, GRIPPER_CMD, INSTRUCTION = "/playtable/target_pose", "/playtable/gripper_command", "/dream_policy/instruction"
TYPES = {STATIC: "sensor_msgs/msg/Image", GRIPPER: "sensor_msgs/msg/Image", TCP: "geometry_msgs/msg/PoseStamped",
         JOINT_STATES: "sensor_msgs/msg/JointState", WIDTH: "std_msgs/msg/Float64",
         TARGET: "geometry_msgs/msg/PoseStamped", GRIPPER_CMD: "std_msgs/msg/Float64",
         INSTRUCTION: "std_msgs/msg/String"}
STATIC_HW, GRIPPER_HW = (120, 160), (48, 64)  # what the cameras send; the data set has 200x200 and 84x84


# ---- the synthetic recording ------------------------------------------------------------------------

def _header(ns: int):
    time = T["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9)
    return T["std_msgs/msg/Header"](stamp=time, frame_id="world")


def command_pose(t: float) -> tuple[np.ndarray, np.ndarray]:
    """The teleoperator's tcp target at t s (yaw unwrapped: it passes pi at 0.47 s)."""
    return P0 + np.array([V * t, 0.0, 0.0]), np.array([ROLL, PITCH, YAW0 + W * t])


def width_at(t: float) -> float:
    """Gripper opening: 0.08 m, closing at 0.1 m/s from CLOSE_AT_S to 0.02 m."""
    return max(0.08 - 0.1 * max(t - CLOSE_AT_S, 0.0), 0.02)


def _pose(ns: int, t: float):
    position, euler = command_pose(t)
    msg = command_to_pose(Command(0.0, position, euler, 1.0), "world")
    msg.header = _header(ns)
    return msg


def _image(ns: int, index: int, hw: tuple[int, int], encoding: str):
    """Image number ``index``: every pixel RGB (index, 100, 200), in the byte order of ``encoding``."""
    rgb = np.array([index % 256, 100, 200], np.uint8)
    pixel = rgb if encoding == "rgb8" else rgb[::-1]
    data = np.broadcast_to(pixel, (*hw, 3)).reshape(-1).copy()
    return T["sensor_msgs/msg/Image"](header=_header(ns), height=hw[0], width=hw[1], encoding=encoding,
                                      is_bigendian=0, step=hw[1] * 3, data=data)


def recording(duration_s: float = DURATION_S, command: bool = True, instructions=INSTRUCTIONS,
              nan_joint_at: int | None = None, width_gap_s: tuple[float, float] | None = None
              ) -> list[tuple[int, str, object]]:
    """(receipt ns, topic, message) of a teleoperation recording, in time order."""
    out = []
    for j in range(round(duration_s * 100)):
        ns, t = START_NS + j * SAMPLE_NS, j / 100
        out.append((ns, TCP, _pose(ns, max(t - LAG, 0.0))))
        position = ARM + 0.1 * np.sin(t + np.arange(7))
        if j == nan_joint_at:
            position[3] = np.nan
        out.append((ns, JOINT_STATES, T["sensor_msgs/msg/JointState"](
            header=_header(ns), name=JOINTS, position=position, velocity=np.zeros(0), effort=np.zeros(0))))
        if width_gap_s is None or not width_gap_s[0] <= t < width_gap_s[1]:
            out.append((ns, WIDTH, T["std_msgs/msg/Float64"](data=width_at(t))))
        if command:
            out.append((ns, TARGET, _pose(ns, t)))
            if j % 10 == 0:  # 10 Hz: open (1.0) before CLOSE_AT_S, closed (-1.0) from it on
                out.append((ns, GRIPPER_CMD, T["std_msgs/msg/Float64"](data=1.0 if t < CLOSE_AT_S else -1.0)))
    for i in range(round(duration_s * IMAGE_HZ)):
        ns = START_NS + round(i * 1e9 / IMAGE_HZ)
        out.append((ns, STATIC, _image(ns, i, STATIC_HW, "rgb8")))
        out.append((ns, GRIPPER, _image(ns, i, GRIPPER_HW, "bgr8")))
    for t, text in (i for i in instructions if i[0] < duration_s):
        out.append((START_NS + round(t * 1e9), INSTRUCTION, T["std_msgs/msg/String"](data=text)))
    return sorted(out, key=lambda m: m[0])


def write_bag(path: Path, messages, storage: StoragePlugin = StoragePlugin.SQLITE3,
              types: dict[str, str] | None = None) -> Path:
    """A rosbag2 folder with ``messages``; ``types`` overrides the type a topic is declared with."""
    types = {**TYPES, **(types or {})}
    with Writer(path, version=9, storage_plugin=storage) as writer:
        connections = {}
        for ns, topic, msg in messages:
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, types[topic], typestore=TYPESTORE)
            writer.write(connections[topic], ns, TYPESTORE.serialize_cdr(msg, TYPES[topic]))
    return path


@pytest.fixture(scope="module")
def contract(tmp_path_factory) -> Path:
    """The play-table contract with hardware-like cameras (other sizes, a bgr8 one) to resize from."""
    raw = yaml.safe_load((REPO / "configs" / "contract" / "playtable.yaml").read_text())
    for stream, (height, width), encoding in zip(raw["observations"][:2], (STATIC_HW, GRIPPER_HW),
                                                 ("rgb8", "bgr8")):
        stream["image"] = {"height": height, "width": width, "encoding": encoding}
    path = tmp_path_factory.mktemp("contract") / "teleop.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def convert(contract: Path, bags, out: Path, **settings):
    config = Bag2DataConfig(bags=tuple(str(b) for b in bags), contract_file=str(contract), out=str(out), **settings)
    return convert_bags(config, progress=False)


@pytest.fixture(scope="module")
def converted(contract, tmp_path_factory):
    """The main bag (commands, instructions, one NaN joint state) converted into a data set."""
    root = tmp_path_factory.mktemp("main")
    bag = write_bag(root / "teleop_bag", recording(nan_joint_at=150))
    return convert(contract, [bag], root / "data"), root / "data"


def read_frames(split: Path, count: int) -> list[dict[str, np.ndarray]]:
    """Every key of the first ``count`` frames (CalvinDataset.frame() also demands the sim's depth keys)."""
    frames = []
    for k in range(count):
        with np.load(frame_file(split, k)) as data:
            frames.append({key: data[key] for key in data.files})
    return frames


# ---- expected values, from the motion and CALVIN's scales ------------------------------------------

def tick_ns(k: int) -> int:
    return START_NS + round(k * 1e9 / RATE)


def newest_sample_s(ns: int, duration_s: float = DURATION_S) -> float:
    """Time of the newest 100 Hz sample received at ``ns``."""
    return min((ns - START_NS) // SAMPLE_NS, round(duration_s * 100) - 1) / 100


def expected_command_rel(k: int) -> np.ndarray:
    """The relative pose action of frame k: commanded motion from tick k to tick k + 1 in CALVIN units."""
    t0, t1 = newest_sample_s(tick_ns(k)), newest_sample_s(tick_ns(k + 1))
    return np.array([V * (t1 - t0) / 0.02, 0, 0, 0, 0, W * (t1 - t0) / 0.05])


# ---- the main conversion -----------------------------------------------------------------------------

def test_frame_count_is_rate_times_duration(converted):
    result, out = converted
    (report,) = result.reports
    assert report.ticks == report.frames == RATE * DURATION_S
    assert sum(report.dropped_ticks.values()) == 0
    assert CalvinDataset(out / "training").episodes() == [(0, 89)]
    assert not (out / "validation").exists()  # one bag: no validation episode, no empty split
    assert not out.with_name("data.partial").exists()


def test_rel_actions_follow_the_commanded_motion(converted):
    _, out = converted
    frames = read_frames(out / "training", 90)
    rel = np.stack([f["rel_actions"] for f in frames])
    expected = np.stack([expected_command_rel(k) for k in range(90)])
    np.testing.assert_allclose(rel[:, :6], expected, atol=1e-6)
    assert rel[:, 5].min() > 0  # the yaw passed pi without a jump
    # the absolute action is the commanded target at the next tick, and the relative one leads to it
    for k in (0, 20, 89):
        position, euler = command_pose(newest_sample_s(tick_ns(k + 1)))
        np.testing.assert_allclose(frames[k]["actions"][:3], position, atol=1e-9)
        np.testing.assert_allclose(np.angle(np.exp(1j * (frames[k]["actions"][3:6] - euler))), 0, atol=1e-6)
    for k in range(1, 90):
        previous = frames[k - 1]["actions"]
        moved = relative_to_command(rel[k], previous[:3], previous[3:6], 0.0).as_array()
        np.testing.assert_allclose(np.angle(np.exp(1j * (moved[:6] - frames[k]["actions"][:6]))), 0, atol=1e-6)


def test_gripper_actions_follow_the_gripper_command(converted):
    _, out = converted
    frames = read_frames(out / "training", 90)
    gripper = np.array([f["actions"][6] for f in frames])
    closed_from = next(k for k in range(90) if tick_ns(k + 1) >= START_NS + CLOSE_AT_S * 1e9)
    np.testing.assert_array_equal(gripper, np.where(np.arange(90) < closed_from, 1.0, -1.0))
    np.testing.assert_array_equal([f["rel_actions"][6] for f in frames], gripper)
    last = np.array([f["robot_obs"][14] for f in frames])
    np.testing.assert_array_equal(last[1:], gripper[:-1])  # robot_obs ends with the previous gripper action


def test_images_are_resized_and_aligned(converted):
    _, out = converted
    frames = read_frames(out / "training", 90)
    for k in (0, 1, 2, 45, 89):
        frame = frames[k]
        assert frame["rgb_static"].shape == (200, 200, 3) and frame["rgb_static"].dtype == np.uint8
        assert frame["rgb_gripper"].shape == (84, 84, 3) and frame["rgb_gripper"].dtype == np.uint8
        newest_image = k * IMAGE_HZ // RATE  # the newest 15 Hz image at the tick
        np.testing.assert_array_equal(frame["rgb_static"][0, 0], [newest_image, 100, 200])
        np.testing.assert_array_equal(frame["rgb_gripper"][0, 0], [newest_image, 100, 200])  # bgr8 -> RGB
        # robot_obs at the image's stamp: the newest measured pose, which lags the command
        image_ns = START_NS + round(newest_image * 1e9 / IMAGE_HZ)
        position, _ = command_pose(max(newest_sample_s(image_ns) - LAG, 0.0))
        np.testing.assert_allclose(frame["robot_obs"][:3], position, atol=1e-9)
        # the width stream is `hold` (headerless Float64): the newest value at the tick
        np.testing.assert_allclose(frame["robot_obs"][6], width_at(newest_sample_s(tick_ns(k))), atol=1e-9)
        assert not any(key.startswith(("depth_", "seg_")) for key in frame)
        np.testing.assert_array_equal(frame["scene_obs"], np.zeros(24))


def test_nan_joint_state_is_dropped_and_counted(converted):
    result, _ = converted
    (report,) = result.reports
    assert dict(report.dropped_messages) == {JOINT_STATES: 1}
    assert "commanded target /playtable/target_pose" in report.action_source
    assert "dropped messages: {'/playtable/joint_states': 1}" in report.summary()


def test_instruction_topic_annotates_spans_and_the_loader_yields_samples(converted):
    _, out = converted
    ann = CalvinDataset(out / "training").annotations()
    assert ann["language"]["ann"] == ["open the drawer", "lift the red block from the table"]
    assert ann["language"]["task"] == ["open_drawer", "lift_red_block_table"]
    assert [tuple(map(int, w)) for w in ann["info"]["indx"]] == [(0, 44), (45, 89)]  # switch at 1.5 s
    dataset = CalvinWindowDataset(out, "training", history=2, chunk=4, language=True, shuffle=False)
    assert len(dataset) == (44 - 1 - 3 + 1) + (44 - 1 - 3 + 1)  # anchors per span: len - (history-1) - (chunk-1)
    sample = dataset.sample(0)
    assert sample["history"]["rgb_static"].shape == (2, 3, 200, 200)
    assert sample["history"]["rgb_gripper"].shape == (2, 3, 84, 84)
    assert sample["actions"].shape == (4, 7)
    np.testing.assert_allclose(sample["lang_emb"].numpy(), embed_sentences(["open the drawer"])[0])
    assert len(list(iter(dataset))) == len(dataset)


def test_relative_action_inverts_relative_to_command():
    """Roll and yaw cross +-pi: the Euler differences are the short way round."""
    base, target = np.array([0.1, 0.2, 0.3, 3.12, 0.0, -3.12]), np.array([0.11, 0.19, 0.3, -3.14, 0.02, 3.14, -1])
    rel, clipped = relative_action(base, target)
    assert not clipped and rel[6] == -1
    np.testing.assert_allclose(rel[:6], [0.5, -0.5, 0, (2 * np.pi - 6.26) / 0.05, 0.4, (6.26 - 2 * np.pi) / 0.05],
                               atol=1e-9)
    back = relative_to_command(rel, base[:3], base[3:], 0.0).as_array()
    np.testing.assert_allclose(np.angle(np.exp(1j * (back - target))), 0, atol=1e-9)
    rel, clipped = relative_action(base, np.array([0.2, 0.2, 0.3, 3.1, 0.0, -3.1, 1]))
    assert clipped and rel[0] == 1.0


# ---- without commands: measured poses, the stale gate, the instruction setting, mcap -------------------

def test_measured_fallback_stale_ticks_and_mcap(contract, tmp_path):
    messages = recording(command=False, instructions=(), width_gap_s=(2.0, 2.5))
    bag = write_bag(tmp_path / "bag_mcap", messages, StoragePlugin.MCAP)
    result = convert(contract, [bag], tmp_path / "data", instruction="push the sliding door to the left")
    (report,) = result.reports
    # ticks at 2.2 .. 2.4667 s see a width older than its stale_s (0.2 s): no frame, as live
    assert report.ticks == 90 and dict(report.dropped_ticks) == {"stale robot_obs.gripper_width": 9}
    assert report.frames == 81 and "measured tcp pose" in report.action_source
    assert "gripper width" in report.gripper_source
    kept = [k for k in range(90) if not 66 <= k <= 74]
    frames = read_frames(tmp_path / "data" / "training", 81)
    for i, k in enumerate(kept):  # the measured motion from tick k to tick k + 1
        t0, t1 = (max(newest_sample_s(tick_ns(j)) - LAG, 0.0) for j in (k, k + 1))
        np.testing.assert_allclose(frames[i]["rel_actions"][[0, 5]], [V * (t1 - t0) / 0.02, W * (t1 - t0) / 0.05],
                                   atol=1e-6)
    # the width starts closing after 1.0 s: the action of frame 30 (to tick 31) closes
    np.testing.assert_array_equal([f["actions"][6] for f in frames], [1.0 if k < 30 else -1.0 for k in kept])
    ann = CalvinDataset(tmp_path / "data" / "training").annotations()
    assert ann["language"]["ann"] == ["push the sliding door to the left"] and ann["info"]["indx"] == [(0, 80)]


def franka_recording(duration_s: float = 1.0) -> list[tuple[int, str, str, object]]:
    """(ns, topic, type, message) as franka_hw.yaml names them: jpeg cameras, finger joint states, and
    joint trajectory commands (which give no tcp target)."""
    jpeg = rgb_to_compressed(np.full((480, 640, 3), (10, 100, 200), np.uint8), 0.0, "cam")
    arm, fingers = [f"fr3_joint{i}" for i in range(1, 8)], ["fr3_finger_joint1", "fr3_finger_joint2"]
    out = [(START_NS, INSTRUCTION, TYPES[INSTRUCTION], T["std_msgs/msg/String"](data="open the drawer"))]
    for j in range(round(duration_s * 100)):
        ns, t = START_NS + j * SAMPLE_NS, j / 100
        out.append((ns, "/franka_robot_state_broadcaster/current_pose", TYPES[TCP], _pose(ns, t)))
        out.append((ns, "/joint_states", TYPES[JOINT_STATES], T["sensor_msgs/msg/JointState"](
            header=_header(ns), name=arm, position=ARM.copy(), velocity=np.zeros(0), effort=np.zeros(0))))
        out.append((ns, "/fr3_gripper/joint_states", TYPES[JOINT_STATES], T["sensor_msgs/msg/JointState"](
            header=_header(ns), name=fingers, position=np.full(2, 0.03), velocity=np.zeros(0), effort=np.zeros(0))))
        out.append((ns, "/fr3_arm_controller/joint_trajectory", "trajectory_msgs/msg/JointTrajectory",
                    command_to_joint_trajectory(ARM, arm, 0.0, "fr3_link0", 0.1)))
    for i in range(round(duration_s * IMAGE_HZ)):
        ns = START_NS + round(i * 1e9 / IMAGE_HZ)
        for topic in ("/static_camera/color/image_raw/compressed", "/wrist_camera/color/image_raw/compressed"):
            msg = T["sensor_msgs/msg/CompressedImage"](header=_header(ns), format=jpeg.format, data=jpeg.data)
            out.append((ns, topic, "sensor_msgs/msg/CompressedImage", msg))
    return sorted(out, key=lambda m: m[0])


def test_default_franka_contract_uses_measured_poses(tmp_path):
    """franka_hw (the default): jpeg 640x480 cameras cropped and resized, the gripper width from finger joints,
    and actions from measured poses because its commands are joint trajectories."""
    bag = tmp_path / "franka"
    with Writer(bag, version=9) as writer:
        connections = {}
        for ns, topic, kind, msg in franka_recording():
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, kind, typestore=TYPESTORE)
            writer.write(connections[topic], ns, TYPESTORE.serialize_cdr(msg, kind))
    config = Bag2DataConfig(bags=str(bag), out=str(tmp_path / "data"))
    assert config.contract_file == "franka_hw"
    (report,) = convert_bags(config, progress=False).reports
    assert report.frames == 30 and "measured tcp pose" in report.action_source
    assert any("joint_trajectory (joint space)" in note for note in report.notes)
    (frame,) = read_frames(tmp_path / "data" / "training", 1)
    assert frame["rgb_static"].shape == (200, 200, 3) and frame["rgb_gripper"].shape == (84, 84, 3)
    np.testing.assert_allclose(frame["rgb_static"][100, 100], (10, 100, 200), atol=4)  # jpeg
    np.testing.assert_allclose(frame["robot_obs"][6], 0.06)  # the two fingers
    np.testing.assert_allclose(frame["rel_actions"][0], V * 0.03 / 0.02, atol=1e-6)  # 3 samples to tick 1


# ---- bad input ---------------------------------------------------------------------------------------

def test_missing_topic_names_it_and_lists_the_bag_topics(contract, tmp_path):
    messages = [m for m in recording(duration_s=0.2) if m[1] != JOINT_STATES]
    bag = write_bag(tmp_path / "bag", messages)
    with pytest.raises(BagError, match="/playtable/joint_states") as error:
        convert(contract, [bag], tmp_path / "data")
    assert "not in the bag" in str(error.value) and f"{TCP} (geometry_msgs/msg/PoseStamped)" in str(error.value)
    assert not (tmp_path / "data").exists() and not (tmp_path / "data.partial").exists()


def test_wrong_type_names_topic_and_types(contract, tmp_path):
    messages = [(ns, topic, T["std_msgs/msg/Float64"](data=1.0) if topic == TCP else msg)
                for ns, topic, msg in recording(duration_s=0.2)]
    bag = tmp_path / "bag"
    with Writer(bag, version=9) as writer:
        connections = {}
        for ns, topic, msg in messages:
            kind = "std_msgs/msg/Float64" if topic == TCP else TYPES[topic]
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, kind, typestore=TYPESTORE)
            writer.write(connections[topic], ns, TYPESTORE.serialize_cdr(msg, kind))
    with pytest.raises(BagError, match=f"topic {TCP} is std_msgs/msg/Float64; .* expects "
                                       "geometry_msgs/msg/PoseStamped for robot_obs.tcp_pose"):
        convert(contract, [bag], tmp_path / "data")


def test_empty_and_corrupt_bags(contract, tmp_path):
    empty = tmp_path / "empty"
    with Writer(empty, version=9) as writer:
        writer.add_connection(TCP, TYPES[TCP], typestore=TYPESTORE)
    with pytest.raises(BagError, match="is empty: no messages"):
        convert(contract, [empty], tmp_path / "data")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(write_bag(tmp_path / "good", recording(duration_s=0.1)), corrupt)
    next(corrupt.glob("*.db3")).write_bytes(b"not a database" * 50)
    with pytest.raises(BagError, match="corrupt.* is not a readable rosbag2 bag.*not a database"):
        convert(contract, [corrupt], tmp_path / "data")
    (tmp_path / "no_metadata").mkdir()
    with pytest.raises(BagError, match="no_metadata is not a readable rosbag2 bag"):
        convert(contract, [tmp_path / "no_metadata"], tmp_path / "data")
    with pytest.raises(BagError, match="does not exist"):
        convert(contract, [tmp_path / "nowhere"], tmp_path / "data")


def test_a_bag_without_instruction_needs_the_setting(contract, tmp_path):
    bag = write_bag(tmp_path / "bag", recording(duration_s=0.3, instructions=()))
    with pytest.raises(BagError, match="no instruction: no messages on /dream_policy/instruction"):
        convert(contract, [bag], tmp_path / "data")


def test_existing_output_is_kept_unless_overwrite(contract, converted, tmp_path):
    _, out = converted
    before = sorted(p.name for p in (out / "training").iterdir())
    with pytest.raises(FileExistsError, match="overwrite=true"):
        convert(contract, [tmp_path / "any"], out)
    assert sorted(p.name for p in (out / "training").iterdir()) == before
    # a failing conversion with overwrite leaves the old data set as it was
    target = tmp_path / "data"
    shutil.copytree(out, target)
    with pytest.raises(BagError):
        convert(contract, [tmp_path / "nowhere"], target, overwrite=True)
    assert len(CalvinDataset(target / "training")) == 90
    bag = write_bag(tmp_path / "short", recording(duration_s=0.5))
    convert(contract, [bag], target, overwrite=True)
    assert len(CalvinDataset(target / "training")) == 15
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "short"]
    # overwrite replaces only a data set: not a folder holding anything else (the bags, say)
    (target / "my_bags").mkdir()
    with pytest.raises(BagError, match=r"holds \['my_bags'\], not only the splits"):
        convert(contract, [bag], target, overwrite=True)
    assert (target / "my_bags").is_dir() and len(CalvinDataset(target / "training")) == 15


# ---- the CLI -----------------------------------------------------------------------------------------

def test_cli_end_to_end(contract, tmp_path, capsys):
    bags = [write_bag(tmp_path / f"bag{i}", recording(duration_s=1.0)) for i in range(2)]
    out = tmp_path / "data"
    args = ["bag2data", f"bags=[{bags[0]},{bags[1]}]", f"contract_file={contract}", f"out={out}",
            "validation_fraction=0.5"]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "actions from the commanded target /playtable/target_pose" in printed
    assert "training: 1 episodes, 30 frames" in printed and "validation: 1 episodes, 30 frames" in printed
    for split in ("training", "validation"):
        assert CalvinDataset(out / split).episodes() == [(0, 29)]
    assert cli.main(args) == 2  # exists: one line, exit code 2
    err = capsys.readouterr().err
    assert err.startswith("dream-policy: error: bag2data: out") and "overwrite=true" in err and err.count("\n") == 1
    assert cli.main(["bag2data", f"bags={tmp_path / 'nowhere'}", f"contract_file={contract}", f"out={out}2"]) == 2
    assert "nowhere does not exist" in capsys.readouterr().err


def test_cli_help_shows_the_config(capsys):
    assert cli.main(["bag2data", "--help"]) == 0
    out = capsys.readouterr().out
    assert "bags: ???" in out and "contract_file: franka_hw" in out and "rate_hz: null" in out
