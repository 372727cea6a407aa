"""Forward-diffusion warm start (Staniszewski et al., "There and Back Again: On the
relation between noises, images, and their inversions in diffusion models"; official code
luk-st/taba).

DDIM inversion leaves latents that are correlated in plain image areas. Replacing the
first ``k`` inversion steps by one jump of forward diffusion with fresh noise,

    x_k = x0 + sigma_k * eps,   eps ~ N(0, I) from its own seed

(``z_k = sqrt(abar_k) z0 + sqrt(1 - abar_k) eps`` on the DDPM scale), or for rectified-flow
models their own forward process ``x_k = (1 - sigma_k) x0 + sigma_k * eps``
(:meth:`.process.DiffusionProcess.diffuse`), decorrelates the latent; different seeds give
different, stochastic edits of one image. The latent lands
exactly on level ``k`` of the inversion schedule, where inversion step ``k`` starts. No
model call is made for the replaced steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class WarmStartConfig:
    """Settings of the forward warm start.

    Attributes:
        steps: number ``k`` of replaced inversion steps.
        fraction: alternatively, the fraction of the steps to replace (the paper's default
            is 0.04, i.e. 2 of 50). Set ``steps`` or ``fraction``, not both: both set is refused.
        seed: seed of the forward-diffusion noise; keep it different from the sampling seed.
    """

    steps: int = 0
    fraction: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"warm start steps must be >= 0, got {self.steps}.")
        if not 0.0 <= self.fraction < 1.0:
            raise ValueError(f"warm start fraction must lie in [0, 1), got {self.fraction}.")
        if self.steps > 0 and self.fraction > 0.0:
            raise ValueError("Set either the warm-start steps or the warm-start fraction, not both: set the other to 0.")

    def replaced_steps(self, n_steps: int) -> int:
        """Number ``k`` of replaced steps in an inversion of ``n_steps`` steps.

        Raises ``ValueError`` when no inversion step would be left.
        """
        k = self.steps if self.steps > 0 else int(round(self.fraction * n_steps))
        if k > 0 and k >= n_steps:
            raise ValueError(
                f"The warm start replaces {k} steps but the inversion has only {n_steps}: use "
                "fewer warm-start steps (the paper uses 2 of 50)."
            )
        return k


def forward_noise(shape: torch.Size, seed: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Standard normal noise from a CPU generator seeded with ``seed`` (portable across devices)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)


def forward_diffuse(x0: torch.Tensor, sigma: torch.Tensor | float, noise: torch.Tensor) -> torch.Tensor:
    """Forward diffusion of a clean latent to level ``sigma``: ``x0 + sigma * noise``."""
    return x0 + sigma * noise
