"""Tiny random-weight models for tests: this project's and downstream tools'.

The models have the real architectures of their families (SD1.x, SD2.x with v-prediction,
SDXL), scaled down so that one is written in about a second and generates a 64x64 image in a
fraction of a second on a CPU. Their weights are random: they make noise, not pictures.

Example:
    >>> import inferkit, inferkit.testing, tempfile
    >>> path = inferkit.testing.write_tiny_model(tempfile.mkdtemp(), "sd2")
    >>> inferkit.Model.load(path).info.prediction_type
    'v_prediction'

"""

from __future__ import annotations

from inferkit.testing._hub import write_hub_cache_entry
from inferkit.testing._lora import LORA_LAYOUTS, write_lora
from inferkit.testing._single_file import write_single_file
from inferkit.testing._tiny import ARCHITECTURES, tiny_model_path, write_tiny_model

__all__ = [
    "ARCHITECTURES",
    "LORA_LAYOUTS",
    "tiny_model_path",
    "write_hub_cache_entry",
    "write_lora",
    "write_single_file",
    "write_tiny_model",
]
