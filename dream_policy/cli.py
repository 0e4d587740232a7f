"""`dream-policy <command> [key=value ...]`: one console script, one Hydra config per command.

A command's target ("module:function") is imported only when the command runs, and Hydra only
when a config is composed, so `dream-policy --help` stays fast and imports neither torch nor mujoco.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dream_policy import __version__

if TYPE_CHECKING:
    from omegaconf import DictConfig

PROG = "dream-policy"
CONFIG_DIR_ENV = "DREAM_POLICY_CONFIG_DIR"
EXIT_USAGE = 2
HELP_FLAGS = ("-h", "--help")


class UsageError(Exception):
    """A wrong command line or a missing config; reported on one line with exit code 2."""


@dataclass(frozen=True)
class Command:
    """A subcommand: its Hydra config `configs/<config_name>.yaml` and the function it runs."""

    name: str
    help: str
    config_name: str
    target: str  # "module:function"; called with the composed DictConfig
    positional: str | None = None  # config key a leading bare word sets (`up sim` = `up target=sim`)

    def __post_init__(self) -> None:
        module, sep, function = self.target.partition(":")
        if not (module and sep and function):
            raise ValueError(f"command {self.name!r}: target {self.target!r} is not 'module:function'")

    def bind_positional(self, args: Sequence[str]) -> list[str]:
        """``args`` with a leading bare word (no ``=``, not an option) as ``<positional>=<word>``."""
        args = list(args)
        if self.positional and args and "=" not in args[0] and not args[0].startswith(("-", "+", "~")):
            args[0] = f"{self.positional}={args[0]}"
        return args

    def load(self) -> Callable[[DictConfig], object]:
        module_name, _, function = self.target.partition(":")
        module = importlib.import_module(module_name)
        try:
            return getattr(module, function)
        except AttributeError:
            raise ImportError(
                f"command {self.name!r}: module {module_name!r} has no {function!r} (target {self.target})"
            ) from None


COMMANDS: dict[str, Command] = {
    command.name: command
    for command in (
        Command(
            "chains",
            "sample instruction chains and write them as JSON",
            "chains",
            "sim.chains:chains_command",
        ),
        Command(
            "eval",
            "evaluate a policy on instruction chains in the play-table",
            "eval",
            "sim.evaluate:eval_command",
        ),
        Command(
            "collect",
            "record scripted-expert play episodes as a data set",
            "collect",
            "sim.collect:collect_command",
        ),
        Command(
            "train",
            "train a DreamVLA policy on a CALVIN-format data set",
            "train",
            "dream_policy.train_command:train_command",
        ),
        Command(
            "pack",
            "copy a CALVIN-format data set at model resolution for fast (GPU) training",
            "pack",
            "dream_policy.data.packed:pack_command",
        ),
        Command(
            "calibrate-cache",
            "calibrate a Block-wise Adaptive Caching schedule for a checkpoint's DiT head",
            "calibrate-cache",
            "dream_policy.calibrate_cache:calibrate_command",
        ),
        Command(
            "distill-cache",
            "fine-tune a copy of the DiT head to run under a cache schedule (cache-aware distillation)",
            "distill-cache",
            "dream_policy.cache_distill:distill_command",
        ),
        Command(
            "bag2data",
            "convert rosbag2 teleoperation recordings into a CALVIN-format data set",
            "bag2data",
            "ros_nodes.bag_to_dataset:bag2data_command",
        ),
        Command(
            "up",
            "run the sim node and the policy node over DDS (dream-policy up sim [key=value ...])",
            "up",
            "ros_nodes.launcher:up_command",
            positional="target",
        ),
    )
}


def get_command(name: str) -> Command:
    try:
        return COMMANDS[name]
    except KeyError:
        raise UsageError(f"unknown command {name!r}; valid commands: {', '.join(sorted(COMMANDS))}") from None


def config_dir_candidates() -> list[Path]:
    """Where configs are looked for, in order: $DREAM_POLICY_CONFIG_DIR alone if set, else the source tree's
    configs/ (editable install), else share/dream_policy/configs of the install prefix (ament, wheel)."""
    override = os.environ.get(CONFIG_DIR_ENV)
    if override:
        return [Path(override)]
    package_dir = Path(__file__).resolve().parent
    candidates = [package_dir.parent / "configs"]
    # <prefix>/lib/pythonX.Y/site-packages/dream_policy: colcon gives each package its own prefix.
    if len(package_dir.parents) > 3:
        candidates.append(package_dir.parents[3] / "share" / "dream_policy" / "configs")
    candidates.append(Path(sys.prefix) / "share" / "dream_policy" / "configs")
    return list(dict.fromkeys(candidates))


def find_config_dir() -> Path:
    candidates = config_dir_candidates()
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    source = f" (from ${CONFIG_DIR_ENV})" if os.environ.get(CONFIG_DIR_ENV) else ""
    raise UsageError(f"no config directory found{source}; looked in: {', '.join(map(str, candidates))}")


def _one_line(message: str) -> str:
    lines = (line.strip() for line in message.splitlines())
    return " ".join(line for line in lines if line and not line.startswith("See https://hydra.cc"))


def check_override_syntax(command: Command, overrides: Sequence[str]) -> None:
    """Fail on the first override that is not Hydra's `key=value` form, naming it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    hint = f"expected key=value, see '{PROG} {command.name} --help'"
    for text in overrides:
        if text.startswith("-"):
            raise UsageError(f"unknown option {text!r}; {hint}")
        try:
            override = parser.parse_override(text)
        except HydraException as error:
            detail = _one_line(str(error)).removeprefix(f"Error parsing override '{text}' ")
            raise UsageError(f"bad override {text!r}: {detail}; {hint}") from None
        if not override.key_or_group:
            raise UsageError(f"bad override {text!r}: empty key; {hint}")


def compose_config(command: Command, overrides: Sequence[str] = ()) -> DictConfig:
    """The command's config composed with `overrides`; a bad override raises UsageError naming it."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    config_dir = find_config_dir()
    if not (config_dir / f"{command.config_name}.yaml").is_file():
        raise UsageError(f"command {command.name!r}: no {command.config_name}.yaml in {config_dir}")
    check_override_syntax(command, overrides)
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        try:
            return compose(config_name=command.config_name, overrides=list(overrides))
        except (HydraException, ValueError) as error:
            message = _one_line(str(error))
            if message.startswith("Could not override"):
                keys = ", ".join(compose(config_name=command.config_name))
                message += f" (keys of {command.config_name}: {keys})"
            raise UsageError(f"bad override: {message}") from None


def usage() -> str:
    width = max(map(len, COMMANDS))
    commands = "\n".join(f"  {c.name:<{width}}  {c.help}" for c in COMMANDS.values())
    return (
        f"usage: {PROG} <command> [key=value ...]\n"
        f"       {PROG} <command> --help\n\n"
        f"commands:\n{commands}\n\n"
        "Each command composes its Hydra config with the key=value overrides and runs it.\n"
        f"Configs are read from ${CONFIG_DIR_ENV} if set, else the source tree's configs/,\n"
        "else <prefix>/share/dream_policy/configs."
    )


def command_help(command: Command) -> str:
    from omegaconf import OmegaConf

    config = compose_config(command)
    plain = OmegaConf.to_container(config)  # unresolved: mandatory values stay '???'
    example = next((f"{key}={value}" for key, value in plain.items()
                    if value is not None and value != "???" and not isinstance(value, (dict, list))), "key=value")
    defaults = OmegaConf.to_yaml(config).rstrip() or "{}"
    return (
        f"usage: {PROG} {command.name} [key=value ...]\n\n"
        f"{command.help}\n\n"
        f"config {command.config_name}.yaml (from {find_config_dir()}), defaults:\n"
        + "\n".join(f"  {line}" for line in defaults.splitlines())
        + "\n\n"
        "overrides (Hydra syntax):\n"
        f"  key=value       set a key, e.g. {example}\n"
        "  a.b=value       set a nested key\n"
        "  key=[x,y]       a list; key=null for None\n"
        "  +key=value      add a key the config does not have\n"
        "  ~key            remove a key"
    )


def _missing_keys(config: Any, prefix: str = "") -> list[str]:
    """Keys of the composed config still set to ``???`` (mandatory, no default)."""
    from omegaconf import DictConfig, OmegaConf

    missing = []
    for key in config:
        if OmegaConf.is_missing(config, key):
            missing.append(f"{prefix}{key}")
        elif isinstance(config[key], DictConfig):
            missing += _missing_keys(config[key], f"{prefix}{key}.")
    return missing


def run(argv: Sequence[str]) -> int:
    if not argv:
        print(usage(), file=sys.stderr)
        return EXIT_USAGE
    if argv[0] in HELP_FLAGS:
        print(usage())
        return 0
    if argv[0] == "--version":
        print(f"{PROG} {__version__}")
        return 0
    command = get_command(argv[0])
    overrides = command.bind_positional(argv[1:])
    if any(arg in HELP_FLAGS for arg in overrides):
        print(command_help(command))
        return 0
    config = compose_config(command, overrides)
    missing = _missing_keys(config)
    if missing:
        raise UsageError(f"{command.name} needs a value for {', '.join(missing)} (e.g. {missing[0]}=...)")
    result = command.load()(config)
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except UsageError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
