"""Black-box backends: what turns soft prompts and texts into class scores.

- :class:`FunctionBackend`: any Python function (a remote API client, a toy).
- :class:`CausalLMBackend`: a local transformers causal LM.
- :class:`MaskedLMBackend`: a local transformers masked LM (BERT, RoBERTa).
"""

from .base import BackendError, PromptBackend
from .function import FunctionBackend

__all__ = ["PromptBackend", "BackendError", "FunctionBackend", "CausalLMBackend", "MaskedLMBackend"]


def __getattr__(name):
    # The transformers backends import torch and transformers: load them only
    # when asked for, so that FunctionBackend users pay nothing.
    if name in ("CausalLMBackend", "MaskedLMBackend"):
        from . import huggingface

        return getattr(huggingface, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
