"""The reusable mask piece (inversion/masks.py): size rule, feather ramp, coverage and batch errors, and the
blend that keeps the reference bit for bit outside the mask. Expected values are written out independently
(block means, Chebyshev distances)."""

from __future__ import annotations

import pytest
import torch

from invedit.inversion.masks import (
    MaskError,
    feathered,
    keep_outside,
    latent_mask,
    resized_to_latent,
)

LATENT = (8, 16)


def rectangle(height=8, width=16, top=2, bottom=7, left=3, right=12) -> torch.Tensor:
    mask = torch.zeros(1, 1, height, width)
    mask[..., top:bottom, left:right] = 1.0
    return mask


def chebyshev_ramp(mask: torch.Tensor, feather: int) -> torch.Tensor:
    """Independent reference: ``min(d, feather + 1) / (feather + 1)`` with ``d`` the Chebyshev distance (in
    pixels, 1 at the edge) from each inside pixel to the nearest outside pixel; the image border is no edge."""
    inside = mask[0, 0] > 0
    outside = [(r, c) for r in range(inside.shape[0]) for c in range(inside.shape[1]) if not inside[r, c]]
    expected = torch.zeros_like(mask[0, 0])
    for r in range(inside.shape[0]):
        for c in range(inside.shape[1]):
            if inside[r, c]:
                distance = min(max(abs(r - rr), abs(c - cc)) for rr, cc in outside)
                expected[r, c] = min(distance, feather + 1) / (feather + 1)
    return expected


@pytest.mark.parametrize("feather", [0, 1, 2])
def test_the_feather_is_a_chebyshev_ramp_inside_the_edge_and_zero_outside(feather):
    mask = rectangle()
    ramp = feathered(mask, feather)
    assert torch.allclose(ramp[0, 0], chebyshev_ramp(mask, feather), atol=1e-6)
    assert torch.equal(ramp[mask == 0], torch.zeros(int((mask == 0).sum())))
    # Control: a ramp grown OUTWARD (dilation) would leave the outside non-zero and fail the reference.
    grown = torch.nn.functional.max_pool2d(mask, 3, stride=1, padding=1)
    assert not torch.allclose(torch.stack([mask, grown]).mean(0)[0, 0], chebyshev_ramp(mask, 1), atol=1e-3)


def test_keep_outside_is_the_reference_bit_for_bit_where_the_mask_is_zero():
    generator = torch.Generator().manual_seed(0)
    reference, edit = torch.randn(2, 3, *LATENT, generator=generator), torch.randn(2, 3, *LATENT, generator=generator)
    mask = feathered(rectangle(), 1)
    kept = keep_outside(reference, edit, mask)
    outside = (mask == 0).expand_as(kept)
    assert torch.equal(kept[outside], reference[outside])
    full = mask == 1
    assert torch.allclose(kept[full.expand_as(kept)], edit[full.expand_as(kept)], atol=1e-6)
    # Control: the swapped blend (edit outside) is not the reference there.
    assert not torch.equal(keep_outside(edit, reference, mask)[outside], reference[outside])


def test_an_image_size_mask_is_area_averaged_to_the_latent_and_says_so():
    image_mask = torch.zeros(1, 64, 128)
    image_mask[:, :12, :20] = 1.0  # partial latent pixels at the boundary
    at_latent, resized = resized_to_latent(image_mask, LATENT)
    blocks = image_mask.reshape(1, 8, 8, 16, 8).mean(dim=(2, 4))
    assert resized and at_latent.shape == (1, 1, *LATENT)
    assert torch.allclose(at_latent[:, 0], blocks, atol=1e-6)
    same, resized_again = resized_to_latent(at_latent, LATENT)
    assert not resized_again and torch.equal(same, at_latent)


@pytest.mark.parametrize("mask, message", [
    (torch.ones(1, 64, 64), "aspect ratio"),
    (torch.zeros(1, 8, 16), "empty"),
    (torch.ones(1, 8, 16), "whole image"),
    (rectangle().expand(3, 1, 8, 16), "3 masks for 2"),
])
def test_unusable_masks_are_refused_with_what_to_do(mask, message):
    with pytest.raises(MaskError, match=message):
        latent_mask(mask, LATENT, rows=2)


def test_one_mask_serves_every_row_and_a_soft_full_mask_is_allowed():
    prepared, _ = latent_mask(rectangle()[0], LATENT, rows=3, feather=0)
    assert prepared.shape == (3, 1, *LATENT) and torch.equal(prepared[0], prepared[2])
    soft, _ = latent_mask(torch.full((1, 8, 16), 0.5), LATENT, rows=1, feather=0)
    assert torch.equal(soft, torch.full((1, 1, 8, 16), 0.5))
