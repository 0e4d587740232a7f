"""Scene variants A-D: geometry read from CALVIN's table/block URDFs and scene configs."""

from __future__ import annotations

import functools
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

ASSETS = Path(__file__).parent / "assets"
CALVIN_ASSETS = ASSETS / "calvin"
GLOBAL_SCALING = 0.8
SCENES = ("A", "B", "C", "D")

# Table colours standing in for CALVIN's per-scene table textures (RGBA).
TABLE_COLOURS = {
    "A": (0.82, 0.66, 0.47, 1.0),
    "B": (0.45, 0.30, 0.20, 1.0),
    "C": (0.75, 0.75, 0.72, 1.0),
    "D": (0.62, 0.48, 0.34, 1.0),
}
BLOCK_COLOURS = {"block_red": (1, 0, 0, 1), "block_blue": (0, 0, 1, 1), "block_pink": (1, 0, 1, 1)}


@dataclass(frozen=True)
class TableLayout:
    """World positions (metres, scaled) of the table's articulated parts in one scene."""

    button: tuple[float, float, float]
    switch: tuple[float, float, float]
    slide: tuple[float, float, float]
    drawer: tuple[float, float, float]
    led: tuple[float, float, float]
    lightbulb: tuple[float, float, float]
    plank: tuple[float, float, float]
    slide_range: float


@dataclass(frozen=True)
class SceneConfig:
    """One play-table variant; ``name`` selects CALVIN scene A, B, C or D."""

    name: str = "D"
    render: bool = True
    shadows: bool = False
    segmentation: bool = False  # one more render pass per camera (~3 ms a step here)
    table_colour: tuple[float, float, float, float] | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_name(self.name)

    @property
    def layout(self) -> TableLayout:
        return table_layout(self.name)

    @property
    def block_sizes(self) -> dict[str, tuple[float, float, float]]:
        return block_sizes(self.name)

    @property
    def surfaces(self) -> dict[str, np.ndarray]:
        return surfaces(self.name)

    @property
    def colour(self) -> tuple[float, float, float, float]:
        return self.table_colour or TABLE_COLOURS[self.name]


def _check_name(name: str) -> None:
    if name not in SCENES:
        raise ValueError(f"scene name {name!r} is not one of {list(SCENES)}")


def _scene_yaml(name: str) -> dict:
    _check_name(name)
    return yaml.safe_load((CALVIN_ASSETS / f"scene_calvin_scene_{name}.yaml").read_text())


@functools.cache
def table_layout(name: str) -> TableLayout:
    _check_name(name)
    root = ET.parse(CALVIN_ASSETS / f"calvin_table_{name}.urdf").getroot()
    origins, uppers = {}, {}
    for joint in root.findall("joint"):
        xyz = [float(v) * GLOBAL_SCALING for v in joint.find("origin").get("xyz").split()]
        origins[joint.get("name")] = tuple(xyz)
        limit = joint.find("limit")
        if limit is not None and limit.get("upper") is not None:
            uppers[joint.get("name")] = float(limit.get("upper")) * GLOBAL_SCALING
    return TableLayout(
        button=origins["base__button"],
        switch=origins["base__switch"],
        slide=origins["base__slide"],
        drawer=origins["base__drawer"],
        led=origins["base__led"],
        lightbulb=origins["base__light"],
        plank=origins["base__plank"],
        slide_range=uppers["base__slide"],
    )


@functools.cache
def block_sizes(name: str) -> dict[str, tuple[float, float, float]]:
    """Full box extents (scaled) of each block in scene ``name``."""
    movable = _scene_yaml(name)["objects"]["movable_objects"]
    sizes = {}
    for block, spec in movable.items():
        urdf = CALVIN_ASSETS / Path(spec["file"]).name
        box = ET.parse(urdf).getroot().find(".//collision/geometry/box").get("size")
        sizes[block] = tuple(float(v) * GLOBAL_SCALING for v in box.split())
    return {b: sizes[b] for b in BLOCK_COLOURS}


@functools.cache
def surfaces(name: str) -> dict[str, np.ndarray]:
    """Block sampling surfaces: name -> [[xmin, ymin, z], [xmax, ymax, z]]."""
    return {k: np.asarray(v, dtype=float) for k, v in _scene_yaml(name)["surfaces"].items()}
