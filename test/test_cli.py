"""The dream-policy CLI: registry, help, errors, config lookup and override passing (no sim needed)."""

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from dream_policy import __version__, cli

REPO = Path(__file__).resolve().parents[1]
received = []


def record_config(config):
    """Target of the injected test command: keeps the config it was called with."""
    received.append(config)
    return config.get("exit_code")


@pytest.fixture
def probe(tmp_path, monkeypatch):
    """A `probe` command whose config lives in a temporary config dir and whose target is record_config."""
    (tmp_path / "probe.yaml").write_text(
        "count: 1\nname: a\nnested:\n  depth: 2\ntags: null\nexit_code: null\n"
    )
    monkeypatch.setenv(cli.CONFIG_DIR_ENV, str(tmp_path))
    monkeypatch.setitem(
        cli.COMMANDS, "probe", cli.Command("probe", "probe help", "probe", f"{__name__}:record_config")
    )
    received.clear()
    return tmp_path


def run_cli(*args, env=None):
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, *args], check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


def test_registered_commands():
    assert set(cli.COMMANDS) == {"chains", "eval", "collect", "train", "pack", "calibrate-cache", "distill-cache", "up",
                                 "bag2data"}
    for name, command in cli.COMMANDS.items():
        assert command.name == name
        assert (REPO / "configs" / f"{command.config_name}.yaml").is_file()


def test_a_leading_bare_word_sets_the_positional_key():
    up = cli.COMMANDS["up"]
    assert up.bind_positional(["sim", "policy=expert"]) == ["target=sim", "policy=expert"]
    assert up.bind_positional(["policy=expert"]) == ["policy=expert"]
    assert cli.COMMANDS["eval"].bind_positional(["sim"]) == ["sim"]  # no positional: a bad override


def test_up_with_a_bad_contract_is_one_line_with_exit_code_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("observations: []\n")
    assert cli.main(["up", "sim", f"contract_file={bad}", "duration_s=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dream-policy: error: bad contract:") and str(bad) in err and "\n" not in err
    assert cli.main(["up", "moon"]) == 2
    assert "target must be one of ['sim'], got 'moon'" in capsys.readouterr().err


def test_target_must_be_module_colon_function():
    with pytest.raises(ValueError, match="not 'module:function'"):
        cli.Command("bad", "help", "chains", "sim.chains.chains_command")


def test_help_lists_commands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, command in cli.COMMANDS.items():
        assert name in out
        assert command.help in out


def test_no_command_prints_usage_and_fails(capsys):
    assert cli.main([]) == 2
    assert "usage: dream-policy" in capsys.readouterr().err


def test_help_imports_no_heavy_module():
    code = (
        "import sys; from dream_policy.cli import main; main(['--help']); "
        "print(sorted(m for m in ('torch', 'mujoco', 'hydra', 'sim') if m in sys.modules))"
    )
    result = run_cli("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_python_dash_m_entry_point():
    result = run_cli("-m", "dream_policy", "--help")
    assert result.returncode == 0, result.stderr
    assert "chains" in result.stdout


def test_version_matches_package_xml(capsys):
    assert ET.parse(REPO / "package.xml").getroot().findtext("version") == __version__
    assert cli.main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out


def test_command_help_shows_config_and_syntax(capsys):
    assert cli.main(["chains", "--help"]) == 0
    out = capsys.readouterr().out
    assert "num_sequences: 1000" in out
    assert "out: chains.json" in out
    assert "key=value" in out
    assert "+key=value" in out


def test_train_help_with_a_mandatory_value_and_model_group(capsys):
    assert cli.main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "data: ???" in out and "model:" in out and "image_size: 64" in out


def test_train_model_is_a_config_group():
    tiny = cli.compose_config(cli.COMMANDS["train"], ["data=x"])
    assert tiny.model.vision.image_size == 64
    paper = cli.compose_config(cli.COMMANDS["train"], ["data=x", "model=paper", "model.dit.depth=3"])
    assert paper.model.backbone.width > tiny.model.backbone.width and paper.model.dit.depth == 3
    with pytest.raises(cli.UsageError, match="model"):
        cli.compose_config(cli.COMMANDS["train"], ["data=x", "model=nosuchmodel"])


@pytest.mark.parametrize("name", ["eval", "collect"])
def test_repo_configs_compose(name):
    config = cli.compose_config(cli.COMMANDS[name])
    assert config.seed == 0
    assert config.scene == "D"


def test_unknown_command_lists_valid_names(capsys):
    assert cli.main(["evaluate"]) == 2
    err = capsys.readouterr().err
    assert "'evaluate'" in err
    for name in cli.COMMANDS:
        assert name in err


@pytest.mark.parametrize(
    "override",
    ["nosuchkey=1", "nested.nosuchkey=1", "count", "count=[1", "=3", "--count=3"],
)
def test_bad_override_is_one_line_naming_it(probe, capsys, override):
    assert cli.main(["probe", override]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    key = override.lstrip("-").split("=")[0] or override
    assert key in err
    assert received == []


def test_unknown_key_lists_valid_keys(probe, capsys):
    assert cli.main(["probe", "cuont=3"]) == 2
    assert "count, name, nested, tags, exit_code" in capsys.readouterr().err


def test_config_dir_from_env(probe, capsys):
    assert cli.find_config_dir() == probe.resolve()
    assert cli.main(["probe", "--help"]) == 0
    assert "depth: 2" in capsys.readouterr().out


def test_missing_config_dir_names_where_it_looked(monkeypatch, tmp_path, capsys):
    missing = tmp_path / "nowhere"
    monkeypatch.setenv(cli.CONFIG_DIR_ENV, str(missing))
    assert cli.main(["chains"]) == 2
    assert str(missing) in capsys.readouterr().err


def test_default_config_dir_is_the_source_tree(monkeypatch):
    monkeypatch.delenv(cli.CONFIG_DIR_ENV, raising=False)
    candidates = cli.config_dir_candidates()
    assert candidates[0] == REPO / "configs"
    assert Path(sys.prefix) / "share" / "dream_policy" / "configs" in candidates
    assert cli.find_config_dir() == (REPO / "configs").resolve()


def test_target_receives_overridden_config(probe):
    overrides = ["count=3", "name=b", "nested.depth=5", "tags=[x,y]", "+extra=true"]
    assert cli.main(["probe", *overrides]) == 0
    (config,) = received
    assert config.count == 3
    assert config.name == "b"
    assert config.nested.depth == 5
    assert list(config.tags) == ["x", "y"]
    assert config.extra is True


def test_integer_result_is_the_exit_code(probe):
    assert cli.main(["probe", "exit_code=7"]) == 7
    assert len(received) == 1


def test_missing_target_function_is_named(probe, monkeypatch):
    monkeypatch.setitem(
        cli.COMMANDS, "probe", cli.Command("probe", "h", "probe", f"{__name__}:no_such_function")
    )
    with pytest.raises(ImportError, match="no_such_function"):
        cli.main(["probe"])
