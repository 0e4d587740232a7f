"""Tests for sim.cameras.CameraRig: keys, agreement with mujoco.Renderer, segment ids, views, closing."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from sim import snapshot as S
from sim.cameras import CAMERAS, SEGMENT_NAMES, CameraRig, metric_depth, segment_ids
from sim.env import PlayTableEnv
from sim.state_sampler import default_robot_obs

KEYS = {"rgb_static": ((200, 200, 3), np.uint8), "rgb_gripper": ((84, 84, 3), np.uint8),
        "depth_static": ((200, 200), np.float32), "depth_gripper": ((84, 84), np.float32),
        "seg_static": ((200, 200), np.uint8), "seg_gripper": ((84, 84), np.uint8)}


@pytest.fixture(scope="module")
def physics():
    """The play-table with all three blocks on the table top, in view of the static camera."""
    env = PlayTableEnv("D", render=False)
    scene = np.zeros(24)
    scene[:6] = [0.2, 0.1, 0.0, 0.07, 1, 0]
    scene[S.BLOCK_SLICES["block_red"]] = [0.05, -0.12, 0.46, 0, 0, 1.6]
    scene[S.BLOCK_SLICES["block_blue"]] = [0.07034, 0.0924, 0.46, 0, 0, -0.4]
    scene[S.BLOCK_SLICES["block_pink"]] = [0.23, -0.12, 0.46, 0, 0, 2.0]
    env.reset(options={"robot_obs": default_robot_obs(), "scene_obs": scene})
    return env.physics


@pytest.fixture(scope="module")
def rig(physics):
    r = CameraRig(physics.model, segment_ids(physics.geom_owner), segmentation=True)
    yield r
    r.close()


@pytest.fixture(scope="module")
def reference(physics):
    """mujoco.Renderer's RGB, metric depth and geom-id images of both cameras."""
    out = {}
    for c in CAMERAS:
        with mujoco.Renderer(physics.model, c.size, c.size) as r:
            r.update_scene(physics.data, c.name)
            out[f"rgb_{c.name}"] = r.render()
            r.enable_depth_rendering()
            out[f"depth_{c.name}"] = np.minimum(r.render(), c.far)
            r.enable_segmentation_rendering()
            out[f"geom_{c.name}"] = r.render()[..., 0]
    return out


def test_keys_shapes_and_dtypes(physics, rig):
    obs = rig.render(physics.data)
    assert set(obs) == set(KEYS)
    for key, (shape, dtype) in KEYS.items():
        assert obs[key].shape == shape and obs[key].dtype == dtype, key
        assert obs[key].flags.c_contiguous, key
    for c in CAMERAS:
        depth = obs[f"depth_{c.name}"]
        assert np.all(depth > 0) and np.all(depth <= c.far)
    without = CameraRig(physics.model, segment_ids(physics.geom_owner), segmentation=False)
    assert set(without.render(physics.data)) == {k for k in KEYS if not k.startswith("seg_")}
    without.close()


def test_metric_depth_maps_the_reversed_buffer_to_near_and_far():
    np.testing.assert_allclose(metric_depth(np.array([1.0, 0.0]), 0.01, 10.0), [0.01, 10.0])


@pytest.mark.parametrize("cheap_geometry", [False, True])
def test_images_match_mujoco_renderer(physics, reference, cheap_geometry):
    """RGB, depth and segment ids (through each geom's owner) agree with mujoco.Renderer's."""
    ids = segment_ids(physics.geom_owner)
    r = CameraRig(physics.model, ids, segmentation=True, cheap_geometry=cheap_geometry)
    obs = r.render(physics.data)
    r.close()
    for c in CAMERAS:
        rgb_diff = np.abs(obs[f"rgb_{c.name}"].astype(int) - reference[f"rgb_{c.name}"]).max(axis=-1)
        depth_diff = np.abs(obs[f"depth_{c.name}"] - reference[f"depth_{c.name}"])
        geom = reference[f"geom_{c.name}"]
        seg_wrong = obs[f"seg_{c.name}"] != np.where(geom >= 0, ids[np.maximum(geom, 0)], 0)
        if cheap_geometry:  # coarser boxes, spheres and floor grid: only a few edge pixels move
            assert rgb_diff.mean() < 0.5 and (rgb_diff > 8).mean() < 0.01, c.name
            assert np.quantile(depth_diff, 0.99) < 1e-3, c.name
            assert seg_wrong.mean() < 0.001, c.name
        else:
            assert rgb_diff.max() <= 1, c.name
            assert depth_diff.max() < 1e-4, c.name
            assert not seg_wrong.any(), c.name


def test_a_block_pixel_gets_the_block_id(physics, rig):
    """Project each block's top-face centre into the static image: that pixel is the block."""
    m, d = physics.model, physics.data
    seg = rig.render(d)["seg_static"]
    cam = m.camera("static").id
    focal = seg.shape[0] / 2 / np.tan(np.radians(m.cam_fovy[cam]) / 2)
    for block in S.BLOCKS:
        geom = m.geom(block).id
        top = d.geom_xpos[geom] + d.geom_xmat[geom].reshape(3, 3) @ [0, 0, m.geom_size[geom, 2] * 0.9]
        x, y, z = d.cam_xmat[cam].reshape(3, 3).T @ (top - d.cam_xpos[cam])  # camera looks along -z
        col, row = seg.shape[1] / 2 + focal * x / -z, seg.shape[0] / 2 - focal * y / -z
        assert seg[int(row), int(col)] == SEGMENT_NAMES.index(block), block


def test_render_view_sizes_and_unknown_camera(physics, rig):
    assert rig.render_view(physics.data, "gripper", 128).shape == (128, 128, 3)
    big = rig.render_view(physics.data, "static", 320)  # grows the offscreen buffer
    assert big.shape == (320, 320, 3) and big.std() > 5
    np.testing.assert_array_equal(rig.render_view(physics.data, "static", 200), rig.render(physics.data)["rgb_static"])
    with pytest.raises(ValueError, match="not one of"):
        rig.render_view(physics.data, "overhead", 64)


def test_close_is_idempotent(physics):
    r = CameraRig(physics.model, segment_ids(physics.geom_owner))
    r.close()
    r.close()
    with pytest.raises(RuntimeError, match="closed"):
        r.render(physics.data)
