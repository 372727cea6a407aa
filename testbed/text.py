"""The test-bed models' text encoders: a token embedding plus a position embedding.

``context[b, j] = token_embedding[ids[b, j]] + position_embedding[j]``. There is no mixing
across tokens (no attention, no MLP), so the context row of a digit word carries only that
digit's identity and its slot in the prompt: cross-attention to that row is attention to
that word.

Each encoder knows the conditioning its model takes (:meth:`PromptEmbedding.encode_conditioning`):
the digits UNet takes the context alone; the flow transformer (:class:`PooledPromptEmbedding`)
also takes a pooled vector, the mean of the context rows, as ComfyUI's ``pooled_output``.
"""

from __future__ import annotations

import torch
from torch import nn

from .vocabulary import TOKEN_LENGTH, VOCABULARY, tokenize_batch

CONTEXT_DIM = 64
"""Width of one context row (the UNet's ``context_dim``)."""

TOKEN_EMBEDDING_KEY = "text.token_embedding"
POSITION_EMBEDDING_KEY = "text.position_embedding"


class PromptEmbedding(nn.Module):
    """Token ids ``[B, TOKEN_LENGTH]`` -> context ``[B, TOKEN_LENGTH, CONTEXT_DIM]``."""

    def __init__(
        self,
        vocabulary_size: int = len(VOCABULARY),
        token_length: int = TOKEN_LENGTH,
        context_dim: int = CONTEXT_DIM,
    ) -> None:
        super().__init__()
        self.token_embedding = nn.Parameter(torch.zeros(vocabulary_size, context_dim))
        self.position_embedding = nn.Parameter(torch.zeros(token_length, context_dim))

    def reset_parameters(self, generator: torch.Generator, std: float = 1.0) -> None:
        """Normal initialisation with standard deviation ``std`` (rows of norm ~ sqrt(dim))."""
        with torch.no_grad():
            for parameter in (self.token_embedding, self.position_embedding):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        """``token_ids [B, L]`` int64 -> ``[B, L, context_dim]``."""
        if token_ids.shape[-1] != self.position_embedding.shape[0]:
            raise ValueError(
                f"expected {self.position_embedding.shape[0]} token ids per prompt, got "
                f"{token_ids.shape[-1]}; use testbed.vocabulary.tokenize to pad prompts"
            )
        return self.token_embedding[token_ids] + self.position_embedding

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> context ``[B, L, context_dim]`` (unknown words raise UnknownWordError)."""
        return self(tokenize_batch(prompts).to(self.token_embedding.device))

    def encode_conditioning(self, prompts: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(context [B, L, D], extras)``: one ComfyUI CONDITIONING entry is ``[context, extras]``.

        The UNet's conditioning has no extras (``{}``).
        """
        return self.encode(prompts), {}

    def tensors(self) -> dict[str, torch.Tensor]:
        """The embedding tensors under their file keys."""
        return {
            TOKEN_EMBEDDING_KEY: self.token_embedding.detach(),
            POSITION_EMBEDDING_KEY: self.position_embedding.detach(),
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "PromptEmbedding":
        """Build from the file's tensors (float32, on the tensors' device)."""
        token = tensors[TOKEN_EMBEDDING_KEY].float()
        position = tensors[POSITION_EMBEDDING_KEY].float()
        module = cls(token.shape[0], position.shape[0], token.shape[1]).to(token.device)
        with torch.no_grad():
            module.token_embedding.copy_(token)
            module.position_embedding.copy_(position)
        return module


POOLED_OUTPUT_KEY = "pooled_output"
"""ComfyUI's conditioning key of the pooled prompt vector (Flux's ``y``)."""
POOLING_MEAN = "mean"


class PooledPromptEmbedding(PromptEmbedding):
    """The flow test-bed's encoder: the same context, plus ``pooled [B, D]`` = mean of its rows."""

    pooling = POOLING_MEAN

    @staticmethod
    def pool(context: torch.Tensor) -> torch.Tensor:
        """``context [B, L, D] -> pooled [B, D]`` (mean over the L token rows, padding included)."""
        return context.mean(dim=1)

    def encode_conditioning(self, prompts: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(context [B, L, D], {"pooled_output": pooled [B, D]})``."""
        context = self.encode(prompts)
        return context, {POOLED_OUTPUT_KEY: self.pool(context)}
