"""The policy at run time: CALVIN's ``model.step`` contract around a trained DreamVLA.

``DreamPolicy.from_checkpoint(path)`` restores the network (EMA weights when the checkpoint has
them), its config and the normalisation statistics saved beside it; ``reset()`` forgets the
history; ``step(obs, instruction)`` returns one 7-D relative action (it samples a chunk and
plays its first ``action_horizon`` actions before sampling again; every observation still
enters the history); ``predict_chunk`` the whole chunk. With ``ensemble_decay`` set (temporal ensembling, as in ACT) ``step``
samples a chunk every step and plays the weighted mean of what the last ``chunk`` chunks predicted for
this step (weight ``exp(-decay * age)``; the gripper by weighted vote). A caller that runs at the control rate but
samples less often (the ROS policy node) uses ``observe(obs)`` every control tick and
``sample_chunk(instruction)`` when it wants actions, so the history holds consecutive frames as in
training. The DiT head runs under the BAC schedule
saved next to the checkpoint by ``dream-policy calibrate-cache`` (``cache_schedule.json``) when
there is one (``cache="auto"``); ``cache="none"`` turns caching off, a path picks another schedule (a
schedule that names a distilled head runs with those DiT weights, ``CacheSchedule.head``).
History cache: the tokens that depend on one frame alone (vision latents, proprioception) are
computed once per frame and reused while the frame stays in the window (``history_cache=True``).
With a backbone trained with a learned time embedding (the place in the window) the backbone then
runs over the window: the keys and values of earlier timesteps change as the window rolls. With a
streaming backbone (``model.backbone.streaming``: rotary time, sliding window) the keys and values
of earlier timesteps are kept too (``kv_cache=True``) and each new frame is the only timestep the
backbone computes; an instruction change (the text token is context) restarts the stream from the
frames held. Without the cache a streaming model recomputes the window (unpadded) each time. Observations go through ``preprocess_history``, the loader's own preprocessing.
Stall escape (``stall_steps=n``; None takes the checkpoint's setting, 0 turns it off): when the tool
centre point has stayed within ``stall_tol`` metres over the last ``n`` observations, chunks are sampled
from ``stall_noise`` times unit noise (a higher temperature) until it moves again.
Gripper hold (``gripper_hold=n``; None takes the checkpoint's setting, 1 turns it off): ``step`` changes the
gripper command it plays only once the policy has asked for the other state in ``n`` consecutive steps
(``held_gripper``), so a single sample neither drops a grasped block nor closes on air.
Several policies on one network (``sibling``) step together through ``step_batch``
(``dream_policy.policy_batch``): ``step`` is ``begin_step`` then ``finish_step``, with the chunk sampled
in between for all of them at once.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dream_policy.bac import SCHEDULE_FILE, CacheSchedule
from dream_policy.backbone import StreamCache
from dream_policy.checkpoint import checkpoint_folder, load_normalization
from dream_policy.data.loader import preprocess_history
from dream_policy.data.normalization import GRIPPER_DIM, Normalizer, clip_actions
from dream_policy.diffusion import randn
from dream_policy.dit_cache import CachedBlocks, load_head
from dream_policy.encoders import TextEncoder, build_text_encoder
from dream_policy.model import DreamVLA

OBSERVATION_KEYS = ("rgb_static", "rgb_gripper", "robot_obs")


class DreamPolicy:
    """History window, language cache and action sampling around a ``DreamVLA`` network."""

    def __init__(self, model: DreamVLA, normalizer: Normalizer, text_encoder: TextEncoder,
                 device: str | torch.device = "cpu", seed: int = 0, action_horizon: int | None = None,
                 schedule: CacheSchedule | None = None, history_cache: bool = True, kv_cache: bool = True,
                 ensemble_decay: float | None = None, stall_steps: int | None = None,
                 stall_tol: float | None = None, stall_noise: float | None = None,
                 gripper_hold: int | None = None) -> None:
        chunk = model.config.chunk
        if ensemble_decay is None:  # the checkpoint's setting (None: no ensembling)
            ensemble_decay = model.config.ensemble_decay
        self.ensemble_decay = None if ensemble_decay is None else float(ensemble_decay)
        if self.ensemble_decay is not None and not np.isfinite(self.ensemble_decay):
            raise ValueError(f"ensemble_decay={ensemble_decay} must be a finite number (or None: off)")
        if action_horizon is None:  # the checkpoint's setting, else the whole chunk (1 when ensembling)
            action_horizon = model.config.action_horizon
            if self.ensemble_decay is not None:
                action_horizon = 1
        self.action_horizon = chunk if action_horizon is None else int(action_horizon)
        if not 1 <= self.action_horizon <= chunk:
            raise ValueError(f"action_horizon={action_horizon} must be in [1, chunk={chunk}]")
        if self.ensemble_decay is not None and self.action_horizon != 1:
            raise ValueError(f"ensemble_decay={self.ensemble_decay} samples a chunk every step: it needs "
                             f"action_horizon=1, got {self.action_horizon}")
        stall_steps = model.config.stall_steps if stall_steps is None else int(stall_steps)
        stall_tol = model.config.stall_tol if stall_tol is None else float(stall_tol)
        stall_noise = model.config.stall_noise if stall_noise is None else float(stall_noise)
        if stall_steps is not None and stall_steps != 0 and stall_steps < 2:
            raise ValueError(f"stall_steps={stall_steps} must be >= 2 (0: no stall escape)")
        if not (np.isfinite(stall_tol) and stall_tol >= 0 and np.isfinite(stall_noise) and stall_noise >= 0):
            raise ValueError(f"stall_tol={stall_tol} and stall_noise={stall_noise} must be finite numbers >= 0")
        self.stall_steps = stall_steps or None  # None: off
        gripper_hold = model.config.gripper_hold if gripper_hold is None else gripper_hold
        if gripper_hold is not None and (isinstance(gripper_hold, bool) or int(gripper_hold) != gripper_hold
                                         or gripper_hold < 1):
            raise ValueError(f"gripper_hold={gripper_hold} must be an integer >= 1 (1: off)")
        self.gripper_hold = None if gripper_hold in (None, 1) else int(gripper_hold)  # None: off
        self.stall_tol, self.stall_noise = float(stall_tol), float(stall_noise)
        self.model = model.to(device).eval()
        self.history_cache = history_cache
        self.schedule = None
        self._own_head: dict[str, torch.Tensor] | None = None  # the checkpoint's DiT while a distilled one runs
        self.set_schedule(schedule)
        self.normalizer, self.text_encoder, self.device = normalizer, text_encoder, torch.device(device)
        self.history_len = model.config.backbone.history
        self.streaming = model.config.backbone.streaming
        self.kv_cache = kv_cache and self.streaming
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        # Called with each DiT condition (1, A, D) before its chunk is sampled (e.g. to calibrate a
        # cache schedule on the states the policy itself visits); None: nothing is recorded.
        self.condition_sink: Callable[[torch.Tensor], None] | None = None
        self.reset()

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", use_ema: bool = True,
                        text_encoder: TextEncoder | None = None, action_horizon: int | None = None,
                        cache: str | Path = "auto", history_cache: bool = True,
                        ddim_steps: int | None = None, kv_cache: bool = True,
                        guidance: float | None = None, noise_scale: float | None = None,
                        ensemble_decay: float | None = None, stall_steps: int | None = None,
                        stall_tol: float | None = None, stall_noise: float | None = None,
                        gripper_hold: int | None = None) -> DreamPolicy:
        """Restore a checkpoint folder written by ``dream-policy train``, or the latest one of a run
        (``checkpoint.checkpoint_folder``; ``cache``: see the module).

        ``ddim_steps`` overrides the number of DDIM denoising steps the checkpoint was configured with
        (a cache schedule must have been calibrated for the same number); ``guidance`` its
        classifier-free guidance scale (>= 1); ``noise_scale`` the scale of the noise each sample starts from;
        ``ensemble_decay`` turns temporal ensembling on (see the module; None: the checkpoint's setting);
        ``stall_steps``, ``stall_tol``, ``stall_noise`` the stall escape and ``gripper_hold`` the gripper hold
        (see the module; None: the checkpoint's)."""
        path = checkpoint_folder(path)
        overrides = {} if ddim_steps is None else {"ddim_steps": int(ddim_steps)}
        if guidance is not None:
            overrides["guidance"] = float(guidance)
        if noise_scale is not None:
            overrides["noise_scale"] = float(noise_scale)
        model = DreamVLA.from_checkpoint(path, use_ema, **overrides)
        config = model.config
        normalizer = Normalizer.from_dict(load_normalization(path))
        return cls(model, normalizer, text_encoder or build_text_encoder(config.text_encoder), device,
                   action_horizon=action_horizon, schedule=find_schedule(path, cache), history_cache=history_cache,
                   kv_cache=kv_cache, ensemble_decay=ensemble_decay, stall_steps=stall_steps,
                   stall_tol=stall_tol, stall_noise=stall_noise, gripper_hold=gripper_hold)

    def set_schedule(self, schedule: CacheSchedule | None, source: str = "cache schedule") -> None:
        """Run the DiT head under ``schedule`` (None: no caching); it must fit this model. A schedule that
        names a distilled head (``CacheSchedule.head``) swaps those weights in; any other choice puts the
        checkpoint's own head back."""
        if schedule is not None:
            cfg = self.model.config
            schedule.check_matches(cfg.dit.depth, cfg.dit.width, cfg.ddim_steps, source)
            if schedule.mode == "none":
                schedule = None
        self._use_head(None if schedule is None else load_head(self.model, schedule))  # raises before any change
        self.schedule = schedule

    def describe(self) -> dict[str, Any]:
        """What this policy runs, as plain data for result files: the DiT cache it resolved to (schedule
        file, mode, budget, distilled head) or ``none``."""
        s = self.schedule
        if s is None:
            return {"cache": "none"}
        return {"cache": str(s.origin) if s.origin is not None else "(in memory)", "cache_mode": s.mode,
                "cache_budget": s.budget, "cache_head": None if s.head_path() is None else str(s.head_path())}

    def _use_head(self, head: torch.nn.Module | None) -> None:
        """Run with ``head``'s DiT weights (None: the checkpoint's, kept aside when first swapped out)."""
        dit = self.model.dit
        if head is None:
            if self._own_head is not None:
                dit.load_state_dict(self._own_head)
                self._own_head = None
            return
        if self._own_head is None:
            self._own_head = {k: v.detach().clone() for k, v in dit.state_dict().items()}
        dit.load_state_dict(head.state_dict())

    def seed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def reset(self) -> None:
        self._frames: deque[dict[str, np.ndarray]] = deque(maxlen=self.history_len)
        self._frame_tokens: deque[dict[str, torch.Tensor] | None] = deque(maxlen=self.history_len)
        self._queue: deque[np.ndarray] = deque()
        self._chunks: deque[np.ndarray] = deque(maxlen=self.model.config.chunk)  # ensembling: newest first
        self._instruction: str | None = None
        self._stream: StreamCache | None = None  # kv_cache: the backbone's keys/values so far
        self._stream_instruction: str | None = None
        self._unstreamed = 0  # frames observed but not yet streamed through the backbone
        self._stream_action: torch.Tensor | None = None  # the newest streamed frame's action features
        self._tcp: deque[np.ndarray] = deque(maxlen=self.stall_steps or 1)  # stall escape: recent TCP positions
        self._gripper_asked: deque[float] = deque(maxlen=self.gripper_hold or 1)  # gripper hold: recent requests
        self._gripper_played: float | None = None  # gripper hold: the command played last

    def observe(self, obs: dict[str, Any]) -> None:
        """Append one frame (rgb_static, rgb_gripper, robot_obs; other keys are ignored) to the history."""
        missing = [k for k in OBSERVATION_KEYS if k not in obs]
        if missing:
            raise KeyError(f"observation lacks {missing}; the policy needs {list(OBSERVATION_KEYS)}")
        self._frames.append({k: np.asarray(obs[k]) for k in OBSERVATION_KEYS})
        if self.stall_steps is not None:
            self._tcp.append(np.asarray(obs["robot_obs"], np.float64)[:3])
        self._frame_tokens.append(None)
        self._unstreamed += 1

    def _streamed_condition(self, lang: torch.Tensor, instruction: str) -> torch.Tensor:
        """kv_cache: stream the frames not streamed yet (all held ones after an instruction change, or
        when frames left the window unstreamed) and return the newest timestep's action features."""
        self._encode_missing()
        if self._stream is None or instruction != self._stream_instruction or self._unstreamed > len(self._frames):
            self._stream = StreamCache(self.model.config.backbone.depth)
            self._stream_instruction, self._unstreamed = instruction, len(self._frames)
        frames = list(self._frame_tokens)
        for tokens in frames[len(frames) - self._unstreamed:]:
            self._stream_action = self.model.stream_step(tokens, lang, self._stream)["action"]
        self._unstreamed = 0
        return self._stream_action  # the newest frame's, also when sampled again without a new frame

    def _encode_missing(self) -> None:
        todo = [i for i, tokens in enumerate(self._frame_tokens) if tokens is None]
        if todo:
            obs = preprocess_history([self._frames[i] for i in todo], OBSERVATION_KEYS, self.normalizer)
            encoded = self.model.encode_frames({k: v[None].to(self.device) for k, v in obs.items()})  # (1, n, ...)
            for j, i in enumerate(todo):
                self._frame_tokens[i] = {g: x[:, j:j + 1] for g, x in encoded.items()}

    def _encoded_frames(self) -> dict[str, torch.Tensor]:
        """Per-frame token groups of the window, encoding only frames not encoded before; a short
        history is padded with its first frame (not for streaming backbones, which need no padding)."""
        self._encode_missing()
        tokens = list(self._frame_tokens)
        if not self.streaming:
            tokens = [tokens[0]] * (self.history_len - len(tokens)) + tokens  # pad a short history
        return {g: torch.cat([t[g] for t in tokens], dim=1) for g in tokens[0]}  # (1, T, n, D)

    def _batch(self, instruction: str) -> dict[str, Any]:
        lang = self.text_encoder.encode([instruction]).to(self.device)  # (1, lang_dim)
        if self.history_cache:
            return {"frame_tokens": self._encoded_frames(), "lang_emb": lang}
        frames = list(self._frames)
        if not self.streaming:
            frames = [frames[0]] * (self.history_len - len(frames)) + frames  # pad a short history
        history = preprocess_history(frames, OBSERVATION_KEYS, self.normalizer)
        return {"history": {k: v[None].to(self.device) for k, v in history.items()}, "lang_emb": lang}

    @torch.no_grad()
    def predict_chunk(self, obs: dict[str, Any], instruction: str) -> np.ndarray:
        """The action chunk (chunk, 7) for this observation (appended to the history)."""
        self.observe(obs)
        return self.sample_chunk(instruction)

    @torch.no_grad()
    def sample_chunk(self, instruction: str, noise_scale: float | None = None) -> np.ndarray:
        """The action chunk (chunk, 7) for the current history (``observe`` at least one frame first);
        ``noise_scale`` overrides the checkpoint's sampling temperature for this chunk (None: the
        checkpoint's, or ``stall_noise`` while the arm is stalled)."""
        cond = self.condition(instruction)
        noise = self.start_noise(noise_scale)
        hook = CachedBlocks(self.schedule) if self.schedule is not None else None
        chunk = self.model.sample_actions(cond, block_hook=hook, noise=noise)[0]
        return clip_actions(chunk.cpu().numpy().astype(np.float64))

    def condition(self, instruction: str) -> torch.Tensor:
        """The DiT condition (1, A, D) for the current history and ``instruction`` (given to
        ``condition_sink``)."""
        if not self._frames:
            raise RuntimeError("sample_chunk needs a history: observe(obs) at least one frame first")
        if self.kv_cache:
            lang = self.text_encoder.encode([instruction]).to(self.device)  # (1, lang_dim)
            cond = self._streamed_condition(lang, instruction)
        else:
            cond = self.model.features(self._batch(instruction))["action"]  # (1, A, D)
        self.sink(cond)
        return cond

    def sink(self, cond: torch.Tensor) -> None:
        if self.condition_sink is not None:
            self.condition_sink(cond.detach().cpu().clone())

    def temperature(self, noise_scale: float | None = None) -> float:
        """The scale of the next chunk's starting noise: ``noise_scale`` if given, else ``stall_noise`` while
        the arm is stalled, else the checkpoint's."""
        if noise_scale is not None:
            return float(noise_scale)
        if self.stall_steps is not None and stalled(list(self._tcp), self.stall_steps, self.stall_tol):
            return self.stall_noise
        return float(self.model.config.noise_scale)

    def start_noise(self, noise_scale: float | None = None) -> torch.Tensor:
        """The next chunk's starting sample (1, chunk, 7): unit noise from this policy's generator times
        ``temperature(noise_scale)``."""
        cfg = self.model.config
        scale = self.temperature(noise_scale)
        return randn((1, cfg.chunk, cfg.action_dim), self.generator, self.device, torch.float32) * scale

    def step(self, obs: dict[str, Any], instruction: str) -> np.ndarray:
        """CALVIN's contract: one relative action. A new instruction drops the queued actions."""
        if self.begin_step(obs, instruction):
            return self.finish_step(self.sample_chunk(instruction))
        return self.finish_step(None)

    def begin_step(self, obs: dict[str, Any], instruction: str) -> bool:
        """``step``'s first half: take the observation and instruction; whether this step needs a new chunk
        (then ``finish_step(chunk)``, else ``finish_step(None)``)."""
        self.observe(obs)
        if instruction != self._instruction:
            self._queue.clear()
            self._chunks.clear()
            if self.stall_steps is not None:  # a new subtask: stillness is counted from its first frame
                self._tcp.clear()
                self._tcp.append(np.asarray(obs["robot_obs"], np.float64)[:3])
            self._instruction = instruction
        return self._wants_chunk()

    def _wants_chunk(self) -> bool:
        return self.ensemble_decay is not None or not self._queue

    def finish_step(self, chunk: np.ndarray | None) -> np.ndarray:
        """``step``'s second half: the action to play, given the chunk ``begin_step`` asked for (or None)."""
        if (chunk is None) == self._wants_chunk():
            raise RuntimeError("finish_step takes a chunk exactly when begin_step asked for one")
        if self.ensemble_decay is not None:
            self._chunks.appendleft(chunk)
            action = ensemble_action(list(self._chunks), self.ensemble_decay)
        else:
            if chunk is not None:
                self._queue.extend(chunk[: self.action_horizon])
            action = self._queue.popleft()
        if self.gripper_hold is not None:  # the gripper is the robot's state: held across instructions too
            self._gripper_asked.append(float(action[GRIPPER_DIM]))
            self._gripper_played = held_gripper(self._gripper_played, list(self._gripper_asked), self.gripper_hold)
            action = action.copy()
            action[GRIPPER_DIM] = self._gripper_played
        return action

    def sibling(self, seed: int = 0) -> DreamPolicy:
        """Another policy on the same network, schedule and settings, with its own history and generator:
        policies that ``step_batch`` runs in one batched network call."""
        other = copy.copy(self)
        other.generator = torch.Generator(device=self.device).manual_seed(seed)
        other.condition_sink = None
        other.reset()
        return other

    @staticmethod
    def step_batch(policies: Sequence[DreamPolicy], observations: Sequence[dict[str, Any]],
                   instructions: Sequence[str]) -> list[np.ndarray]:
        """``step`` of each policy (siblings: one network) with one batched network call for all chunks."""
        from dream_policy.policy_batch import step_batch

        return step_batch(policies, observations, instructions)


def stalled(positions: list[np.ndarray], steps: int, tol: float) -> bool:
    """Whether the last ``steps`` positions (3-D) all lie within ``tol`` of their centre (bounding box
    half-diagonal): the arm has not moved. False while fewer than ``steps`` positions are known."""
    if len(positions) < steps:
        return False
    points = np.asarray(positions[-steps:], np.float64)
    return bool(np.linalg.norm(points.max(axis=0) - points.min(axis=0)) / 2 <= tol)


def held_gripper(played: float | None, asked: list[float], hold: int) -> float:
    """The gripper command (±1) to play: ``played`` was played last (None: nothing yet, the newest request
    goes), ``asked`` the policy's latest requests (oldest first). It changes only when the last ``hold``
    requests all ask for the other state."""
    if not asked:
        raise ValueError("held_gripper needs at least the newest request")
    if played is None:
        return float(asked[-1])
    recent = asked[-hold:]
    if len(recent) == hold and all(np.sign(a) != np.sign(played) for a in recent):
        return float(asked[-1])
    return float(played)


def ensemble_action(chunks: list[np.ndarray], decay: float) -> np.ndarray:
    """Temporal ensembling: ``chunks[age]`` was sampled ``age`` steps ago (newest first, each (chunk, 7),
    gripper already ±1); the action for now is the mean of ``chunks[age][age]`` weighted ``exp(-decay * age)``,
    the gripper the sign of its weighted mean (the newest chunk's on a tie)."""
    if not chunks or len(chunks) > len(chunks[0]):
        raise ValueError(f"ensemble_action needs 1..chunk={len(chunks[0]) if chunks else '?'} chunks, got {len(chunks)}")
    preds = np.stack([chunk[age] for age, chunk in enumerate(chunks)])  # (n, 7)
    weights = np.exp(-decay * np.arange(len(chunks)))
    action = weights @ preds / weights.sum()
    vote = action[GRIPPER_DIM]
    action[GRIPPER_DIM] = preds[0, GRIPPER_DIM] if vote == 0 else np.sign(vote)
    return action


def find_schedule(ckpt: Path, cache: str | Path) -> CacheSchedule | None:
    """The schedule ``cache`` asks for: "auto" (the checkpoint's, if any), "none", or a JSON path."""
    if str(cache) == "none":
        return None
    path = ckpt / SCHEDULE_FILE if str(cache) == "auto" else Path(cache)
    if str(cache) == "auto" and not path.is_file():
        return None
    if not path.is_file():
        raise FileNotFoundError(f"cache schedule {path} does not exist (cache= takes auto, none or a path)")
    return CacheSchedule.load(path)


def make_checkpoint_policy(ckpt: str | None = None, device: str = "cpu", action_horizon: int | None = None,
                           cache: str = "auto", ddim_steps: int | None = None, guidance: float | None = None,
                           noise_scale: float | None = None, ensemble_decay: float | None = None,
                           stall_steps: int | None = None, stall_tol: float | None = None,
                           stall_noise: float | None = None, gripper_hold: int | None = None,
                           **_: object) -> DreamPolicy:
    """Registry factory (``policy=checkpoint ckpt=PATH [action_horizon=k] [cache=auto|none|PATH] [ddim_steps=n]
    [guidance=g] [noise_scale=s] [ensemble_decay=m] [stall_steps=n stall_tol=m stall_noise=s] [gripper_hold=n]``)."""
    if not ckpt:
        raise ValueError("policy=checkpoint needs ckpt=PATH (a checkpoint folder from dream-policy train)")
    torch.set_num_threads(1)  # small networks on a 2-core CPU: threads cost more than they give
    return DreamPolicy.from_checkpoint(ckpt, device, action_horizon=action_horizon, cache=cache,
                                       ddim_steps=ddim_steps, guidance=guidance, noise_scale=noise_scale,
                                       ensemble_decay=ensemble_decay, stall_steps=stall_steps,
                                       stall_tol=stall_tol, stall_noise=stall_noise,
                                       gripper_hold=gripper_hold)
