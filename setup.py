"""Packaging for pip (editable or wheel) and for colcon's ament_python build."""

import re
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
PACKAGE = "dream_policy"
# Pinned in requirements.txt with the rest, but only needed to develop and test.
DEV_TOOLS = {"pytest", "pytest-xdist", "ruff"}


def read_version() -> str:
    text = (ROOT / PACKAGE / "__init__.py").read_text()
    return re.search(r'^__version__ = "([^"]+)"', text, re.MULTILINE).group(1)


def read_requirements() -> tuple[list[str], list[str]]:
    """(runtime, dev) requirement lines of requirements.txt, so the pins live in one file."""
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    lines = [line for line in lines if line]
    name = re.compile(r"^[A-Za-z0-9._-]+")
    dev = [line for line in lines if name.match(line).group(0).lower() in DEV_TOOLS]
    return [line for line in lines if line not in dev], dev


def package_tree(package: str, folder: str) -> list[str]:
    """Every file under <package>/<folder>, relative to the package, for package_data.

    Walked by hand because `**` in package_data is only understood by recent setuptools.
    """
    base = ROOT / package
    return sorted(
        path.relative_to(base).as_posix()
        for path in (base / folder).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    )


def share_tree(folder: str, pattern: str) -> list[tuple[str, list[str]]]:
    """data_files entries that install <folder>/**/<pattern> under share/<pkg>/<folder>, subfolders kept."""
    groups: dict[str, list[str]] = {}
    for path in sorted((ROOT / folder).rglob(pattern)):
        if path.is_file():
            relative = path.relative_to(ROOT)
            groups.setdefault(f"share/{PACKAGE}/{relative.parent.as_posix()}", []).append(relative.as_posix())
    return sorted(groups.items())


runtime_requirements, dev_requirements = read_requirements()

setup(
    name=PACKAGE,
    version=read_version(),
    description="DreamVLA-style robot policy runtime with a MuJoCo CALVIN play-table and ROS 2 nodes",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*", "sim", "sim.*", "ros_nodes", "ros_nodes.*"]),
    package_data={
        "sim": [
            "data/*.json",
            "data/*.yaml",
            "data/LICENSE*",
            "data/README.md",
            *package_tree("sim", "assets"),
        ],
    },
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        # `ros2 launch dream_policy sim.launch.py`; configs (contracts, models) for the nodes.
        *share_tree("launch", "*.py"),
        *share_tree("configs", "*.yaml"),
    ],
    install_requires=runtime_requirements,
    extras_require={"test": dev_requirements},
    zip_safe=False,
    # The nodes land in lib/dream_policy (setup.cfg), where `ros2 run` and launch_ros look for them.
    entry_points={"console_scripts": [
        "dream-policy = dream_policy.cli:main",
        "sim_node = ros_nodes.sim_node:main",
        "policy_node = ros_nodes.policy_node:main",
    ]},
)
