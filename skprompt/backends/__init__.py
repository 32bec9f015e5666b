"""Black-box backends: what turns soft prompts and texts into class scores.

- :class:`FunctionBackend`: any Python function (a remote API client, a toy).
- :class:`CausalLMBackend`: a local transformers causal LM.
- :class:`MaskedLMBackend`: a local transformers masked LM (BERT, RoBERTa).
- :class:`VLLMBackend`: a causal LM served by vLLM over HTTP (scores or labels only).

``from skprompt.backends import FunctionBackend`` loads neither torch nor
transformers: the transformers backends are imported on first use (PEP 562).
"""

from .._lazy import lazy_attributes
from .base import BackendError, ContextWarning, PromptBackend, TransientBackendError
from .function import FunctionBackend

# name -> submodule that defines it, imported on first access (it imports torch).
_LAZY = {"CausalLMBackend": "huggingface", "MaskedLMBackend": "huggingface", "VLLMBackend": "vllm",
         "fast_bf16": "huggingface"}

__all__ = ["PromptBackend", "BackendError", "TransientBackendError", "ContextWarning", "FunctionBackend", "CausalLMBackend", "MaskedLMBackend",
           "VLLMBackend", "fast_bf16"]

__getattr__, __dir__ = lazy_attributes(__name__, globals(), _LAZY, __all__)
