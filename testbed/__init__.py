"""InvEdit's test-bed model: a tiny, trained, text-conditional SD1.x-layout UNet on digits.

Pure torch + numpy + scikit-learn (no ComfyUI imports): the pieces around the trained UNet
that tests and benchmarks need.

* :mod:`.vocabulary` - closed vocabulary, prompt template, tokenizer;
* :mod:`.data` - sklearn digits, the train/held-out split, two-digit canvases;
* :mod:`.text` - token + position embedding (token ids -> context ``[B, 8, 64]``);
* :mod:`.classifier` - per-half digit classifier fitted on the training split;
* :mod:`.selectivity` - how much of a digit word's attention comes from its own half;
* :mod:`.schedule` - the SD1.x discrete noise schedule;
* :mod:`.weights` - the safetensors file (``models/testbed_digits.safetensors``).

The UNet itself is ComfyUI's ``UNetModel``; build it from ``TestbedFile.unet_config``.
Importing this package loads nothing heavy.
"""

from .vocabulary import PROMPT_TEMPLATE, TOKEN_LENGTH, VOCABULARY, prompt_for, tokenize
from .weights import DEFAULT_MODEL_PATH, TestbedFile, load_testbed

__all__ = [
    "DEFAULT_MODEL_PATH",
    "PROMPT_TEMPLATE",
    "TOKEN_LENGTH",
    "TestbedFile",
    "VOCABULARY",
    "load_testbed",
    "prompt_for",
    "tokenize",
]
