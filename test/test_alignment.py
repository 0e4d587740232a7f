"""StreamAligner on hand-made timelines: hold / asof / drop, the stale gate, buffers, counts."""

from __future__ import annotations

import numpy as np
import pytest

from ros_nodes.alignment import Aligned, Rejected, StreamAligner, StreamConfig
from ros_nodes.types import Sample


def sample(stamp: float) -> Sample:
    """A sample whose value is its own stamp, so a test can see which one was chosen."""
    return Sample(stamp, np.array([stamp]))


def run(aligner: StreamAligner, messages: list[tuple[float, str, float]], ticks: np.ndarray
        ) -> list[Aligned | Rejected]:
    """Deliver (arrival, stream, stamp) messages in arrival order, observing at each tick."""
    messages = sorted(messages)
    results, m = [], 0
    for now in ticks:
        while m < len(messages) and messages[m][0] <= now:
            _, stream, stamp = messages[m]
            aligner.push(stream, sample(stamp))
            m += 1
        results.append(aligner.observation(float(now)))
    return results


def camera_and_joints(camera_until: float = 2.0) -> list[tuple[float, str, float]]:
    """A 15 Hz camera arriving 30 ms after its stamp and 100 Hz joint states arriving 2 ms after theirs."""
    camera = [(k / 15 + 0.03, "rgb_static", k / 15) for k in range(31) if k / 15 <= camera_until]
    joints = [(j / 100 + 0.002, "robot_obs", j / 100) for j in range(201)]
    return camera + joints


def test_camera_15hz_joints_100hz_at_30hz_ticks():
    aligner = StreamAligner([StreamConfig("rgb_static", "hold"), StreamConfig("robot_obs", "asof", tolerance_s=0.01)],
                            reference="rgb_static")
    ticks = np.arange(3, 60) / 30  # 0.1 s .. 1.97 s
    results = run(aligner, camera_and_joints(), ticks)
    assert all(isinstance(r, Aligned) for r in results)
    joint_stamps = np.arange(201) / 100
    for now, obs in zip(ticks, results):
        camera = max(k / 15 for k in range(31) if k / 15 + 0.03 <= now)  # newest camera frame delivered
        joint = joint_stamps[joint_stamps <= camera + 1e-9].max()  # as of the camera frame, never after
        assert obs.stamp == camera and obs.stamps["rgb_static"] == camera
        assert obs.stamps["robot_obs"] == joint and obs.values["robot_obs"][0] == joint
        assert 0 <= camera - joint <= 0.01 + 1e-9
    assert aligner.counts() == {"aligned": len(ticks)}


def test_drop_camera_gives_each_frame_once_at_30hz_ticks():
    aligner = StreamAligner([StreamConfig("rgb_static", "drop"), StreamConfig("robot_obs", "hold")],
                            reference="rgb_static")
    ticks = np.arange(3, 60) / 30
    results = run(aligner, camera_and_joints(), ticks)
    frames = [r.stamps["rgb_static"] for r in results if isinstance(r, Aligned)]
    assert frames == sorted(set(frames)) and len(frames) == 29  # every frame delivered from 0.1 s on, once
    missing = [r for r in results if isinstance(r, Rejected)]
    assert {(r.reason, r.stream) for r in missing} == {("missing", "rgb_static")}  # ticks between frames
    assert len(frames) + len(missing) == len(ticks)


def test_camera_that_stops_is_rejected_as_stale_within_stale_s():
    aligner = StreamAligner([StreamConfig("rgb_static", "hold", stale_s=0.2),
                             # 100 Hz for as long as the camera may lag: 0.2 s (stale_s) + 0.03 s (delivery)
                             StreamConfig("robot_obs", "asof", tolerance_s=0.01, stale_s=0.5, buffer=24)],
                            reference="rgb_static")
    ticks = np.arange(3, 40) / 30
    results = run(aligner, camera_and_joints(camera_until=0.4), ticks)
    last_frame = 6 / 15
    for now, obs in zip(ticks, results):
        if now - last_frame <= 0.2:
            assert isinstance(obs, Aligned)
        else:
            assert obs == Rejected("stale", "rgb_static", pytest.approx(now - last_frame))
            assert "'rgb_static' stale" in obs.message
    assert aligner.counts()["rejected/stale/rgb_static"] == sum(now - last_frame > 0.2 for now in ticks)


def test_drop_camera_that_stops_turns_stale_not_just_missing():
    aligner = StreamAligner([StreamConfig("cam", "drop", stale_s=0.2)])
    aligner.push("cam", sample(1.0))
    assert isinstance(aligner.observation(1.05), Aligned)
    assert aligner.observation(1.1) == Rejected("missing", "cam", pytest.approx(0.1))
    assert aligner.observation(1.3) == Rejected("stale", "cam", pytest.approx(0.3))


@pytest.mark.parametrize("now, stamp, tolerance, chosen", [
    (1.0, 0.75, 0.25, 0.75),  # exactly at the tolerance (exact in binary)
    (1.1, 1.0, 0.1, 1.0),  # 1.1 - 1.0 is 0.10000000000000009 in floats: still at the tolerance
    (1.1, 1.0, 0.0999, None),  # just beyond it
    (1.1, 1.1, 0.0, 1.1),  # at the reference time itself, with zero tolerance
])
def test_asof_tolerance_edges(now, stamp, tolerance, chosen):
    aligner = StreamAligner([StreamConfig("joints", "asof", tolerance_s=tolerance, stale_s=1.0)])  # ref: now
    aligner.push("joints", sample(stamp))
    aligner.push("joints", sample(now + 0.05))  # after the reference time: never chosen by asof
    result = aligner.observation(now)
    if chosen is None:  # the age reported is that of the newest sample
        assert result == Rejected("missing", "joints", pytest.approx(-0.05))
    else:
        assert isinstance(result, Aligned) and result.stamps["joints"] == chosen


def test_stale_gate_accepts_a_sample_exactly_stale_s_old():
    aligner = StreamAligner([StreamConfig("joints", "hold", stale_s=0.2)])
    aligner.push("joints", sample(0.1))
    assert isinstance(aligner.observation(0.3), Aligned)  # 0.3 - 0.1 is 0.19999999999999998
    aligner.push("joints", sample(1.0))
    assert isinstance(aligner.observation(1.2), Aligned)  # 1.2 - 1.0 is 0.19999999999999996
    assert isinstance(aligner.observation(1.25), Rejected)


def test_drop_never_returns_a_sample_twice_with_jittered_out_of_order_arrivals():
    rng = np.random.default_rng(0)
    stamps = np.arange(200) / 30
    arrivals = stamps + rng.uniform(0.0, 0.08, size=stamps.size)  # later frames may overtake earlier ones
    aligner = StreamAligner([StreamConfig("cam", "drop", stale_s=1.0, buffer=4)])
    ticks = np.append(np.sort(rng.uniform(0, 6.5, size=300)), 7.0)  # the last tick: every frame delivered
    results = run(aligner, [(a, "cam", s) for a, s in zip(arrivals, stamps)], ticks)
    used = [r.stamps["cam"] for r in results if isinstance(r, Aligned)]
    assert len(used) > 100 and np.all(np.diff(used) > 0)  # strictly newer every time
    assert used[-1] == stamps[-1] and len(used) + aligner.counts()["dropped/cam"] == stamps.size


def test_out_of_order_samples_are_sorted_and_the_buffer_is_bounded():
    aligner = StreamAligner([StreamConfig("joints", "asof", tolerance_s=0.05, buffer=3)], reference=None)
    for stamp in (0.3, 0.1, 0.2):
        aligner.push("joints", sample(stamp))
    assert aligner.observation(0.25).stamps["joints"] == 0.2
    aligner.push("joints", sample(0.4))  # evicts 0.1, the oldest
    assert aligner.observation(0.12) == Rejected("missing", "joints", pytest.approx(0.12 - 0.4))
    assert aligner.observation(0.5) == Rejected("missing", "joints", pytest.approx(0.1))  # beyond tolerance
    assert aligner.observation(0.42).stamps["joints"] == 0.4


def test_a_rejected_observation_uses_up_no_drop_sample():
    aligner = StreamAligner([StreamConfig("cam", "drop"), StreamConfig("joints", "hold")], reference="cam")
    assert aligner.observation(0.0) == Rejected("missing", "cam", None)
    aligner.push("cam", sample(1.0))
    assert aligner.observation(1.0) == Rejected("missing", "joints", None)
    aligner.push("joints", sample(0.99))
    assert aligner.observation(1.0).stamps == {"cam": 1.0, "joints": 0.99}
    assert aligner.counts() == {"aligned": 1, "rejected/missing/cam": 1, "rejected/missing/joints": 1}


def test_drop_counts_frames_that_were_never_used():
    aligner = StreamAligner([StreamConfig("cam", "drop", buffer=2)])
    for stamp in (1.0, 1.1, 1.2):  # 1.0 evicted unused
        aligner.push("cam", sample(stamp))
    assert aligner.counts() == {"dropped/cam": 1}
    assert aligner.observation(1.25).stamps["cam"] == 1.2  # 1.1 superseded unused
    aligner.push("cam", sample(1.15))  # older than the frame already used
    assert aligner.counts() == {"dropped/cam": 3, "aligned": 1}


def test_reset_forgets_samples():
    aligner = StreamAligner([StreamConfig("cam", "drop")], reference="cam")
    aligner.push("cam", sample(1.0))
    assert isinstance(aligner.observation(1.0), Aligned)
    aligner.reset()
    assert aligner.observation(1.0) == Rejected("missing", "cam", None)
    aligner.push("cam", sample(0.5))  # an earlier stamp is new again after a reset (e.g. sim time restarted)
    assert aligner.observation(0.5).stamps["cam"] == 0.5


@pytest.mark.parametrize("kwargs, message", [
    ({"name": ""}, "name must be a non-empty string"),
    ({"policy": "latest"}, r"policy must be one of \('hold', 'asof', 'drop'\), got 'latest'"),
    ({"tolerance_s": -0.1}, "tolerance_s must be >= 0 s, got -0.1"),
    ({"stale_s": 0}, "stale_s must be > 0 s, got 0"),
    ({"stale_s": float("nan")}, "stale_s must be > 0 s, got nan"),
    ({"buffer": 0}, "buffer must be a positive int, got 0"),
    ({"buffer": 2.0}, "buffer must be a positive int, got 2.0"),
])
def test_stream_config_names_the_bad_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StreamConfig(**{"name": "cam", **kwargs})


def test_aligner_rejects_bad_streams_and_names():
    with pytest.raises(ValueError, match="at least one"):
        StreamAligner([])
    with pytest.raises(ValueError, match="unique"):
        StreamAligner([StreamConfig("cam"), StreamConfig("cam")])
    with pytest.raises(ValueError, match=r"reference must be one of \['cam'\] or None, got 'joints'"):
        StreamAligner([StreamConfig("cam")], reference="joints")
    aligner = StreamAligner([StreamConfig("cam")])
    with pytest.raises(ValueError, match=r"unknown stream 'depth'; streams are \['cam'\]"):
        aligner.push("depth", sample(0.0))
    with pytest.raises(ValueError, match="stamp must be finite"):
        aligner.push("cam", sample(float("nan")))
