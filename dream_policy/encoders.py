"""Encoders of DreamVLA's inputs: language (frozen), vision (ViT / ResNet / timm + Perceiver
resampler), proprioception.

Vision: every view is resized to ``VisionConfig.image_size`` inside the encoder (the static camera
renders 200x200, the gripper camera 84x84), so all views share one preprocessing path:
uint8 (B, 3, H, W) -> float in [0, 1] -> bilinear resize -> ImageNet mean/std. ``shared=True``
uses one encoder for all views, else one per view.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backbone import Block, check_dropout, check_positive_ints

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# ---- language ---------------------------------------------------------------------------------


class TextEncoder(Protocol):
    """A frozen sentence encoder: ``encode(sentences) -> (N, dim)`` float32."""

    dim: int

    def encode(self, sentences: Sequence[str]) -> torch.Tensor: ...


class CachedTextEncoder:
    """Encodes each distinct sentence once; subclasses implement ``_embed``."""

    dim: int

    def __init__(self) -> None:
        self.cache: dict[str, torch.Tensor] = {}

    def _embed(self, sentences: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, sentences: Sequence[str]) -> torch.Tensor:
        """(N, dim) float32 embeddings of ``sentences``."""
        if isinstance(sentences, str) or not all(isinstance(s, str) for s in sentences):
            raise TypeError(f"encode expects a sequence of strings, got {sentences!r:.200}")
        missing = sorted(set(sentences) - set(self.cache))
        if missing:
            self.cache.update(zip(missing, self._embed(missing).float().cpu()))
        if not sentences:
            return torch.zeros(0, self.dim)
        return torch.stack([self.cache[s] for s in sentences])


class MiniLMTextEncoder(CachedTextEncoder):
    """all-MiniLM-L6-v2 (384-d, unit norm), the embedding CALVIN's annotations ship; frozen, offline."""

    dim = 384

    def __init__(self, embed_fn: Callable[[list[str]], np.ndarray] | None = None) -> None:
        super().__init__()
        if embed_fn is None:
            from sim.language import embed_sentences as embed_fn
        self.embed_fn = embed_fn

    def _embed(self, sentences: list[str]) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.embed_fn(sentences), dtype=np.float32))  # (N, 384)


class CLIPTextEncoder(CachedTextEncoder):
    """A CLIP text tower (the paper uses CLIP ViT-B/32's) loaded from local files only; frozen.

    The embedding is the pooled output (end-of-text token), ``hidden_size`` wide.
    """

    def __init__(self, model: nn.Module, tokenizer: Callable, max_length: int = 77) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.dim = int(model.config.hidden_size)

    @classmethod
    def from_local(cls, path: str | Path, max_length: int = 77) -> CLIPTextEncoder:
        """CLIPTextModel + CLIPTokenizer from directory ``path`` (never from a hub)."""
        from transformers import CLIPTextModel, CLIPTokenizer

        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"CLIP text encoder directory {path} does not exist")
        tokenizer = CLIPTokenizer.from_pretrained(str(path), local_files_only=True)
        model = CLIPTextModel.from_pretrained(str(path), local_files_only=True)
        return cls(model, tokenizer, max_length)

    @torch.no_grad()
    def embed_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(N, hidden) pooled embeddings of pre-tokenised ``input_ids`` (N, S)."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask).pooler_output

    def _embed(self, sentences: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(sentences, padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt")
        return self.embed_ids(tokens["input_ids"], tokens["attention_mask"])  # (N, hidden)


TEXT_ENCODERS: dict[str, Callable[..., TextEncoder]] = {
    "minilm": MiniLMTextEncoder,
    "clip": CLIPTextEncoder.from_local,
}
TEXT_DIMS = {"minilm": 384, "clip": 512}  # embedding width of each encoder's standard model


def build_text_encoder(name: str, **kwargs: object) -> TextEncoder:
    """The text encoder registered as ``name`` (``clip`` needs ``path=``)."""
    if name not in TEXT_ENCODERS:
        raise ValueError(f"unknown text encoder {name!r}; valid names: {sorted(TEXT_ENCODERS)}")
    return TEXT_ENCODERS[name](**kwargs)


# ---- vision -----------------------------------------------------------------------------------

VISION_KINDS = ("vit", "resnet", "timm")


@dataclass
class VisionConfig:
    kind: str = "vit"  # one of VISION_KINDS
    image_size: int = 96  # every view is resized to image_size x image_size
    patch: int = 16  # ViT patch; ResNet total stride (power of 2)
    width: int = 128
    depth: int = 2  # ViT blocks; ResNet basic blocks per stage
    heads: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.0
    num_latents: int = 4  # image tokens per view (CLS is kept on top)
    readout: str = "resampler"  # patches -> image tokens: "resampler" (Perceiver) or "pool" (average-pooled
    #                             patch grid, sqrt(num_latents) x sqrt(num_latents): keeps where things are)
    resampler_depth: int = 1
    resampler_heads: int = 4
    keypoints: int = 0  # > 0: a small CNN (half resolution) finds this many spatial soft-argmax keypoints per view,
    #                     whose (x, y) are projected onto the image tokens (added; zero at initialisation)
    shared: bool = True  # one encoder for all views, else one per view
    freeze: bool = False  # freeze the patch encoder (the paper freezes its pretrained MAE ViT)
    timm_name: str = ""  # kind="timm": model name
    timm_weights: str = ""  # kind="timm": local weight file ("" = random init)
    augment_shift: int = 0  # training only: random translation of each resized image by up to this many pixels
    augment_color: float = 0.0  # training only: random brightness/contrast change of up to this fraction

    def __post_init__(self) -> None:
        if self.kind not in VISION_KINDS:
            raise ValueError(f"VisionConfig.kind {self.kind!r} is not one of {list(VISION_KINDS)}")
        check_positive_ints("VisionConfig", image_size=self.image_size, patch=self.patch, width=self.width,
                            depth=self.depth, heads=self.heads, mlp_ratio=self.mlp_ratio,
                            num_latents=self.num_latents, resampler_depth=self.resampler_depth,
                            resampler_heads=self.resampler_heads)
        check_dropout("VisionConfig", self.dropout)
        if self.keypoints < 0:
            raise ValueError(f"VisionConfig.keypoints={self.keypoints} must be >= 0 (0: no keypoint read-out)")
        if self.readout not in READOUTS:
            raise ValueError(f"VisionConfig.readout {self.readout!r} is not one of {list(READOUTS)}")
        if self.readout == "pool" and round(self.num_latents ** 0.5) ** 2 != self.num_latents:
            raise ValueError(f"VisionConfig.num_latents={self.num_latents} must be a square (4, 16, 64) "
                             "for readout='pool'")
        if not (0 <= self.augment_shift < self.image_size // 2 and 0 <= self.augment_color < 1):
            raise ValueError(f"VisionConfig.augment_shift={self.augment_shift} must be in [0, image_size/2) and "
                             f"augment_color={self.augment_color} in [0, 1)")
        if self.kind != "timm" and self.image_size % self.patch:
            raise ValueError(f"VisionConfig.image_size={self.image_size} must be divisible by patch={self.patch}")
        if self.kind == "resnet" and (self.patch < 4 or self.patch & (self.patch - 1)):
            raise ValueError(f"VisionConfig.patch={self.patch} must be a power of 2 >= 4 for kind='resnet'")
        for name, heads in (("heads", self.heads), ("resampler_heads", self.resampler_heads)):
            if self.width % heads:
                raise ValueError(f"VisionConfig.width={self.width} must be divisible by {name}={heads}")
        if self.kind == "timm" and not self.timm_name:
            raise ValueError("VisionConfig.timm_name must name a timm model when kind='timm'")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch


def resize_image(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, H, W) floats in [0, 1] -> (B, 3, size, size): bilinear with antialiasing; identity at
    that size already (packed datasets store images resized by this, see ``data.packed``)."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def random_shift(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Translate each image of (B, C, S, S) by a random whole-pixel offset in [-pad, pad] (edges replicated)."""
    B, _, S, _ = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")  # (B, C, S+2p, S+2p)
    offsets = torch.randint(0, 2 * pad + 1, (B, 2), device=x.device)  # (B, 2) = (dy, dx)
    rows = (offsets[:, 0, None] + torch.arange(S, device=x.device))[:, None, :, None]  # (B, 1, S, 1)
    cols = (offsets[:, 1, None] + torch.arange(S, device=x.device))[:, None, None, :]  # (B, 1, 1, S)
    batch = torch.arange(B, device=x.device)[:, None, None, None]
    channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]  # (B, C, S, S)


def random_color(x: torch.Tensor, amount: float) -> torch.Tensor:
    """Scale brightness and contrast of each image of (B, C, H, W) in [0, 1] by factors in [1-a, 1+a]."""
    B = x.shape[0]
    brightness, contrast = (1 + amount * (2 * torch.rand(2, B, 1, 1, 1, device=x.device) - 1)).unbind(0)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * contrast + mean * brightness).clamp(0, 1)


class ImagePreprocessor(nn.Module):
    """uint8 (B, 3, H, W) -> normalised float (B, 3, S, S), S = image_size; augmented in training mode."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.size = config.image_size
        self.shift, self.color = config.augment_shift, config.augment_color
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (B, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        x = images.float() / 255.0  # (B, 3, H, W)
        x = resize_image(x, self.size)
        if self.training and self.shift:
            x = random_shift(x, self.shift)
        if self.training and self.color:
            x = random_color(x, self.color)
        return (x - self.mean) / self.std  # (B, 3, S, S)


class ViT(nn.Module):
    """A ViT from scratch: (B, 3, S, S) -> CLS (B, C), patch tokens (B, N, C)."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, config.width, kernel_size=config.patch, stride=config.patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.width))
        self.pos_emb = nn.Parameter(torch.randn(1, 1 + config.grid**2, config.width) * 0.02)
        self.blocks = nn.ModuleList(Block(config.width, config.heads, config.dropout, config.mlp_ratio)
                                    for _ in range(config.depth))
        self.ln_f = nn.LayerNorm(config.width)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B = x.shape[0]
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, C)
        x = torch.cat([self.cls_token.expand(B, -1, -1), patches], dim=1) + self.pos_emb  # (B, 1+N, C)
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        return x[:, 0], x[:, 1:]


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class ResNet(nn.Module):
    """A small ResNet from scratch with total stride ``patch``: -> pooled CLS (B, C), cells (B, N, C)."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        stages = config.patch.bit_length() - 2  # strided stages after the stride-2 stem
        channels = [max(config.width >> (stages - i), 8) for i in range(stages + 1)]
        self.stem = nn.Sequential(nn.Conv2d(3, channels[0], 3, 2, 1, bias=False), nn.BatchNorm2d(channels[0]),
                                  nn.ReLU())
        layers: list[nn.Module] = []
        for c_in, c_out in pairwise(channels):
            layers += [BasicBlock(c_in, c_out, 2)] + [BasicBlock(c_out, c_out, 1) for _ in range(config.depth - 1)]
        self.stages = nn.Sequential(*layers)
        self.cls_proj = nn.Linear(channels[-1], config.width)
        self.ln_f = nn.LayerNorm(config.width)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cells = self.stages(self.stem(x)).flatten(2).transpose(1, 2)  # (B, N, C)
        return self.ln_f(self.cls_proj(cells.mean(dim=1))), cells


class TimmEncoder(nn.Module):
    """A timm model (optional dependency) with local pretrained weights, projected to ``width``."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        try:
            import timm
        except ImportError as e:
            raise ImportError("VisionConfig.kind='timm' needs the optional package 'timm' (not in "
                              "requirements.txt); install it or use kind='vit' or 'resnet'") from e
        if config.timm_weights and not Path(config.timm_weights).is_file():
            raise FileNotFoundError(f"VisionConfig.timm_weights={config.timm_weights!r} is not a file")
        overlay = {"file": config.timm_weights} if config.timm_weights else None
        self.model = timm.create_model(config.timm_name, pretrained=bool(config.timm_weights), num_classes=0,
                                       pretrained_cfg_overlay=overlay)
        features = int(self.model.num_features)
        self.proj = nn.Identity() if features == config.width else nn.Linear(features, config.width)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.model.forward_features(x)  # (B, prefix + N, F) for ViTs, (B, F, h, w) for CNNs
        if h.dim() == 4:
            cells = self.proj(h.flatten(2).transpose(1, 2))  # (B, N, C)
            return cells.mean(dim=1), cells
        h = self.proj(h)
        return h[:, 0], h[:, getattr(self.model, "num_prefix_tokens", 1):]


PATCH_ENCODERS: dict[str, type[nn.Module]] = {"vit": ViT, "resnet": ResNet, "timm": TimmEncoder}


class PerceiverResampler(nn.Module):
    """Compresses patch tokens (B, N, C) to ``num_latents`` tokens (B, num_latents, C) (Flamingo)."""

    def __init__(self, num_latents: int, width: int, depth: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.latents = nn.Parameter(torch.randn(num_latents, width) * 0.02)
        self.layers = nn.ModuleList(
            nn.ModuleDict({"ln_media": nn.LayerNorm(width), "ln_latents": nn.LayerNorm(width),
                           "q": nn.Linear(width, width, bias=False), "kv": nn.Linear(width, 2 * width, bias=False),
                           "out": nn.Linear(width, width, bias=False),
                           "ff": nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 4 * width), nn.GELU(),
                                               nn.Linear(4 * width, width))})
            for _ in range(depth))
        self.ln_f = nn.LayerNorm(width)

    def _attend(self, layer: nn.ModuleDict, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        B, Q, C = latents.shape
        hs = C // self.heads
        lat = layer["ln_latents"](latents)  # (B, Q, C)
        kv_in = torch.cat([layer["ln_media"](media), lat], dim=1)  # (B, N+Q, C): latents also see themselves
        q = layer["q"](lat).view(B, Q, self.heads, hs).transpose(1, 2)  # (B, nh, Q, hs)
        k, v = (z.view(B, -1, self.heads, hs).transpose(1, 2) for z in layer["kv"](kv_in).split(C, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, Q, C)  # (B, Q, C)
        return layer["out"](y)

    def forward(self, media: torch.Tensor) -> torch.Tensor:
        latents = self.latents.expand(media.shape[0], -1, -1)  # (B, Q, C)
        for layer in self.layers:
            latents = latents + self._attend(layer, media, latents)
            latents = latents + layer["ff"](latents)
        return self.ln_f(latents)  # (B, Q, C)


class PatchPool(nn.Module):
    """Patch tokens (B, N, C) of a square grid -> (B, side*side, C): the grid average-pooled to
    side x side, row-major. No parameters; each token stays tied to a region of the image."""

    def __init__(self, num_tokens: int) -> None:
        super().__init__()
        self.side = round(num_tokens ** 0.5)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        B, N, C = patches.shape
        grid = round(N ** 0.5)
        if grid * grid != N:
            raise ValueError(f"PatchPool needs a square patch grid, got {N} patches")
        x = patches.transpose(1, 2).reshape(B, C, grid, grid)  # (B, C, g, g)
        return F.adaptive_avg_pool2d(x, self.side).flatten(2).transpose(1, 2)  # (B, side*side, C)


READOUTS = ("resampler", "pool")


def soft_argmax_2d(logits: torch.Tensor) -> torch.Tensor:
    """Spatial soft-argmax: score maps (B, K, H, W) -> expected positions (B, K, 2) as (x, y) in [-1, 1],
    pixel centres, x to the right and y down: each map softmax-normalised over its pixels."""
    B, K, H, W = logits.shape
    weights = logits.flatten(2).softmax(dim=-1).view(B, K, H, W)
    xs = torch.linspace(-1 + 1 / W, 1 - 1 / W, W, device=logits.device, dtype=weights.dtype)
    ys = torch.linspace(-1 + 1 / H, 1 - 1 / H, H, device=logits.device, dtype=weights.dtype)
    x = (weights.sum(dim=2) * xs).sum(dim=-1)  # (B, K): marginal over rows, then expectation over columns
    y = (weights.sum(dim=3) * ys).sum(dim=-1)
    return torch.stack([x, y], dim=-1)


class SpatialKeypoints(nn.Module):
    """Normalised images (B, 3, S, S) -> image-token offsets (B, num_tokens, width) from ``keypoints``
    spatial soft-argmax keypoints (Levine et al. 2016) of a small CNN at half the image resolution:
    where things are, to the pixel, which the 8x8 patch grid and its pooled read-out blur. The last
    layer starts at zero, so adding this to a trained encoder leaves its output unchanged until trained."""

    def __init__(self, keypoints: int, num_tokens: int, width: int, channels: int = 32) -> None:
        super().__init__()
        self.num_tokens, self.width = num_tokens, width
        self.features = nn.Sequential(
            nn.Conv2d(3, channels, 3, 2, 1), nn.GELU(),
            nn.Conv2d(channels, channels, 3, 1, 1), nn.GELU(),
            nn.Conv2d(channels, keypoints, 1))
        self.log_temperature = nn.Parameter(torch.zeros(()))
        self.proj = nn.Sequential(nn.Linear(2 * keypoints, width), nn.GELU(), nn.Linear(width, num_tokens * width))
        nn.init.zeros_(self.proj[-1].weight)
        nn.init.zeros_(self.proj[-1].bias)

    def keypoints(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, K, 2) keypoint positions in [-1, 1]."""
        return soft_argmax_2d(self.features(x) * self.log_temperature.exp())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        points = self.keypoints(x)  # (B, K, 2)
        return self.proj(points.flatten(1)).view(x.shape[0], self.num_tokens, self.width)


class LanguageQuery(nn.Module):
    """The instruction looks for what it names in one view's patch tokens: ``heads`` queries made from the
    sentence embedding (B, L) attend over the patches (B, T, N, C) of every frame; each head's read-out and
    the expected (x, y) of its attention on the square patch grid become one token offset (B, T, width).
    A path from "the red block" to where red is in the image that the Perceiver resampler, which never sees
    the sentence, cannot give. The last layer starts at zero."""

    def __init__(self, lang_dim: int, patch_width: int, width: int, heads: int) -> None:
        super().__init__()
        if heads < 1 or patch_width % heads:
            raise ValueError(f"LanguageQuery: heads={heads} must be >= 1 and divide the patch width {patch_width}")
        self.heads = heads
        self.q = nn.Linear(lang_dim, patch_width)
        self.ln = nn.LayerNorm(patch_width)
        self.kv = nn.Linear(patch_width, 2 * patch_width)
        self.out = nn.Sequential(nn.Linear(patch_width + 2 * heads, width), nn.GELU(), nn.Linear(width, width))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def logits(self, lang: torch.Tensor, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention logits (B, T, heads, N) of the sentence's queries over the patches, and the values
        (B, T, N, heads, C/heads)."""
        B, T, N, C = patches.shape
        hs = C // self.heads
        q = self.q(lang).view(B, 1, self.heads, 1, hs)  # (B, 1, H, 1, hs)
        k, v = self.kv(self.ln(patches)).split(C, dim=-1)  # (B, T, N, C) each
        k = k.view(B, T, N, self.heads, hs).permute(0, 1, 3, 4, 2)  # (B, T, H, hs, N)
        return (q @ k).squeeze(3) / hs ** 0.5, v.view(B, T, N, self.heads, hs)

    def attention(self, lang: torch.Tensor, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention weights (B, T, heads, N) over the patches, and the values (B, T, N, heads, C/heads)."""
        logits, v = self.logits(lang, patches)
        return logits.softmax(dim=-1), v

    def forward(self, lang: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        B, T, N, C = patches.shape
        grid = round(N ** 0.5)
        if grid * grid != N:
            raise ValueError(f"LanguageQuery needs a square patch grid, got {N} patches")
        logits, v = self.logits(lang, patches)
        read = torch.einsum("bthn,btnhs->bths", logits.softmax(dim=-1), v).reshape(B, T, C)  # (B, T, C)
        where = soft_argmax_2d(logits.reshape(B * T, self.heads, grid, grid))  # (B*T, H, 2): patches row-major
        return self.out(torch.cat([read, where.reshape(B, T, 2 * self.heads)], dim=-1))  # (B, T, width)


class ViewEncoder(nn.Module):
    """uint8 images (B, 3, H, W) -> CLS (B, C) and resampled latents (B, num_latents, C)."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.preprocess = ImagePreprocessor(config)
        self.encoder = PATCH_ENCODERS[config.kind](config)
        if config.freeze:
            self.encoder.requires_grad_(False)
        # the patches -> image tokens stage, whichever readout (named for the default, the Perceiver)
        self.resampler = (PatchPool(config.num_latents) if config.readout == "pool" else
                          PerceiverResampler(config.num_latents, config.width, config.resampler_depth,
                                             config.resampler_heads))
        self.keypoints = (SpatialKeypoints(config.keypoints, config.num_latents, config.width)
                          if config.keypoints else None)

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """CLS (B, C), resampled latents (B, num_latents, C) and the patch tokens (B, N, C)."""
        x = self.preprocess(images)  # (B, 3, S, S)
        cls, patches = self.encoder(x)  # (B, C), (B, N, C)
        latents = self.resampler(patches)  # (B, num_latents, C)
        if self.keypoints is not None:
            latents = latents + self.keypoints(x)
        return cls, latents, patches

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cls, latents, _ = self.encode(images)
        return cls, latents


class VisionEncoder(nn.Module):
    """One ``ViewEncoder`` per view (or one shared): {view: images} -> {view: (CLS, latents)}."""

    def __init__(self, config: VisionConfig, views: Sequence[str]) -> None:
        super().__init__()
        self.views = tuple(views)
        names = ["shared"] if config.shared else list(self.views)
        self.encoders = nn.ModuleDict({name: ViewEncoder(config) for name in names})
        self.shared = config.shared

    def forward(self, images: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {v: (cls, latents) for v, (cls, latents, _) in self.encode(images).items()}

    def encode(self, images: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Like ``forward``, with each view's patch tokens too: {view: (CLS, latents, patches)}."""
        missing = [v for v in self.views if v not in images]
        if missing:
            raise KeyError(f"missing image view(s) {missing}; got {sorted(images)}")
        return {v: self.encoders["shared" if self.shared else v].encode(images[v]) for v in self.views}


# ---- proprioception ---------------------------------------------------------------------------


class ProprioEncoder(nn.Module):
    """robot_obs (..., 15) -> (..., width): arm state (the other 14 dims) + one-hot gripper state.

    CALVIN's robot_obs ends with the gripper action (+1 open, -1 close). ``gripper_threshold`` is that
    dimension's value of raw 0 in the model's input space (for mean/std-normalised obs: -mean/std);
    it is a buffer, so it is saved with the checkpoint.
    """

    def __init__(self, width: int, obs_dim: int = 15, gripper_index: int = -1,
                 gripper_threshold: float = 0.0) -> None:
        super().__init__()
        self.obs_dim = obs_dim
        self.gripper_index = gripper_index % obs_dim
        self.register_buffer("gripper_threshold", torch.tensor(float(gripper_threshold)))
        self.mlp = nn.Sequential(nn.Linear(obs_dim - 1 + 2, width), nn.GELU(), nn.Linear(width, width))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if obs.shape[-1] != self.obs_dim:
            raise ValueError(f"robot_obs must be (..., {self.obs_dim}), got {tuple(obs.shape)}")
        keep = [i for i in range(self.obs_dim) if i != self.gripper_index]
        is_open = (obs[..., self.gripper_index] > self.gripper_threshold).long()  # (...,)
        gripper = F.one_hot(is_open, 2).to(obs.dtype)  # (..., 2)
        return self.mlp(torch.cat([obs[..., keep], gripper], dim=-1))  # (..., width)
