"""How precisely do a checkpoint's image tokens locate the blocks? A linear (ridge) probe from one
view's features to the three blocks' positions (``scene_obs``; for the gripper view, relative to the
gripper: block minus TCP position, ``robot_obs[:3]``), fitted on frames of a CALVIN-format play-table
data set and scored on held-out frames, for the features at each stage:

- ``patches``: the ViT's 64 patch tokens (before the Perceiver resampler),
- ``resampled``: what the backbone receives per view (CLS + ``num_latents`` resampled latents),
- the same two stages of a randomly initialised copy (what training added), and the mean position
  (no features at all);

each with a ridge probe and a small MLP probe (the position may be there non-linearly).

    MUJOCO_GL=egl python bench/vision_probe.py --ckpt checkpoints/tiny_D --data data/ft_D [--frames 3000]
        [--probes ridge mlp] [--view static|gripper] [--near M]

Prints the mean Euclidean error per block in cm on the held-out quarter. Grasping a 5-8 cm block
from above needs ~1 cm; if the resampled tokens are much worse than the patches, the resampler is
where the position is lost.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dream_policy.model import DreamVLA
from sim.calvin_dataset import CalvinDataset

BLOCKS = {"red": slice(6, 9), "blue": slice(12, 15), "pink": slice(18, 21)}  # scene_obs positions


def block_targets(scene_obs: np.ndarray, robot_obs: np.ndarray, view: str) -> np.ndarray:
    """The probe's target (9,): the blocks' positions, relative to the gripper (TCP) for its view."""
    blocks = np.concatenate([scene_obs[s] for s in BLOCKS.values()])
    return blocks - np.tile(robot_obs[:3], len(BLOCKS)) if view == "gripper" else blocks


def sample_frames(root: str, count: int, seed: int, view: str = "static") -> tuple[np.ndarray, np.ndarray]:
    """RGB of ``view`` (count, H, W, 3) and block targets (count, 9) of random frames of ``root``."""
    data = CalvinDataset(root)
    ids = np.concatenate([np.arange(s, e + 1) for s, e in data.episodes()])
    picked = np.sort(np.random.default_rng(seed).choice(ids, size=min(count, len(ids)), replace=False))
    images, targets = [], []
    for i in tqdm(picked, desc="frames", unit="frame"):
        frame = data.frame(int(i), (f"rgb_{view}", "scene_obs", "robot_obs"))
        images.append(frame[f"rgb_{view}"])
        targets.append(block_targets(frame["scene_obs"], frame["robot_obs"], view))
    return np.stack(images), np.stack(targets).astype(np.float64)


@torch.no_grad()
def features(model: DreamVLA, images: np.ndarray, batch: int = 128, view: str = "static") -> dict[str, np.ndarray]:
    """{stage: (N, dims)} features of ``view``'s images at each stage of the vision encoder."""
    encoder = model.vision.encoders["shared" if model.vision.shared else view]
    out: dict[str, list[np.ndarray]] = {"patches": [], "resampled": []}
    for start in range(0, len(images), batch):
        x = torch.from_numpy(images[start:start + batch]).permute(0, 3, 1, 2).contiguous()  # (B, 3, H, W)
        cls, patches = encoder.encoder(encoder.preprocess(x))  # (B, C), (B, N, C)
        latents = encoder.resampler(patches)  # (B, Q, C)
        out["patches"].append(patches.flatten(1).numpy())
        out["resampled"].append(torch.cat([cls[:, None], latents], 1).flatten(1).numpy())
    return {k: np.concatenate(v).astype(np.float64) for k, v in out.items()}


def ridge_error(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Held-out mean Euclidean error per block (m) of a ridge probe, lambda chosen on a split of ``train``."""
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
    x = (x - mu) / sd
    fit, pick = train[: int(0.8 * len(train))], train[int(0.8 * len(train)):]

    def solve(rows: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
        a, b = x[rows], y[rows]
        ym = b.mean(0)
        k = a @ a.T  # dual form: cheap when dims >> rows
        alpha = np.linalg.solve(k + lam * np.eye(len(rows)), b - ym)
        return a.T @ alpha, ym

    def error(rows: np.ndarray, w: np.ndarray, ym: np.ndarray) -> np.ndarray:
        diff = (x[rows] @ w + ym - y[rows]).reshape(len(rows), -1, 3)
        return np.linalg.norm(diff, axis=-1).mean(0)

    lams = [10.0 ** p for p in range(-1, 6)]
    best = min(lams, key=lambda lam: error(pick, *solve(fit, lam)).mean())
    return error(test, *solve(train, best))


def mlp_error(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, epochs: int = 300,
              seed: int = 0) -> np.ndarray:
    """Held-out mean Euclidean error per block (m) of a small MLP probe (one hidden layer of 256,
    Adam, full batch, weight decay): position may be in the features non-linearly."""
    torch.manual_seed(seed)
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
    xs = torch.from_numpy((x - mu) / sd).float()
    ym, ys = y[train].mean(0), y[train].std(0) + 1e-9
    yt = torch.from_numpy((y - ym) / ys).float()
    net = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(x.shape[1], 256), torch.nn.GELU(),
                              torch.nn.Linear(256, y.shape[1]))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.05)
    tr = torch.from_numpy(train)
    for _ in range(epochs):
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(xs[tr]), yt[tr]).backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        pred = net(xs[torch.from_numpy(test)]).numpy() * ys + ym
    return np.linalg.norm((pred - y[test]).reshape(len(test), -1, 3), axis=-1).mean(0)


def near_subsets(y: np.ndarray, train: np.ndarray, test: np.ndarray,
                 radius: float) -> list[tuple[np.ndarray, np.ndarray, slice]]:
    """Per block: the train and test rows where its target (gripper-relative) is within ``radius``,
    and its target columns."""
    out = []
    for b in range(len(BLOCKS)):
        cols = slice(3 * b, 3 * b + 3)
        near = np.linalg.norm(y[:, cols], axis=1) < radius
        out.append((train[near[train]], test[near[test]], cols))
    return out


def load(ckpt: str, trained: bool) -> DreamVLA:
    """The checkpoint's network (EMA weights), or a random initialisation of the same config."""
    model = DreamVLA.from_checkpoint(ckpt)
    if not trained:
        torch.manual_seed(0)
        model = DreamVLA(model.config)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", default="checkpoints/tiny_D")
    parser.add_argument("--data", required=True, help="a CALVIN-format split folder or data set root")
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--probes", nargs="+", choices=("ridge", "mlp"), default=["ridge", "mlp"])
    parser.add_argument("--view", choices=("static", "gripper"), default="static",
                        help="gripper: positions relative to the gripper (block minus TCP)")
    parser.add_argument("--near", type=float, default=None, metavar="M",
                        help="per block, fit and score only frames where it is within M metres of the gripper")
    args = parser.parse_args()
    torch.set_num_threads(2)
    root = f"{args.data}/training" if Path(args.data, "training").is_dir() else args.data
    images, y = sample_frames(root, args.frames, args.seed, args.view)
    order = np.random.default_rng(args.seed + 1).permutation(len(y))
    train, test = order[: 3 * len(y) // 4], order[3 * len(y) // 4:]
    subsets = [(train, test, slice(None))]  # (fit rows, scored rows, target columns) per block or for all
    if args.near is not None:
        if args.view != "gripper":
            parser.error("--near needs --view gripper (targets relative to the gripper)")
        subsets = near_subsets(y, train, test, args.near)
        few = [b for b, (fit, scored, _) in zip(BLOCKS, subsets) if len(fit) < 20 or len(scored) < 5]
        if few:
            parser.error(f"too few frames with {few} within {args.near} m of the gripper: raise --frames or --near")
        print(f"frames within {args.near:.2f} m (fit / scored): "
              + ", ".join(f"{b} {len(f)} / {len(t)}" for b, (f, t, _) in zip(BLOCKS, subsets)))

    def score(probe, x: np.ndarray) -> np.ndarray:
        return np.concatenate([probe(x, y[:, cols], fit, scored) for fit, scored, cols in subsets])

    rows = {"mean position": np.concatenate([
        np.linalg.norm((y[fit][:, cols].mean(0) - y[scored][:, cols]).reshape(len(scored), -1, 3), axis=-1).mean(0)
        for fit, scored, cols in subsets])}
    for trained in (True, False):
        feats = features(load(args.ckpt, trained), images, view=args.view)
        for stage, x in feats.items():
            name = f"{'trained' if trained else 'random'} {stage} ({x.shape[1]} dims)"
            if "ridge" in args.probes:
                rows[f"{name}, ridge"] = score(ridge_error, x)
            if "mlp" in args.probes:
                rows[f"{name}, MLP"] = score(mlp_error, x)
    what = "static view" if args.view == "static" else "gripper view, positions relative to the gripper"
    what += f", frames with the block within {args.near} m" if args.near is not None else ""
    print(f"# vision probe: {args.ckpt}, {what}, {len(train)} fit / {len(test)} held-out frames of {root}")
    print(f"{'features':44s} " + " ".join(f"{b:>7s}" for b in BLOCKS) + "   (mean error, cm)")
    for name, err in rows.items():
        print(f"{name:44s} " + " ".join(f"{100 * e:7.2f}" for e in err))


if __name__ == "__main__":
    main()
