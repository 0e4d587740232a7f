"""CALVIN's evaluation chains: states, exact sampling, file format and sharding."""

import json
from collections import Counter

import numpy as np
import pytest

from sim import chains
from sim.chains import (
    Chain,
    chains_command,
    generate_chains,
    is_valid_chain,
    next_states,
    read_chains,
    shard,
    symbolic_initial_states,
    task_category,
    task_names,
    write_chains,
)

FIRST_CALVIN_CHAIN = Chain(
    initial_state={
        "led": 1,
        "lightbulb": 1,
        "slider": "left",
        "drawer": "open",
        "red_block": "slider_left",
        "blue_block": "table",
        "pink_block": "slider_right",
        "grasped": 0,
    },
    tasks=(
        "rotate_blue_block_right",
        "move_slider_right",
        "lift_red_block_slider",
        "place_in_slider",
        "turn_off_lightbulb",
    ),
)


def calvin_sequences_for_state(state: dict, count: int, seed: int) -> list[tuple[str, ...]]:
    """CALVIN's per-state loop as written there (global RNG, one ``np.random.choice`` per try)."""
    saved = np.random.get_state()
    np.random.seed(seed)
    found = []
    try:
        while len(found) < count:
            tasks = np.random.choice(list(task_names()), size=5, replace=False)
            if is_valid_chain(state, tasks):
                found.append(tuple(str(t) for t in tasks))
    finally:
        np.random.set_state(saved)
    return found


@pytest.fixture(scope="module")
def calvin_chains() -> list[Chain]:
    return generate_chains(1000)


def test_192_initial_states_in_calvin_order():
    states = symbolic_initial_states()
    assert len(states) == 192
    assert len({tuple(s.items()) for s in states}) == 192
    assert list(states[0]) == ["led", "lightbulb", "slider", "drawer", "red_block", "blue_block",
                               "pink_block", "grasped"]
    assert states[0] == {"led": 0, "lightbulb": 0, "slider": "right", "drawer": "closed",
                         "red_block": "table", "blue_block": "table", "pink_block": "slider_right",
                         "grasped": 0}
    for s in states:
        blocks = [s["red_block"], s["blue_block"], s["pink_block"]]
        assert blocks.count("table") in (1, 2)
        assert blocks.count("slider_left") <= 1 and blocks.count("slider_right") <= 1


def test_task_names_and_categories():
    names = task_names()
    assert len(names) == 34 and names[0] == "rotate_red_block_right"
    assert task_category("open_drawer") == task_category("close_drawer")
    with pytest.raises(ValueError, match="fly_away"):
        task_category("fly_away")


def test_list_condition_means_any_of():
    state = dict(symbolic_initial_states()[0], drawer="open", blue_block="slider_left",
                 pink_block="slider_right")
    assert next_states(state, "push_into_drawer") == [dict(state, red_block="drawer")]
    assert next_states(dict(state, blue_block="table"), "push_into_drawer") == []


def test_bulk_sampler_matches_calvin_loop():
    counts = [0] * 192
    for i in (0, 77, 191):
        counts[i] = 2
    sampled = chains._sample_task_sequences(counts)
    states = symbolic_initial_states()
    for i in (0, 77, 191):
        assert sampled[i] == calvin_sequences_for_state(states[i], 2, i), i
    assert all(not s for i, s in enumerate(sampled) if i not in (0, 77, 191))


def test_bulk_sampler_when_walks_do_not_merge_within_a_block(monkeypatch):
    # Tiny blocks: most re-walks cross into the next block, exercising that path.
    monkeypatch.setattr(chains, "BLOCK", 256)
    monkeypatch.setattr(chains, "MAX_STREAM_DRAWS", 1 << 16)
    counts = [0] * 192
    counts[3] = 1
    assert chains._sample_task_sequences(counts)[3] == calvin_sequences_for_state(
        symbolic_initial_states()[3], 1, 3)


@pytest.mark.slow
def test_first_chain_is_calvins(calvin_chains):
    assert len(calvin_chains) == 1000
    assert calvin_chains[0] == FIRST_CALVIN_CHAIN


@pytest.mark.slow
def test_chains_per_state_follow_array_split(calvin_chains):
    per_state = Counter(tuple(c.initial_state.values()) for c in calvin_chains)
    states = symbolic_initial_states()
    # array_split(range(1000), 192): the first 1000 % 192 = 40 states get 6 chains, the rest 5.
    assert [per_state[tuple(s.values())] for s in states] == [6] * 40 + [5] * 152


@pytest.mark.slow
def test_every_chain_is_valid(calvin_chains):
    for chain in calvin_chains:
        assert is_valid_chain(chain.initial_state, chain.tasks), chain
        assert len({task_category(t) for t in chain.tasks}) == 5


def test_a_smaller_draw_is_a_subset_in_another_order(calvin_chains):
    # why `eval first=100` exists: the chains of get_sequences(300) are among the 1000, but its 100-299
    # are not CALVIN's chains 100-299
    fewer = generate_chains(300)
    key = [json.dumps(c.to_json(), sort_keys=True) for c in calvin_chains]
    assert {json.dumps(c.to_json(), sort_keys=True) for c in fewer} <= set(key)
    assert fewer[100:] != calvin_chains[100:300]


def test_generation_is_deterministic_and_leaves_global_rng_alone():
    np.random.seed(123)
    before = np.random.get_state()
    first = generate_chains(12)
    after = np.random.get_state()
    assert before[0] == after[0] and np.array_equal(before[1], after[1]) and before[2:] == after[2:]
    assert generate_chains(12) == first
    assert len(first) == 12


def test_num_sequences_must_be_positive():
    with pytest.raises(ValueError, match="num_sequences"):
        generate_chains(0)


def test_json_round_trip(tmp_path):
    path = tmp_path / "sub" / "chains.json"
    written = write_chains(path, 6)
    assert read_chains(path) == written
    raw = json.loads(path.read_text())
    assert raw[0] == written[0].to_json()
    assert all(type(v) in (int, str) for entry in raw for v in entry["initial_state"].values())
    assert Chain.from_json(FIRST_CALVIN_CHAIN.to_json()) == FIRST_CALVIN_CHAIN


def test_chain_accepts_numpy_values_and_stores_plain_ones():
    state = {k: np.int64(v) if isinstance(v, int) else np.str_(v)
             for k, v in FIRST_CALVIN_CHAIN.initial_state.items()}
    chain = Chain(state, tuple(np.array(FIRST_CALVIN_CHAIN.tasks)))
    assert chain == FIRST_CALVIN_CHAIN
    assert json.dumps(chain.to_json()) == json.dumps(FIRST_CALVIN_CHAIN.to_json())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "chains.json"),
        ('{"a": 1}', "JSON list"),
        ('[{"tasks": []}]', "chain 0"),
        ('[{"initial_state": {}, "tasks": []}]', "missing key"),
        (json.dumps([dict(FIRST_CALVIN_CHAIN.to_json(), tasks=["open_drawer"])]), "5 tasks"),
        (json.dumps([dict(FIRST_CALVIN_CHAIN.to_json(), tasks=["fly"] * 5)]), "fly"),
    ],
)
def test_read_chains_rejects_malformed_files(tmp_path, content, message):
    path = tmp_path / "chains.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        read_chains(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_shards_cover_every_chain_once(n):
    items = [FIRST_CALVIN_CHAIN] * 20
    indices = [i for k in range(n) for i, _ in shard(items, f"{k}/{n}")]
    assert sorted(indices) == list(range(20))
    assert [i for i, _ in shard(items, f"{n - 1}/{n}")] == list(range(20))[n - 1 :: n]


@pytest.mark.parametrize("spec", ["3/3", "-1/2", "0/0", "a/b", "1", "1/2/3"])
def test_bad_shard_spec(spec):
    with pytest.raises(ValueError, match=spec):
        shard([FIRST_CALVIN_CHAIN], spec)


def test_chains_command(tmp_path, capsys):
    out = tmp_path / "chains.json"
    chains_command({"num_sequences": 3, "out": str(out)})
    assert len(read_chains(out)) == 3
    printed = capsys.readouterr().out
    assert "3 chains" in printed and str(out) in printed
