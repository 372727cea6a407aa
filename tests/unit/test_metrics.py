"""Image and latent metrics against scikit-image and explicit numpy computations (no ComfyUI)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import mean_squared_error as sk_mse
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim

from invedit.inversion.metrics import (
    SSIM_WINDOW,
    error_heatmap,
    error_map,
    gaussian_kl,
    heat_colormap,
    kl_to_noise,
    latent_normality,
    latent_stats,
    mse,
    patch_correlation,
    plain_mask,
    psnr,
    reconstruction_scores,
    ssim,
    ssim_map,
    ssim_window_fits,
)

# The acceptance bound is 1e-4. Float64 inputs agree to ~1e-15 (measured), so they are held to
# FLOAT64_AGREEMENT, tight enough to tell population from sample covariance (3e-5 apart on smooth
# images); float32 inputs agree to ~4e-7 (PSNR) and are held to the acceptance bound.
AGREEMENT = 1e-4
FLOAT64_AGREEMENT = 1e-9
SSIM_BORDER = (SSIM_WINDOW - 1) // 2
SIZES = [(11, 11), (11, 16), (16, 24), (32, 20), (48, 48)]


def sk_ssim_reference(a: np.ndarray, b: np.ndarray, full: bool = False):
    """scikit-image's SSIM of one ``[C, H, W]`` image with PIE-Bench's settings (grey: C = 1)."""
    if a.shape[0] == 1:
        return sk_ssim(a[0], b[0], gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0,
                       full=full)
    return sk_ssim(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0,
                   channel_axis=0, full=full)


def image_pair(kind: str, channels: int, height: int, width: int, batch: int = 2, seed: int = 0):
    """A reference in [0, 1] and a degraded copy: white noise or smooth (upsampled) content."""
    generator = torch.Generator().manual_seed(seed)
    if kind == "random":
        reference = torch.rand(batch, channels, height, width, generator=generator, dtype=torch.float64)
    else:
        coarse = torch.rand(batch, channels, 3, 4, generator=generator, dtype=torch.float64)
        reference = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True).clamp(0, 1)
    noise = 0.05 * torch.randn(reference.shape, generator=generator, dtype=torch.float64)
    result = (0.9 * reference + 0.05 + noise).clamp(0, 1)
    return reference, result


# --- PSNR / MSE / SSIM --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["random", "smooth"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("height, width", SIZES)
def test_image_metrics_match_scikit_image(kind, channels, height, width):
    reference, result = image_pair(kind, channels, height, width)
    ours_ssim, ours_psnr, ours_mse = ssim(reference, result), psnr(reference, result), mse(reference, result)
    assert ours_ssim.shape == ours_psnr.shape == ours_mse.shape == (2,)
    for index in range(2):
        a, b = reference[index].numpy(), result[index].numpy()
        assert abs(float(ours_ssim[index]) - sk_ssim_reference(a, b)) < FLOAT64_AGREEMENT
        assert abs(float(ours_psnr[index]) - sk_psnr(a, b, data_range=1.0)) < FLOAT64_AGREEMENT
        assert abs(float(ours_mse[index]) - sk_mse(a, b)) < FLOAT64_AGREEMENT
    # The images really differ: SSIM well below 1, a finite PSNR.
    assert float(ours_ssim.max()) < 0.99 and math.isfinite(float(ours_psnr.max()))


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_map_is_scikit_images_full_map_without_its_border(channels):
    reference, result = image_pair("smooth", channels, 20, 27)
    ours = ssim_map(reference, result)
    assert ours.shape == (2, channels, 20 - 2 * SSIM_BORDER, 27 - 2 * SSIM_BORDER)
    for index in range(2):
        _, full_map = sk_ssim_reference(reference[index].numpy(), result[index].numpy(), full=True)
        inner = full_map.reshape(channels, 20, 27)[:, SSIM_BORDER:-SSIM_BORDER, SSIM_BORDER:-SSIM_BORDER]
        assert np.abs(ours[index].numpy() - inner).max() < FLOAT64_AGREEMENT


def test_float32_images_match_float64_reference():
    reference, result = image_pair("smooth", 3, 32, 32)
    ours = ssim(reference.float(), result.float())
    expected = [sk_ssim_reference(reference[i].numpy(), result[i].numpy()) for i in range(2)]
    assert torch.allclose(ours, torch.tensor(expected, dtype=torch.float64), atol=AGREEMENT, rtol=0)
    assert torch.allclose(psnr(reference.float(), result.float()),
                          torch.tensor([sk_psnr(reference[i].numpy(), result[i].numpy(), data_range=1.0)
                                        for i in range(2)], dtype=torch.float64), atol=AGREEMENT, rtol=0)


def test_identical_images_score_perfectly():
    reference, _ = image_pair("random", 3, 16, 16)
    assert torch.equal(mse(reference, reference), torch.zeros(2, dtype=torch.float64))
    assert torch.isinf(psnr(reference, reference)).all()
    assert torch.allclose(ssim(reference, reference), torch.ones(2, dtype=torch.float64), atol=1e-12, rtol=0)


def test_psnr_of_a_known_error():
    reference = torch.zeros(1, 3, 12, 12, dtype=torch.float64)
    result = reference + 0.1  # MSE 0.01 -> 20 dB
    assert float(mse(reference, result)) == pytest.approx(0.01, abs=1e-15)
    assert float(psnr(reference, result)) == pytest.approx(20.0, abs=1e-12)
    assert float(psnr(reference, result, data_range=2.0)) == pytest.approx(20.0 + 20 * math.log10(2), abs=1e-12)


@pytest.mark.parametrize("height, width", [(8, 16), (10, 11), (11, 10)])
def test_images_smaller_than_the_window_are_refused_like_scikit_image(height, width):
    reference, result = image_pair("random", 3, height, width, batch=1)
    with pytest.raises(ValueError):
        sk_ssim_reference(reference[0].numpy(), result[0].numpy())
    with pytest.raises(ValueError, match=f"at least {SSIM_WINDOW}x{SSIM_WINDOW}.*{height}x{width}"):
        ssim(reference, result)
    assert not ssim_window_fits(height, width)
    # PSNR and MSE need no window and still agree with scikit-image.
    a, b = reference[0].numpy(), result[0].numpy()
    assert abs(float(psnr(reference, result)[0]) - sk_psnr(a, b, data_range=1.0)) < FLOAT64_AGREEMENT
    assert abs(float(mse(reference, result)[0]) - sk_mse(a, b)) < FLOAT64_AGREEMENT
    scores = reconstruction_scores(reference, result)
    assert scores.ssim is None and scores.psnr.shape == (1,)


def test_reconstruction_scores_bundle_the_metrics():
    reference, result = image_pair("smooth", 3, 16, 16)
    scores = reconstruction_scores(reference, result)
    assert torch.equal(scores.mse, mse(reference, result))
    assert torch.equal(scores.psnr, psnr(reference, result))
    assert torch.equal(scores.ssim, ssim(reference, result))
    assert not scores.masked


def test_mismatched_images_are_refused():
    reference, result = image_pair("random", 3, 16, 16)
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(reference, result[:, :, :12])
    with pytest.raises(ValueError, match="4-D"):
        mse(reference[0], result[0])


# --- masks ---------------------------------------------------------------------------------


def ring_mask(batch: int, height: int, width: int) -> torch.Tensor:
    """An off-centre disc per image (different per image), ``[B, 1, H, W]`` bool."""
    rows = torch.arange(height, dtype=torch.float64).view(-1, 1)
    cols = torch.arange(width, dtype=torch.float64).view(1, -1)
    masks = [((rows - height * (0.4 + 0.1 * i)) ** 2 + (cols - width * 0.55) ** 2) < (0.3 * min(height, width)) ** 2
             for i in range(batch)]
    return torch.stack(masks).unsqueeze(1)


@pytest.mark.parametrize("channels", [1, 3])
def test_masked_metrics_match_explicit_numpy(channels):
    reference, result = image_pair("smooth", channels, 24, 32)
    mask = ring_mask(2, 24, 32)
    ours_mse, ours_psnr, ours_ssim = mse(reference, result, mask), psnr(reference, result, mask=mask), \
        ssim(reference, result, mask=mask)
    for index in range(2):
        a, b, m = reference[index].numpy(), result[index].numpy(), mask[index, 0].numpy()
        expected_mse = ((a - b) ** 2)[:, m].mean()
        assert abs(float(ours_mse[index]) - expected_mse) < 1e-12
        assert abs(float(ours_psnr[index]) - 10 * np.log10(1.0 / expected_mse)) < FLOAT64_AGREEMENT
        # scikit-image's full SSIM map, cropped as it crops, averaged over the masked pixels.
        _, full_map = sk_ssim_reference(a, b, full=True)
        full_map = full_map.reshape(channels, 24, 32)
        inner = (slice(SSIM_BORDER, -SSIM_BORDER), slice(SSIM_BORDER, -SSIM_BORDER))
        expected_ssim = np.mean([full_map[c][inner][m[inner]].mean() for c in range(channels)])
        assert abs(float(ours_ssim[index]) - expected_ssim) < FLOAT64_AGREEMENT
    # The mask matters: the masked scores differ from the whole-image ones.
    assert not torch.allclose(ours_ssim, ssim(reference, result), atol=1e-3)


def test_full_mask_equals_no_mask_and_one_mask_serves_the_batch():
    reference, result = image_pair("random", 3, 16, 16)
    full = torch.ones(1, 1, 16, 16)
    assert torch.allclose(ssim(reference, result, mask=full), ssim(reference, result), atol=1e-12, rtol=0)
    assert torch.allclose(mse(reference, result, mask=full), mse(reference, result), atol=1e-15, rtol=0)
    one = ring_mask(1, 16, 16)
    assert torch.equal(mse(reference, result, mask=one), mse(reference, result, mask=one.expand(2, 1, 16, 16)))


def test_empty_and_border_only_masks_are_refused():
    reference, result = image_pair("random", 3, 16, 16)
    empty = torch.zeros(2, 1, 16, 16)
    empty[0, 0, 8, 8] = 1  # image 1 has nothing
    with pytest.raises(ValueError, match=r"image\(s\) \[1\] selects no pixel"):
        mse(reference, result, mask=empty)
    border = torch.zeros(1, 1, 16, 16)
    border[..., :SSIM_BORDER, :] = 1
    assert torch.isfinite(psnr(reference, result, mask=border)).all()  # PSNR has no border
    with pytest.raises(ValueError, match="within 5 pixels of the border"):
        ssim(reference, result, mask=border)
    with pytest.raises(ValueError, match="mask must be"):
        mse(reference, result, mask=torch.ones(1, 1, 8, 8))


# --- error map and heat map ------------------------------------------------------------------


def test_error_map_is_the_channel_mean_of_the_absolute_error():
    reference = torch.zeros(1, 3, 2, 2)
    result = torch.tensor([[[[0.3, 0.0], [0.0, 0.0]], [[-0.3, 0.0], [0.0, 0.6]], [[0.0, 0.0], [0.0, 0.0]]]])
    expected = torch.tensor([[[[0.2, 0.0], [0.0, 0.2]]]])
    assert error_map(reference, result).shape == (1, 1, 2, 2)
    assert torch.allclose(error_map(reference, result), expected, atol=1e-7)


def test_heat_colormap_ramp():
    values = torch.tensor([0.0, 1 / 3, 2 / 3, 1.0, 2.0, -1.0]).view(1, 1, 1, 6)
    colours = heat_colormap(values)[0, :, 0].T
    expected = torch.tensor([[0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 1, 1], [0, 0, 0]], dtype=torch.float32)
    assert torch.allclose(colours, expected, atol=1e-6)
    # Brightness grows with the error; the gain scales the error before the ramp.
    ramp = heat_colormap(torch.linspace(0, 1, 50).view(1, 1, 1, 50))[0].sum(dim=0)[0]
    assert bool((ramp[1:] >= ramp[:-1]).all())
    reference, result = torch.zeros(1, 3, 1, 1), torch.full((1, 3, 1, 1), 0.1)
    assert torch.allclose(error_heatmap(reference, result, 10 / 3)[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]),
                          atol=1e-5)


# --- plain-area mask -------------------------------------------------------------------------


def test_plain_mask_on_a_hand_made_image():
    image = torch.zeros(1, 2, 4, 5)
    image[0, 0, :, 3:] = 1.0  # a vertical edge in channel 0 between columns 2 and 3
    image[0, 1] = torch.arange(5) * 0.04  # a gentle ramp in channel 1: d = 0.02, still plain
    image[0, 1, 3, :] = image[0, 1, 2, :] + 0.07  # a step between rows 2 and 3 in channel 1
    expected = torch.ones(4, 5, dtype=torch.bool)
    expected[:, 2] = False  # d = 0.5 in channel 0 (the edge to the right)
    expected[2, :] = False  # channel 1: |dI/dy| = 0.07 and |dI/dx| = 0.04 -> d = 0.055
    # (row 2, last column: |dI/dx| is padded to 0 but d = 0.035 is still too large)
    assert torch.equal(plain_mask(image)[0, 0], expected)
    assert plain_mask(image).dtype == torch.bool and plain_mask(image).shape == (1, 1, 4, 5)
    # Zero padding: the last row and column only see the difference that exists.
    flat = torch.full((1, 1, 3, 3), 0.5)
    assert bool(plain_mask(flat).all())
    assert not bool(plain_mask(image, threshold=0.01)[0, 0, 0, 0])  # channel 1's ramp: d = 0.02


# --- normality of latents --------------------------------------------------------------------


def numpy_patch_correlation(latents: np.ndarray, patch: int = 8, top_k: int = 20, eps: float = 1e-5) -> float:
    """The official code's loop (luk-st/taba), over whole patches only, with numpy."""
    samples, _, height, width = latents.shape
    patch_h, patch_w = min(patch, height), min(patch, width)
    scores = []
    for top in range(0, height - patch_h + 1, patch_h):
        for left in range(0, width - patch_w + 1, patch_w):
            vectors = latents[:, :, top:top + patch_h, left:left + patch_w].reshape(samples, -1)
            zscored = (vectors - vectors.mean(axis=0)) / (vectors.std(axis=0, ddof=1) + eps)
            correlation = np.corrcoef(zscored.T)
            upper = np.abs(correlation[np.triu_indices(correlation.shape[0], k=1)])
            scores.append(np.sort(upper)[::-1][:top_k].mean())
    return float(np.mean(scores))


@pytest.mark.parametrize("shape", [(12, 4, 16, 16), (10, 3, 12, 20), (6, 2, 4, 6)])
def test_patch_correlation_matches_the_official_loop(shape):
    generator = torch.Generator().manual_seed(1)
    smooth = F.interpolate(torch.randn(shape[0], shape[1], 3, 3, generator=generator, dtype=torch.float64),
                           size=shape[2:], mode="bilinear", align_corners=False)
    latents = smooth + 0.3 * torch.randn(shape, generator=generator, dtype=torch.float64)
    assert patch_correlation(latents) == pytest.approx(numpy_patch_correlation(latents.numpy()), abs=1e-10)
    assert patch_correlation(latents, patch=4, top_k=5) == pytest.approx(
        numpy_patch_correlation(latents.numpy(), patch=4, top_k=5), abs=1e-10)


def test_patch_correlation_of_noise_is_small_and_shrinks_with_samples():
    generator = torch.Generator().manual_seed(2)
    few = patch_correlation(torch.randn(16, 4, 16, 16, generator=generator))
    many = patch_correlation(torch.randn(256, 4, 16, 16, generator=generator))
    # Top-20 of 32640 pairs of sample correlations: about sqrt(2 ln(pairs) / N) for N samples.
    assert 0.7 < few < 0.95
    assert many < 0.3 and many < few / 2.5


def test_patch_correlation_of_one_scaled_pattern_is_one():
    generator = torch.Generator().manual_seed(3)
    pattern = torch.randn(1, 4, 16, 16, generator=generator)
    scale = torch.randn(32, 1, 1, 1, generator=generator)
    latents = pattern * scale + 0.01 * torch.randn(32, 4, 16, 16, generator=generator)
    assert patch_correlation(latents) > 0.999


def test_patch_correlation_edge_cases():
    constant = torch.ones(4, 1, 8, 8)
    assert patch_correlation(constant) == 0.0  # no variation: no correlation, not NaN
    tiny = torch.randn(5, 1, 2, 2, dtype=torch.float64)  # 4 values, 6 pairs < top_k
    assert patch_correlation(tiny) == pytest.approx(numpy_patch_correlation(tiny.numpy()), abs=1e-10)
    with pytest.raises(ValueError, match="at least 2"):
        patch_correlation(torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match=r"4-D"):
        patch_correlation(torch.randn(4, 8, 8))


def standardised(generator: torch.Generator, shape: tuple[int, ...], mean: float, std: float) -> torch.Tensor:
    """Gaussian samples whose per-dimension sample mean and (unbiased) std are exactly ``mean`` and ``std``."""
    values = torch.randn(shape, generator=generator, dtype=torch.float64)
    values = (values - values.mean(dim=0)) / values.std(dim=0)
    return mean + std * values


def test_kl_matches_the_closed_form_for_two_known_gaussians():
    generator = torch.Generator().manual_seed(4)
    noise = standardised(generator, (64, 2, 4, 4), 0.0, 1.0)
    latents = standardised(generator, (48, 2, 4, 4), 0.5, 2.0)
    expected = math.log(2.0 / 1.0) + (1.0 + 0.5 ** 2) / (2 * 2.0 ** 2) - 0.5
    assert kl_to_noise(latents, noise, eps=0.0) == pytest.approx(expected, abs=1e-12)
    assert kl_to_noise(latents, noise) == pytest.approx(expected, abs=1e-5)  # default eps 1e-6
    # The direction is KL(noise || latents): swapping gives the other closed form.
    swapped = math.log(1.0 / 2.0) + (4.0 + 0.5 ** 2) / 2.0 - 0.5
    assert kl_to_noise(noise, latents, eps=0.0) == pytest.approx(swapped, abs=1e-12)
    one = torch.tensor([1.0], dtype=torch.float64)
    assert float(gaussian_kl(0 * one, one, 0.5 * one, 2 * one)) == pytest.approx(expected, abs=1e-15)


def test_kl_of_noise_to_noise_is_near_zero_and_grows_with_scale_mismatch():
    generator = torch.Generator().manual_seed(5)
    noise = torch.randn(512, 2, 4, 4, generator=generator)
    other = torch.randn(512, 2, 4, 4, generator=generator)
    base = kl_to_noise(other, noise)
    assert 0 <= base < 0.01
    divergences = [kl_to_noise(scale * other, noise) for scale in (1.5, 2.0, 3.0)]
    assert base < divergences[0] < divergences[1] < divergences[2]
    # Per dimension about log s + 1 / (2 s^2) - 1/2 for latents s times wider.
    assert divergences[1] == pytest.approx(math.log(2.0) + 1 / 8 - 0.5, abs=0.02)
    with pytest.raises(ValueError, match="same C, H, W"):
        kl_to_noise(other, noise[:, :, :2])


def test_latent_stats():
    latents = torch.tensor([1.0, 2.0, 3.0, 6.0]).view(2, 1, 1, 2)
    stats = latent_stats(latents)
    assert stats["mean"] == pytest.approx(3.0)
    assert stats["std"] == pytest.approx(float(np.std([1, 2, 3, 6], ddof=1)))


def test_latent_normality_with_baseline():
    generator = torch.Generator().manual_seed(6)
    noise_like = 14.6 * torch.randn(32, 4, 16, 16, generator=generator)
    correlated = (torch.randn(1, 4, 16, 16, generator=generator) * torch.randn(32, 1, 1, 1, generator=generator)
                  + 0.1 * torch.randn(32, 4, 16, 16, generator=generator))
    noise_scores = latent_normality(noise_like, torch.Generator().manual_seed(0))
    again = latent_normality(noise_like, torch.Generator().manual_seed(0))
    assert noise_scores == again  # the generator decides everything
    # Noise scores like its baseline (the VAE-like scale 14.6 does not matter).
    assert noise_scores.patch_correlation == pytest.approx(noise_scores.baseline_correlation, abs=0.05)
    assert noise_scores.kl < 3 * noise_scores.baseline_kl + 0.01
    assert noise_scores.std == pytest.approx(14.6, rel=0.02) and noise_scores.samples == 32
    correlated_scores = latent_normality(correlated, torch.Generator().manual_seed(0))
    assert correlated_scores.patch_correlation > 0.99 > correlated_scores.baseline_correlation + 0.2
    assert correlated_scores.kl > 10 * correlated_scores.baseline_kl
