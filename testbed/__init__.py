"""InvEdit's test-bed models: tiny, trained, text-conditional models of ComfyUI's own classes on digits.

Two models, trained on the same canvases and prompts: an SD1.x-layout UNet (eps prediction) and a
Flux transformer (rectified flow). Pure torch + numpy (no ComfyUI imports): the pieces around them
that the nodes, tests and benchmarks need. scikit-learn is needed only to train and to test
(:mod:`.data`'s training split, :mod:`.classifier`); the held-out digits ship in the digits file.

* :mod:`.vocabulary` - closed vocabulary, prompt template, tokenizer;
* :mod:`.data` - sklearn digits, the train/held-out split, two-digit canvases, shipped held-out digits;
* :mod:`.text` - token + position embedding (token ids -> context ``[B, 8, 64]``; pooled for Flux);
* :mod:`.classifier` - per-half digit classifier fitted on the training split;
* :mod:`.selectivity` - how much of a digit word's attention comes from its own half;
* :mod:`.schedule` - the SD1.x discrete noise schedule;
* :mod:`.flow` - the Flux test-bed's config, rectified-flow maths, token layout, attention recorder;
* :mod:`.weights` - the safetensors files (``models/testbed_digits.safetensors``, ``models/testbed_flow.safetensors``).

The models themselves are ComfyUI's ``UNetModel`` and ``Flux``; build them from ``TestbedFile.unet_config``.
Importing this package loads nothing heavy.
"""

from .vocabulary import PROMPT_TEMPLATE, TOKEN_LENGTH, VOCABULARY, prompt_for, tokenize
from .weights import DEFAULT_MODEL_PATH, FLOW_MODEL_PATH, TestbedFile, load_testbed

__all__ = [
    "DEFAULT_MODEL_PATH",
    "FLOW_MODEL_PATH",
    "PROMPT_TEMPLATE",
    "TOKEN_LENGTH",
    "TestbedFile",
    "VOCABULARY",
    "load_testbed",
    "prompt_for",
    "tokenize",
]
