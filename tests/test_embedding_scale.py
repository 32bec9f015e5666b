"""Soft prompts live on the scale of the model's own input embeddings.

Gemma multiplies the rows of its embedding table by ``sqrt(hidden_size)``
inside its input embedding layer (``Gemma3TextScaledWordEmbedding``), so what
reaches the residual stream for a real token is ``sqrt(hidden_size)`` times
the raw table row (about 25 times for Gemma 3 270M). ``CausalLMBackend`` feeds
soft prompts as ``inputs_embeds``, which the model does not scale again: the
backend's ``embed``, ``embedding_stats`` and ``initial_prompt`` must all be
on that scaled space. These tests build a tiny random Gemma 3 from a config
(no download, well under a second) and check it against a naive full forward.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "Gemma3ForCausalLM"):  # Gemma 3 arrived in transformers 4.50
    pytest.skip("this transformers has no Gemma3ForCausalLM", allow_module_level=True)

from conftest import CAUSAL_TEMPLATE, TEXTS, VERBALIZER, _save  # noqa: E402

from skprompt.backends import CausalLMBackend  # noqa: E402
from skprompt.backends import _tokenized  # noqa: E402

CLASSES = ["fresh", "rotten"]
TOL = 1e-4
HIDDEN = 32


@pytest.fixture(scope="module")
def tiny_gemma_dir(tiny_dir, causal_tokenizer):
    """Directory of a tiny random Gemma 3 (scaled input embeddings, tied output layer,
    one sliding-window and one full-attention layer)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(4)
    config = Gemma3TextConfig(vocab_size=len(causal_tokenizer), hidden_size=HIDDEN, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=8,
                              query_pre_attn_scalar=8, max_position_embeddings=256, sliding_window=128,
                              layer_types=["sliding_attention", "full_attention"], initializer_range=0.2,
                              bos_token_id=causal_tokenizer.bos_token_id,
                              eos_token_id=causal_tokenizer.eos_token_id,
                              pad_token_id=causal_tokenizer.pad_token_id)
    model = Gemma3ForCausalLM(config)
    return _save(model, causal_tokenizer, tiny_dir / "gemma3")


def _backend(path, position="tail", **kwargs):
    return CausalLMBackend(path, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER, cache_size=0,
                           prompt_position=position, **kwargs)


def _word_id(tok, word):
    return tok(" " + word, add_special_tokens=False)["input_ids"][0]


def test_tiny_gemma_scales_its_input_embeddings(tiny_gemma_dir):
    backend = _backend(tiny_gemma_dir)
    layer = backend.model.get_input_embeddings()
    assert type(layer).forward is not torch.nn.Embedding.forward  # Gemma3TextScaledWordEmbedding
    ids = torch.arange(5)
    with torch.no_grad():
        scaled = layer(ids)
    np.testing.assert_allclose(scaled.numpy(), layer.weight[ids].detach().numpy() * math.sqrt(HIDDEN), rtol=1e-6)


def test_embedding_stats_report_the_scaled_spread(tiny_gemma_dir):
    backend = _backend(tiny_gemma_dir)
    layer = backend.model.get_input_embeddings()
    raw = layer.weight.detach().double().numpy()
    with torch.no_grad():
        fed = layer(torch.arange(raw.shape[0])).double().numpy()  # what embed() gives the model
    mean, std = backend.embedding_stats()
    np.testing.assert_allclose(mean, fed.mean(axis=0), rtol=1e-9, atol=1e-12)
    assert std == pytest.approx(fed.std(), rel=1e-9)
    # ... which is sqrt(hidden) times the raw table's: the raw statistics (what
    # the backend reported before) would have been 5.7 times too small here,
    # and about 25 times for Gemma 3 270M.
    assert std == pytest.approx(math.sqrt(HIDDEN) * raw.std(), rel=1e-6)
    np.testing.assert_allclose(mean, math.sqrt(HIDDEN) * raw.mean(axis=0), rtol=1e-5, atol=1e-9)
    # a prompt drawn from the statistics is as large as real tokens' embeddings
    rng = np.random.default_rng(0)
    drawn = mean + std * rng.standard_normal((2000, backend.embedding_dim))
    ratio = np.linalg.norm(drawn, axis=1).mean() / np.linalg.norm(fed, axis=1).mean()
    assert 0.8 < ratio < 1.25


def test_embedding_stats_of_a_plain_table_are_unchanged(tiny_llama_dir):
    backend = _backend(tiny_llama_dir)
    table = backend.model.get_input_embeddings().weight.detach().double().numpy()
    mean, std = backend.embedding_stats()
    np.testing.assert_allclose(mean, table.mean(axis=0), rtol=1e-10)
    assert std == pytest.approx(table.std(), rel=1e-10)


def test_chunked_statistics_match_a_direct_computation(tiny_gemma_dir, monkeypatch):
    # The whole vocabulary runs through the layer in chunks (two passes); a
    # tiny vocabulary fits in one, so force several uneven ones.
    backend = _backend(tiny_gemma_dir)
    layer = backend.model.get_input_embeddings()
    vocab, dim = layer.weight.shape
    whole = _tokenized._embedding_stats(layer)
    calls = []
    real_forward = type(layer).forward

    def counting(self, ids):
        calls.append(tuple(ids.shape))
        return real_forward(self, ids)

    monkeypatch.setattr(type(layer), "forward", counting)
    monkeypatch.setattr(_tokenized, "_STATS_CHUNK_ELEMENTS", 37 * dim)
    mean, std = _tokenized._embedding_stats(layer)
    assert len(calls) == 2 * math.ceil(vocab / 37)
    np.testing.assert_allclose(mean, whole[0], rtol=1e-12, atol=1e-14)
    assert std == pytest.approx(whole[1], rel=1e-12)


@pytest.mark.parametrize("n_tokens", [1, 2, 5])
def test_tail_z0_reproduces_the_zero_shot_template(tiny_gemma_dir, n_tokens):
    backend = _backend(tiny_gemma_dir)
    tok = backend.tokenizer
    head_t, tail_t = CAUSAL_TEMPLATE.split("{text}")
    tail_ids = tok(tail_t, add_special_tokens=False)["input_ids"]
    n_tail = len(tail_ids)
    assert 1 < n_tail < 5  # the cases cover a prompt shorter and longer than the tail
    init = backend.initial_prompt(n_tokens)
    assert init.shape == (n_tokens, backend.embedding_dim)
    # the kept tail tokens are given as the model embeds them: scaled
    kept = tail_ids[max(n_tail - n_tokens, 0):]
    with torch.no_grad():
        scaled = backend.model.get_input_embeddings()(torch.tensor(kept)).numpy()
    np.testing.assert_allclose(init[n_tokens - len(kept):], scaled, rtol=1e-6)

    zero_shot = backend.score(np.zeros((1, 0, backend.embedding_dim), np.float32), TEXTS, CLASSES)
    # the zero-shot template itself, from a naive full forward with input ids
    ids = [_word_id(tok, w) for w in ("positive", "negative")]
    direct = np.empty((len(TEXTS), 2))
    with torch.no_grad():
        for j, text in enumerate(TEXTS):
            filled = torch.tensor([tok(CAUSAL_TEMPLATE.format(text=text))["input_ids"]])
            direct[j] = torch.log_softmax(backend.model(input_ids=filled).logits[0, -1, ids].double(), -1).numpy()
    np.testing.assert_allclose(zero_shot[0], direct, atol=TOL)
    assert np.exp(direct[:, 0]).std() > 0.02  # not a vacuous comparison
    at_init = backend.score(init[None], TEXTS, CLASSES)
    if n_tokens <= n_tail:  # z = 0 is exactly the zero-shot template
        np.testing.assert_allclose(at_init, zero_shot, atol=TOL)
    else:  # the extra vectors start at the (scaled) mean embedding
        mean = backend.embedding_stats()[0]
        np.testing.assert_allclose(init[: n_tokens - n_tail], np.tile(mean, (n_tokens - n_tail, 1)), rtol=1e-5)
        assert np.linalg.norm(mean) > 0

    # random prompts drawn from the statistics, against the naive forward
    rng = np.random.default_rng(n_tokens)
    mean, std = backend.embedding_stats()
    prompts = (mean + std * rng.standard_normal((2, n_tokens, backend.embedding_dim))).astype(np.float32)
    scores = backend.score(prompts, TEXTS, CLASSES)
    fixed = tail_ids[: max(n_tail - n_tokens, 0)]  # the tail tokens the prompt does not replace
    emb = backend.model.get_input_embeddings()
    for p in range(2):
        ref = np.empty((len(TEXTS), 2))
        with torch.no_grad():
            for j, text in enumerate(TEXTS):
                head = tok(head_t + text)["input_ids"]
                x = torch.cat([emb(torch.tensor(head + fixed)), torch.as_tensor(prompts[p])])[None]
                logits = backend.model(inputs_embeds=x).logits[0, -1]
                ref[j] = torch.log_softmax(logits[ids].double(), -1).numpy()
        np.testing.assert_allclose(scores[p], ref, atol=TOL)


def test_suffix_and_prefix_layouts_match_naive(tiny_gemma_dir):
    suffix = _backend(tiny_gemma_dir, position="suffix")
    prefix = _backend(tiny_gemma_dir, position="prefix")
    mean, std = suffix.embedding_stats()
    rng = np.random.default_rng(7)
    prompts = (mean + std * rng.standard_normal((2, 3, suffix.embedding_dim))).astype(np.float32)
    tok, model = suffix.tokenizer, suffix.model
    emb = model.get_input_embeddings()
    head_t, tail_t = CAUSAL_TEMPLATE.split("{text}")
    tail = tok(tail_t, add_special_tokens=False)["input_ids"]
    ids = [_word_id(tok, w) for w in ("positive", "negative")]
    ref_suffix = np.empty((2, len(TEXTS), 2))
    ref_prefix = np.empty((2, len(TEXTS), 2))
    with torch.no_grad():
        for p in range(2):
            prompt = torch.as_tensor(prompts[p])
            for j, text in enumerate(TEXTS):
                head = emb(torch.tensor(tok(head_t + text)["input_ids"]))
                x = torch.cat([head, prompt, emb(torch.tensor(tail))])[None]
                ref_suffix[p, j] = torch.log_softmax(model(inputs_embeds=x).logits[0, -1, ids].double(), -1).numpy()
                body = tok(CAUSAL_TEMPLATE.format(text=text), add_special_tokens=False)["input_ids"]
                x = torch.cat([emb(torch.tensor([tok.bos_token_id])), prompt, emb(torch.tensor(body))])[None]
                ref_prefix[p, j] = torch.log_softmax(model(inputs_embeds=x).logits[0, -1, ids].double(), -1).numpy()
    assert np.exp(ref_suffix[..., 0]).std() > 0.02
    np.testing.assert_allclose(suffix.score(prompts, TEXTS, CLASSES), ref_suffix, atol=TOL)
    np.testing.assert_allclose(prefix.score(prompts, TEXTS, CLASSES), ref_prefix, atol=TOL)


def test_projection_steps_on_the_scaled_space(tiny_gemma_dir):
    # The estimator centres the search on initial_prompt (tail layout) and
    # scales the random projection by embedding_stats' std, so z ~ N(0, I)
    # moves each prompt entry by about the spread of the real tokens' embeddings.
    from skprompt.projection import RandomProjection

    backend = _backend(tiny_gemma_dir)
    n = backend.default_prompt_length
    mean, std = backend.embedding_stats()
    init = backend.initial_prompt(n)
    layer = backend.model.get_input_embeddings()
    with torch.no_grad():
        fed_std = layer(torch.arange(layer.weight.shape[0])).std().item()
    projection = RandomProjection(n, backend.embedding_dim, 8, embedding_mean=init, embedding_std=std,
                                  random_state=0)
    np.testing.assert_allclose(projection(np.zeros((1, 8)))[0], init, rtol=1e-6)
    moved = projection(np.random.default_rng(0).standard_normal((400, 8))) - init
    assert moved.std() == pytest.approx(fed_std, rel=0.15)
