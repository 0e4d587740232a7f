"""DreamVLA: encoders -> block-masked backbone -> (dream queries -> world heads, action queries -> DiT).

Batch keys (``B`` batch, ``T`` history <= ``backbone.history``, views ``static`` and ``gripper``)::

    rgb_static    (B, T, 3, H, W) uint8     any H, W (resized inside the vision encoder)
    rgb_gripper   (B, T, 3, H, W) uint8
    robot_obs     (B, T, 15) float          normalised proprioception
    lang_emb      (B, lang_dim) float       frozen sentence embedding (MiniLM: 384)
    actions       (B, chunk, 7) float       training only: relative actions in [-1, 1]
    targets       {name: tensor}            training only, optional: the future frame's
                                            dynamic_<view>, depth_<view>, seg_<view> (or semfeat_<view>)
    block_offset  (B, 3) float              training only, optional (``block_weight`` > 0): the block the
    has_block     (B,) bool                 instruction names, relative to the gripper (data/named_block.py)
    has_target    {name: bool | (B,) bool}  optional flags; see ``world_heads``

Observation keys may also sit under ``batch["history"]`` (the data loader's layout). The
features of the last timestep drive the predictions: its action queries condition the DiT, its
dream queries feed the world heads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from .attention_mask import TokenLayout
from .backbone import Backbone, BackboneConfig, check_positive_ints
from .diffusion import DiffusionSchedule
from .dit import DiT, DiTConfig
from .encoders import TEXT_ENCODERS, LanguageQuery, ProprioEncoder, VisionConfig, VisionEncoder
from .world_heads import WORLD_KINDS, WorldHeadConfig, WorldHeads

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "model"
SECTIONS = {"vision": VisionConfig, "backbone": BackboneConfig, "world": WorldHeadConfig, "dit": DiTConfig}
DIT_DERIVED = ("action_dim", "chunk", "cond_dim", "cond_tokens")  # DiTConfig fields set by DreamVLAConfig


@dataclass
class DreamVLAConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    world: WorldHeadConfig = field(default_factory=WorldHeadConfig)
    dit: DiTConfig = field(default_factory=DiTConfig)
    views: tuple[str, ...] = ("static", "gripper")
    text_encoder: str = "minilm"  # a TEXT_ENCODERS name; lang_dim must match its width
    lang_dim: int = 384
    proprio_dim: int = 15
    dream_per_view: int = 9  # dream queries per view per kind
    action_queries: int = 3
    chunk: int = 3
    action_dim: int = 7
    action_weight: float = 1.0
    dynamic_weight: float = 0.1
    depth_weight: float = 0.001
    semantic_weight: float = 0.01
    # colour contrast (training only; needs the data set's colour-swapped instructions, which the train command
    # asks for when this is > 0): on samples whose instruction names one block colour, the noise error from
    # the true sentence must be ``colour_margin`` below the error from the sentence with another colour
    colour_weight: float = 0.0
    colour_margin: float = 0.02
    # named-block target (training only; packed data with scene_obs): from the action queries' features, a
    # small head predicts where the block the instruction names is relative to the gripper (MSE, units of
    # data.named_block.SCALE), so the features that condition the action head must find that block
    block_weight: float = 0.0
    # instruction-query grounding (training only; needs lang_query and packed data with scene_obs and world
    # targets): the first head of the static view's instruction query is trained to attend to the patches that
    # show the block the task names (cross-entropy to the block's pixel share per patch, current frame)
    ground_weight: float = 0.0
    # per-timestep action loss (training only; 0: the last timestep alone, as before): every earlier timestep
    # of the history window also predicts its own frame's action chunk from the frames up to it (block-causal
    # time), as DreamVLA and Seer train; timestep 0 sees one frame, so no motion in the history says where the
    # arm is heading. The term is the DiT's noise MSE over those timesteps (the batch's ``actions_history``)
    dense_action_weight: float = 0.0
    cfg_dropout: float = 0.1  # probability of the null condition in training
    train_steps: int = 100  # DDPM steps
    ddim_steps: int = 10
    guidance: float = 1.5
    clip_sample: float | None = 1.0  # DDIM clamps its clean-action estimate to the action range [-1, 1]
    noise_scale: float = 1.0  # sampling temperature: DDIM starts from noise_scale * N(0, 1) (0: deterministic)
    action_horizon: int | None = None  # runtime: actions played from each sampled chunk (None: the whole chunk)
    # runtime temporal ensembling (None: off): a chunk is sampled every step and the action played is the
    # weighted mean of what the last ``chunk`` chunks predicted for this step, weight exp(-decay * age)
    ensemble_decay: float | None = None
    # runtime stall escape (None: off): while the TCP stayed within stall_tol metres over the last
    # stall_steps observations, chunks are sampled from stall_noise (instead of noise_scale) times unit noise
    stall_steps: int | None = None
    stall_tol: float = 0.005
    stall_noise: float = 1.0
    # runtime gripper hold (None or 1: off): the gripper command played changes only once the policy has asked
    # for the other state in gripper_hold consecutive steps (a single noisy sample neither drops nor grabs)
    gripper_hold: int | None = None
    # FiLM: the instruction scales and shifts every image token's channels (x * (1 + g(l)) + b(l), zero at
    # the start), a multiplicative path from "which block" in the sentence to where it is in the image
    lang_film: bool = False
    # instruction query (0: off): per view, this many attention heads whose queries come from the sentence
    # look over the frame's patch tokens (before the resampler compresses them); what they read and where
    # they look (expected x, y) is added to the view's CLS token: which block the sentence names, where it is
    lang_query: int = 0

    def __post_init__(self) -> None:
        self.views = tuple(self.views)
        for name, cls in SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise TypeError(f"DreamVLAConfig.{name} must be a {cls.__name__}, got {getattr(self, name)!r}")
        check_positive_ints("DreamVLAConfig", lang_dim=self.lang_dim, proprio_dim=self.proprio_dim,
                            dream_per_view=self.dream_per_view, action_queries=self.action_queries,
                            chunk=self.chunk, action_dim=self.action_dim, train_steps=self.train_steps,
                            ddim_steps=self.ddim_steps)
        if not self.views or len(set(self.views)) != len(self.views) or not all(
                isinstance(v, str) and v for v in self.views):
            raise ValueError(f"DreamVLAConfig.views must be unique non-empty names, got {self.views!r}")
        if self.text_encoder not in TEXT_ENCODERS:
            raise ValueError(f"DreamVLAConfig.text_encoder {self.text_encoder!r} is not one of "
                             f"{sorted(TEXT_ENCODERS)}")
        for kind in ("action", *WORLD_KINDS, "colour", "block", "ground", "dense_action"):
            weight = getattr(self, f"{kind}_weight")
            if not isinstance(weight, (int, float)) or weight < 0:
                raise ValueError(f"DreamVLAConfig.{kind}_weight must be a number >= 0, got {weight!r}")
        if isinstance(self.lang_query, bool) or not isinstance(self.lang_query, int) or self.lang_query < 0 or (
                self.lang_query and self.vision.width % self.lang_query):
            raise ValueError(f"DreamVLAConfig.lang_query must be an integer >= 0 (0: off) dividing vision.width="
                             f"{self.vision.width}, got {self.lang_query!r}")
        if self.ground_weight > 0 and not self.lang_query:
            raise ValueError(f"DreamVLAConfig.ground_weight={self.ground_weight} trains the instruction query: "
                             "set lang_query > 0")
        if not isinstance(self.colour_margin, (int, float)) or self.colour_margin < 0:
            raise ValueError(f"DreamVLAConfig.colour_margin must be a number >= 0, got {self.colour_margin!r}")
        if not 0.0 <= self.cfg_dropout < 1.0:
            raise ValueError(f"DreamVLAConfig.cfg_dropout must be in [0, 1), got {self.cfg_dropout!r}")
        if self.ddim_steps > self.train_steps:
            raise ValueError(f"DreamVLAConfig.ddim_steps={self.ddim_steps} exceeds train_steps={self.train_steps}")
        if not isinstance(self.guidance, (int, float)) or self.guidance < 1.0:
            raise ValueError(f"DreamVLAConfig.guidance must be >= 1.0, got {self.guidance!r}")
        if not isinstance(self.noise_scale, (int, float)) or self.noise_scale < 0:
            raise ValueError(f"DreamVLAConfig.noise_scale must be a number >= 0, got {self.noise_scale!r}")
        if self.action_horizon is not None and (
                isinstance(self.action_horizon, bool) or not isinstance(self.action_horizon, int)
                or not 1 <= self.action_horizon <= self.chunk):
            raise ValueError(f"DreamVLAConfig.action_horizon must be null or an integer in [1, chunk={self.chunk}], "
                             f"got {self.action_horizon!r}")
        if self.ensemble_decay is not None and (isinstance(self.ensemble_decay, bool) or not isinstance(
                self.ensemble_decay, (int, float)) or not math.isfinite(self.ensemble_decay)):
            raise ValueError(f"DreamVLAConfig.ensemble_decay must be null or a finite number, got {self.ensemble_decay!r}")
        if self.stall_steps is not None and (isinstance(self.stall_steps, bool) or not isinstance(
                self.stall_steps, int) or self.stall_steps < 2):
            raise ValueError(f"DreamVLAConfig.stall_steps must be null or an integer >= 2, got {self.stall_steps!r}")
        if self.gripper_hold is not None and (isinstance(self.gripper_hold, bool) or not isinstance(
                self.gripper_hold, int) or self.gripper_hold < 1):
            raise ValueError(f"DreamVLAConfig.gripper_hold must be null or an integer >= 1, got {self.gripper_hold!r}")
        for name in ("stall_tol", "stall_noise"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"DreamVLAConfig.{name} must be a finite number >= 0, got {value!r}")
        expected = {"action_dim": self.action_dim, "chunk": self.chunk, "cond_dim": self.backbone.width,
                    "cond_tokens": self.action_queries}
        for name, value in expected.items():
            if getattr(self.dit, name) != value:
                raise ValueError(f"DreamVLAConfig.dit.{name}={getattr(self.dit, name)} must equal {value} "
                                 f"(set from the model config; omit it in the dit section)")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DreamVLAConfig:
        """From a nested dict (the YAML layout); the DiT's derived fields are filled in."""
        if not isinstance(d, dict):
            raise TypeError(f"model config must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config key(s) {unknown}; valid keys: {sorted(known)}")
        top = {k: v for k, v in d.items() if k not in SECTIONS}
        defaults = cls.__dataclass_fields__
        backbone = _section("backbone", d.get("backbone", {}))
        dit_values = dict(d.get("dit", {}))
        derived = {"action_dim": top.get("action_dim", defaults["action_dim"].default),
                   "chunk": top.get("chunk", defaults["chunk"].default), "cond_dim": backbone.width,
                   "cond_tokens": top.get("action_queries", defaults["action_queries"].default)}
        for name, value in derived.items():
            dit_values.setdefault(name, value)
        return cls(vision=_section("vision", d.get("vision", {})), backbone=backbone,
                   world=_section("world", d.get("world", {})), dit=_section("dit", dit_values), **top)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["views"] = list(self.views)
        return d


def _section(name: str, values: dict[str, Any]) -> Any:
    cls = SECTIONS[name]
    if not isinstance(values, dict):
        raise TypeError(f"model config section {name!r} must be a mapping, got {values!r}")
    valid = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in model config section {name!r}; valid: {sorted(valid)}")
    return cls(**values)


def merge_config(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in; nested mappings merge key by key."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_config(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_model_config(name: str, config_dir: str | Path = CONFIG_DIR) -> DreamVLAConfig:
    """DreamVLAConfig from ``<config_dir>/<name>.yaml`` (e.g. ``tiny``, ``paper``)."""
    path = Path(config_dir) / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in Path(config_dir).glob("*.yaml"))
        raise FileNotFoundError(f"no model config {name!r} ({path}); available: {available}")
    try:
        return DreamVLAConfig.from_dict(yaml.safe_load(path.read_text()) or {})
    except (TypeError, ValueError) as e:
        raise type(e)(f"{path}: {e}") from e


class DreamVLA(nn.Module):
    """The network: ``forward(batch) -> (loss, info)`` to train, ``predict_chunk`` to act."""

    def __init__(self, config: DreamVLAConfig) -> None:
        super().__init__()
        self.config = config
        width = config.backbone.width
        self.layout = TokenLayout.dreamvla(config.views, config.vision.num_latents, config.dream_per_view,
                                           config.action_queries)
        self.vision = VisionEncoder(config.vision, config.views)
        self.image_proj = nn.Linear(config.vision.width, width)
        self.lang_proj = nn.Linear(config.lang_dim, width)
        self.film = None
        if config.lang_film:
            self.film = nn.Linear(config.lang_dim, 2 * width)
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)
        self.lang_query = None
        if config.lang_query:
            self.lang_query = nn.ModuleDict({view: LanguageQuery(config.lang_dim, config.vision.width, width,
                                                                 config.lang_query) for view in config.views})
        self.proprio = ProprioEncoder(width, config.proprio_dim)
        dream_tokens = config.dream_per_view * len(config.views)
        self.dream_queries = nn.Parameter(torch.randn(len(WORLD_KINDS), dream_tokens, width) * 0.02)
        self.action_queries = nn.Parameter(torch.randn(config.action_queries, width) * 0.02)
        self.backbone = Backbone(config.backbone, self.layout)
        self.world_heads = WorldHeads(config.world, width, config.views, config.dream_per_view)
        self.dit = DiT(config.dit)
        self.block_head = None  # training only, like the world heads
        if config.block_weight > 0:
            self.block_head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(),
                                            nn.Linear(width, 3))
        self.schedule = DiffusionSchedule(config.train_steps)
        self.grown: list[str] = []  # parameters ``from_checkpoint(grow=True)`` filled only in part
        self.fresh: list[str] = []  # parameters ``from_checkpoint`` overrides added (not in the checkpoint)

    @classmethod
    def from_checkpoint(cls, path: str | Path, use_ema: bool = True, grow: bool = False,
                        **overrides: Any) -> DreamVLA:
        """The network of a ``dream-policy train`` checkpoint folder (or its run, ``checkpoint_folder``): its ``model_config`` with
        ``overrides`` merged in (sections field by field: ``vision={"num_latents": 16}``) and its EMA
        weights (unless ``use_ema`` is False or there are none). ``grow``: saved tensors smaller than the
        overridden model's are copied into their leading part (``checkpoint.grow_tensor``)."""
        from .checkpoint import EMA_WEIGHTS, WEIGHTS, checkpoint_folder, load_config, load_weights

        path = checkpoint_folder(path)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no such checkpoint folder")
        full = load_config(path)
        if "model_config" not in full:
            raise ValueError(f"{path}: config.yaml has no 'model_config'; was it written by dream-policy train?")
        model = cls(DreamVLAConfig.from_dict(merge_config(full["model_config"], overrides)))
        added: set[str] = set()  # parameters the overrides added (e.g. lang_film): they start from their init
        if overrides:
            added = set(model.state_dict()) - set(cls(DreamVLAConfig.from_dict(full["model_config"])).state_dict())
        name = EMA_WEIGHTS if use_ema and (path / EMA_WEIGHTS).is_file() else WEIGHTS
        report = load_weights(path, model, name=name, grow=grow, allow_missing=added)
        model.grown = [key for key, _, _ in report.grown]
        model.fresh = list(report.fresh)
        return model

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def encode_frames(self, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The token groups that depend on one frame alone (state, image latents, CLS): {group: (B, T, n, D)}.

        They do not depend on the frame's place in the history window, so the runtime computes them
        once per frame and keeps them while the frame stays in the window (``frame_tokens``).
        """
        state = self.proprio(obs["robot_obs"])  # (B, T, D)
        B, T, D = state.shape
        groups = {"state": state[:, :, None]}
        images = {v: obs[f"rgb_{v}"].flatten(0, 1) for v in self.config.views}  # (B*T, 3, H, W)
        for view, (cls, latents, patches) in self.vision.encode(images).items():
            groups[f"image_{view}"] = self.image_proj(latents).view(B, T, -1, D)  # (B, T, N, D)
            groups[f"cls_{view}"] = self.image_proj(cls).view(B, T, 1, D)
            if self.lang_query is not None:  # kept per frame for the instruction query (``tokens``)
                groups[f"patches_{view}"] = patches.view(B, T, *patches.shape[1:])  # (B, T, P, C)
        return groups

    def tokens(self, batch: dict[str, Any]) -> torch.Tensor:
        """Input tokens (B, T, P, D) in layout order from the observations of ``batch`` (or from its
        precomputed ``frame_tokens``, as ``encode_frames`` returns them)."""
        groups = dict(batch.get("frame_tokens") or self.encode_frames(batch.get("history", batch)))
        B, T, _, D = groups["state"].shape
        groups["text"] = self.lang_proj(batch["lang_emb"])[:, None, None].expand(B, T, 1, D)
        if self.film is not None:
            scale, shift = self.film(batch["lang_emb"])[:, None, None].chunk(2, dim=-1)  # (B, 1, 1, D) each
            for view in self.config.views:
                for name in (f"image_{view}", f"cls_{view}"):
                    groups[name] = groups[name] * (1 + scale) + shift
        if self.lang_query is not None:
            for view in self.config.views:
                found = self.lang_query[view](batch["lang_emb"], groups[f"patches_{view}"])  # (B, T, D)
                groups[f"cls_{view}"] = groups[f"cls_{view}"] + found[:, :, None]
        for kind, queries in zip(WORLD_KINDS, self.dream_queries):
            groups[kind] = queries.expand(B, T, -1, -1)  # (B, T, Q, D)
        groups["action"] = self.action_queries.expand(B, T, -1, -1)  # (B, T, A, D)
        return torch.cat([groups[g.name] for g in self.layout.groups], dim=2)  # (B, T, P, D)

    def features(self, batch: dict[str, Any], earlier_actions: bool = False) -> dict[str, torch.Tensor]:
        """Backbone features of the last timestep per query group: {group: (B, size, D)}; with
        ``earlier_actions`` also "earlier_action" (B, T - 1, A, D): the action queries of the earlier timesteps."""
        out = self.backbone(self.tokens(batch))  # (B, T, P, D)
        last = out[:, -1]  # (B, P, D)
        feats = {name: last[:, self.layout.step_slice(name)] for name in (*WORLD_KINDS, "action")}
        if earlier_actions:
            feats["earlier_action"] = out[:, :-1, self.layout.step_slice("action")]
        return feats

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        frames = batch.get("frame_tokens") or self.encode_frames(batch.get("history", batch))
        dense = cfg.dense_action_weight > 0
        feats = self.features({**batch, "frame_tokens": frames}, earlier_actions=dense)
        actions = batch["actions"]  # (B, chunk, 7)
        B = actions.shape[0]
        drop = torch.rand(B, device=actions.device) < (cfg.cfg_dropout if self.training else 0.0)  # (B,)
        cond = self.dit.mask_condition(feats["action"], drop)  # (B, A, D)
        noise = torch.randn_like(actions)
        t = torch.randint(0, cfg.train_steps, (B,), device=actions.device)  # (B,)
        noisy = self.schedule.add_noise(actions, noise, t)
        pred = self.dit(noisy, t, cond)  # (B, chunk, 7)
        terms = {"action": F.mse_loss(pred, noise)}
        if dense:
            terms.update(self._earlier_actions(batch, feats["earlier_action"]))
        terms.update(self.world_heads(feats, batch.get("targets", {}), batch.get("has_target", {})))
        if cfg.colour_weight > 0:
            terms.update(self._colour_contrast(batch, frames, drop, noisy, t, pred, noise))
        if self.block_head is not None:
            terms.update(self._block_target(batch, feats["action"]))
        if cfg.ground_weight > 0:
            terms.update(self._grounding(batch, frames))
        loss = sum(getattr(cfg, f"{name}_weight") * value for name, value in terms.items())
        extra = (*(("colour",) if cfg.colour_weight > 0 else ()), *(("block",) if self.block_head is not None else ()),
                 *(("ground",) if cfg.ground_weight > 0 else ()), *(("dense_action",) if dense else ()))
        info = {name: float(terms[name].detach()) if name in terms else 0.0
                for name in ("action", *WORLD_KINDS, *extra)}
        info.update(loss=float(loss.detach()), world_terms=float(sum(kind in terms for kind in WORLD_KINDS)))
        return loss, info

    def _earlier_actions(self, batch: dict[str, Any], earlier: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"dense_action": the DiT's noise MSE at the earlier timesteps} from their action-query features
        ``earlier`` (B, T - 1, A, D) and the batch's ``actions_history`` (B, T, chunk, 7), each timestep
        with its own condition dropout, noise and diffusion step; {} for a window of one timestep."""
        if "actions_history" not in batch:
            raise KeyError("dense_action_weight > 0 needs the batch's 'actions_history' (B, history, chunk, 7): "
                           "the action chunk of every history frame, which the packed and streaming data sets give")
        B, steps = earlier.shape[:2]
        target = batch["actions_history"].to(earlier)
        want = (B, steps + 1, self.config.chunk, self.config.action_dim)
        if tuple(target.shape) != want:
            raise ValueError(f"actions_history must be (B, history, chunk, 7) = {want}, got {tuple(target.shape)}")
        if steps == 0:
            return {}
        actions = target[:, :-1].flatten(0, 1)  # (B * (T - 1), chunk, 7)
        n = actions.shape[0]
        drop = torch.rand(n, device=actions.device) < (self.config.cfg_dropout if self.training else 0.0)
        cond = self.dit.mask_condition(earlier.flatten(0, 1), drop)
        noise = torch.randn_like(actions)
        t = torch.randint(0, self.config.train_steps, (n,), device=actions.device)
        pred = self.dit(self.schedule.add_noise(actions, noise, t), t, cond)
        return {"dense_action": F.mse_loss(pred, noise)}

    def _block_target(self, batch: dict[str, Any], action_feats: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"block": MSE of the named block's offset predicted from the action queries' features (B, A, D)}
        over the rows whose instruction names a block; {} when the batch has no such targets. Rows without
        one weigh zero but stay in the graph (every rank's DDP gradients include the head)."""
        if "block_offset" not in batch or "has_block" not in batch:
            return {}
        target = batch["block_offset"].to(action_feats)  # (B, 3)
        if target.shape != (action_feats.shape[0], 3):
            raise ValueError(f"block_offset must be (B, 3) = ({action_feats.shape[0]}, 3), got {tuple(target.shape)}")
        rows = batch["has_block"].to(action_feats.device).to(action_feats.dtype)  # (B,)
        err = (self.block_head(action_feats.mean(dim=1)) - target).pow(2).mean(dim=1)  # (B,)
        return {"block": (err * rows).sum() / rows.sum().clamp(min=1.0)}

    def _grounding(self, batch: dict[str, Any], frames: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{"ground": cross-entropy of the static instruction query's first head's attention over the patches of
        the newest frame to the named block's share of each patch (``named_mask_static``)} over the rows whose
        block is in view; {} when the batch has no masks. Other rows weigh zero but stay in the graph."""
        if "named_mask_static" not in batch:
            return {}
        mask = batch["named_mask_static"].to(frames["patches_static"])  # (B, s, s)
        patches = frames["patches_static"][:, -1:]  # (B, 1, N, C)
        grid = round(patches.shape[2] ** 0.5)
        if mask.shape != (patches.shape[0], *mask.shape[1:]) or mask.ndim != 3 or mask.shape[1] % grid:
            raise ValueError(f"named_mask_static must be (B, s, s) with s a multiple of the patch grid {grid}, "
                             f"got {tuple(mask.shape)}")
        share = F.adaptive_avg_pool2d(mask[:, None], grid).flatten(1)  # (B, N): the block's pixels per patch
        seen = share.sum(dim=1)  # (B,)
        target = share / seen.clamp(min=1e-8)[:, None]
        logits, _ = self.lang_query["static"].logits(batch["lang_emb"], patches)  # (B, 1, H, N)
        ce = -(target * logits[:, 0, 0].float().log_softmax(dim=-1)).sum(dim=1)  # (B,)
        rows = (seen > 0).to(ce.dtype)
        return {"ground": (ce * rows).sum() / rows.sum().clamp(min=1.0)}

    def _colour_contrast(self, batch: dict[str, Any], frames: dict[str, torch.Tensor], drop: torch.Tensor,
                         noisy: torch.Tensor, t: torch.Tensor, pred: torch.Tensor, noise: torch.Tensor
                         ) -> dict[str, torch.Tensor]:
        """{"colour": hinge} over the rows whose instruction names a block colour (``has_neg``) and kept
        their condition: the same frames, noisy actions and step under the colour-swapped sentence
        (``lang_neg``) must predict the noise worse than the true sentence by ``colour_margin``. {} when no
        row qualifies."""
        if "lang_neg" not in batch or "has_neg" not in batch:
            raise KeyError("colour_weight > 0 needs the data set's colour-swapped instructions ('lang_neg', "
                           "'has_neg'): build it with colour_negatives=True")
        rows = batch["has_neg"].to(drop.device) & ~drop  # (B,)
        if not bool(rows.any()):
            return {}
        negative = self.features({"frame_tokens": {k: v[rows] for k, v in frames.items()},
                                  "lang_emb": batch["lang_neg"][rows]})["action"]  # (R, A, D)
        pred_neg = self.dit(noisy[rows], t[rows], negative)  # (R, chunk, 7)
        err = (pred[rows] - noise[rows]).pow(2).mean(dim=(1, 2))  # (R,)
        err_neg = (pred_neg - noise[rows]).pow(2).mean(dim=(1, 2))  # (R,)
        return {"colour": F.relu(self.config.colour_margin + err - err_neg).mean()}

    @torch.no_grad()
    def stream_step(self, frame_tokens: dict[str, torch.Tensor], lang_emb: torch.Tensor,
                    cache: Any) -> dict[str, torch.Tensor]:
        """Streaming backbones: features of one new timestep (``encode_frames`` groups with T = 1) from
        the keys and values of earlier ones in ``cache`` (``backbone.StreamCache``): {group: (B, size, D)}."""
        x = self.tokens({"frame_tokens": frame_tokens, "lang_emb": lang_emb})[:, 0]  # (B, P, D)
        last = self.backbone.step(x, cache)
        return {name: last[:, self.layout.step_slice(name)] for name in (*WORLD_KINDS, "action")}

    @torch.no_grad()
    def predict_chunk(self, batch_obs: dict[str, Any], generator: torch.Generator | None = None,
                      block_hook: Any = None, noise_scale: float | None = None) -> torch.Tensor:
        """Action chunk (B, chunk, 7) by DDIM with classifier-free guidance; world heads are skipped.

        Call ``eval()`` first (dropout); ``generator`` makes the sample reproducible. ``block_hook``
        (``dream_policy.dit_cache``: ``CachedBlocks`` or ``BlockRecorder``) runs the DiT through it;
        ``noise_scale`` overrides the config's sampling temperature for this sample.
        """
        cond = self.features(batch_obs)["action"]  # (B, A, D)
        return self.sample_actions(cond, generator, block_hook, noise_scale=noise_scale)

    def sample_actions(self, cond: torch.Tensor, generator: torch.Generator | None = None,
                       block_hook: Any = None, noise_scale: float | None = None, head: DiT | None = None,
                       grad: bool = False, noise: torch.Tensor | None = None) -> torch.Tensor:
        """The DiT head alone: DDIM from noise to an action chunk (B, chunk, 7) given cond (B, A, D),
        starting from ``noise_scale`` (None: the config's) times unit noise in cond's dtype. ``head`` samples with another
        DiT of the same shape instead of ``self.dit``; ``grad`` keeps the caller's grad mode (else no_grad);
        ``noise`` (B, chunk, 7) is the starting sample, already scaled (``DiffusionSchedule.ddim_sample``)."""
        cfg = self.config
        head = self.dit if head is None else head
        model_fn, on_step = head, None
        if block_hook is not None:
            from dream_policy.dit_cache import hooked_model_fn

            model_fn, on_step = hooked_model_fn(head, block_hook), block_hook.start_step
        return self.schedule.ddim_sample(model_fn, (cond.shape[0], cfg.chunk, cfg.action_dim), cond,
                                         steps=cfg.ddim_steps, guidance=cfg.guidance, generator=generator,
                                         clip_sample=cfg.clip_sample, on_step=on_step, dtype=cond.dtype,
                                         noise_scale=cfg.noise_scale if noise_scale is None else noise_scale,
                                         grad=grad, noise=noise)
