"""Nodes: how faithful a reconstruction is (PSNR, SSIM, MSE, heat map) and how noise-like inverted latents are.

Thin adapters: they unpack ComfyUI values, check them, call :mod:`..inversion.metrics` and
format the report, its headline first. The frontend draws no text on these nodes: wire the
report into ComfyUI's "Preview Any" node to read it on the canvas (the example workflows do).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from comfy_api.latest import io, ui

from ..inversion import metrics
from .errors import InvEditInputError
from .sockets import CATEGORY_DIAGNOSTICS

MASK_THRESHOLD = 0.5  # a MASK pixel is inside from this value up
DEFAULT_HEATMAP_GAIN = 4.0
MIN_HEATMAP_GAIN = 0.01
MAX_HEATMAP_GAIN = 1000.0
DEFAULT_TOP_K = metrics.CORRELATION_TOP_K
MAX_TOP_K = 10000
MAX_SEED = 0xFFFFFFFFFFFFFFFF
RECOMMENDED_SAMPLES = 8


# --------------------------------------------------------------------------------------------
# Unpacking and checks


def _image_bchw(image: torch.Tensor, name: str) -> torch.Tensor:
    """ComfyUI IMAGE ``[B, H, W, C]`` -> ``[B, C, H, W]`` (a view), with a clear error otherwise."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        raise InvEditInputError(f"The {name} input must be an IMAGE [batch, height, width, channels].")
    return image.movedim(-1, 1)


def _matched_images(reference: torch.Tensor, result: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both images as ``[B, C, H, W]`` on one device; a batch of 1 is compared with every image."""
    reference, result = _image_bchw(reference, "reference"), _image_bchw(result, "result")
    if reference.shape[1:] != result.shape[1:]:
        (_, ref_c, ref_h, ref_w), (_, res_c, res_h, res_w) = reference.shape, result.shape
        raise InvEditInputError(
            f"The reference is {ref_w}x{ref_h} ({ref_c} channels) but the result is {res_w}x{res_h} "
            f"({res_c} channels): compare images of the same size; resize one to the other first "
            "(e.g. Upscale Image to the reference's width and height)."
        )
    batches = (reference.shape[0], result.shape[0])
    if batches[0] != batches[1] and 1 not in batches:
        raise InvEditInputError(
            f"The reference holds {batches[0]} images and the result {batches[1]}: use the same batch size "
            "(or a single reference image, which is compared with every result)."
        )
    batch = max(batches)
    result = result.to(reference.device)
    return reference.expand(batch, -1, -1, -1), result.expand(batch, -1, -1, -1)


def _mask_b1hw(mask: Optional[torch.Tensor], batch: int, height: int, width: int) -> Optional[torch.Tensor]:
    """ComfyUI MASK ``[H, W]`` or ``[B, H, W]`` -> bool ``[B or 1, 1, H, W]`` (inside from 0.5 up)."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3):
        raise InvEditInputError("The mask input must be a MASK [height, width] or [batch, height, width].")
    mask = mask.reshape(-1, 1, *mask.shape[-2:])
    if tuple(mask.shape[-2:]) != (height, width):
        raise InvEditInputError(
            f"The mask is {mask.shape[-1]}x{mask.shape[-2]} but the images are {width}x{height}: draw the mask "
            "on the same image, or resize it to the images' size."
        )
    if mask.shape[0] not in (1, batch):
        raise InvEditInputError(
            f"The mask holds {mask.shape[0]} masks for {batch} images: give one mask, or one per image."
        )
    inside = mask >= MASK_THRESHOLD
    empty = [index for index in range(inside.shape[0]) if not bool(inside[index].any())]
    if empty:
        which = "The mask" if inside.shape[0] == 1 else f"The mask(s) of image(s) {empty}"
        raise InvEditInputError(
            f"{which} selects no pixel (no value reaches {MASK_THRESHOLD}): paint the region to score, "
            "or disconnect the mask to score the whole image."
        )
    return inside


# --------------------------------------------------------------------------------------------
# Reports


def _format_psnr(value: float) -> str:
    """A PSNR with its unit: "inf dB (identical)" when the images are equal."""
    return "inf dB (identical)" if math.isinf(value) else f"{value:.4f} dB"


def _format_ssim(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _reconstruction_report(scores: metrics.ReconstructionScores, height: int, width: int) -> str:
    """Short lines, the headline first, so that a Preview Any node shows the PSNR without scrolling:
    the mean (or the only) PSNR and SSIM, each image, the MSEs, then what was measured."""
    batch = scores.mse.numel()
    ssim_values = scores.ssim.tolist() if scores.ssim is not None else [None] * batch
    psnrs, mses = scores.psnr.tolist(), scores.mse.tolist()
    if batch == 1:
        lines = [f"PSNR {_format_psnr(psnrs[0])}, SSIM {_format_ssim(ssim_values[0])}", f"MSE {mses[0]:.4e}"]
    else:
        mean_ssim = None if scores.ssim is None else float(scores.ssim.mean())
        lines = [f"mean PSNR {_format_psnr(float(scores.psnr.mean()))}, SSIM {_format_ssim(mean_ssim)}"]
        lines += [f"image {index}: {_format_psnr(peak)}, SSIM {_format_ssim(similarity)}"
                  for index, (peak, similarity) in enumerate(zip(psnrs, ssim_values))]
        lines.append(f"MSE mean {float(scores.mse.mean()):.4e}: " + ", ".join(f"{error:.4e}" for error in mses))
    if scores.ssim is None:
        lines.append(f"SSIM not computed: {width}x{height} is under {metrics.SSIM_WINDOW}x{metrics.SSIM_WINDOW} "
                     "(the ssim output is NaN; PSNR and MSE are exact).")
    where = ", inside mask" if scores.masked else ""
    lines.append(f"({batch} image(s) of {width}x{height} (width x height){where}; images in [0, 1], data range 1; "
                 "SSIM Gaussian 11x11, sigma 1.5)")
    return "\n".join(lines)


def _normality_report(scores: metrics.NormalityScores, shape: tuple[int, ...], seed: int) -> str:
    _, channels, height, width = shape
    lines = [
        f"InvEdit latent normality: {scores.samples} latents of {channels}x{height}x{width} "
        f"(patches {scores.patch}x{scores.patch}, top-{scores.top_k} |correlation|)",
        f"{'':<26}{'latents':>12}{'Gaussian baseline':>20}",
        f"{'patch correlation':<26}{scores.patch_correlation:>12.4f}{scores.baseline_correlation:>20.4f}",
        f"{'KL(noise || x)':<26}{scores.kl:>12.4f}{scores.baseline_kl:>20.4f}",
        f"latents: mean {scores.mean:.4g}, std {scores.std:.4g}",
        f"Baseline: Gaussian noise N(mean, std^2) with this batch's mean and std, same shape, seed {seed}; "
        "its KL is between two independent draws. Scores near the baseline mean noise-like latents "
        "(There and Back Again, SDXL: DDIM inversion 0.89 correlation, 0.03 KL; noise 0.10).",
    ]
    if scores.samples < RECOMMENDED_SAMPLES:
        lines.append(
            f"Only {scores.samples} latents: with so few samples even noise correlates strongly; invert "
            f"{RECOMMENDED_SAMPLES} or more images for meaningful numbers."
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Nodes


class ReconstructionError(io.ComfyNode):
    """PSNR, SSIM and MSE of a result against its reference, with an error heat map."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InvEditReconstructionError",
            display_name="InvEdit Reconstruction Error",
            category=CATEGORY_DIAGNOSTICS,
            description=(
                "Scores how faithfully a reconstruction (or an edit, outside its edited region) reproduces "
                "the source image: PSNR, SSIM and MSE per image and on average, computed as PIE-Bench does "
                "(images in [0, 1], SSIM with an 11x11 Gaussian window, sigma 1.5; equal to scikit-image). "
                "Images smaller than 11x11 get PSNR and MSE only. A single reference image is compared "
                "with every image of the result batch."
            ),
            inputs=[
                io.Image.Input("reference", tooltip="The source image (e.g. the image you inverted)."),
                io.Image.Input("result", tooltip="The reconstruction or edit to score; same size as the reference."),
                io.Float.Input("heatmap_gain", default=DEFAULT_HEATMAP_GAIN, min=MIN_HEATMAP_GAIN,
                               max=MAX_HEATMAP_GAIN, step=0.5,
                               tooltip="The heat map shows |reference - result| (mean over channels) times this "
                                       "gain; 4 makes an error of 0.25 white. Raise it to see small errors."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional: score only inside the mask (pixels of value 0.5 or more), e.g. "
                                      "the unedited background of an edit. Same size as the images."),
            ],
            outputs=[
                io.String.Output(display_name="report",
                                 tooltip="Mean and per-image PSNR (dB), SSIM and MSE, the mean first; wire it into "
                                         "Preview Any to read it on the canvas."),
                io.Image.Output(display_name="heatmap",
                                tooltip="Absolute error times heatmap_gain: black (none), red, yellow, white."),
                io.Float.Output(display_name="psnr", tooltip="Mean PSNR in dB over the batch (inf if identical)."),
                io.Float.Output(display_name="ssim",
                                tooltip="Mean SSIM over the batch; NaN when the images are smaller than 11x11."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, reference, result, heatmap_gain, mask=None) -> io.NodeOutput:
        reference, result = _matched_images(reference, result)
        batch, _, height, width = reference.shape
        inside = _mask_b1hw(mask, batch, height, width)
        try:
            scores = metrics.reconstruction_scores(reference, result, inside)
        except ValueError as error:  # e.g. a mask lying only in the border SSIM leaves out
            raise InvEditInputError(str(error)) from error
        heatmap = metrics.error_heatmap(reference, result, heatmap_gain).movedim(1, -1).float()
        mean_ssim = float("nan") if scores.ssim is None else float(scores.ssim.mean())
        report = _reconstruction_report(scores, height, width)
        return io.NodeOutput(report, heatmap, float(scores.psnr.mean()), mean_ssim, ui=ui.PreviewText(report))


class LatentNormality(io.ComfyNode):
    """How much a batch of inverted latents looks like Gaussian noise (patch correlation, KL)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InvEditLatentNormality",
            display_name="InvEdit Latent Normality",
            category=CATEGORY_DIAGNOSTICS,
            description=(
                "Measures how noise-like a batch of inverted latents is (There and Back Again): the mean of "
                "the top-k absolute correlations between latent values within 8x8 patches, taken across the "
                "batch, and the KL divergence from Gaussian noise of per-value Gaussian fits. Both are shown "
                "next to the scores of Gaussian noise of the same shape, mean and std. DDIM inversion leaves "
                "correlated latents; a forward warm start brings them towards the baseline. Statistics are "
                "across the batch: invert 8 or more different images."
            ),
            inputs=[
                io.Latent.Input("latent", tooltip="A batch of inverted latents (the noise output of an inversion)."),
                io.Int.Input("top_k", default=DEFAULT_TOP_K, min=1, max=MAX_TOP_K,
                             tooltip="How many of the largest correlations per patch are averaged (paper: 20)."),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED,
                             tooltip="Seed of the Gaussian noise the latents are compared with."),
            ],
            outputs=[
                io.String.Output(display_name="report",
                                 tooltip="Patch correlation and KL of the latents and of the Gaussian baseline."),
                io.Float.Output(display_name="patch_correlation",
                                tooltip="Mean top-k |correlation| within patches (noise: low; DDIM: high)."),
                io.Float.Output(display_name="kl", tooltip="KL(noise || latents) per value, averaged."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, latent, top_k, seed=0) -> io.NodeOutput:
        samples = latent.get("samples") if isinstance(latent, dict) else None
        if not isinstance(samples, torch.Tensor) or samples.ndim != 4:
            raise InvEditInputError(
                "The LATENT must hold a 4-D 'samples' tensor [batch, channels, height, width] "
                "(video latents are not supported)."
            )
        if samples.shape[0] < metrics.MIN_SAMPLES:
            raise InvEditInputError(
                f"The LATENT holds {samples.shape[0]} latent, but correlations are taken across the batch and "
                f"need at least {metrics.MIN_SAMPLES}: invert a batch of different images "
                f"({RECOMMENDED_SAMPLES} or more recommended) and connect its noise output."
            )
        if not bool(torch.isfinite(samples).all()):
            raise InvEditInputError("The latent contains NaN or infinite values: check the inversion upstream.")
        generator = torch.Generator().manual_seed(seed)
        scores = metrics.latent_normality(samples, generator, top_k=top_k)
        report = _normality_report(scores, tuple(samples.shape), seed)
        return io.NodeOutput(report, scores.patch_correlation, scores.kl, ui=ui.PreviewText(report))


NODES = [ReconstructionError, LatentNormality]
