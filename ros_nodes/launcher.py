"""``dream-policy up sim``: the sim node and the policy node as two processes talking ROS 2 over DDS.

Both children get the same ``CYCLONEDDS_URI`` (a loopback config unless one is set) and ``ROS_DOMAIN_ID``;
their output is printed line by line, prefixed with the node's name. This process joins the same domain:
it publishes the instruction (transient_local, so the policy node gets it whenever it subscribes) and
prints a status line from the policy node's diagnostics topic every ``status_period_s``. Ctrl-C / SIGTERM,
``duration_s`` or a node that exits stop both: the policy node first (its safe stop publishes a hold while
the sim still listens), then the sim node; each gets SIGINT, and SIGKILL after ``STOP_TIMEOUT_S``.
On Linux the nodes also get SIGTERM (their clean shutdown) when this process dies without stopping them,
e.g. from SIGKILL (``parent_death_signal``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ros_nodes.contract import ContractError, load_contract
from ros_nodes.lifecycle import stop_on_signals
from ros_nodes.policy_node import (
    CLOCK_TOPIC,
    DEFAULT_CONTRACT,
    PolicyNodeConfig,
    missing_schedule,
    resolve_name,
)
from ros_nodes.sim_node import transport_qos
from ros_nodes.transport.base import ros_typestore

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("sim",)
POLICIES = ("expert", "checkpoint")
STOP_TIMEOUT_S = 15.0
POLL_S = 0.2
POLICY_NODE = PolicyNodeConfig.node_name
STRING = "std_msgs/msg/String"
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class LaunchError(ValueError):
    """A bad setting of ``up``, named with the value that is wrong."""


def node_env(domain_id: int | None = None) -> dict[str, str]:
    """The environment of the node processes.

    The loopback DDS config unless CYCLONEDDS_URI is set, the domain (``domain_id``, else
    ROS_DOMAIN_ID, else 0), EGL rendering, unbuffered output.
    """
    from ros_nodes.transport.dds import loopback_config

    env = dict(os.environ)
    env.setdefault("CYCLONEDDS_URI", loopback_config())
    env["ROS_DOMAIN_ID"] = str(domain_id) if domain_id is not None else env.get("ROS_DOMAIN_ID", "0")
    env.setdefault("MUJOCO_GL", "egl")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _libc_prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` on Linux; None elsewhere or when libc cannot be loaded."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    prctl = libc.prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


def parent_death_signal(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None] | None:
    """A Popen ``preexec_fn`` that has the child get ``sig`` when this process dies; None off Linux.

    It sets PR_SET_PDEATHSIG in the child between fork and exec, so a SIGKILLed launcher leaves no
    nodes behind. The kernel sends the signal when the thread that started the child ends, so start
    children from a thread that lives as long as they should (the main thread here). libc is loaded here,
    before the fork: the child only makes the calls. A parent that died before the child set the signal
    is caught by comparing the child's parent pid with the one it was forked from.
    """
    prctl = _libc_prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def set_parent_death_signal() -> None:  # in the child, before exec
        signal.signal(sig, signal.SIG_DFL)  # not this process's handler, which would swallow it before exec
        if prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return set_parent_death_signal


class NodeProcess:
    """``python -m <module> <args>`` in its own session.

    Signals reach it only from here, so the launcher decides the order of shutdown, and, on Linux,
    SIGTERM when this process dies (``parent_death_signal``); its output lines go to ``sink`` prefixed
    ``[name]``, the last ones are kept in ``tail``.
    """

    def __init__(self, name: str, module: str, args: Sequence[str], env: dict[str, str],
                 sink: Callable[[str], None] = print) -> None:
        self.name, self._sink = name, sink
        self.tail: deque[str] = deque(maxlen=50)
        # preexec_fn with threads running (DDS, output readers) is safe here: CPython reinitialises its own
        # locks in the child first, and parent_death_signal's function only makes system calls
        self.process = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=env, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        start_new_session=True,
                                        preexec_fn=parent_death_signal())  # noqa: PLW1509
        self._reader = threading.Thread(target=self._read, name=f"{name}-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.tail.append(line.rstrip())
            self._sink(f"[{self.name}] {line.rstrip()}")

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGINT (the node's clean shutdown), SIGKILL if it is still running after ``timeout_s``.

        Returns the exit code.
        """
        if self.running:
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._sink(f"[{self.name}] did not stop within {timeout_s:g} s: killed")
            self.process.kill()
            self.process.wait()
        self._reader.join(2.0)
        return self.process.returncode


def sim_args(contract: Path, scene: str = "D", seed: int = 0, realtime: bool = True,
             real_time_factor: float = 1.0) -> list[str]:
    """Arguments of ``ros_nodes.sim_node`` over DDS."""
    return ["--contract", str(contract), "--scene", scene, "--seed", str(seed), "--transport", "dds",
            "--realtime" if realtime else "--no-realtime", "--real-time-factor", str(real_time_factor)]


def policy_args(contract: Path, policy: str, ckpt: Path | None = None, scene: str = "D",
                diagnostics_period_s: float = PolicyNodeConfig.diagnostics_period_s,
                cache: str = "auto") -> list[str]:
    """Arguments of ``ros_nodes.policy_node`` over DDS (sim time with the sim contract)."""
    args = ["--contract", str(contract), "--policy", policy, "--scene", scene, "--transport", "dds",
            "--node-name", POLICY_NODE, "--diagnostics-period", str(diagnostics_period_s)]
    return args + (["--ckpt", str(ckpt), "--cache", str(cache)] if ckpt is not None else [])


def status_line(diagnostics: dict[str, Any] | None, elapsed_s: float) -> str:
    """One line of the policy node's newest diagnostics."""
    if diagnostics is None:
        return f"[up] {elapsed_s:5.1f} s: no diagnostics from the policy node yet"
    loop, counts = diagnostics["loop"], diagnostics["counts"]
    p50 = loop["inference_p50_s"]
    line = (f"[up] {elapsed_s:5.1f} s: sim time {_seconds(diagnostics['time'])}, "
            f"task {diagnostics['task']!r}, "
            f"{'running' if diagnostics['running'] else 'idle'}, last {diagnostics['last_decision']}, "
            f"ticks {loop['ticks']}, chunks {counts.get('chunks', 0)}, "
            f"inference p50 {'-' if p50 is None else f'{p50 * 1e3:.0f} ms'}")
    return line + (f", last rejection: {diagnostics['last_rejection']}" if diagnostics["last_rejection"]
                   else "")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def check(target: str, policy: str, ckpt: str | None, contract: str | None, duration_s: float | None,
          cache: str = "auto") -> Path:
    """The contract path of valid settings; a LaunchError names the first bad one."""
    if target not in TARGETS:
        raise LaunchError(f"target must be one of {list(TARGETS)}, got {target!r}")
    if policy not in POLICIES:
        raise LaunchError(f"policy must be one of {list(POLICIES)}, got {policy!r}")
    if policy == "checkpoint" and not (ckpt and Path(ckpt).is_dir()):
        raise LaunchError(f"policy=checkpoint needs ckpt=FOLDER (a dream-policy train checkpoint); {ckpt!r} "
                          "is not a folder")
    if policy == "checkpoint" and missing_schedule(cache):
        raise LaunchError(f"cache={cache}: no such schedule file (auto, none or a cache schedule JSON)")
    if duration_s is not None and not (isinstance(duration_s, (int, float)) and 0 < duration_s < math.inf):
        raise LaunchError("duration_s must be a number of seconds > 0 (or null: until Ctrl-C), "
                          f"got {duration_s!r}")
    path = Path(contract) if contract else DEFAULT_CONTRACT
    try:
        load_contract(path)
    except (ContractError, OSError) as error:
        raise LaunchError(f"bad contract: {' '.join(str(error).split())}") from None
    return path


class Launch:
    """The two node processes and this process's DDS participant (instruction out, diagnostics in)."""

    def __init__(self, contract: Path, policy: str, ckpt: Path | None, scene: str, seed: int, realtime: bool,
                 domain_id: int | None, sink: Callable[[str], None] = print,
                 real_time_factor: float = 1.0, cache: str = "auto") -> None:
        from ros_nodes.transport.dds import DdsTransport

        env = node_env(domain_id)
        for key in ("CYCLONEDDS_URI", "ROS_DOMAIN_ID"):  # this process joins the same domain
            os.environ[key] = env[key]
        self.contract = load_contract(contract)
        self.diagnostics: dict[str, Any] | None = None
        self.transport = DdsTransport("dream_policy_up")
        self.transport.create_subscription(resolve_name(PolicyNodeConfig.diagnostics_topic, POLICY_NODE),
                                           STRING, self._on_diagnostics)
        self.nodes = [NodeProcess("sim", "ros_nodes.sim_node",
                                  sim_args(contract, scene, seed, realtime, real_time_factor), env, sink),
                      NodeProcess("policy", "ros_nodes.policy_node",
                                  policy_args(contract, policy, ckpt, scene, cache=cache), env, sink)]
        self._instruction = None

    def _on_diagnostics(self, msg: Any) -> None:
        self.diagnostics = json.loads(msg.data)

    def instruct(self, text: str) -> None:
        """Publish the instruction, latched: the policy node gets it whenever it subscribes."""
        instruction = self.contract.instruction
        if self._instruction is None:
            self._instruction = self.transport.create_publisher(
                instruction.topic, STRING, transport_qos(instruction.qos, instruction.topic))
        self._instruction.publish(ros_typestore().types[STRING](data=text))

    def exited(self) -> list[NodeProcess]:
        return [node for node in self.nodes if not node.running]

    def stop(self) -> list[int]:
        """Stop the policy node, then the sim node, then leave the domain; the exit codes, sim first."""
        codes = [node.stop() for node in reversed(self.nodes)][::-1]
        self.transport.close()
        return codes


def up_command(config: Any) -> int:
    """``dream-policy up sim``: run until Ctrl-C or ``duration_s``; 0 when both nodes stopped cleanly."""
    from dream_policy.cli import UsageError

    try:
        contract = check(config.target, config.policy, config.ckpt, config.contract_file, config.duration_s,
                         str(config.get("cache", "auto")))
    except LaunchError as error:
        raise UsageError(str(error)) from None
    stop = threading.Event()
    stop_on_signals(stop)
    ckpt = Path(config.ckpt) if config.policy == "checkpoint" else None
    launch = Launch(contract, config.policy, ckpt, config.scene, config.seed, config.realtime,
                    config.domain_id, real_time_factor=float(config.get("real_time_factor", 1.0)),
                    cache=str(config.get("cache", "auto")))
    print(f"[up] sim node + policy node ({config.policy}) on ROS_DOMAIN_ID {os.environ['ROS_DOMAIN_ID']}, "
          f"{CLOCK_TOPIC} from the sim; Ctrl-C stops both", flush=True)
    if config.instruction:
        launch.instruct(config.instruction)
    started = time.monotonic()
    deadline = math.inf if config.duration_s is None else started + config.duration_s
    next_status = started + config.status_period_s
    try:
        while not stop.wait(POLL_S) and time.monotonic() < deadline and not launch.exited():
            if time.monotonic() >= next_status:
                print(status_line(launch.diagnostics, time.monotonic() - started), flush=True)
                next_status += config.status_period_s
    finally:
        early = [node.name for node in launch.exited()]
        codes = launch.stop()
    if early:
        print(f"[up] the {' and '.join(early)} node exited on its own", flush=True)
    print(f"[up] stopped: sim exit {codes[0]}, policy exit {codes[1]}", flush=True)
    return 0 if not early and codes == [0, 0] else 1
