"""Attention arithmetic shared by the controllers: head layout, explicit maps, edited rows.

Shapes: ComfyUI's replace patches see q ``[rows, Nq, heads * dim_head]`` and k/v
``[rows, Nk, heads * dim_head]``; inside, tensors are ``[rows, heads, N, dim_head]`` and maps
``[rows, heads, Nq, Nk]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[rows, N, heads * dim]`` -> ``[rows, heads, N, dim]`` (a view)."""
    rows, length, features = x.shape
    if features % heads:
        raise ValueError(f"{features} features do not split into {heads} heads.")
    return x.view(rows, length, heads, features // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[rows, heads, N, dim]`` -> ``[rows, N, heads * dim]``."""
    rows, heads, length, dim = x.shape
    return x.transpose(1, 2).reshape(rows, length, heads * dim)


def attention_maps(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Explicit attention probabilities ``softmax(q k^T / sqrt(dim))``.

    Args:
        q: ``[..., Nq, dim]``; k: ``[..., Nk, dim]``.

    Returns:
        ``[..., Nq, Nk]`` in the dtype of ``q``.
    """
    scale = q.shape[-1] ** -0.5
    return torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1)


@dataclass(frozen=True)
class RowMix:
    """One edited row: ``attn_row <- attn_src @ source_map + attn_row * edit_scale``.

    Attributes:
        row: the edited row (index into the rows of q/k/v).
        source_row: the row whose maps it takes (its chunk's source row).
        source_map: ``[Nk, Nk]`` acting on the key axis of the source's maps; ``None`` means the
            identity (the source's maps as they are: self-attention injection).
        edit_scale: ``[Nk]`` per-key weight of the row's own maps; ``None`` means zero.
    """

    row: int
    source_row: int
    source_map: torch.Tensor | None
    edit_scale: torch.Tensor | None


def mix_maps(maps: torch.Tensor, mixes: Sequence[RowMix], offset: int = 0) -> torch.Tensor:
    """Apply ``mixes`` to explicit maps ``[rows, heads, Nq, Nk]``; ``offset`` is the first row's index."""
    mixed = maps.clone()
    for mix in mixes:
        source = maps[mix.source_row - offset]
        edited = source if mix.source_map is None else source @ mix.source_map.to(maps.dtype)
        if mix.edit_scale is not None:
            edited = edited + maps[mix.row - offset] * mix.edit_scale.to(maps.dtype)
        mixed[mix.row - offset] = edited
    return mixed


def mixed_attention_explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mixes: Sequence[RowMix]) -> torch.Tensor:
    """Reference form: materialise every map, mix the edited rows, multiply by the values.

    Args:
        q: ``[rows, heads, Nq, dim]``; k, v: ``[rows, heads, Nk, dim]``.

    Returns:
        ``[rows, heads, Nq, dim]``.
    """
    return mix_maps(attention_maps(q, k), mixes) @ v


def mixed_attention_flat(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mixes: Sequence[RowMix]) -> torch.Tensor:
    """The same result as :func:`mixed_attention_explicit` without materialising any map.

    Every mix acts on the key axis, so it moves onto the values:
    ``(attn_src @ C + attn_row * c) @ v_row = SDPA(q_src, k_src, C @ v_row) + SDPA(q_row, k_row, c * v_row)``.
    A row that only uses the source's maps (injection, or cross replacement with every key's
    window on) becomes one ordinary row ``SDPA(q_src, k_src, C @ v_row)``; a row that uses both
    maps adds one extra row to a second SDPA call. Shapes as in the explicit form.
    """
    if not mixes:
        return F.scaled_dot_product_attention(q, k, v)
    q_rows, k_rows = q, k
    query_rows = list(range(q.shape[0]))
    mixed_values = v.clone()
    extra_rows, extra_sources, extra_values = [], [], []
    for mix in mixes:
        row_values = v[mix.row]
        source_values = row_values if mix.source_map is None else mix.source_map.to(v.dtype) @ row_values
        if mix.edit_scale is None:
            query_rows[mix.row] = mix.source_row
            mixed_values[mix.row] = source_values
        else:
            mixed_values[mix.row] = row_values * mix.edit_scale.to(v.dtype)[:, None]
            extra_rows.append(mix.row)
            extra_sources.append(mix.source_row)
            extra_values.append(source_values)
    if query_rows != list(range(q.shape[0])):
        index = torch.tensor(query_rows, device=q.device)
        q, k = q.index_select(0, index), k.index_select(0, index)
    out = F.scaled_dot_product_attention(q, k, mixed_values)
    if extra_rows:
        sources = torch.tensor(extra_sources, device=q.device)
        extra = F.scaled_dot_product_attention(
            q_rows.index_select(0, sources), k_rows.index_select(0, sources), torch.stack(extra_values)
        )
        out[extra_rows] = out[extra_rows] + extra
    return out
