"""Tests for sim.scene_config and sim.scene_xml: scenes A-D read from CALVIN's URDF/YAML copies."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from sim.scene_config import SCENES, SceneConfig, block_sizes, surfaces, table_layout
from sim.scene_xml import BUTTON_RANGE, DRAWER_RANGE, SWITCH_RANGE, build_mjcf
from sim.snapshot import BLOCKS


@pytest.fixture(scope="module")
def models() -> dict[str, mujoco.MjModel]:
    return {s: mujoco.MjModel.from_xml_string(build_mjcf(SceneConfig(name=s, render=False))) for s in SCENES}


def _joint_range(model: mujoco.MjModel, name: str) -> np.ndarray:
    return model.jnt_range[model.joint(name).id]


@pytest.mark.parametrize("scene", SCENES)
def test_every_scene_compiles_with_its_parts(models, scene):
    m = models[scene]
    for body in ("table", "panda_base", "hand", "drawer", "slider", "button", "switch", *BLOCKS):
        m.body(body)  # raises KeyError when missing
    m.site("tcp")
    m.camera("static")
    m.camera("gripper")
    assert m.nu == 9  # 7 arm joints + 2 fingers


@pytest.mark.parametrize("scene", SCENES)
def test_articulation_ranges_are_calvins_scaled_limits(models, scene):
    m = models[scene]
    np.testing.assert_allclose(_joint_range(m, "button"), [0, BUTTON_RANGE])
    np.testing.assert_allclose(_joint_range(m, "switch"), [0, SWITCH_RANGE])
    np.testing.assert_allclose(_joint_range(m, "drawer"), [0, DRAWER_RANGE])
    np.testing.assert_allclose(_joint_range(m, "slider"), [0, table_layout(scene).slide_range])
    # URDF uppers 0.025 / 0.11 / 0.275 at global scaling 0.8
    assert (BUTTON_RANGE, SWITCH_RANGE, DRAWER_RANGE) == pytest.approx((0.02, 0.088, 0.22))


@pytest.mark.parametrize(
    ("scene", "part", "expected"),
    [
        # URDF joint origin xyz x 0.8, worked out by hand from calvin_table_<scene>.urdf
        ("D", "button", (-0.12, -0.12, 0.46)),       # (-0.15, -0.15, 0.575)
        ("A", "button", (-0.28, -0.12, 0.46)),       # (-0.35, -0.15, 0.575)
        ("B", "button", (0.28, -0.12, 0.46)),        # (0.35, -0.15, 0.575)
        ("D", "drawer", (0.18, 0.0, 0.32)),          # (0.225, 0, 0.4)
        ("C", "drawer", (0.10, 0.0, 0.32)),          # (0.125, 0, 0.4)
        ("D", "switch", (0.30, 0.060928, 0.494890)),  # (0.375, 0.07616, 0.618612)
        ("C", "switch", (-0.32, 0.060928, 0.494888)),  # (-0.4, 0.07616, 0.61861)
        ("D", "plank", (-0.10, 0.09, 0.42)),         # (-0.125, 0.1125, 0.525)
        ("B", "led", (0.28, 0.16, 0.647848)),        # (0.35, 0.2, 0.80981)
    ],
)
def test_layout_is_urdf_joint_origin_times_global_scaling(scene, part, expected):
    assert getattr(table_layout(scene), part) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize(("scene", "expected"), [("A", 0.28), ("B", 0.304), ("C", 0.24), ("D", 0.28)])
def test_slide_range_is_scaled_urdf_upper_limit(scene, expected):
    assert table_layout(scene).slide_range == pytest.approx(expected)


RED_MIDDLE, BLUE_SMALL, PINK_BIG = (0.056, 0.04, 0.04), (0.04, 0.04, 0.04), (0.08, 0.04, 0.04)


@pytest.mark.parametrize(
    ("scene", "expected"),
    [
        ("D", {"block_red": RED_MIDDLE, "block_blue": BLUE_SMALL, "block_pink": PINK_BIG}),
        ("A", {"block_red": RED_MIDDLE, "block_blue": (0.08, 0.04, 0.04), "block_pink": (0.04, 0.04, 0.04)}),
        ("B", {"block_red": (0.04, 0.04, 0.04), "block_blue": (0.08, 0.04, 0.04), "block_pink": RED_MIDDLE}),
        ("C", {"block_red": (0.08, 0.04, 0.04), "block_blue": BLUE_SMALL, "block_pink": RED_MIDDLE}),
    ],
)
def test_block_sizes_are_urdf_boxes_times_global_scaling(models, scene, expected):
    sizes = block_sizes(scene)
    assert list(sizes) == list(BLOCKS)
    for block in BLOCKS:
        assert sizes[block] == pytest.approx(expected[block])
        # the compiled box geom carries the same extents (MuJoCo stores half sizes)
        np.testing.assert_allclose(models[scene].geom_size[models[scene].geom(block).id] * 2, expected[block])


def test_surfaces_come_from_the_scene_yaml():
    d = surfaces("D")
    assert set(d) == {"table", "slider_left", "slider_right"}
    np.testing.assert_allclose(d["table"], [[0.0, -0.15, 0.46], [0.35, -0.03, 0.46]])
    np.testing.assert_allclose(d["slider_left"], [[-0.32, 0.05, 0.46], [-0.16, 0.12, 0.46]])
    np.testing.assert_allclose(d["slider_right"], [[-0.05, 0.05, 0.46], [0.13, 0.12, 0.46]])
    np.testing.assert_allclose(surfaces("A")["table"][0], [-0.2, -0.15, 0.46])
    np.testing.assert_allclose(surfaces("B")["slider_right"], [[0.15, 0.05, 0.46], [0.33, 0.12, 0.46]])


def test_scenes_differ(models):
    assert table_layout("A").button[0] == pytest.approx(-0.28)
    assert table_layout("D").button[0] == pytest.approx(-0.12)
    assert build_mjcf(SceneConfig(name="A")) != build_mjcf(SceneConfig(name="D"))
    xa = models["A"].body_pos[models["A"].body("button").id]
    xd = models["D"].body_pos[models["D"].body("button").id]
    assert xa[0] == pytest.approx(-0.28) and xd[0] == pytest.approx(-0.12)
    assert block_sizes("A") != block_sizes("D")
    assert SceneConfig(name="A").colour != SceneConfig(name="D").colour


def test_config_properties_delegate_to_the_scene():
    cfg = SceneConfig(name="C")
    assert cfg.layout == table_layout("C")
    assert cfg.block_sizes == block_sizes("C")
    np.testing.assert_allclose(cfg.surfaces["table"], surfaces("C")["table"])
    custom = SceneConfig(name="C", table_colour=(0.1, 0.2, 0.3, 1.0))
    assert custom.colour == (0.1, 0.2, 0.3, 1.0)


@pytest.mark.parametrize("name", ["E", "d", "", "scene_D"])
def test_unknown_scene_name_lists_valid_names(name):
    with pytest.raises(ValueError, match="not one of") as err:
        SceneConfig(name=name)
    for valid in SCENES:
        assert repr(valid) in str(err.value)
