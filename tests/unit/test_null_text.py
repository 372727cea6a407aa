"""Null-text inversion and direct inversion on a small context-conditioned denoiser (no ComfyUI).

The reference loop of the null-text paper is written here independently, the way the paper's
code writes it: DDPM-scale latents, guidance on eps, ``prev_step`` with alphas.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from analytic import ddim_levels

from invedit.inversion import InversionConfig, SourcePin, invert, replay
from invedit.inversion.null_text import (
    STOP_BEFORE_STEP,
    NullTextConfig,
    optimise_null_text,
)

SHAPE = (1, 2, 4, 4)
TOKENS, WIDTH = 3, 5
STEPS = 10
GUIDANCE = 7.5
EMPTY_OFFSET = 0.1  # the empty prompt's context, near the source's as a text encoder makes it
LOOSE_STOP = 4e-3  # an early-stop bound this toy reaches within the inner steps


class ContextDenoiser:
    """``x0 = x - sigma * eps`` with ``eps = tanh(a * z + context_mix)``, ``z`` the DDPM-scale input."""

    def __init__(self, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        features = SHAPE[1] * SHAPE[2] * SHAPE[3]
        self.mix = torch.randn(WIDTH, features, generator=generator)
        self.gain = 0.8

    def eps(self, z: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        shift = (context.mean(dim=1) @ self.mix).reshape(context.shape[0], *SHAPE[1:])
        return torch.tanh(self.gain * z + shift * (1.0 + 0.1 * sigma.reshape(-1, 1, 1, 1)))

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        sigma_b = sigma.reshape(-1, 1, 1, 1)
        z = x / (1 + sigma_b ** 2).sqrt()
        return x - sigma_b * self.eps(z, sigma, context)


@pytest.fixture
def problem():
    """Denoiser, levels, source context, empty context, and a guidance-1 inversion of a latent."""
    denoiser = ContextDenoiser()
    generator = torch.Generator().manual_seed(3)
    source = torch.randn(1, TOKENS, WIDTH, generator=generator)
    empty = source + torch.randn(1, TOKENS, WIDTH, generator=generator) * EMPTY_OFFSET
    x_clean = torch.randn(*SHAPE, generator=generator) * 0.7
    levels = ddim_levels(STEPS, dtype=torch.float32)
    trajectory = invert(lambda x, s: denoiser(x, s, source), levels, x_clean, InversionConfig())
    return denoiser, levels, source, empty, x_clean, trajectory


def reference_null_text(denoiser, levels, trajectory, source, empty, inner_steps=10, lr=1e-2,
                        epsilon=1e-5, guidance=GUIDANCE):
    """The paper's loop (null_text_w_ptp.ipynb, NullInversion.null_optimization), on the DDPM scale."""
    abar = 1.0 / (1.0 + levels.flip(0) ** 2)           # descending sampling levels
    sig = levels.flip(0)
    all_latents = [x / (1 + s ** 2).sqrt() for x, s in zip(trajectory.latents, levels)]
    latent_cur = all_latents[-1]
    uncond_embeddings = empty.clone()
    contexts, losses, steps_taken = [], [], []

    def eps_at(z, i, context):
        x = z * (1 + sig[i] ** 2).sqrt()
        x0 = denoiser(x, sig[i].reshape(1), context)
        return (x - x0) / sig[i]

    def prev_step(eps, i, z):
        x0_pred = (z - (1 - abar[i]).sqrt() * eps) / abar[i].sqrt()
        return abar[i + 1].sqrt() * x0_pred + (1 - abar[i + 1]).sqrt() * eps

    for i in range(STEPS):
        uncond_embeddings = uncond_embeddings.clone().detach().requires_grad_(True)
        optimizer = torch.optim.Adam([uncond_embeddings], lr=lr * (1.0 - i / 100.0))
        latent_prev = all_latents[len(all_latents) - i - 2]
        with torch.no_grad():
            noise_pred_cond = eps_at(latent_cur, i, source)
        taken, loss_item = 0, None
        for _ in range(inner_steps):
            noise_pred_uncond = eps_at(latent_cur, i, uncond_embeddings)
            noise_pred = noise_pred_uncond + guidance * (noise_pred_cond - noise_pred_uncond)
            loss = torch.nn.functional.mse_loss(prev_step(noise_pred, i, latent_cur), latent_prev)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            taken += 1
            loss_item = loss.item()
            if loss_item < epsilon + i * 2e-5:
                break
        contexts.append(uncond_embeddings.detach().clone())
        losses.append(loss_item)
        steps_taken.append(taken)
        with torch.no_grad():
            eps_u = eps_at(latent_cur, i, uncond_embeddings)
            eps_c = eps_at(latent_cur, i, source)
            latent_cur = prev_step(eps_u + guidance * (eps_c - eps_u), i, latent_cur)
    return torch.stack(contexts), losses, steps_taken, latent_cur


def run_pack(denoiser, levels, trajectory, source, empty, config):
    targets = trajectory.latents[:-1].flip(0)
    return optimise_null_text(lambda x, s: denoiser(x, s, source), denoiser, levels, targets, trajectory.noise,
                              empty, config)


def test_pack_loop_equals_the_reference_loop(problem):
    denoiser, levels, source, empty, _, trajectory = problem
    ref_contexts, ref_losses, ref_steps, ref_final = reference_null_text(denoiser, levels, trajectory, source, empty)
    result = run_pack(denoiser, levels, trajectory, source, empty, NullTextConfig())
    assert result.gradient_steps == ref_steps
    assert result.losses == pytest.approx(ref_losses, rel=1e-3, abs=1e-9)
    assert float((result.step_contexts - ref_contexts).abs().max()) < 1e-5
    assert float((result.final_state - ref_final).abs().max()) < 1e-5   # final level is 0: both are x0
    # The optimisation matters here: the guided steps start far from the trajectory.
    assert max(ref_losses) > 10 * (1e-5 + (STEPS - 1) * 2e-5) or sum(ref_steps) > 3 * STEPS


def test_null_text_closes_the_guidance_gap(problem):
    denoiser, levels, source, empty, x_clean, trajectory = problem
    result = run_pack(denoiser, levels, trajectory, source, empty, NullTextConfig())
    contexts = result.step_contexts
    sampling = levels.flip(0)

    def guided(context_of_step):
        def denoise(x, sigma):
            step = int((sampling - sigma[0]).abs().argmin())
            x0_u, x0_c = denoiser(x, sigma, context_of_step(step)), denoiser(x, sigma, source)
            return x0_u + (x0_c - x0_u) * GUIDANCE
        return denoise

    plain = replay(guided(lambda step: empty), levels, trajectory.noise)
    null_text = replay(guided(lambda step: contexts[step]), levels, trajectory.noise)
    plain_error = float((plain - x_clean).pow(2).mean())
    null_error = float((null_text - x_clean).pow(2).mean())
    assert null_error < plain_error / 10, (plain_error, null_error)
    assert float((null_text - result.final_state).abs().max()) < 1e-5


def test_stop_before_step_lands_as_well_with_fewer_gradient_steps(problem):
    denoiser, levels, source, empty, _, trajectory = problem
    config = NullTextConfig(early_stop=LOOSE_STOP)
    reference = run_pack(denoiser, levels, trajectory, source, empty, config)
    early = run_pack(denoiser, levels, trajectory, source, empty, replace(config, stop_check=STOP_BEFORE_STEP))
    assert early.total_gradient_steps < reference.total_gradient_steps
    assert max(early.landing_losses) < 2 * max(reference.landing_losses)
    for step, (loss, landing) in enumerate(zip(early.losses, early.landing_losses)):
        if early.gradient_steps[step] < config.inner_steps:
            assert landing == pytest.approx(loss, rel=1e-6)
            assert landing < config.step_threshold(step)


def test_zero_learning_rate_keeps_the_initial_context(problem):
    denoiser, levels, source, empty, _, trajectory = problem
    result = run_pack(denoiser, levels, trajectory, source, empty, NullTextConfig(learning_rate=0.0))
    assert result.total_gradient_steps == 0
    assert torch.equal(result.step_contexts, empty.expand(STEPS, *empty.shape))


def test_mismatched_targets_are_refused(problem):
    denoiser, levels, source, empty, _, trajectory = problem
    with pytest.raises(ValueError, match="targets must be"):
        optimise_null_text(lambda x, s: denoiser(x, s, source), denoiser, levels[:-1], trajectory.latents[:-1],
                           trajectory.noise, empty)


def test_pinned_rows_follow_the_trajectory_and_others_are_untouched(problem):
    denoiser, levels, source, empty, x_clean, trajectory = problem
    edit_context = source.flip(1)

    def two_rows(x, sigma):
        return torch.cat([denoiser(x[:1], sigma[:1], source), denoiser(x[1:], sigma[1:], edit_context)])

    noise = trajectory.noise.repeat(2, 1, 1, 1)
    pin = SourcePin(targets=trajectory.latents[:-1].flip(0), rows=(0,))
    visited = []
    out = replay(two_rows, levels, noise, callback=lambda info: visited.append(info["x"][:1].clone()), pin=pin)
    assert torch.equal(out[:1], trajectory.latents[0])
    for step, state in enumerate(visited[1:]):
        assert torch.equal(state, pin.targets[step])
    plain_edit = replay(lambda x, s: denoiser(x, s, edit_context), levels, trajectory.noise)
    assert torch.equal(out[1:], plain_edit)
    assert float((out[1:] - x_clean).abs().max()) > 1e-2


# ---------------------------------------------------------------------------------------------
# Batches: every image is optimised on its own (issue 12)

BATCH = 3
BATCH_RELATIVE_TOLERANCE = 1e-4


def relative_error(result: torch.Tensor, reference: torch.Tensor) -> float:
    return float((result - reference).abs().max() / reference.abs().max())


@pytest.fixture
def batch_problem():
    """A batch of 3 latents, each with its own source prompt, inverted at guidance 1 together.

    Returns denoiser, levels, sources ``[3, L, D]``, empty ``[1, L, D]``, the batch trajectory.
    """
    denoiser = ContextDenoiser()
    generator = torch.Generator().manual_seed(5)
    sources = torch.randn(BATCH, TOKENS, WIDTH, generator=generator)
    empty = sources[:1] + torch.randn(1, TOKENS, WIDTH, generator=generator) * EMPTY_OFFSET
    x_clean = torch.randn(BATCH, *SHAPE[1:], generator=generator) * torch.tensor([0.3, 0.7, 1.2]).reshape(-1, 1, 1, 1)
    levels = ddim_levels(STEPS, dtype=torch.float32)
    trajectory = invert(lambda x, s: denoiser(x, s, sources), levels, x_clean, InversionConfig())
    return denoiser, levels, sources, empty, trajectory


def run_rows(denoiser, levels, trajectory, sources, initial, config, rows):
    """The pack's optimisation of the images ``rows`` of the batch problem, as one batch."""
    targets = trajectory.latents[:-1].flip(0)[:, rows]
    return optimise_null_text(lambda x, s: denoiser(x, s, sources[rows]), denoiser, levels, targets,
                              trajectory.noise[rows], initial, config)


def coupled_null_text(denoiser, levels, trajectory, sources, initial, config):
    """The rule issue 12 reported (a negative control): one loss for the whole batch, one Adam
    over all its rows, one stop decision, ``"after step"`` order."""
    sampling = levels.flip(0)
    targets = trajectory.latents[:-1].flip(0)
    x, context = trajectory.noise, initial.expand(BATCH, -1, -1).clone()
    for step in range(STEPS):
        sigma, sigma_next = sampling[step], sampling[step + 1]
        sigma_b = sigma * x.new_ones([BATCH])
        x0_cond = denoiser(x, sigma_b, sources)
        context = context.detach().requires_grad_(True)
        optimizer = torch.optim.Adam([context], lr=config.step_learning_rate(step))
        for _ in range(config.inner_steps):
            x0 = denoiser(x, sigma_b, context)
            x_next = x + (x - (x0 + (x0_cond - x0) * GUIDANCE)) / sigma * (sigma_next - sigma)
            loss = ((x_next - targets[step]) / (1 + sigma_next ** 2).sqrt()).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if float(loss.detach()) < config.step_threshold(step):
                break
        with torch.no_grad():
            x0 = denoiser(x, sigma_b, context)
            x = x + (x - (x0 + (x0_cond - x0) * GUIDANCE)) / sigma * (sigma_next - sigma)
    return x


@pytest.mark.parametrize("stop_check", ["after step", STOP_BEFORE_STEP])
@pytest.mark.parametrize("start", ["empty prompt", "own source prompt"])
def test_each_image_of_a_batch_gets_its_single_image_result(batch_problem, stop_check, start):
    denoiser, levels, sources, empty, trajectory = batch_problem
    config = NullTextConfig(early_stop=LOOSE_STOP, early_stop_growth=0.0, stop_check=stop_check)
    initial = empty if start == "empty prompt" else sources
    together = run_rows(denoiser, levels, trajectory, sources, initial, config, list(range(BATCH)))
    # The test means something only if the images stop on different Adam steps.
    assert any(len(set(steps)) > 1 for steps in together.image_gradient_steps), together.image_gradient_steps
    for row in range(BATCH):
        alone = run_rows(denoiser, levels, trajectory, sources, initial[row:row + 1] if initial.shape[0] > 1 else initial,
                         config, [row])
        assert [steps[0] for steps in alone.image_gradient_steps] == [steps[row] for steps in together.image_gradient_steps]
        assert relative_error(together.step_contexts[:, row], alone.step_contexts[:, 0]) < BATCH_RELATIVE_TOLERANCE
        assert relative_error(together.final_state[row], alone.final_state[0]) < BATCH_RELATIVE_TOLERANCE
        assert together.image_landing_losses[-1][row] == pytest.approx(alone.landing_losses[-1], rel=1e-4)
    # Negative controls: the coupled rule of issue 12, and every image starting from image 0's prompt.
    coupled = coupled_null_text(denoiser, levels, trajectory, sources, initial[:1], config)
    assert max(relative_error(coupled[row], together.final_state[row]) for row in range(BATCH)) > 1e-2
    if start != "empty prompt":
        first_prompt = run_rows(denoiser, levels, trajectory, sources, sources[:1], config, list(range(BATCH)))
        assert relative_error(first_prompt.step_contexts[:, 1], together.step_contexts[:, 1]) > 1e-2


def test_an_image_that_stopped_is_not_moved_again(batch_problem):
    denoiser, levels, sources, empty, trajectory = batch_problem
    config = NullTextConfig(early_stop=LOOSE_STOP, early_stop_growth=0.0, stop_check=STOP_BEFORE_STEP)
    seen: list[dict] = []
    run = optimise_null_text(lambda x, s: denoiser(x, s, sources), denoiser, levels,
                             trajectory.latents[:-1].flip(0), trajectory.noise, empty, config,
                             callback=lambda info: seen.append(info))
    for step in range(STEPS):
        evaluations = [info for info in seen if info["step"] == step]
        for image in range(BATCH):
            taken = run.image_gradient_steps[step][image]
            evaluated = sum(image in info["images"] for info in evaluations)
            # Evaluated once per Adam step, plus the evaluation that stopped it (or the last one).
            assert evaluated == min(taken + 1, config.inner_steps)
    assert [len(info["image_losses"]) for info in seen] == [len(info["images"]) for info in seen]


def test_a_context_of_another_batch_size_is_refused(problem):
    denoiser, levels, source, empty, _, trajectory = problem
    with pytest.raises(ValueError, match="initial_context must be"):
        optimise_null_text(lambda x, s: denoiser(x, s, source), denoiser, levels, trajectory.latents[:-1].flip(0),
                           trajectory.noise, empty.expand(2, -1, -1))


def test_pooled_layout_packs_and_unpacks_exactly_and_its_adam_is_the_two_tensors_adam():
    """PooledLayout's claim: Adam over the packed [B, 1, L*D + P] tensor is Adam over the context and the
    pooled vector as two tensors, bit for bit (Adam is element-wise). Control: a packing that drops the
    pooled part's gradient leaves the pooled vector where it started."""
    from invedit.inversion.null_text import PooledLayout

    generator = torch.Generator().manual_seed(5)
    context, pooled = torch.randn(2, TOKENS, WIDTH, generator=generator), torch.randn(2, 7, generator=generator)
    layout = PooledLayout.of(context, pooled)
    packed = layout.pack(context, pooled)
    assert packed.shape == (2, 1, TOKENS * WIDTH + 7)
    unpacked_context, unpacked_pooled = layout.unpack(packed)
    assert torch.equal(unpacked_context, context) and torch.equal(unpacked_pooled, pooled)
    steps = layout.unpack(torch.stack([packed, 2 * packed]))  # [N, B, 1, F] -> [N, B, L, D], [N, B, P]
    assert steps[0].shape == (2, 2, TOKENS, WIDTH) and torch.equal(steps[1][1], 2 * pooled)

    def loss(c: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return (c.sin().sum(dim=(1, 2)) * p.cos().sum(dim=1)).pow(2).sum()

    flat = packed.clone().requires_grad_(True)
    leaves = [context.clone().requires_grad_(True), pooled.clone().requires_grad_(True)]
    flat_adam, leaves_adam = torch.optim.Adam([flat], lr=0.05), torch.optim.Adam(leaves, lr=0.05)
    for _ in range(5):
        flat_adam.zero_grad()
        loss(*layout.unpack(flat)).backward()
        flat_adam.step()
        leaves_adam.zero_grad()
        loss(*leaves).backward()
        leaves_adam.step()
    flat_context, flat_pooled = layout.unpack(flat.detach())
    assert torch.equal(flat_context, leaves[0].detach()) and torch.equal(flat_pooled, leaves[1].detach())
    assert not torch.equal(flat_pooled, pooled)
    cut = packed.clone().requires_grad_(True)
    cut_adam = torch.optim.Adam([cut], lr=0.05)
    cut_context, cut_pooled = layout.unpack(cut)
    loss(cut_context, cut_pooled.detach()).backward()
    cut_adam.step()
    assert torch.equal(layout.unpack(cut.detach())[1], pooled)
