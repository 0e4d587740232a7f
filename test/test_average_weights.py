"""scripts/average_weights.py: the mean of fine-tunes' weights, and refusing what cannot be averaged."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

spec = importlib.util.spec_from_file_location(
    "average_weights", Path(__file__).resolve().parent.parent / "scripts" / "average_weights.py")
avg = importlib.util.module_from_spec(spec)
spec.loader.exec_module(avg)


def make(folder: Path, w: torch.Tensor, step: torch.Tensor, norm: str = '{"mean": [0]}') -> Path:
    folder.mkdir(parents=True)
    save_file({"w": w, "step": step}, str(folder / "ema.safetensors"))
    (folder / "config.yaml").write_text(f"name: {folder.name}\n")
    (folder / "normalization.json").write_text(norm)
    return folder


def test_the_mean_of_two_checkpoints(tmp_path, monkeypatch):
    a = make(tmp_path / "a", torch.tensor([1.0, 2.0]), torch.tensor([3]))
    b = make(tmp_path / "b", torch.tensor([3.0, 6.0]), torch.tensor([3]))
    monkeypatch.setattr(sys, "argv", ["average_weights.py", str(a), str(b), "--out", str(tmp_path / "soup")])
    avg.main()
    out = load_file(str(tmp_path / "soup" / "ema.safetensors"))
    assert torch.equal(out["w"], torch.tensor([2.0, 4.0])) and torch.equal(out["step"], torch.tensor([3]))
    assert (tmp_path / "soup" / "config.yaml").read_text() == "name: b\n"


def test_what_cannot_be_averaged_is_refused(tmp_path, monkeypatch):
    a = make(tmp_path / "a", torch.zeros(2), torch.tensor([1]))
    b = make(tmp_path / "b", torch.zeros(3), torch.tensor([1]))
    c = make(tmp_path / "c", torch.zeros(2), torch.tensor([2]))
    d = make(tmp_path / "d", torch.zeros(2), torch.tensor([1]), norm='{"mean": [1]}')
    for other, message in [(b, "shapes differ"), (c, "non-float tensor"), (d, "normalization.json differ")]:
        monkeypatch.setattr(sys, "argv", ["average_weights.py", str(a), str(other), "--out", str(tmp_path / "x")])
        with pytest.raises(SystemExit, match=message):
            avg.main()
    assert not (tmp_path / "x").exists()  # nothing written when refused


def test_a_weighted_mean(tmp_path, monkeypatch):
    a = make(tmp_path / "a", torch.tensor([0.0, 4.0]), torch.tensor([3]))
    b = make(tmp_path / "b", torch.tensor([4.0, 0.0]), torch.tensor([3]))
    monkeypatch.setattr(sys, "argv", ["average_weights.py", str(a), str(b), "--weights", "3", "1",
                                      "--out", str(tmp_path / "soup")])
    avg.main()
    out = load_file(str(tmp_path / "soup" / "ema.safetensors"))
    assert torch.allclose(out["w"], torch.tensor([1.0, 3.0]))  # 0.75 * a + 0.25 * b


@pytest.mark.parametrize("weights, message", [(["1"], "1 weights for 2"), (["1", "-1"], "non-negative"),
                                              (["0", "0"], "not all zero"), (["nan", "1"], "finite")])
def test_bad_weights_are_refused(tmp_path, monkeypatch, weights, message):
    a = make(tmp_path / "a", torch.zeros(2), torch.tensor([1]))
    b = make(tmp_path / "b", torch.ones(2), torch.tensor([1]))
    monkeypatch.setattr(sys, "argv", ["average_weights.py", str(a), str(b), "--weights", *weights,
                                      "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match=message):
        avg.main()
    assert not (tmp_path / "x").exists()
