"""The contract YAMLs load, and each kind of mistake gives an error naming file, field and expectation."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from ros_nodes.contract import (
    COMPRESSED_IMAGE,
    FEATURE_TYPES,
    IMAGE_FEATURES,
    JOINT_STATE,
    JOINT_TRAJECTORY,
    POSE_STAMPED,
    QOS_PROFILES,
    SCENE_OBS,
    Alignment,
    ContractError,
    FieldError,
    QosProfile,
    feature_shape,
    load_contract,
)
from ros_nodes.types import OBSERVATION_FEATURES

CONTRACTS = Path(__file__).resolve().parent.parent / "configs" / "contract"
PLAYTABLE = CONTRACTS / "playtable.yaml"
FRANKA = CONTRACTS / "franka_hw.yaml"


def _raw() -> dict:
    return yaml.safe_load(PLAYTABLE.read_text())


def _load_changed(tmp_path: Path, change):
    raw = _raw()
    change(raw)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_contract(path)


def test_playtable_contract_loads():
    c = load_contract(PLAYTABLE)
    assert c.name == "playtable"
    assert [s.feature for s in c.observations] == list(FEATURE_TYPES)
    static = c.stream("rgb_static")
    assert static.qos == QOS_PROFILES["sensor"] == QosProfile("keep_last", 5, "best_effort", "volatile")
    assert static.alignment == Alignment("asof", 0.02)
    for feature in IMAGE_FEATURES:  # the sim publishes images at the policy's sizes
        spec = c.stream(feature).image
        assert (spec.height, spec.width, 3) == feature_shape(feature)
    assert c.stream("robot_obs.arm_joints").joint_names == tuple(f"joint{i}" for i in range(1, 8))
    assert c.stream("robot_obs.gripper_width").alignment.policy == "hold"
    assert c.stream("robot_obs.tcp_pose").stale_s == c.safety.stale_s == 0.2  # default from safety
    assert c.actions.mode == "pose" and c.actions.target.type == POSE_STAMPED
    assert c.actions.rate_hz == 30.0 and c.actions.frame_id == "world"
    assert c.watchdog_s == pytest.approx(2 / 30)
    assert c.instruction.qos.durability == "transient_local"
    assert c.services.stop == "/dream_policy/stop"
    assert c.safety.workspace.min < c.safety.workspace.max
    scene = c.stream(SCENE_OBS)  # sim only: privileged state
    assert scene.type == "std_msgs/msg/Float64MultiArray" and scene.alignment.policy == "hold"
    assert feature_shape(SCENE_OBS) == (24,)


def test_scene_obs_is_optional_and_headerless(tmp_path):
    c = _load_changed(tmp_path, lambda raw: raw["observations"].pop(5))
    assert SCENE_OBS not in [s.feature for s in c.observations]
    with pytest.raises(ContractError, match=r"observations\[5\].alignment: expected hold or drop"):
        _load_changed(tmp_path, _set("observations.5.alignment", {"policy": "asof", "tolerance_s": 0.02}))


def test_franka_contract_loads():
    c = load_contract(FRANKA)
    assert SCENE_OBS not in [s.feature for s in c.observations]  # hardware has no privileged state
    assert all(c.stream(f).type == COMPRESSED_IMAGE and c.stream(f).image.encoding == "jpeg"
               for f in IMAGE_FEATURES)
    assert c.stream("rgb_static").stale_s == 0.15 and c.stream("robot_obs.tcp_pose").stale_s == 0.1
    width = c.stream("robot_obs.gripper_width")
    assert width.type == JOINT_STATE and width.joint_names == ("fr3_finger_joint1", "fr3_finger_joint2")
    assert c.actions.mode == "joint_trajectory" and c.actions.target.type == JOINT_TRAJECTORY
    assert len(c.actions.joint_names) == 7 and c.actions.gripper.open == 0.08
    assert c.instruction.qos == QosProfile(depth=1, durability="transient_local")


def test_feature_names_agree_with_the_policy():
    assert set(IMAGE_FEATURES) <= set(OBSERVATION_FEATURES)
    assert feature_shape("robot_obs") == (15,)
    with pytest.raises(KeyError, match="rgb_top"):
        load_contract(PLAYTABLE).stream("rgb_top")


def _set(path: str, value):
    """A change that sets ``raw[a][b]...`` (integer parts index lists) to ``value``."""
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]

    def change(raw):
        for k in keys[:-1]:
            raw = raw[k]
        raw[keys[-1]] = value
    return change


def _delete(path: str):
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]

    def change(raw):
        for k in keys[:-1]:
            raw = raw[k]
        del raw[keys[-1]]
    return change


MISTAKES = {
    "unknown top-level key": (_set("observatons", []), ["observatons:", "unknown key", "observations"]),
    "unknown stream key": (_set("observations.1.tolerence_s", 0.1),
                           ["observations[1].tolerence_s", "unknown key", "alignment"]),
    "unknown qos field": (_set("observations.0.qos", {"reliabilty": "reliable"}),
                          ["observations[0].qos.reliabilty", "unknown key"]),
    "bad qos name": (_set("observations.0.qos", "sensors"), ["observations[0].qos", "'sensor', 'default'"]),
    "bad qos value": (_set("observations.2.qos", {"reliability": "best-effort"}),
                      ["observations[2].qos.reliability", "best_effort", "'best-effort'"]),
    "bad qos depth": (_set("observations.2.qos", {"depth": 0}), ["observations[2].qos.depth", ">= 1"]),
    "bad alignment": (_set("observations.1.alignment", "nearest"),
                      ["observations[1].alignment.policy", "'hold', 'asof', 'drop'", "'nearest'"]),
    "asof without tolerance": (_set("observations.0.alignment", {"policy": "asof"}),
                               ["observations[0].alignment.tolerance_s", "asof"]),
    "negative tolerance": (_set("observations.0.alignment.tolerance_s", -0.1),
                           ["observations[0].alignment.tolerance_s", "> 0"]),
    "tolerance without asof": (_set("observations.0.alignment", {"policy": "hold", "tolerance_s": 0.1}),
                               ["observations[0].alignment.tolerance_s", "only asof"]),
    "asof on a headerless message": (_set("observations.4.alignment", {"policy": "asof", "tolerance_s": 0.1}),
                                     ["observations[4].alignment", "std_msgs/msg/Float64 has no header"]),
    "negative rate": (_set("actions.rate_hz", -30), ["actions.rate_hz", "> 0", "-30"]),
    "boolean rate": (_set("actions.rate_hz", True), ["actions.rate_hz", "a finite number"]),
    "bad command mode": (_set("actions.mode", "twist"), ["actions.mode", "'pose', 'joint_trajectory'"]),
    "command mode as a list": (_set("actions.mode", ["pose"]), ["actions.mode", "got ['pose']"]),
    "joint_trajectory without joint names": (_set("actions.mode", "joint_trajectory"),
                                             ["actions.joint_names", "7 distinct joint names"]),
    "six arm joints": (_set("observations.3.joint_names", ["j1", "j2", "j3", "j4", "j5", "j6"]),
                       ["observations[3].joint_names", "7 distinct"]),
    "joint names on a pose stream": (_set("observations.2.joint_names", ["a"]),
                                     ["observations[2].joint_names", "no joint names"]),
    "wrong message type": (_set("observations.0.type", JOINT_STATE),
                           ["observations[0].type", "sensor_msgs/msg/CompressedImage"]),
    "unknown feature": (_set("observations.0.feature", "rgb_top"), ["observations[0].feature", "rgb_static"]),
    "missing image size": (_delete("observations.1.image"), ["observations[1].image", "height, width"]),
    "bad image encoding": (_set("observations.1.image.encoding", "yuv422"),
                           ["observations[1].image.encoding", "'rgb8'", "'yuv422'"]),
    "compressed format on a raw image": (_set("observations.1.image.encoding", "jpeg"),
                                         ["observations[1].image.encoding", "for sensor_msgs/msg/Image"]),
    "missing stream": (lambda raw: raw["observations"].pop(4), ["observations:", "robot_obs.gripper_width"]),
    "duplicated feature": (lambda raw: raw["observations"].append(copy.deepcopy(raw["observations"][0])),
                           ["observations[6].feature", "each feature once"]),
    "bad topic name": (_set("observations.0.topic", "static camera"), ["observations[0].topic", "ROS 2 name"]),
    "bad service name": (_set("services.stop", "/dream_policy/2stop"), ["services.stop", "ROS 2 name"]),
    "missing alignment": (_delete("observations.2.alignment"), ["observations[2].alignment", "required"]),
    "missing safety": (_delete("safety"), ["safety:", "workspace"]),
    "inverted workspace": (_set("safety.workspace.max", [0.5, -0.7, 0.9]), ["safety.workspace.max", "above min"]),
    "short workspace corner": (_set("safety.workspace.min", [0, 0]), ["safety.workspace.min", "3 numbers"]),
    "zero watchdog": (_set("safety.watchdog_periods", 0), ["safety.watchdog_periods", ">= 1"]),
    "negative stale threshold": (_set("observations.0.stale_s", -1), ["observations[0].stale_s", "> 0"]),
    "unknown gripper key": (_set("actions.gripper.width", 0.08), ["actions.gripper.width", "open", "closed"]),
    "type on an action topic": (_set("actions.target.type", POSE_STAMPED), ["actions.target.type", "unknown key"]),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_mistakes_name_file_field_and_expectation(tmp_path, mistake):
    change, fragments = MISTAKES[mistake]
    with pytest.raises(ContractError) as info:
        _load_changed(tmp_path, change)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'broken.yaml'}: ")
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_stream_stale_threshold_defaults_to_safety(tmp_path):
    c = _load_changed(tmp_path, _set("safety.stale_s", 0.3))
    assert {s.stale_s for s in c.observations} == {0.3}


def test_instruction_and_services_have_defaults(tmp_path):
    def change(raw):
        del raw["instruction"], raw["name"]
        raw["services"] = {"stop": "/estop"}
    c = _load_changed(tmp_path, change)
    assert c.instruction.topic == "~/instruction" and c.instruction.qos == QOS_PROFILES["default"]
    assert (c.services.start, c.services.stop) == ("~/start", "/estop")
    assert c.name == "broken"  # the file's stem when the contract has no name


def test_joint_trajectory_needs_no_pose_extras(tmp_path):
    def change(raw):
        raw["actions"].update(mode="joint_trajectory", joint_names=[f"joint{i}" for i in range(1, 8)])
    assert _load_changed(tmp_path, change).actions.target.type == JOINT_TRAJECTORY
    with pytest.raises(ContractError, match=r"actions\.joint_names.*no joint names in pose mode"):
        _load_changed(tmp_path, lambda raw: raw["actions"].update(joint_names=["joint1"]))


def test_not_a_mapping_and_not_yaml(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ContractError, match="list.yaml: expected a mapping"):
        load_contract(path)
    path.write_text("observations: [\n")
    with pytest.raises(ContractError, match="list.yaml: not valid YAML"):
        load_contract(path)
    with pytest.raises(ContractError, match=r"observations: expected a non-empty list"):
        _load_changed(tmp_path, _set("observations", {}))


def test_dataclasses_validate_themselves():
    with pytest.raises(FieldError, match="tolerance_s"):
        Alignment("asof")
    with pytest.raises(FieldError, match="depth: expected an integer >= 1, got 0"):
        QosProfile(depth=0)
    assert Alignment("asof", 1).tolerance_s == 1.0
