"""``dream-policy up`` leaves no node processes behind when it is killed hard: a parent that starts two node
processes as the launcher does (NodeProcess) is SIGKILLed, and both exit within seconds."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ros_nodes.launcher import parent_death_signal

ROOT = Path(__file__).resolve().parents[1]
# The parent: two "nodes" started by NodeProcess (`python -m timeit` runs its statement once: two minutes of
# sleep), and, as a control, one child started without the launcher's helper; it prints their pids and waits.
PARENT = """
import os, subprocess, sys, time
from ros_nodes.launcher import NodeProcess
sleep = "import time; time.sleep(120)"
nodes = [NodeProcess(name, "timeit", ["-n", "1", "-r", "1", sleep], dict(os.environ), sink=lambda line: None)
         for name in ("sim", "policy")]
plain = subprocess.Popen([sys.executable, "-c", sleep], start_new_session=True)
print("PIDS", *[node.process.pid for node in nodes], plain.pid, flush=True)
time.sleep(120)
"""


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (an exited child that nobody reaped yet is a zombie: not running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def read_line(process: subprocess.Popen, timeout_s: float) -> str:
    ready, _, _ = select.select([process.stdout], [], [], timeout_s)
    assert ready, f"no output from the parent within {timeout_s} s"
    return process.stdout.readline()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_node_processes_exit_when_the_launcher_is_killed():
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "PYTHONUNBUFFERED": "1"}
    parent = subprocess.Popen([sys.executable, "-c", PARENT], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        line = read_line(parent, 60)
        assert line.startswith("PIDS "), line
        pids = [int(pid) for pid in line.split()[1:]]
        *nodes, plain = pids
        assert all(alive(pid) for pid in pids)
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 5
        while any(alive(pid) for pid in nodes) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(pid) for pid in nodes), "node processes outlived the killed launcher"
        assert alive(plain)  # the control: a child started without the helper keeps running
    finally:
        parent.kill()
        parent.wait()
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_the_helper_is_linux_only(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert parent_death_signal() is None


def test_sim_args_carry_the_real_time_factor():
    from pathlib import Path

    from ros_nodes.launcher import sim_args

    args = sim_args(Path("c.yaml"), "D", 3, True, 0.5)
    assert args[args.index("--real-time-factor") + 1] == "0.5" and "--realtime" in args


def test_sim_node_refuses_a_non_positive_real_time_factor(capsys):
    import pytest

    from ros_nodes.sim_node import main

    with pytest.raises(SystemExit):
        main(["--real-time-factor", "0", "--transport", "dds"])
    assert "--real-time-factor must be > 0" in capsys.readouterr().err


def test_up_passes_the_cache_to_the_policy_node_and_names_a_missing_schedule(tmp_path):
    from ros_nodes.launcher import DEFAULT_CONTRACT, LaunchError, check, policy_args

    args = policy_args(Path("c.yaml"), "checkpoint", Path("ckpt"), cache="none")
    assert args[args.index("--ckpt") + 1] == "ckpt" and args[args.index("--cache") + 1] == "none"
    assert "--cache" not in policy_args(Path("c.yaml"), "expert")
    assert check("sim", "checkpoint", str(tmp_path), None, None, "auto") == DEFAULT_CONTRACT
    with pytest.raises(LaunchError, match="cache=.*nothing.json: no such schedule file"):
        check("sim", "checkpoint", str(tmp_path), None, None, str(tmp_path / "nothing.json"))
