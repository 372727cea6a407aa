"""The forward process of a model family: the one place where UNets and flow models differ.

Every sampler of the pack walks a sigma schedule with the same Euler step (:mod:`.steps`); what a
state at level ``sigma`` *is* depends on the family, and so do the two scales the algorithms need.
This module states them as small rules, like ComfyUI's ``model_sampling`` classes (EPS,
V_PREDICTION, CONST) do, so that no loop branches on the family:

* **discrete DDPM** (SD1.x, SD2.x, SDXL; eps or v prediction), in ComfyUI's variance-exploding
  form: ``x = x0 + sigma * eps``. The model sees ``x / sqrt(1 + sigma^2)``, the DDPM-scale latent
  ``z = sqrt(abar) x0 + sqrt(1 - abar) eps`` (Ho et al. 2020; Song et al., DDIM, 2021).
* **rectified flow** (SD3 / SD3.5, Flux, Chroma, Qwen-Image, HiDream, Lumina 2; Liu et al. 2023,
  Esser et al. 2024): ``x = (1 - sigma) * x0 + sigma * eps``, the model predicting the velocity
  ``v = eps - x0``; the model sees ``x`` itself.

In both, ComfyUI's denoiser returns ``x0`` and ``(x - x0) / sigma`` is the derivative of the
probability-flow ODE in sigma (eps for DDPM, the velocity for flow), so one Euler step serves
both. What differs:

* :meth:`DiffusionProcess.to_model_scale`: ``x * c(sigma)`` with ``c`` the factor the model's
  input applies (ComfyUI's ``calculate_input``), the *model scale* of a state. The reference inversion rule keeps the model
  input fixed while changing the level; EasyInv mixes and null-text measures its loss on this
  scale (the DDPM scale for UNets, the state itself for flow).
* :meth:`DiffusionProcess.diffuse`: forward diffusion of a clean latent to a level (the warm
  start's jump, FlowEdit's coupled noisy states).
"""

from __future__ import annotations

import torch

from .levels import vp_scale

SigmaLike = torch.Tensor | float


class DiffusionProcess:
    """The rule of one model family (see the module docstring). Stateless; compare by :attr:`name`."""

    name: str = ""
    family: str = ""
    """The models it describes, in words (for messages)."""
    top_sigma: float | None = None
    """The highest level the family reaches (1 for rectified flow: pure noise), or None."""

    def diffuse(self, x0: torch.Tensor, noise: torch.Tensor, sigma: SigmaLike) -> torch.Tensor:
        """The state at level ``sigma`` of clean latent ``x0`` under ``noise`` (same shape as ``x0``)."""
        raise NotImplementedError

    def to_model_scale(self, x: torch.Tensor, sigma: SigmaLike) -> torch.Tensor:
        """``x * c(sigma)``: what the model sees of the state ``x`` at ``sigma`` (``c`` is the input scale)."""
        raise NotImplementedError

    def from_model_scale(self, z: torch.Tensor, sigma: SigmaLike) -> torch.Tensor:
        """The state at ``sigma`` whose model input is ``z``."""
        raise NotImplementedError

    def rescale(self, x: torch.Tensor, sigma_from: SigmaLike, sigma_to: SigmaLike) -> torch.Tensor:
        """The state at ``sigma_to`` that the model sees as it sees ``x`` at ``sigma_from``."""
        return self.from_model_scale(self.to_model_scale(x, sigma_from), sigma_to)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class DiscreteDDPM(DiffusionProcess):
    """SD1.x / SD2.x / SDXL: ``x = x0 + sigma * eps``, model input ``x / sqrt(1 + sigma^2)``."""

    name = "ddpm"
    family = "DDPM-family UNet (SD1.x, SD2.x, SDXL)"

    def to_model_scale(self, x: torch.Tensor, sigma: SigmaLike) -> torch.Tensor:
        return x / vp_scale(sigma)

    def from_model_scale(self, z: torch.Tensor, sigma: SigmaLike) -> torch.Tensor:
        return z * vp_scale(sigma)

    def diffuse(self, x0: torch.Tensor, noise: torch.Tensor, sigma: SigmaLike) -> torch.Tensor:
        return x0 + sigma * noise


class RectifiedFlow(DiffusionProcess):
    """SD3 / Flux / Chroma / Qwen-Image: ``x = (1 - sigma) * x0 + sigma * eps``, model input ``x``."""

    name = "rectified-flow"
    family = "rectified-flow model (SD3 / SD3.5, Flux, Chroma, Qwen-Image, HiDream, Lumina 2)"
    top_sigma = 1.0

    def to_model_scale(self, x: torch.Tensor, sigma: SigmaLike) -> torch.Tensor:
        return x

    def from_model_scale(self, z: torch.Tensor, sigma: SigmaLike) -> torch.Tensor:
        return z

    def diffuse(self, x0: torch.Tensor, noise: torch.Tensor, sigma: SigmaLike) -> torch.Tensor:
        return (1.0 - sigma) * x0 + sigma * noise


DDPM = DiscreteDDPM()
RECTIFIED_FLOW = RectifiedFlow()
PROCESSES: dict[str, DiffusionProcess] = {process.name: process for process in (DDPM, RECTIFIED_FLOW)}
"""Every family's rule by name (the name is what settings and saved files record)."""


def process_named(name: str) -> DiffusionProcess:
    """The rule called ``name``; ``ValueError`` for an unknown one."""
    try:
        return PROCESSES[name]
    except KeyError:
        raise ValueError(f"Unknown diffusion process {name!r}; known: {sorted(PROCESSES)}.") from None

