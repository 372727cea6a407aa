"""The diagnostics nodes inside ComfyUI's prompt executor, against scikit-image and numpy.

Images enter the graphs the way users load them: PNG files in ComfyUI's input folder, read by
the core LoadImage / LoadImageMask nodes. The reference numbers are computed from the images the
graph actually carried (captured), so PNG quantisation does not matter.
"""

from __future__ import annotations

import math
from pathlib import Path

import folder_paths
import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim

from comfy_graph import GraphExecutionError

AGREEMENT = 1e-4  # acceptance criterion: agreement with an independent computation
SSIM_BORDER = 5  # scikit-image leaves (11 - 1) // 2 pixels per side out of the mean
FILE_PREFIX = "invedit-diagnostics-"
HEIGHT, WIDTH = 40, 48


def smooth_rgb(seed: int, height: int, width: int) -> np.ndarray:
    """A smooth random uint8 RGB image (bicubic upsampling of a coarse random grid)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 4, 5, generator=generator)
    image = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)
    return (image[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)


def degraded(image: np.ndarray, seed: int, amount: float = 12.0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, amount, image.shape)
    return np.clip(image.astype(np.float64) * 0.92 + 10 + noise, 0, 255).round().astype(np.uint8)


def disc_mask(height: int, width: int) -> np.ndarray:
    rows, cols = np.mgrid[:height, :width]
    inside = (rows - 0.45 * height) ** 2 + (cols - 0.6 * width) ** 2 < (0.3 * height) ** 2
    return np.where(inside, 255, 0).astype(np.uint8)


@pytest.fixture(scope="module")
def input_files() -> dict[str, str]:
    """PNG files in ComfyUI's input folder, by role; removed after the module."""
    folder = Path(folder_paths.get_input_directory())
    folder.mkdir(parents=True, exist_ok=True)
    reference0, reference1 = smooth_rgb(0, HEIGHT, WIDTH), smooth_rgb(1, HEIGHT, WIDTH)
    tiny = smooth_rgb(2, 8, 16)
    arrays = {
        "reference0": reference0, "result0": degraded(reference0, 10),
        "reference1": reference1, "result1": degraded(reference1, 11, amount=25.0),
        "mask": np.repeat(disc_mask(HEIGHT, WIDTH)[..., None], 3, axis=2),
        "tiny_reference": tiny, "tiny_result": degraded(tiny, 12),
        "other_size": smooth_rgb(3, HEIGHT, WIDTH + 8),
    }
    names = {}
    for role, array in arrays.items():
        names[role] = f"{FILE_PREFIX}{role}.png"
        Image.fromarray(array).save(folder / names[role])
    yield names
    for name in names.values():
        (folder / name).unlink(missing_ok=True)


def load(graph, name: str):
    return graph.node("LoadImage", image=name).out(0)


def ssim_reference(a: np.ndarray, b: np.ndarray, full: bool = False):
    """scikit-image's SSIM of one [H, W, 3] image with PIE-Bench's settings."""
    return sk_ssim(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0,
                   channel_axis=2, full=full)


def reconstruction_graph(graph, reference, result, mask=None, gain: float = 4.0):
    inputs = dict(reference=reference, result=result, heatmap_gain=gain)
    if mask is not None:
        inputs["mask"] = mask
    node = graph.node("InvEditReconstructionError", **inputs)
    for index, key in enumerate(("report", "heatmap", "psnr", "ssim")):
        graph.capture(key, node.out(index))
    graph.capture("reference", reference)
    graph.capture("result", result)
    return node


def test_reconstruction_error_agrees_with_scikit_image(graph, run_graph, input_files):
    reference = graph.node("ImageBatch", image1=load(graph, input_files["reference0"]),
                           image2=load(graph, input_files["reference1"])).out(0)
    result = graph.node("ImageBatch", image1=load(graph, input_files["result0"]),
                        image2=load(graph, input_files["result1"])).out(0)
    node = reconstruction_graph(graph, reference, result)
    out = run_graph(graph)
    images = out["reference"].double().numpy(), out["result"].double().numpy()
    assert images[0].shape == (2, HEIGHT, WIDTH, 3)
    psnrs = [sk_psnr(images[0][i], images[1][i], data_range=1.0) for i in range(2)]
    ssims = [ssim_reference(images[0][i], images[1][i]) for i in range(2)]
    assert abs(out["psnr"] - np.mean(psnrs)) < AGREEMENT
    assert abs(out["ssim"] - np.mean(ssims)) < AGREEMENT
    assert 15 < psnrs[1] < psnrs[0] < 40 and ssims[1] < ssims[0] < 0.99  # the two images really differ
    # The report lists each image and the mean, to 4 decimals.
    for index in range(2):
        assert f"{psnrs[index]:.4f}" in out["report"] and f"{ssims[index]:.4f}" in out["report"]
    assert f"{np.mean(psnrs):.4f}" in out["report"] and "mean" in out["report"]
    assert "inside mask" not in out["report"]
    assert out.ui[node.node_id]["text"][0] == out["report"]
    # Heat map: mean |error| over channels times the gain, through black-red-yellow-white.
    heat = out["heatmap"]
    assert heat.shape == (2, HEIGHT, WIDTH, 3) and heat.dtype == torch.float32
    level = np.clip(np.abs(images[0] - images[1]).mean(axis=3) * 4.0, 0, 1) * 3
    expected = np.stack([np.clip(level - segment, 0, 1) for segment in range(3)], axis=3)
    assert np.abs(heat.numpy() - expected).max() < 1e-5


def test_masked_reconstruction_error_agrees_with_explicit_computation(graph, run_graph, input_files):
    reference, result = load(graph, input_files["reference1"]), load(graph, input_files["result1"])
    mask = graph.node("LoadImageMask", image=input_files["mask"], channel="red")
    graph.capture("mask", mask)
    reconstruction_graph(graph, reference, result, mask=mask)
    out = run_graph(graph)
    a, b = out["reference"][0].double().numpy(), out["result"][0].double().numpy()
    inside = out["mask"][0].numpy() >= 0.5
    assert 0.1 < inside.mean() < 0.5
    expected_psnr = 10 * np.log10(1.0 / ((a - b) ** 2)[inside].mean())
    _, ssim_map = ssim_reference(a, b, full=True)
    crop = (slice(SSIM_BORDER, -SSIM_BORDER), slice(SSIM_BORDER, -SSIM_BORDER))
    expected_ssim = ssim_map[crop][inside[crop]].mean()
    assert abs(out["psnr"] - expected_psnr) < AGREEMENT
    assert abs(out["ssim"] - expected_ssim) < AGREEMENT
    assert abs(out["ssim"] - ssim_reference(a, b)) > 10 * AGREEMENT  # the mask changes the score
    assert "inside mask" in out["report"]


def test_small_test_bed_images_get_psnr_and_mse_only(graph, run_graph, input_files):
    reconstruction_graph(graph, load(graph, input_files["tiny_reference"]), load(graph, input_files["tiny_result"]))
    out = run_graph(graph)
    a, b = out["reference"][0].double().numpy(), out["result"][0].double().numpy()
    assert a.shape == (8, 16, 3)
    assert abs(out["psnr"] - sk_psnr(a, b, data_range=1.0)) < AGREEMENT
    assert math.isnan(out["ssim"])
    assert "SSIM not computed" in out["report"] and "11x11" in out["report"] and "16x8" in out["report"]
    assert f"{((a - b) ** 2).mean():.4e}" in out["report"]
    assert out["heatmap"].shape == (1, 8, 16, 3)


def test_one_reference_is_compared_with_every_result(pack_nodes):
    generator = torch.Generator().manual_seed(0)
    reference = torch.rand(1, 16, 16, 3, generator=generator)
    results = (reference + 0.05 * torch.randn(3, 16, 16, 3, generator=generator)).clamp(0, 1)
    output = pack_nodes["InvEditReconstructionError"].execute(reference=reference, result=results, heatmap_gain=4.0)
    _, heatmap, mean_psnr, _ = output.result
    expected = [sk_psnr(reference[0].double().numpy(), results[i].double().numpy(), data_range=1.0) for i in range(3)]
    assert abs(mean_psnr - np.mean(expected)) < AGREEMENT and heatmap.shape == (3, 16, 16, 3)


def test_reconstruction_error_refuses_bad_inputs(pack_nodes, graph, run_graph, input_files):
    node = pack_nodes["InvEditReconstructionError"]
    image = torch.rand(2, 16, 16, 3)
    with pytest.raises(ValueError, match="same size.*Upscale Image"):
        node.execute(reference=image, result=torch.rand(2, 16, 20, 3), heatmap_gain=4.0)
    with pytest.raises(ValueError, match="same batch size"):
        node.execute(reference=image, result=torch.rand(3, 16, 16, 3), heatmap_gain=4.0)
    with pytest.raises(ValueError, match="selects no pixel.*disconnect the mask"):
        node.execute(reference=image, result=image, heatmap_gain=4.0, mask=torch.full((16, 16), 0.4))
    with pytest.raises(ValueError, match="mask is 8x8.*images are 16x16"):
        node.execute(reference=image, result=image, heatmap_gain=4.0, mask=torch.ones(1, 8, 8))
    border = torch.zeros(1, 16, 16)
    border[:, :3] = 1.0
    with pytest.raises(ValueError, match="border"):
        node.execute(reference=image, result=image, heatmap_gain=4.0, mask=border)
    # Through the executor the message reaches the user unchanged.
    reconstruction_graph(graph, load(graph, input_files["reference0"]), load(graph, input_files["other_size"]))
    with pytest.raises(GraphExecutionError, match="resize one to the other") as error:
        run_graph(graph)
    assert error.value.node_type == "InvEditReconstructionError"


# --- latent normality ------------------------------------------------------------------------


def numpy_patch_correlation(latents: np.ndarray, patch: int = 8, top_k: int = 20, eps: float = 1e-5) -> float:
    """luk-st/taba's top-k patch correlation (whole patches), written out with numpy."""
    samples, _, height, width = latents.shape
    scores = []
    for top in range(0, height - patch + 1, patch):
        for left in range(0, width - patch + 1, patch):
            vectors = latents[:, :, top:top + patch, left:left + patch].reshape(samples, -1)
            zscored = (vectors - vectors.mean(axis=0)) / (vectors.std(axis=0, ddof=1) + eps)
            upper = np.abs(np.corrcoef(zscored.T)[np.triu_indices(vectors.shape[1], k=1)])
            scores.append(np.sort(upper)[::-1][:top_k].mean())
    return float(np.mean(scores))


def numpy_kl(noise: np.ndarray, latents: np.ndarray, eps: float = 1e-6) -> float:
    """KL(noise || latents) of per-dimension Gaussian fits, averaged over the dimensions."""
    mean_p, std_p = noise.mean(axis=0), noise.std(axis=0, ddof=1) + eps
    mean_q, std_q = latents.mean(axis=0), latents.std(axis=0, ddof=1) + eps
    return float(np.mean(np.log(std_q / std_p) + (std_p ** 2 + (mean_p - mean_q) ** 2) / (2 * std_q ** 2) - 0.5))


def test_latent_normality_agrees_with_numpy(graph, run_graph):
    latent = graph.node("InvEditTestLatent", arch="sd15", seed=3, batch=12, height=16, width=24)
    node = graph.node("InvEditLatentNormality", latent=latent, top_k=20, seed=5)
    for index, key in enumerate(("report", "patch_correlation", "kl")):
        graph.capture(key, node.out(index))
    graph.capture("latent", latent)
    out = run_graph(graph)
    samples = out["latent"]["samples"].double()
    assert samples.shape == (12, 4, 16, 24)
    assert abs(out["patch_correlation"] - numpy_patch_correlation(samples.numpy())) < AGREEMENT
    # The Gaussian baseline as documented: N(mean, std^2) of the batch, two draws from the seed.
    draws = torch.randn((2, *samples.shape), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    mean, std = float(samples.mean()), float(samples.std())
    noise, other = (mean + std * draws).numpy()
    assert abs(out["kl"] - numpy_kl(noise, samples.numpy())) < AGREEMENT
    baseline_correlation, baseline_kl = numpy_patch_correlation(noise), numpy_kl(noise, other)
    report = out["report"]
    for value in (out["patch_correlation"], out["kl"], baseline_correlation, baseline_kl):
        assert f"{value:.4f}" in report
    assert "N(mean, std^2)" in report and "seed 5" in report and "12 latents of 4x16x24" in report
    assert out.ui[node.node_id]["text"][0] == report


def test_latent_normality_separates_noise_from_correlated_latents(pack_nodes):
    node = pack_nodes["InvEditLatentNormality"]
    generator = torch.Generator().manual_seed(0)
    noise = {"samples": 14.6 * torch.randn(64, 4, 16, 16, generator=generator)}
    pattern = torch.randn(1, 4, 16, 16, generator=generator)
    correlated = {"samples": pattern * torch.randn(64, 1, 1, 1, generator=generator)
                  + 0.2 * torch.randn(64, 4, 16, 16, generator=generator)}
    noise_report, noise_correlation, noise_kl = node.execute(latent=noise, top_k=20, seed=0).result
    report, correlation, kl = node.execute(latent=correlated, top_k=20, seed=0).result
    assert noise_correlation < 0.6 and correlation > 0.95
    assert kl > 10 * noise_kl
    assert "Only" not in noise_report  # 64 latents: no small-batch warning


def test_latent_normality_refuses_a_single_latent(graph, run_graph, pack_nodes):
    graph.node("InvEditLatentNormality", latent=graph.node("InvEditTestLatent", arch="sd15", seed=0, batch=1,
                                                           height=16, width=16), top_k=20, seed=0)
    with pytest.raises(GraphExecutionError, match="at least 2.*batch") as error:
        run_graph(graph)
    assert error.value.node_type == "InvEditLatentNormality"
    with pytest.raises(ValueError, match="4-D"):
        pack_nodes["InvEditLatentNormality"].execute(latent={"samples": torch.randn(2, 4, 3, 8, 8)}, top_k=20, seed=0)
    report = pack_nodes["InvEditLatentNormality"].execute(latent={"samples": torch.randn(3, 4, 8, 8)}, top_k=20,
                                                          seed=0).result[0]
    assert "Only 3 latents" in report
