import math

import pytest
import torch

from dream_policy.diffusion import DiffusionSchedule, ddim_timesteps
from dream_policy.dit import SUB_BLOCK_KINDS, DiT, DiTConfig

CFG = DiTConfig(action_dim=7, chunk=3, width=32, depth=2, heads=4, cond_dim=16, cond_tokens=3)
B = 4


def randomised_model(seed: int = 0) -> DiT:
    """A DiT whose zero-initialised (adaLN-Zero) weights are made random, so every sub-block matters."""
    torch.manual_seed(seed)
    model = DiT(CFG)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


def inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, CFG.chunk, CFG.action_dim, generator=g)  # (B, chunk, action_dim)
    t = torch.randint(0, 100, (B,), generator=g)  # (B,)
    cond = torch.randn(B, CFG.cond_tokens, CFG.cond_dim, generator=g)  # (B, N, cond_dim)
    return x, t, cond


def test_output_shape_and_zero_init():
    x, t, cond = inputs()
    model = DiT(CFG)
    out = model(x, t, cond)
    assert out.shape == (B, CFG.chunk, CFG.action_dim)
    assert torch.equal(out, torch.zeros_like(out))  # adaLN-Zero: output layer starts at zero


def test_null_condition_path():
    model = randomised_model()
    x, t, cond = inputs()
    uncond = model(x, t, None)
    assert uncond.shape == (B, CFG.chunk, CFG.action_dim) and torch.isfinite(uncond).all()
    assert not torch.allclose(uncond, model(x, t, cond))
    all_dropped = model.mask_condition(cond, torch.ones(B, dtype=torch.bool))
    assert torch.allclose(model(x, t, all_dropped), uncond, atol=1e-6)
    drop = torch.tensor([True, False, True, False])
    mixed = model(x, t, model.mask_condition(cond, drop))
    assert torch.allclose(mixed[drop], uncond[drop], atol=1e-6)
    assert torch.allclose(mixed[~drop], model(x, t, cond)[~drop], atol=1e-6)


def test_hook_that_computes_is_bit_identical():
    model = randomised_model()
    x, t, cond = inputs()
    seen = []

    def hook(i, kind, compute):
        seen.append((i, kind))
        return compute()

    assert torch.equal(model(x, t, cond, block_hook=hook), model(x, t, cond))
    assert seen == [(i, k) for i in range(CFG.depth) for k in SUB_BLOCK_KINDS]


def test_hook_returned_increment_is_used():
    model = randomised_model()
    x, t, cond = inputs()
    reference = model(x, t, cond)

    cache: dict = {}

    def record(i, kind, compute):
        cache[i, kind] = compute()
        return cache[i, kind]

    def replay(i, kind, compute):  # a cache that never recomputes
        return cache[i, kind]

    model(x, t, cond, block_hook=record)
    assert torch.equal(model(x, t, cond, block_hook=replay), reference)
    # reusing the step's increments on different inputs ignores those inputs inside the blocks
    x2, t2, _ = inputs(seed=2)
    assert not torch.allclose(model(x2, t2, cond, block_hook=replay), model(x2, t2, cond))

    def zero_ff_of_block_1(i, kind, compute):
        out = compute()
        return torch.zeros_like(out) if (i, kind) == (1, "ff") else out

    assert not torch.allclose(model(x, t, cond, block_hook=zero_ff_of_block_1), reference)


def test_overfits_tiny_batch():
    torch.manual_seed(0)
    model = DiT(CFG).train()
    x, t, cond = inputs()
    target = torch.randn(B, CFG.chunk, CFG.action_dim, generator=torch.Generator().manual_seed(3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    losses = []
    for _ in range(20):
        loss = torch.nn.functional.mse_loss(model(x, t, cond), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    assert all(p.grad is not None for p in model.parameters() if p is not model.null_cond)


def test_gradients_reach_every_block_after_a_step():
    model = randomised_model().train()
    x, t, cond = inputs()
    model(x, t, cond).square().mean().backward()
    for name, p in model.named_parameters():
        if name != "null_cond":
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_samples_with_ddim_and_guidance():
    model = randomised_model()
    _, _, cond = inputs()
    g = torch.Generator().manual_seed(0)
    out = DiffusionSchedule().ddim_sample(model, (B, CFG.chunk, CFG.action_dim), cond, steps=3, generator=g)
    assert out.shape == (B, CFG.chunk, CFG.action_dim) and torch.isfinite(out).all()


def two_forward_ddim(model: DiT, cond: torch.Tensor | None, batch: int, steps: int, guidance: float,
                     seed: int, clip: float | None) -> torch.Tensor:
    """The reference sampler: DDIM with one DiT forward per guidance branch and step, as before batching."""
    schedule = DiffusionSchedule()
    x = torch.randn((batch, CFG.chunk, CFG.action_dim), generator=torch.Generator().manual_seed(seed))
    timesteps = ddim_timesteps(schedule.train_steps, steps)
    for i, t in enumerate(timesteps):
        t_batch = torch.full((batch,), t, dtype=torch.long)
        eps = model(x, t_batch, cond)
        if guidance != 1.0:
            eps_uncond = model(x, t_batch, None)
            eps = eps_uncond + guidance * (eps - eps_uncond)
        abar = float(schedule.alphas_cumprod[t])
        abar_prev = float(schedule.alphas_cumprod[timesteps[i + 1]]) if i + 1 < steps else 1.0
        x0 = (x - math.sqrt(1 - abar) * eps) / math.sqrt(abar)
        if clip is not None:
            x0 = x0.clamp(-clip, clip)
        x = math.sqrt(abar_prev) * x0 + math.sqrt(1 - abar_prev) * eps
    return x


def sampling_model(seed: int = 0) -> DiT:
    """A DiT as training leaves it, roughly: the default initialisation plus small noise on every weight
    (``randomised_model``'s weights make untrained noise predictions too large to compare samples)."""
    torch.manual_seed(seed)
    model = DiT(CFG)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.mark.parametrize("batch, guidance, steps", [(4, 1.5, 5), (1, 1.5, 10), (2, 3.0, 5), (2, 1.0, 10)])
@pytest.mark.parametrize("seed", [0, 1])
def test_batched_sampling_equals_two_forward_formulation(batch, guidance, steps, seed):
    """ddim_sample prepares the DiT once (condition, timestep embeddings, modulations, cross-attention
    keys/values hoisted; both guidance branches in one batch) and must match one forward per branch."""
    model = sampling_model(seed)
    cond = inputs()[2][:batch]
    with torch.no_grad():
        reference = two_forward_ddim(model, cond, batch, steps, guidance, seed=3, clip=1.0)
        out = DiffusionSchedule().ddim_sample(model, (batch, CFG.chunk, CFG.action_dim), cond, steps=steps,
                                              guidance=guidance, generator=torch.Generator().manual_seed(3),
                                              clip_sample=1.0)
    assert out.shape == reference.shape and reference.abs().max() > 0.5
    assert torch.allclose(out, reference, rtol=0, atol=1e-5), (out - reference).abs().max()


def test_batched_sampling_unclipped_and_unconditional():
    """Without clipping an untrained head's samples are large (the first step divides by sqrt(abar) ~ 0):
    equal relative to their size; ``cond=None`` samples with the null condition."""
    model = sampling_model()
    cond = inputs()[2]
    with torch.no_grad():
        for c, guidance in ((cond, 1.5), (None, 1.0)):
            reference = two_forward_ddim(model, c, B, 5, guidance, seed=5, clip=None)
            generator = torch.Generator().manual_seed(5)
            out = DiffusionSchedule().ddim_sample(model, (B, CFG.chunk, CFG.action_dim), c, steps=5,
                                                  guidance=guidance, generator=generator)
            assert torch.allclose(out, reference, rtol=0, atol=1e-5 * float(reference.abs().max()))


def test_sampler_step_holds_both_branches():
    """One prepared call: conditional rows, then unconditional rows, each equal to its own forward."""
    model = randomised_model()
    x, _, cond = inputs()
    timesteps = [99, 49, 9]
    with torch.no_grad():
        sampler = model.prepare_sampling(cond, timesteps, B, guided=True)
        for i, t in enumerate(timesteps):
            eps = sampler(i, x)
            t_batch = torch.full((B,), t)
            assert eps.shape == (2 * B, CFG.chunk, CFG.action_dim)
            assert torch.allclose(eps[:B], model(x, t_batch, cond), rtol=0, atol=1e-5)
            assert torch.allclose(eps[B:], model(x, t_batch, None), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"x must be \(4, 3, 7\)"):
        sampler(0, x[:2])
    with pytest.raises(ValueError, match="cond must be"):
        model.prepare_sampling(cond[:2], timesteps, B, guided=True)


def test_step_table_is_kept_while_the_weights_stay():
    """Sampling calls over one step list share the timestep embeddings and adaLN modulations (a
    ``StepTable``) until a parameter changes, in place or by loading other weights; never a stale one."""
    model = randomised_model()
    x, _, cond = inputs()
    timesteps = [99, 66, 33]

    def matches_forward(sampler):
        return all(torch.allclose(sampler(i, x), model(x, torch.full((B,), t), cond), rtol=0, atol=1e-5)
                   for i, t in enumerate(timesteps))

    with torch.no_grad():
        first = model.prepare_sampling(cond, timesteps, B, guided=False)
        again = model.prepare_sampling(cond, timesteps, B, guided=False)
        assert again.table is first.table and matches_forward(again)
        assert model.prepare_sampling(cond, [99, 50], B, guided=False).table is not first.table
        model.blocks[1].ff.modulation.weight.add_(0.5)  # in place, as an optimiser step does
        changed = model.prepare_sampling(cond, timesteps, B, guided=False)
        assert changed.table is not first.table and matches_forward(changed)
        model.load_state_dict(randomised_model(seed=3).state_dict())
        loaded = model.prepare_sampling(cond, timesteps, B, guided=False)
        assert loaded.table is not changed.table and matches_forward(loaded)
        with pytest.raises(ValueError, match=r"step must be in \[0, 3\), got 3"):
            loaded(3, x)
    # with gradients the table is built for the call (it carries the graph) and not kept
    assert model.prepare_sampling(cond, timesteps, B, guided=False).table is not loaded.table


def test_dropout_in_training_mode():
    model = DiT(DiTConfig(width=32, depth=1, heads=2, cond_dim=16, dropout=0.1)).train()
    x, t, cond = inputs()
    assert model(x, t, cond).shape == (B, 3, 7)


def test_num_params():
    model = DiT(CFG)
    n = model.num_params()
    print(f"DiT {CFG}: {n} parameters; default config: {DiT(DiTConfig()).num_params()}")
    assert n == sum(p.numel() for p in model.parameters()) and n > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"width": 30, "heads": 4}, "width=30 must be divisible by heads=4"),
        ({"width": 33, "heads": 3}, "width=33 must be even"),
        ({"depth": 0}, "depth must be a positive int, got 0"),
        ({"action_dim": -1}, "action_dim must be a positive int, got -1"),
        ({"chunk": 2.5}, "chunk must be a positive int, got 2.5"),
        ({"dropout": 1.0}, "dropout must be in"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiTConfig(**kwargs)


def test_input_validation():
    model = DiT(CFG)
    x, t, cond = inputs()
    with pytest.raises(ValueError, match=r"x must be \(B, 3, 7\)"):
        model(x[:, :2], t, cond)
    with pytest.raises(ValueError, match=r"t must be \(B,\)"):
        model(x, t[:2], cond)
    with pytest.raises(ValueError, match="cond must be"):
        model(x, t, cond[:, :, :8])
    with pytest.raises(ValueError, match="drop must be bool"):
        model.mask_condition(cond, torch.ones(B))
