"""Shared parts of the test-bed swap benchmarks (flowedit_testbed.py, ddpm_testbed.py, p2p_testbed.py,
p2p_flow_testbed.py): arguments, the encoded swaps of testbed/edits.py on a shipped test-bed model, and the results
table."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from comfy_headless import REPO_ROOT  # noqa: E402

TABLE_HEAD = ["| setting | swapped digit reads new | other digit keeps class | other digit error | model calls |",
              "|---|---|---|---|---|"]


def parse_args(doc: str, add_options: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """``--count`` canvases of ``--seed`` (the P2P benchmark's 8 and 11), ``--threads``, ``--out`` and what
    ``add_options`` adds; sets torch's thread count."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--count", type=int, default=8, help="held-out canvases (two swaps each)")
    parser.add_argument("--seed", type=int, default=11, help="held-out canvas seed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    if add_options is not None:
        add_options(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args


@dataclass
class EncodedSwaps:
    """The swaps with the model they run on, their prompts encoded, and the classifier's reader."""

    pack: dict[str, Any]
    model: Any
    swaps: Any
    predict: Callable[[torch.Tensor], torch.Tensor]
    source: Any
    target: Any
    negative: Any
    latent: dict


def encoded_swaps(nodes, loader: str, args: argparse.Namespace) -> EncodedSwaps:
    """Load the test-bed model ``loader`` and encode the swaps' prompts (call under inference mode)."""
    from invedit.testbed import classifier, edits

    pack = {name: cls for name, cls in nodes.NODE_CLASS_MAPPINGS.items() if name.startswith("InvEdit")}
    swaps = edits.heldout_swaps(args.count, args.seed)
    model, text_encoder = pack[loader].execute(verify=True).result

    def encode(prompts):
        return pack["InvEditTestbedTextEncode"].execute(text_encoder=text_encoder, text="\n".join(prompts)).result[0]

    return EncodedSwaps(pack, model, swaps, classifier.training_split_classifier().predict_canvases,
                        encode(swaps.source_prompts), encode(swaps.target_prompts), encode([""]),
                        {"samples": swaps.canvases.clone()})


def write_table(args: argparse.Namespace, file_name: str, header: str, rows: list) -> None:
    """Print and write ``header`` and the ``(name, SwapScore, model calls)`` rows as a Markdown table."""
    table = list(TABLE_HEAD)
    for name, score, calls in rows:
        table.append(f"| {name} | {score.swapped_reads_new:.2f} | {score.other_keeps_class:.2f} | "
                     f"{score.other_error:.3f} | {calls} |")
    text = header + "\n" + "\n".join(table) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / file_name).write_text(text)
