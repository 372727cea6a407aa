"""The pack's own socket types, node categories and widget limits, shared by every node module."""

from __future__ import annotations

from comfy_api.latest import io

Inversion = io.Custom("INVERSION")
"""An inverted image (:class:`..inversion.record.InversionRecord`)."""
P2PEdit = io.Custom("INVEDIT_P2P_EDIT")
"""A Prompt-to-Prompt edit plan (prompts, per-row conditioning, controller settings)."""
AttentionMapsType = io.Custom("INVEDIT_ATTENTION_MAPS")
"""Cross-attention maps stored by a Prompt-to-Prompt run."""
TestbedText = io.Custom("INVEDIT_TESTBED_TEXT")
"""The test-bed models' text encoder."""

CATEGORY_INVERSION = "InvEdit/inversion"
CATEGORY_SAMPLING = "InvEdit/sampling"
CATEGORY_EDITING = "InvEdit/editing"
CATEGORY_DIAGNOSTICS = "InvEdit/diagnostics"
CATEGORY_TESTBED = "InvEdit/test-bed"

MAX_CFG = 100.0
"""Largest guidance a cfg widget accepts."""
