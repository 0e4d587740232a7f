"""Does a checkpoint's policy act on the instruction? Action chunks sampled on annotated windows of a
packed CALVIN-format data set with the window's own instruction, and again from the same noise with

- ``colour``: the same sentence with its block colour changed (red -> blue -> pink -> red), for the
  windows whose task names one block (lift, push, rotate, place-free tasks);
- ``other``: the instruction of an annotated window of another task (drawn at random);
- ``resample``: the own instruction with fresh noise (the sampler's own spread, for scale);

scored per task family by the mean absolute error to the demonstrated chunk (normalised actions,
gripper included) and by how far each variant's chunk moves from the own-instruction one.

    python bench/language_probe.py --ckpt checkpoints/tiny_D --data /dev/shm/ft_D_packed [--windows 1024]
        [--early 15] [--pad-history] [--only-start] [--plot bench/language_probe.png]

A policy that reads the instruction moves its chunk further under ``other`` and ``colour`` than
under ``resample``, and its error to the demonstration grows; one that acts from the scene alone
gives the same chunks whatever it is told.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
import torch
from tqdm import tqdm

from dream_policy.checkpoint import checkpoint_folder, load_normalization
from dream_policy.data.colour_negatives import swapped_colours
from dream_policy.data.normalization import Normalizer
from dream_policy.data.packed import PackedWindowDataset
from dream_policy.model import DreamVLA
from sim.calvin_dataset import LANG_FILE, load_pickled
from sim.language import embed_sentences

VARIANTS = ("resample", "colour", "other")


def swap_colour(sentence: str) -> str | None:
    """The sentence with its one block colour replaced by the next one; None unless exactly one is named."""
    swapped = swapped_colours(sentence)
    return swapped[0] if swapped else None


def family(task: str) -> str:
    """lift / push / rotate / place / stack for block tasks, articulated for drawer, slider, LED, lightbulb."""
    head = task.split("_")[0]
    return head if head in ("lift", "push", "rotate", "place", "stack", "unstack") else "articulated"


def other_task_rows(tasks: list[str], rng: np.random.Generator) -> np.ndarray:
    """For each annotation, the index of a random annotation of a different task."""
    tasks_arr = np.asarray(tasks)
    out = np.empty(len(tasks), np.int64)
    for i, task in enumerate(tasks):
        candidates = np.flatnonzero(tasks_arr != task)
        if not len(candidates):
            raise ValueError("the data set's annotations name one task only: nothing to swap with")
        out[i] = rng.choice(candidates)
    return out


def distance(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Mean absolute difference per chunk: (B, chunk, 7) x 2 -> (B,)."""
    return (a - b).abs().mean(dim=(1, 2)).numpy()


def sample(model: DreamVLA, batch: dict, lang_emb: torch.Tensor, seed: int) -> torch.Tensor:
    return model.predict_chunk({"history": batch["history"], "lang_emb": lang_emb},
                               generator=torch.Generator().manual_seed(seed))


def phase(offset: int, early: int) -> str:
    """'start' for a window whose last frame is among the first ``early`` frames of its attempt, else 'rest'."""
    return "start" if offset < early else "rest"


def probe(model: DreamVLA, data: PackedWindowDataset, sentences: list[str], tasks: list[str],
          starts: np.ndarray, windows: int, batch_size: int, seed: int, early: int, only_start: bool = False
          ) -> dict[str, dict[str, list[float]]]:
    """Per family and per phase ('all', 'start', 'rest'; keys 'family/phase'): {'own', variant (error),
    f'{variant}_shift' (distance to the own-instruction chunk)} lists of per-window values.
    ``starts``: each annotation's first frame id; ``only_start``: draw only windows of the 'start' phase."""
    rng = np.random.default_rng(seed)
    pool = np.arange(len(data))
    if only_start:
        pool = pool[data.samples[:, 0] - starts[data.samples[:, 2]] < early]
    picks = rng.choice(pool, size=min(windows, len(pool)), replace=False)
    swapped = [swap_colour(s) for s in sentences]
    swap_emb = embed_sentences([s or sentences[i] for i, s in enumerate(swapped)])
    other = other_task_rows(tasks, rng)
    own_emb = np.asarray(data.lang_emb, np.float32)
    scores: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for start in tqdm(range(0, len(picks), batch_size), desc="windows", unit="batch"):
        batch = data.__getitems__(picks[start:start + batch_size].tolist())
        ann = batch["ann_index"].numpy()
        offsets = batch["frame_id"].numpy() - starts[ann]
        gt = batch["actions"]
        own = sample(model, batch, torch.from_numpy(own_emb[ann]), seed + start)
        chunks = {"resample": sample(model, batch, torch.from_numpy(own_emb[ann]), seed + start + 10**6),
                  "colour": sample(model, batch, torch.from_numpy(swap_emb[ann]), seed + start),
                  "other": sample(model, batch, torch.from_numpy(own_emb[other[ann]]), seed + start)}
        values = {"own": distance(own, gt)}
        for name, chunk in chunks.items():
            values[name], values[f"{name}_shift"] = distance(chunk, gt), distance(chunk, own)
        for row, a in enumerate(ann):
            keys = [f"{fam}/{ph}" for fam in (family(tasks[a]), "all") for ph in ("all", phase(offsets[row], early))]
            for key in keys:
                for name, v in values.items():
                    if name.startswith("colour") and swapped[a] is None:
                        continue
                    scores[key][name].append(float(v[row]))
    return scores


def _cell(values: dict[str, list[float]], name: str, width: int) -> str:
    return f"{np.mean(values[name]):{width}.4f}" if values.get(name) else f"{'-':>{width}s}"


def format_table(scores: dict[str, dict[str, list[float]]]) -> str:
    head = (f"{'family/phase':18s} {'windows':>7s} {'own err':>8s} " + " ".join(f"{v + ' err':>12s}" for v in VARIANTS)
            + " " + " ".join(f"{v + ' shift':>14s}" for v in VARIANTS))
    lines = [head]
    order = sorted(scores, key=lambda k: (k.startswith("all/"), k.split("/")[0], ("all", "start", "rest").index(k.split("/")[1])))
    for key in order:
        s = scores[key]
        lines.append(f"{key:18s} {len(s['own']):7d} {_cell(s, 'own', 8)} "
                     + " ".join(_cell(s, v, 12) for v in VARIANTS) + " "
                     + " ".join(_cell(s, f"{v}_shift", 14) for v in VARIANTS))
    return "\n".join(lines)


def plot(scores: dict[str, dict[str, list[float]]], path: str, title: str) -> None:
    """Bars per task family (whole attempts): how far each variant moves the chunk from the own-instruction one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams = sorted(k.split("/")[0] for k in scores if k.endswith("/all") and k != "all/all") + ["all"]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / len(VARIANTS)
    for i, variant in enumerate(VARIANTS):
        values = [np.mean(scores[f"{f}/all"].get(f"{variant}_shift") or [np.nan]) for f in fams]
        ax.bar(np.arange(len(fams)) + (i - 1) * width, values, width, label=variant)
    ax.set_xticks(np.arange(len(fams)), fams)
    ax.set_ylabel("|chunk - own-instruction chunk|")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", default="checkpoints/tiny_D")
    parser.add_argument("--data", required=True, help="a packed data set (dream-policy pack) with language annotations")
    parser.add_argument("--split", default="training")
    parser.add_argument("--windows", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--early", type=int, default=15,
                        help="'start' phase: windows ending within this many frames of their attempt's first frame")
    parser.add_argument("--pad-history", action="store_true",
                        help="include windows anchored at their attempt's first frames, history padded as the runtime "
                             "pads a new instruction's (with --early 1: the first decision of each attempt)")
    parser.add_argument("--only-start", action="store_true", help="draw only 'start' windows (see --early)")
    parser.add_argument("--plot", default=None, metavar="PNG", help="also draw the shifts per family")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = DreamVLA.from_checkpoint(args.ckpt).eval()
    norm = Normalizer.from_dict(load_normalization(checkpoint_folder(args.ckpt)))  # a run folder: its latest
    cfg = model.config
    data = PackedWindowDataset(args.data, args.split, history=cfg.backbone.history, chunk=cfg.chunk,
                               normalizer=norm, image_size=cfg.vision.image_size, pad_history=args.pad_history)
    ann = load_pickled(data.root / LANG_FILE)
    lang = ann["language"]
    starts = np.asarray([int(s) for s, _ in ann["info"]["indx"]])
    scores = probe(model, data, [str(s) for s in lang["ann"]], [str(t) for t in lang["task"]], starts,
                   args.windows, args.batch, args.seed, args.early, args.only_start)
    print(f"# language probe: {args.ckpt}, {len(scores['all/all']['own'])} windows of {data.root}, "
          f"{cfg.ddim_steps} DDIM steps, guidance {cfg.guidance}; mean |chunk - demonstration| (err) and "
          f"|chunk - own-instruction chunk| (shift), normalised actions")
    print(format_table(scores))
    if args.plot:
        plot(scores, args.plot, f"language probe: {args.ckpt}")
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
