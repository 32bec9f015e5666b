"""Loading transformers models once per process: the registry, dtype and device choice."""

from __future__ import annotations

import os
import threading
import weakref

import torch

from ._handle import _ModelHandle


# --------------------------------------------------------------------------
# Per-process model registry
# --------------------------------------------------------------------------
#
# _LOADED holds the models loaded from a local directory, keyed by
# (real path, kind, dtype, device): every backend (and every unpickled copy of
# a backend) naming the same directory shares one model object.
# _OBJECTS holds, weakly, the handles of backends built from model objects, so
# that a backend unpickled in the same process finds the very same object.

_LOAD_LOCK = threading.Lock()
_LOADED = {}
_OBJECTS = weakref.WeakValueDictionary()

_KINDS = ("causal", "masked")


def _dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def fast_bf16(device="cpu"):
    """Whether ``device`` multiplies bfloat16 matrices in hardware.

    On a CPU: AMX (``amx_tile``) or AVX512-BF16, as torch detects them; on
    AVX2-only CPUs torch emulates bfloat16 and it is slower than float32. On
    CUDA: :func:`torch.cuda.is_bf16_supported`. This is what
    ``dtype="auto"`` reads.

    Parameters
    ----------
    device : str or torch.device, default="cpu"

    Returns
    -------
    bool

    Examples
    --------
    >>> from skprompt.backends import fast_bf16
    >>> isinstance(fast_bf16("cpu"), bool)
    True
    """
    device = torch.device(device)
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return False


def _resolve_dtype(dtype, device=None):
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str) and dtype == "auto":
        # bfloat16 only where the hardware multiplies it: measured parity and
        # speed are in docs/performance.md ("bf16").
        return torch.bfloat16 if fast_bf16(_resolve_device(device)) else torch.float32
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point torch dtype; got {dtype}.")
        return dtype
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype.replace("torch.", ""), None)
        if isinstance(resolved, torch.dtype) and resolved.is_floating_point:
            return resolved
    raise ValueError(
        f"dtype must be None, \"auto\", a floating torch.dtype or its name (e.g. 'float32'); got {dtype!r}."
    )


def _resolve_device(device):
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be None, a torch.device or a device string like 'cpu'; got {device!r}.") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        # A recipe pickled on a GPU machine and unpickled on a CPU one.
        return torch.device("cpu")
    return device


def _local_dir(path):
    """``path`` as a real path if it is a local model directory, else None."""
    if isinstance(path, (str, os.PathLike)):
        path = os.fspath(path)
        if path and os.path.isfile(os.path.join(path, "config.json")):
            return os.path.realpath(path)
    return None


def load_pretrained(path, *, kind="causal", dtype=None, device=None):
    """Load a model and its tokenizer from a local directory, once per process.

    Parameters
    ----------
    path : str or os.PathLike
        Local directory written by ``save_pretrained`` (never a hub name:
        nothing is downloaded).
    kind : {"causal", "masked"}, default="causal"
        Load with ``AutoModelForCausalLM`` or ``AutoModelForMaskedLM``.
    dtype : torch.dtype or str, default=None
        ``None`` means float32; ``"auto"`` means bfloat16 where the device
        multiplies it in hardware (:func:`fast_bf16`), float32 elsewhere.
    device : str or torch.device, default=None
        ``None`` means ``"cuda"`` if available, else ``"cpu"``.

    Returns
    -------
    model : transformers.PreTrainedModel
        In eval mode. The same object for every call with the same arguments.
    tokenizer : transformers.PreTrainedTokenizerBase
    """
    handle = _load_handle(path, kind=kind, dtype=dtype, device=device)
    return handle.model, handle.tokenizer


def clear_model_cache():
    """Forget the models loaded by :func:`load_pretrained` (they are freed once
    no backend uses them)."""
    with _LOAD_LOCK:
        _LOADED.clear()


def _load_handle(path, *, kind, dtype=None, device=None, tokenizer_path=None):
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}; got {kind!r}.")
    real = _local_dir(path)
    if real is None:
        raise ValueError(
            f"model must be a transformers model object or a local model directory (holding config.json); "
            f"got {path!r}. skprompt never downloads models: save one with save_pretrained first."
        )
    tok_real = real
    if tokenizer_path is not None:
        tok_real = _local_dir(tokenizer_path)
        if tok_real is None and not (os.path.isdir(os.fspath(tokenizer_path))):
            raise ValueError(f"tokenizer must be a tokenizer object or a local directory; got {tokenizer_path!r}.")
        tok_real = tok_real or os.path.realpath(os.fspath(tokenizer_path))
    dtype = _resolve_dtype(dtype, device)
    device = _resolve_device(device)
    key = (real, tok_real, kind, _dtype_name(dtype), str(device))
    with _LOAD_LOCK:
        handle = _LOADED.get(key)
        if handle is None:
            from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

            auto = AutoModelForCausalLM if kind == "causal" else AutoModelForMaskedLM
            model = auto.from_pretrained(real, local_files_only=True, **{_dtype_kwarg(): dtype})
            model.to(device)
            tokenizer = AutoTokenizer.from_pretrained(tok_real, local_files_only=True)
            handle = _ModelHandle(model, tokenizer, kind)
            _LOADED[key] = handle
    return handle


def _dtype_kwarg():
    """Name of from_pretrained's dtype argument (``torch_dtype`` before 4.56)."""
    import transformers

    return "dtype" if _version_tuple(transformers.__version__) >= (4, 56) else "torch_dtype"


def _version_tuple(version):
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)
