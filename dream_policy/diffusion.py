"""DDPM noise schedule (squared cosine) and the one DDIM sampling loop, with classifier-free guidance.

Conventions (as in diffusers): a train timestep ``t`` in ``[0, train_steps)`` indexes
``alphas_cumprod[t]``, and ``x_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * noise``. The model predicts
the noise.

A ``model_fn`` is called as ``model_fn(x_t, t, cond)``, once per guidance branch and step. A model that
also has ``prepare_sampling(cond, timesteps, batch_size, guided) -> step_fn`` (``PreparedModel``, e.g.
``DiT``) is prepared once per sampling call instead, and ``step_fn(i, x_t)`` predicts the noise of step
``i`` for both guidance branches in one call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

# model_fn(x_t (B, ...), t (B,) long, cond or None) -> predicted noise (B, ...)
ModelFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
# step_fn(i, x_t (B, ...)) -> predicted noise at step index i: (B, ...), or (2B, ...) when guided
# (conditional rows first, then unconditional)
StepFn = Callable[[int, torch.Tensor], torch.Tensor]
# predict(i, t, x_t (B, ...)) -> the guided noise (B, ...) at step index i (train timestep t)
NoisePredictor = Callable[[int, int, torch.Tensor], torch.Tensor]


@runtime_checkable
class PreparedModel(Protocol):
    """A model_fn that ``ddim_sample`` prepares once per call (see the module docstring)."""

    def prepare_sampling(self, cond: Any, timesteps: Sequence[int], batch_size: int, guided: bool) -> StepFn:
        ...


def squared_cosine_betas(train_steps: int, max_beta: float = 0.999) -> torch.Tensor:
    """Float64 (train_steps,): Nichol & Dhariwal's cosine schedule (diffusers' "squaredcos_cap_v2")."""

    def alpha_bar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [
        min(1 - alpha_bar((i + 1) / train_steps) / alpha_bar(i / train_steps), max_beta)
        for i in range(train_steps)
    ]
    return torch.tensor(betas, dtype=torch.float64)


def ddim_timesteps(train_steps: int, steps: int) -> list[int]:
    """The train timesteps visited by ``steps`` DDIM steps, step index 0 first (decreasing).

    "Trailing" spacing: the first step is the last train timestep (pure noise), e.g. 100 train
    steps and 10 steps give [99, 89, ..., 9]; the step after the last one lands on x0.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= train_steps:
        raise ValueError(f"steps must be an int in [1, train_steps={train_steps}], got {steps!r}")
    ratio = train_steps / steps
    return [round(train_steps - i * ratio) - 1 for i in range(steps)]


def randn(
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    device: torch.device | str,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device (so a CPU generator seeds GPU runs too);
    ``ddim_sample``'s starting noise, so a caller that draws it itself (``noise=``) draws the same."""
    noise_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=noise_device, dtype=dtype).to(device)


class DiffusionSchedule:
    """DDPM schedule with ``train_steps`` steps; ``add_noise`` for training, ``ddim_sample`` for inference."""

    def __init__(self, train_steps: int = 100, max_beta: float = 0.999) -> None:
        if isinstance(train_steps, bool) or not isinstance(train_steps, int) or train_steps < 1:
            raise ValueError(f"train_steps must be a positive int, got {train_steps!r}")
        if not 0 < max_beta < 1:
            raise ValueError(f"max_beta must be in (0, 1), got {max_beta!r}")
        self.train_steps = train_steps
        self.betas = squared_cosine_betas(train_steps, max_beta)  # (K,) float64
        self.alphas_cumprod = torch.cumprod(1 - self.betas, dim=0)  # (K,) float64
        self._abars = self.alphas_cumprod.tolist()  # as Python floats, for the sampling loop

    def _abar(self, t: int) -> float:
        """alphas_cumprod[t]; t = -1 is the clean sample (abar = 1)."""
        return 1.0 if t < 0 else self._abars[t]

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t (B, ...) from clean ``x0`` (B, ...), ``noise`` like x0 and train timesteps ``t`` (B,)."""
        if noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} must equal x0 shape {tuple(x0.shape)}")
        if t.shape != x0.shape[:1]:
            raise ValueError(f"t must have shape (B,) = {tuple(x0.shape[:1])}, got {tuple(t.shape)}")
        if t.min() < 0 or t.max() >= self.train_steps:
            raise ValueError(f"t must lie in [0, {self.train_steps}), got {t.tolist()}")
        abar = self.alphas_cumprod.to(x0.device)[t.long()].to(x0.dtype)  # (B,)
        abar = abar.view(-1, *([1] * (x0.dim() - 1)))  # (B, 1, ...)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def ddim_sample(
        self,
        model_fn: ModelFn,
        shape: tuple[int, ...],
        cond: Any,
        steps: int = 10,
        guidance: float = 1.5,
        generator: torch.Generator | None = None,
        eta: float = 0.0,
        on_step: Callable[[int, int], None] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        clip_sample: float | None = None,
        noise_scale: float = 1.0,
        grad: bool = False,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Denoise pure noise of ``shape`` (B, ...) into a sample (B, ...) with DDIM.

        Runs under ``torch.no_grad`` unless ``grad`` (then under the caller's grad mode: cache-aware
        distillation backpropagates through the whole sampling chain).

        Guidance: eps = eps_uncond + guidance * (eps_cond - eps_uncond); ``guidance == 1`` calls the
        model once per step (conditional only), otherwise twice (``cond`` then ``None``), or, for a
        ``PreparedModel``, once per step on both branches batched.
        ``on_step(i, t)`` runs at the start of step ``i`` (train timestep ``t``), before the model.
        ``device`` defaults to ``cond``'s device when ``cond`` is a tensor, else the CPU.
        ``clip_sample`` clamps each step's clean-sample estimate to [-clip, clip] (the data range); with
        the squared-cosine schedule the first trailing step has alpha_bar ~ 0, where the estimate
        (x - sqrt(1 - abar) eps) / sqrt(abar) amplifies any error in eps without bound.
        ``noise_scale`` scales the starting noise (a sampling temperature: 0 starts every sample from zeros,
        so with ``eta`` 0 the sample is a deterministic function of the condition).
        ``noise`` (``shape``) is the starting sample itself, drawn and scaled by the caller (then neither
        ``generator`` nor ``noise_scale`` is used for it): rows batched from callers that each keep their
        own generator (``dream_policy.policy_batch``).
        """
        if guidance < 1.0:
            raise ValueError(f"guidance must be >= 1.0 (1.0 = conditional only), got {guidance!r}")
        if guidance != 1.0 and cond is None:
            raise ValueError(f"guidance={guidance} needs a condition; pass guidance=1.0 with cond=None")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta!r}")
        if clip_sample is not None and not clip_sample > 0:
            raise ValueError(f"clip_sample must be > 0 or None, got {clip_sample!r}")
        if not noise_scale >= 0:
            raise ValueError(f"noise_scale must be >= 0, got {noise_scale!r}")
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            if device is None:
                device = cond.device if isinstance(cond, torch.Tensor) else "cpu"
            if noise is None:
                x = randn(shape, generator, device, dtype) * noise_scale  # (B, ...)
            elif tuple(noise.shape) != tuple(shape):
                raise ValueError(f"noise has shape {tuple(noise.shape)}, the sample {tuple(shape)}")
            else:
                x = noise.to(device=device, dtype=dtype)
            timesteps = ddim_timesteps(self.train_steps, steps)
            if isinstance(model_fn, PreparedModel):
                step_fn = model_fn.prepare_sampling(cond, timesteps, shape[0], guidance != 1.0)
                predict = _batched_predictor(step_fn, guidance)
            else:
                predict = _two_call_predictor(model_fn, cond, guidance, shape[0], device)
            abars = [self._abar(t) for t in timesteps] + [self._abar(-1)]  # the last step lands on x0
            for i, t in enumerate(timesteps):
                if on_step is not None:
                    on_step(i, t)
                eps = predict(i, t, x)
                x = self._ddim_step(x, eps, abars[i], abars[i + 1], eta, generator, clip_sample)
            return x

    @staticmethod
    def _ddim_step(
        x: torch.Tensor,
        eps: torch.Tensor,
        abar: float,
        abar_prev: float,
        eta: float,
        generator: torch.Generator | None,
        clip_sample: float | None = None,
    ) -> torch.Tensor:
        """One DDIM update x_t -> x_{t_prev} (Song et al. eq. 12); eta = 0 is deterministic."""
        # in place on the fresh x0_pred: a step is a handful of small-tensor ops, where each op's fixed cost
        # is most of the time
        x0_pred = torch.add(x, eps, alpha=-math.sqrt(1 - abar)).div_(math.sqrt(abar))
        if clip_sample is not None:
            x0_pred.clamp_(-clip_sample, clip_sample)
        sigma = eta * math.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
        x_prev = x0_pred.mul_(math.sqrt(abar_prev)).add_(eps, alpha=math.sqrt(max(1 - abar_prev - sigma**2, 0.0)))
        if sigma > 0:
            x_prev = x_prev + sigma * randn(x.shape, generator, x.device, x.dtype)
        return x_prev


def _guide(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guidance: eps_uncond + guidance * (eps_cond - eps_uncond), in one op."""
    return torch.lerp(eps_uncond, eps_cond, guidance)


def _two_call_predictor(
    model_fn: ModelFn, cond: Any, guidance: float, batch_size: int, device: torch.device | str
) -> NoisePredictor:
    """The noise by calling ``model_fn`` per branch: with ``cond``, then (guided) with ``None``."""

    def predict(i: int, t: int, x: torch.Tensor) -> torch.Tensor:
        t_batch = torch.full((batch_size,), t, dtype=torch.long, device=device)  # (B,)
        eps = model_fn(x, t_batch, cond)
        return eps if guidance == 1.0 else _guide(eps, model_fn(x, t_batch, None), guidance)

    return predict


def _batched_predictor(step_fn: StepFn, guidance: float) -> NoisePredictor:
    """The noise from a prepared model's ``step_fn``, both guidance branches in its one call."""

    def predict(i: int, t: int, x: torch.Tensor) -> torch.Tensor:
        eps = step_fn(i, x)  # (B, ...) or, guided, (2B, ...)
        if guidance == 1.0:
            return eps
        eps_cond, eps_uncond = eps.chunk(2)  # (B, ...) each
        return _guide(eps_cond, eps_uncond, guidance)

    return predict
