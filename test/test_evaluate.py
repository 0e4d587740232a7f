"""The evaluator: metrics, shard merging, the chain protocol on the real env, and an end-to-end run."""

import json

import numpy as np
import pytest

from sim import evaluate as ev
from sim.chains import Chain
from sim.env import PlayTableEnv
from sim.policy import POLICIES

# CALVIN's first reference chain (docs/calvin.md).
STATE = {"led": 1, "lightbulb": 1, "slider": "left", "drawer": "open", "red_block": "slider_left",
         "blue_block": "table", "pink_block": "slider_right", "grasped": 0}
TASKS = ("rotate_blue_block_right", "move_slider_right", "lift_red_block_slider", "place_in_slider",
         "turn_off_lightbulb")
CHAIN = Chain(STATE, TASKS)
OTHER = Chain({**STATE, "led": 0}, ("open_drawer", "push_pink_block_left", "turn_on_led", "move_slider_left",
                                     "lift_blue_block_table"))


class IdlePolicy:
    """Holds still with the gripper open; counts calls."""

    def __init__(self) -> None:
        self.resets, self.steps, self.instructions, self.seeds = 0, 0, [], []

    def reset(self) -> None:
        self.resets += 1

    def step(self, obs, instruction):
        self.steps += 1
        self.instructions.append(instruction)
        return np.array([0, 0, 0, 0, 0, 0, 1.0])

    def seed(self, seed: int) -> None:
        self.seeds.append(seed)


class AfterKStepsOracle:
    """Reports ``task`` done on its ``k``-th check since the subtask's start snapshot changed."""

    def __init__(self, steps_needed: dict) -> None:
        self.steps_needed, self.start, self.calls = steps_needed, None, 0

    def succeeded(self, task, start, current) -> bool:
        if start is not self.start:
            self.start, self.calls = start, 0
        self.calls += 1
        return self.calls == self.steps_needed.get(task, -1)


def record(index, num_successes, tasks=TASKS):
    return {"index": index, "tasks": list(tasks), "num_successes": num_successes}


RECORDS = [record(0, 0), record(1, 2), record(2, 5), record(3, 1)]
CONFIG = {"policy": "idle", "policy_options": {}, "scene": "D", "ep_len": 5, "seed": 0, "shard": None}


@pytest.fixture(scope="module")
def env():
    env = PlayTableEnv("D", render=False)
    yield env
    env.close()


def test_metrics_from_records():
    m = ev.metrics_from_records(RECORDS)
    assert m["num_chains"] == 4
    assert m["avg_seq_len"] == pytest.approx(2.0)
    assert m["chain_sr"] == pytest.approx([0.75, 0.5, 0.25, 0.25, 0.25])
    # Attempts stop at the first failure: chain 0 tried TASKS[0] only, chain 1 tried three tasks.
    assert m["per_task"] == {TASKS[0]: [3, 4], TASKS[1]: [2, 3], TASKS[2]: [1, 2], TASKS[3]: [1, 1],
                             TASKS[4]: [1, 1]}


def test_metrics_need_records():
    with pytest.raises(ValueError, match="no chain records"):
        ev.metrics_from_records([])


def test_merged_shards_equal_unsharded():
    whole = ev.build_results(RECORDS, CONFIG)
    shards = [ev.build_results(RECORDS[i::2], {**CONFIG, "shard": f"{i}/2"}) for i in range(2)]
    merged = ev.merge_results(shards)
    assert merged["config"]["shard"] == ["0/2", "1/2"]
    assert {k: v for k, v in merged.items() if k != "config"} == {k: v for k, v in whole.items() if k != "config"}


def test_merge_dedupes_identical_and_rejects_conflicts():
    part = ev.build_results(RECORDS[:2], CONFIG)
    assert ev.merge_results([part, part])["num_chains"] == 2
    conflicting = ev.build_results([record(1, 3)], CONFIG)
    with pytest.raises(ValueError, match="chain 1 appears twice"):
        ev.merge_results([part, conflicting])
    with pytest.raises(ValueError, match="different 'ep_len'"):
        ev.merge_results([part, ev.build_results(RECORDS[2:], {**CONFIG, "ep_len": 360})])


def test_idle_policy_fails_first_subtask_and_stops(env):
    policy = IdlePolicy()
    result = ev.run_chain(env, policy, CHAIN, ev.TaskOracle(), ep_len=5, index=3)
    assert (result.index, result.successes, result.steps, result.frames) == (3, [False], [5], None)
    assert (policy.resets, policy.steps) == (1, 5)
    assert set(policy.instructions) == {ev.eval_instruction(TASKS[0])}
    assert result.record() == {"index": 3, "tasks": list(TASKS), "num_successes": 0, "steps": [5]}


def test_chain_stops_at_first_failure_and_counts_steps(env, monkeypatch):
    resets = []
    monkeypatch.setattr(env, "reset", lambda reset=env.reset, **kw: resets.append(1) or reset(**kw))
    policy = IdlePolicy()
    oracle = AfterKStepsOracle({TASKS[0]: 2, TASKS[1]: 3, TASKS[3]: 1})  # TASKS[2] never succeeds
    result = ev.run_chain(env, policy, CHAIN, oracle, ep_len=4)
    assert result.successes == [True, True, False]
    assert result.steps == [2, 3, 4]
    assert result.num_successes == 2
    assert (policy.resets, policy.steps, len(resets)) == (3, 9, 1)


def test_runner_seeds_policy_per_chain(monkeypatch):
    monkeypatch.setitem(POLICIES, "idle", f"{__name__}:IdlePolicy")
    runner = ev.ChainRunner(ev.RunSetup("idle", {}, "D", render=False, ep_len=1, seed=100, video_dir=None))
    try:
        runner((7, CHAIN, False))
        runner((2, OTHER, False))
    finally:
        runner.close()
    assert runner.policy.seeds == [107, 102]


def test_caption_writes_text_on_a_dark_band():
    frame = np.full((ev.VIDEO_SIZE, ev.VIDEO_SIZE, 3), 128, dtype=np.uint8)
    out = ev.caption(frame, "open the drawer")
    assert out.shape == frame.shape and out.dtype == np.uint8
    band = out[:15]
    assert (band == 0).any() and (band > 200).any()
    assert (out[-100:] == 128).all()


def test_policy_options_and_chain_selection(tmp_path):
    assert ev.policy_options({"policy": "expert", "ckpt": None, "scene": "B"}) == {"scene": "B"}
    assert ev.policy_options({"policy": "checkpoint", "ckpt": "a.pt"}) == {"ckpt": "a.pt"}
    assert ev.policy_options({"policy": "checkpoint", "ckpt": "a.pt", "guidance": 2, "ddim_steps": 20,
                              "noise_scale": 0}) == {"ckpt": "a.pt", "guidance": 2.0, "ddim_steps": 20,
                                                     "noise_scale": 0.0}
    assert ev.policy_options({"policy": "checkpoint", "ckpt": "a.pt", "gripper_hold": 3,
                              "stall_steps": 8}) == {"ckpt": "a.pt", "gripper_hold": 3, "stall_steps": 8}
    with pytest.raises(ValueError, match="needs ckpt"):
        ev.policy_options({"policy": "checkpoint", "ckpt": None})
    path = tmp_path / "chains.json"
    path.write_text(json.dumps([c.to_json() for c in (CHAIN, OTHER, CHAIN)]))
    assert ev.select_chains(3, "1/2", str(path)) == [(1, OTHER)]
    assert ev.select_chains(2, None, str(path)) == [(0, CHAIN), (1, OTHER)]
    with pytest.raises(ValueError, match="num_sequences"):
        ev.select_chains(4, None, str(path))
    # an offset keeps each chain's index (its rollout seed), sharded or not
    assert ev.select_chains(2, None, str(path), first=1) == [(1, OTHER), (2, CHAIN)]
    assert ev.select_chains(2, "1/2", str(path), first=1) == [(2, CHAIN)]
    with pytest.raises(ValueError, match="num_sequences must be in 1..1"):
        ev.select_chains(2, None, str(path), first=2)
    with pytest.raises(ValueError, match="first must be in 0..2"):
        ev.select_chains(1, None, str(path), first=3)


def test_eval_command_merges_shard_dirs(tmp_path, capsys):
    dirs = []
    for i in range(2):
        dirs.append(tmp_path / f"shard{i}")
        ev.write_results(ev.build_results(RECORDS[i::2], {**CONFIG, "shard": f"{i}/2"}), dirs[-1])
    out = tmp_path / "merged"
    ev.eval_command({"merge": [str(d) for d in dirs], "out_dir": str(out)})
    merged = json.loads((out / ev.RESULTS_FILE).read_text())
    assert merged["num_chains"] == 4 and merged["avg_seq_len"] == pytest.approx(2.0)
    assert (out / ev.PLOT_FILE).stat().st_size > 0
    printed = capsys.readouterr().out
    assert "avg_seq_len: 2.000" in printed and "75.0%" in printed and TASKS[0] in printed


def test_evaluate_end_to_end_in_two_workers(tmp_path, monkeypatch):
    monkeypatch.setitem(POLICIES, "idle", f"{__name__}:IdlePolicy")
    results = ev.evaluate([(5, OTHER), (2, CHAIN)], "idle", {}, scene="D", workers=2, ep_len=3, seed=0,
                          num_videos=1, out_dir=tmp_path, render=True)
    saved = json.loads((tmp_path / ev.RESULTS_FILE).read_text())
    assert saved == results
    assert [c["index"] for c in saved["chains"]] == [2, 5]
    assert saved["avg_seq_len"] == 0.0 and saved["chain_sr"] == [0.0] * 5
    assert saved["per_task"] == {TASKS[0]: [0, 1], OTHER.tasks[0]: [0, 1]}
    assert (tmp_path / ev.PLOT_FILE).stat().st_size > 0
    video = tmp_path / ev.VIDEO_DIR / "chain_0002.mp4"
    assert saved["videos"] == [str(video)] and video.stat().st_size > 0


class DescribedPolicy(IdlePolicy):
    """An idle policy that says what it resolved its options to."""

    def describe(self) -> dict:
        return {"cache": "ckpt/cache_schedule.json", "cache_budget": 2}


def test_what_the_policy_resolved_to_is_recorded_once_and_printed(tmp_path, monkeypatch):
    monkeypatch.setitem(POLICIES, "described", f"{__name__}:DescribedPolicy")
    results = ev.evaluate([(5, OTHER), (2, CHAIN)], "described", {}, scene="D", workers=1, ep_len=2, seed=0,
                          out_dir=tmp_path, render=False)
    info = {"cache": "ckpt/cache_schedule.json", "cache_budget": 2}
    assert results["config"][ev.POLICY_INFO] == info
    assert all(ev.POLICY_INFO not in c for c in results["chains"])  # not repeated per chain
    assert json.loads((tmp_path / ev.RESULTS_FILE).read_text())["config"][ev.POLICY_INFO] == info
    assert "policy: cache=ckpt/cache_schedule.json, cache_budget=2" in ev.format_results(results)
    assert "policy:" not in ev.format_results({**results, "config": CONFIG})  # policies without describe()


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path, monkeypatch):
    monkeypatch.setitem(POLICIES, "idle", f"{__name__}:IdlePolicy")
    chains = [(5, OTHER), (2, CHAIN)]
    full = ev.evaluate(chains, "idle", {}, scene="D", workers=1, ep_len=2, seed=0, out_dir=tmp_path / "full",
                       render=False)
    log = tmp_path / "full" / ev.PROGRESS_FILE
    lines = log.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["settings"] == full["config"]
    # as if killed after the first chain: the log keeps the settings and one record
    part = tmp_path / "part"
    part.mkdir()
    (part / ev.PROGRESS_FILE).write_text("\n".join(lines[:2]) + "\n")
    ran = []

    def replay(setup, jobs):  # the full run's records for the chains asked for, noting which were run
        ran.extend(index for index, _, _ in jobs)
        return iter([(r, None) for r in full["chains"] if r["index"] in ran])

    monkeypatch.setattr(ev, "_in_process", replay)
    resumed = ev.evaluate(chains, "idle", {}, scene="D", workers=1, ep_len=2, seed=0, out_dir=part,
                          render=False, resume=True)
    assert ran == [i for i, _ in chains if i != json.loads(lines[1])["record"]["index"]]  # only the missing one
    assert resumed["chains"] == full["chains"] and resumed["avg_seq_len"] == full["avg_seq_len"]
    ran.clear()
    again = ev.evaluate(chains, "idle", {}, scene="D", workers=1, ep_len=2, seed=0, out_dir=part,
                        render=False, resume=True)
    assert ran == [] and again["chains"] == full["chains"]  # everything was there: nothing runs
    with pytest.raises(ValueError, match="ep_len"):
        ev.evaluate(chains, "idle", {}, scene="D", workers=1, ep_len=3, seed=0, out_dir=part, render=False,
                    resume=True)


# ------------------------------------------------------------------------------------------ lockstep

class StepCounter:
    """A batched stepper that records how many policies each call steps."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, policies, observations, instructions):
        self.sizes.append(len(policies))
        return [p.step(o, i) for p, o, i in zip(policies, observations, instructions, strict=True)]


def test_lockstep_runs_each_chain_as_run_chain_does(env):
    """Three chains over two slots: the same successes and step counts as run_chain, one call per step
    for all running slots, and a freed slot takes the next chain."""
    needed = [{TASKS[0]: 2, TASKS[1]: 3}, {OTHER.tasks[0]: 1}, {TASKS[0]: 4, TASKS[1]: 1, TASKS[2]: 2, TASKS[3]: 1,
                                                                 TASKS[4]: 3}]
    jobs = [(0, CHAIN, False), (1, OTHER, False), (2, CHAIN, False)]
    alone = [ev.run_chain(env, IdlePolicy(), chain, AfterKStepsOracle(n), ep_len=4, index=i).record()
             for (i, chain, _), n in zip(jobs, needed, strict=True)]
    second = PlayTableEnv("D", render=False)
    try:
        oracles = [AfterKStepsOracle({}), AfterKStepsOracle({})]
        slots = [ev.Slot(e, o, IdlePolicy()) for e, o in zip((env, second), oracles, strict=True)]
        started = []

        def start(slot, index):  # each chain gets its own oracle's success plan, as in the runs above
            slot.oracle.steps_needed = needed[index]
            started.append((slots.index(slot), index))

        counter = StepCounter()
        results = list(ev.run_lockstep(slots, jobs, 4, start, lambda i, c, r: ev.ChainResult(i, c.tasks),
                                       step_batch=counter))
    finally:
        second.close()
    assert sorted((r.record() for r in results), key=lambda r: r["index"]) == alone
    assert [r.index for r in results] == [1, 0, 2]  # chain 1 ends first (one step), then 0
    assert started == [(0, 0), (1, 1), (1, 2)]  # chain 2 took chain 1's slot
    assert sum(counter.sizes) == sum(sum(r.steps) for r in results) and max(counter.sizes) == 2
    assert sum(p.resets for p in (s.policy for s in slots)) == sum(len(r.steps) for r in results)


def test_lockstep_needs_slots_and_steps():
    with pytest.raises(ValueError, match="ep_len"):
        next(ev.run_lockstep([ev.Slot(None, None, IdlePolicy())], [], 0, None, None))
    with pytest.raises(ValueError, match="slot"):
        next(ev.run_lockstep([], [], 5, None, None))


@pytest.mark.slow
def test_the_expert_scores_the_same_in_lockstep(tmp_path):
    """The scripted expert through the whole evaluator: batch=3 over 4 chains gives batch=1's records."""
    chains = ev.select_chains(4, None)
    runs = [ev.evaluate(chains, "expert", {"scene": "D"}, scene="D", workers=1, ep_len=150, seed=0,
                        out_dir=tmp_path / f"b{batch}", render=False, batch=batch) for batch in (1, 3)]
    assert runs[0]["chains"] == runs[1]["chains"] and runs[0]["avg_seq_len"] > 1
    assert "batch" not in runs[0]["config"] and runs[1]["config"]["batch"] == 3
    with pytest.raises(ValueError, match="batch must be an integer >= 1"):
        ev.evaluate(chains, "expert", {"scene": "D"}, workers=1, out_dir=tmp_path / "bad", batch=0)


class BrokenPolicy(IdlePolicy):
    def step(self, obs, instruction):
        raise RuntimeError("the network is on fire")


def test_lockstep_workers_report_each_chain_and_name_a_failure(tmp_path, monkeypatch):
    monkeypatch.setitem(POLICIES, "idle", f"{__name__}:IdlePolicy")
    monkeypatch.setitem(POLICIES, "broken", f"{__name__}:BrokenPolicy")
    chains = [(5, OTHER), (2, CHAIN), (7, OTHER)]
    one = ev.evaluate(chains, "idle", {}, workers=1, ep_len=3, out_dir=tmp_path / "one", render=False)
    two = ev.evaluate(chains, "idle", {}, workers=2, ep_len=3, out_dir=tmp_path / "two", render=False, batch=2)
    assert two["chains"] == one["chains"] and two["config"] == {**one["config"], "batch": 2}
    assert len((tmp_path / "two" / ev.PROGRESS_FILE).read_text().splitlines()) == 4  # settings + each chain
    with pytest.raises(ValueError, match="batch"):  # rollouts part with the batch: a log is resumed at its own
        ev.evaluate(chains, "idle", {}, workers=1, ep_len=3, out_dir=tmp_path / "two", render=False, resume=True)
    with pytest.raises(RuntimeError, match="the network is on fire"):
        ev.evaluate(chains, "broken", {}, workers=2, ep_len=3, out_dir=tmp_path / "broken", render=False, batch=2)
