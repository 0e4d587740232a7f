"""CALVIN's two cameras, rendered fast on a CPU (Mesa llvmpipe): one GL context and one MuJoCo
scene for both cameras, RGB and depth read from a single pass, segmentation as one more pass."""

from __future__ import annotations

import copy
import os
import weakref
from dataclasses import dataclass

import mujoco
import numpy as np
from mujoco.gl_context import GLContext

from sim.snapshot import SEGMENT_NAMES

# llvmpipe rasterising in the calling thread: on 2 busy cores its worker threads cost more in
# hand-offs than they gain (bench/RESULTS.md). Read when Mesa starts, i.e. at the first GL context.
os.environ.setdefault("LP_NUM_THREADS", "0")


@dataclass(frozen=True)
class CameraSpec:
    name: str
    size: int  # square images, size x size pixels
    far: float  # depth beyond this is clipped (metres)


CAMERAS = (CameraSpec("static", 200, 10.0), CameraSpec("gripper", 84, 2.0))
_OWNER_SEGMENT = {"robot": "robot", "floor": "floor", "table/drawer_link": "drawer",
                  "table/slide_link": "slider", "table/button_link": "button", "table/switch_link": "switch"}


def segment_ids(owners: list[str]) -> np.ndarray:
    """Segment id (index into SEGMENT_NAMES) of every geom, from its owner name (physics.geom_owner)."""
    names = [_OWNER_SEGMENT.get(o, o if o.startswith("block_") else "table") for o in owners]
    return np.asarray([SEGMENT_NAMES.index(n) for n in names], dtype=np.uint8)


def metric_depth(buffer: np.ndarray, near: float, far: float) -> np.ndarray:
    """Distance along the optical axis from MuJoCo's reversed-z depth buffer (1 at near, 0 at far)."""
    return near * far / (near + buffer * (far - near))


def _render_model(model: mujoco.MjModel, cheap_geometry: bool) -> mujoco.MjModel:
    """Copy of ``model`` from which the GL context builds its display lists and buffers.

    With ``cheap_geometry`` boxes are one quad a face (MuJoCo subdivides them 4x4 for lighting),
    planes get a 1 m grid (the floor's 0.1 m grid is 3600 quads) and spheres and cylinders 16
    slices: on llvmpipe that halves the render time, and with only directional lights the images
    differ from MuJoCo's defaults on a few silhouette pixels (test_cameras measures it).
    """
    render_model = copy.copy(model)
    render_model.vis.global_.offwidth = render_model.vis.global_.offheight = max(c.size for c in CAMERAS)
    if cheap_geometry:
        render_model.vis.quality.numquads = 1
        render_model.vis.quality.numslices, render_model.vis.quality.numstacks = 16, 8
        planes = render_model.geom_type == mujoco.mjtGeom.mjGEOM_PLANE
        render_model.geom_size[planes, 2] = np.maximum(render_model.geom_size[planes, 2], 1.0)
    return render_model


def _free_gl(gl: GLContext, ctx: mujoco.MjrContext) -> None:
    gl.make_current()
    ctx.free()
    gl.free()


class CameraRig:
    """Offscreen RGB, depth and (optionally) segmentation images of the static and gripper cameras."""

    def __init__(self, model: mujoco.MjModel, seg_ids: np.ndarray, segmentation: bool = True,
                 cheap_geometry: bool = True) -> None:
        self.model, self.seg_ids, self.segmentation = model, seg_ids, segmentation
        self._gl = GLContext(max(c.size for c in CAMERAS), max(c.size for c in CAMERAS))
        self._gl.make_current()
        self._ctx = mujoco.MjrContext(_render_model(model, cheap_geometry), mujoco.mjtFontScale.mjFONTSCALE_50)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._ctx)
        self._ctx.readDepthMap = mujoco.mjtDepthMap.mjDEPTH_ZEROFAR
        # Frees the GL resources on close(), on garbage collection, or at exit before EGL shuts down.
        self._free = weakref.finalize(self, _free_gl, self._gl, self._ctx)
        self._scene = mujoco.MjvScene(model, maxgeom=10_000)
        self._option = mujoco.MjvOption()
        self._cameras: dict[str, mujoco.MjvCamera] = {}
        self.near = model.vis.map.znear * model.stat.extent
        self.far = model.vis.map.zfar * model.stat.extent

    def _camera(self, name: str) -> mujoco.MjvCamera:
        if name not in self._cameras:
            cam_id = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, name)
            if cam_id < 0:
                names = [self.model.camera(i).name for i in range(self.model.ncam)]
                raise ValueError(f"camera {name!r} is not one of {names}")
            self._cameras[name] = cam = mujoco.MjvCamera()
            cam.type, cam.fixedcamid = mujoco.mjtCamera.mjCAMERA_FIXED, cam_id
        return self._cameras[name]

    def _begin(self, data: mujoco.MjData, camera: str, size: int) -> mujoco.MjrRect:
        if self._ctx is None:
            raise RuntimeError("CameraRig is closed")
        self._gl.make_current()  # another renderer in this thread may have taken the GL context
        mujoco.mjv_updateScene(self.model, data, self._option, None, self._camera(camera),
                               mujoco.mjtCatBit.mjCAT_ALL, self._scene)
        return mujoco.MjrRect(0, 0, size, size)

    def render(self, data: mujoco.MjData) -> dict[str, np.ndarray]:
        """rgb_<cam> (S, S, 3) uint8, depth_<cam> (S, S) float32 metres, seg_<cam> (S, S) uint8."""
        out = {}
        for spec in CAMERAS:
            rect = self._begin(data, spec.name, spec.size)
            rgb = np.empty((spec.size, spec.size, 3), np.uint8)
            depth = np.empty((spec.size, spec.size), np.float32)
            mujoco.mjr_render(rect, self._scene, self._ctx)
            mujoco.mjr_readPixels(rgb, depth, rect, self._ctx)
            # GL rows run bottom-up
            out[f"rgb_{spec.name}"] = rgb[::-1].copy()
            out[f"depth_{spec.name}"] = np.minimum(metric_depth(depth[::-1], self.near, self.far), spec.far)
            if self.segmentation:
                out[f"seg_{spec.name}"] = self._segment(rect)[::-1].copy()
        return out

    def _segment(self, rect: mujoco.MjrRect) -> np.ndarray:
        """Segment ids from an ID-colour pass over the current scene (colour = scene index + 1)."""
        flags = self._scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = flags[mujoco.mjtRndFlag.mjRND_IDCOLOR] = 1
        mujoco.mjr_render(rect, self._scene, self._ctx)
        flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = flags[mujoco.mjtRndFlag.mjRND_IDCOLOR] = 0
        colour = np.empty((rect.height, rect.width, 3), np.uint8)
        mujoco.mjr_readPixels(colour, None, rect, self._ctx)
        lut = np.zeros(self._scene.ngeom + 1, np.uint8)  # 0: background
        for g in self._scene.geoms[:self._scene.ngeom]:
            if g.segid >= 0 and g.objtype == mujoco.mjtObj.mjOBJ_GEOM:
                lut[g.segid + 1] = self.seg_ids[g.objid]
        index = colour[..., 0] | colour[..., 1].astype(np.int32) << 8 | colour[..., 2].astype(np.int32) << 16
        return lut[index]

    def render_view(self, data: mujoco.MjData, camera: str, size: int) -> np.ndarray:
        """A size x size RGB frame from ``camera`` (videos); grows the offscreen buffer if needed."""
        if self._ctx is not None and size > min(self._ctx.offWidth, self._ctx.offHeight):
            self._gl.make_current()
            mujoco.mjr_resizeOffscreen(max(size, self._ctx.offWidth), max(size, self._ctx.offHeight), self._ctx)
        rect = self._begin(data, camera, size)
        rgb = np.empty((size, size, 3), np.uint8)
        mujoco.mjr_render(rect, self._scene, self._ctx)
        mujoco.mjr_readPixels(rgb, None, rect, self._ctx)
        return rgb[::-1].copy()

    def close(self) -> None:
        """Free the GL resources; safe to call more than once."""
        self._free()
        self._ctx = None
