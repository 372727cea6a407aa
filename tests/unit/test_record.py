"""InversionRecord.select_images: picking batch rows of an INVERSION."""

from __future__ import annotations

import torch

from invedit.inversion import InversionTrajectory
from invedit.inversion.record import InversionRecord, Unconditioning

STEPS, BATCH, CHANNELS, SIDE, TOKENS, WIDTH = 3, 4, 2, 5, 6, 8


def record_with_contexts(context_batch: int) -> InversionRecord:
    generator = torch.Generator().manual_seed(3)
    sigmas = torch.linspace(0.0, 2.0, STEPS + 1)
    latents = torch.randn(STEPS + 1, BATCH, CHANNELS, SIDE, SIDE, generator=generator)
    contexts = torch.randn(STEPS, context_batch, TOKENS, WIDTH, generator=generator)
    return InversionRecord(
        trajectory=InversionTrajectory(sigmas=sigmas, latents=latents, model_calls=STEPS),
        sampling_sigmas=sigmas.flip(0), settings={"steps": STEPS}, positive="source prompts",
        unconditioning=Unconditioning("null-text", "empty prompt", contexts),
    )


def test_selected_rows_are_the_batch_rows_in_the_order_asked():
    record = record_with_contexts(BATCH)
    rows = [2, 0, 2]
    picked = record.select_images(rows)
    assert torch.equal(picked.trajectory.latents, record.trajectory.latents[:, rows])
    assert torch.equal(picked.trajectory.noise, record.trajectory.noise[rows])
    assert torch.equal(picked.unconditioning.step_contexts, record.unconditioning.step_contexts[:, rows])
    assert torch.equal(picked.step_targets(), record.step_targets()[:, rows])
    # What the rows do not index stays as it is; the original record is not changed.
    assert picked.sampling_sigmas is record.sampling_sigmas and picked.settings == record.settings
    assert picked.positive == "source prompts"
    assert record.trajectory.latents.shape[1] == BATCH


def test_contexts_shared_by_every_row_are_kept():
    record = record_with_contexts(1)
    picked = record.select_images([3])
    assert picked.trajectory.latents.shape[1] == 1
    assert picked.unconditioning.step_contexts is record.unconditioning.step_contexts


def test_a_record_without_unconditioning_selects_its_trajectory():
    record = record_with_contexts(BATCH).with_changes(unconditioning=None)
    picked = record.select_images([1])
    assert picked.unconditioning is None
    assert torch.equal(picked.trajectory.latents[:, 0], record.trajectory.latents[:, 1])
