"""Black-box backends: what turns soft prompts and texts into class scores.

- :class:`FunctionBackend`: any Python function (a remote API client, a toy).
- :class:`CausalLMBackend`: a local transformers causal LM.
- :class:`MaskedLMBackend`: a local transformers masked LM (BERT, RoBERTa).

``from skprompt.backends import FunctionBackend`` loads neither torch nor
transformers: the transformers backends are imported on first use (PEP 562).
"""

from .base import BackendError, PromptBackend
from .function import FunctionBackend

# name -> submodule that defines it, imported on first access (it imports torch).
_LAZY = {"CausalLMBackend": "huggingface", "MaskedLMBackend": "huggingface"}

__all__ = ["PromptBackend", "BackendError", "FunctionBackend", "CausalLMBackend", "MaskedLMBackend"]


def __getattr__(name):
    # The transformers backends import torch and transformers: load them only
    # when asked for, so that FunctionBackend users pay nothing.
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # later accesses skip this hook
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
