"""Transformers backends on tiny random models (fast; no real model needed).

Every score is checked against a naive reference written here: the prompt
inserted as embeddings into the full input, one sequence at a time, the
model's own full-vocabulary logits, log-softmax over the verbalizer tokens.
"""

from __future__ import annotations

import copy
import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import CAUSAL_TEMPLATE, TEXTS, VERBALIZER  # noqa: E402

from skprompt.backends import BackendError, CausalLMBackend, MaskedLMBackend  # noqa: E402
from skprompt.backends import huggingface as hf  # noqa: E402

CLASSES = ["fresh", "rotten"]
TOL = 1e-4


# ---------------------------------------------------------------- references
def _word_id(tok, word):
    return tok(" " + word, add_special_tokens=False)["input_ids"][0]


def naive_causal(model, tok, prompts, texts, template, words, position="suffix", vocabulary=False):
    """Full forward per (prompt, text), full-vocabulary logits at the last position
    (``vocabulary=True``: the log-softmax over the whole vocabulary instead of the words)."""
    emb = model.get_input_embeddings()
    ids = [_word_id(tok, w) for w in words]
    head_t, tail_t = template.split("{text}")
    out = np.empty((len(prompts), len(texts), model.config.vocab_size if vocabulary else len(ids)))
    with torch.no_grad():
        for p, prompt in enumerate(prompts):
            prompt = torch.as_tensor(prompt, dtype=torch.float32)
            for j, text in enumerate(texts):
                if position == "suffix":
                    head = tok(head_t + text)["input_ids"]  # the test tokenizer adds <s> only
                    tail = tok(tail_t, add_special_tokens=False)["input_ids"]
                    parts = [emb(torch.tensor(head, dtype=torch.long)), prompt,
                             emb(torch.tensor(tail, dtype=torch.long))]
                else:
                    body = tok(head_t + text + tail_t, add_special_tokens=False)["input_ids"]
                    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
                    parts = [emb(torch.tensor(bos, dtype=torch.long)), prompt,
                             emb(torch.tensor(body, dtype=torch.long))]
                x = torch.cat(parts)[None]
                logits = model(inputs_embeds=x).logits[0, -1]
                out[p, j] = torch.log_softmax((logits if vocabulary else logits[ids]).double(), -1).numpy()
    return out


def naive_masked(model, tok, prompts, texts, template, words):
    """[CLS] + prompt + template tokens with the mask + [SEP]; full logits at the mask."""
    emb = model.get_input_embeddings()
    ids = [_word_id(tok, w) for w in words]
    left_t, right_t = template.split("{mask}")
    out = np.empty((len(prompts), len(texts), len(ids)))
    with torch.no_grad():
        for p, prompt in enumerate(prompts):
            prompt = torch.as_tensor(prompt, dtype=torch.float32)
            for j, text in enumerate(texts):
                left = tok(left_t.replace("{text}", text).rstrip(), add_special_tokens=False)["input_ids"]
                right = tok(right_t.replace("{text}", text), add_special_tokens=False)["input_ids"]
                body = [tok.cls_token_id] + left + [tok.mask_token_id] + right + [tok.sep_token_id]
                e = emb(torch.tensor(body, dtype=torch.long))
                x = torch.cat([e[:1], prompt, e[1:]])[None]
                logits = model(inputs_embeds=x).logits[0, 1 + len(prompt) + len(left)]
                out[p, j] = torch.log_softmax(logits[ids].double(), -1).numpy()
    return out


def random_prompts(backend, n_prompts, n_tokens, seed=0):
    rng = np.random.default_rng(seed)
    mean, std = backend.embedding_stats()
    return (mean + std * rng.standard_normal((n_prompts, n_tokens, backend.embedding_dim))).astype(np.float32)


def assert_nontrivial(scores):
    # Guard against a vacuous comparison: the scores must really depend on
    # the prompt and the text.
    probs = np.exp(scores[..., 0])
    assert probs.std() > 0.02, probs


@pytest.fixture
def llama(tiny_llama_dir):
    return CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER, cache_size=0, prompt_position="suffix")


# ------------------------------------------------------------ causal, suffix
def test_suffix_scores_match_naive_full_forward(llama):
    prompts = random_prompts(llama, 3, 4)
    scores = llama.score(prompts, TEXTS, CLASSES)
    ref = naive_causal(llama.model, llama.tokenizer, prompts, TEXTS, CAUSAL_TEMPLATE, ["positive", "negative"])
    assert_nontrivial(ref)
    np.testing.assert_allclose(scores, ref, atol=TOL)


def test_suffix_padding_invariance(tiny_llama_dir):
    # Texts of very different lengths in one micro-batch vs each text alone.
    big = CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER, cache_size=0,
                          batch_size=64, prompt_position="suffix")
    one = CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER, cache_size=0,
                          batch_size=1, text_cache_mb=0, prompt_position="suffix")
    prompts = random_prompts(big, 2, 3, seed=1)
    batched = big.score(prompts, TEXTS, CLASSES)
    assert big.text_cache_info()["forwards"] == 1  # all 8 pairs in one padded forward
    alone = np.stack([np.concatenate([one.score(prompts[p:p + 1], [t], CLASSES) for t in TEXTS], axis=1)[0]
                      for p in range(len(prompts))])
    assert_nontrivial(alone)
    np.testing.assert_allclose(batched, alone, atol=TOL)


def test_suffix_without_prompt_tokens(llama):
    prompts = np.zeros((1, 0, llama.embedding_dim), dtype=np.float32)
    scores = llama.score(prompts, TEXTS, CLASSES)
    ref = naive_causal(llama.model, llama.tokenizer, prompts, TEXTS, CAUSAL_TEMPLATE, ["positive", "negative"])
    np.testing.assert_allclose(scores, ref, atol=TOL)


@pytest.mark.parametrize("n_tokens", [1, 2, 5])
def test_tail_layout_replaces_the_tail_and_starts_at_zero_shot(tiny_llama_dir, n_tokens):
    tail = CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER, cache_size=0,
                           prompt_position="tail")
    n_tail = len(tail.tokenizer(CAUSAL_TEMPLATE.split("{text}")[1], add_special_tokens=False)["input_ids"])
    assert 1 < n_tail < 5  # the cases cover a prompt shorter and longer than the tail
    init = tail.initial_prompt(n_tokens)
    assert init.shape == (n_tokens, tail.embedding_dim)
    zero_shot = tail.score(np.zeros((1, 0, tail.embedding_dim), np.float32), TEXTS, CLASSES)
    at_init = tail.score(init[None], TEXTS, CLASSES)
    if n_tokens <= n_tail:  # z = 0 reproduces the zero-shot template exactly
        np.testing.assert_allclose(at_init, zero_shot, atol=TOL)
    else:  # the extra vectors start at the mean embedding, before the whole tail
        mean = np.tile(tail.embedding_stats()[0], (n_tokens - n_tail, 1))
        np.testing.assert_allclose(init[: n_tokens - n_tail], mean, rtol=1e-5)
    # a tuned prompt is scored as head + fixed tail tokens + prompt, checked against the naive forward
    prompts = random_prompts(tail, 2, n_tokens, seed=3)
    emb = tail.model.get_input_embeddings()
    ids = [_word_id(tail.tokenizer, w) for w in ["positive", "negative"]]
    head_t = CAUSAL_TEMPLATE.split("{text}")[0]
    expected = np.empty((2, len(TEXTS), 2))
    with torch.no_grad():
        for p in range(2):
            for j, text in enumerate(TEXTS):
                head = tail.tokenizer(head_t + text)["input_ids"]
                fixed = tail._layout.tail_ids(tail._get_handle())[: max(n_tail - n_tokens, 0)]
                x = torch.cat([emb(torch.tensor(head + fixed, dtype=torch.long)), torch.as_tensor(prompts[p])])[None]
                logits = tail.model(inputs_embeds=x).logits[0, -1]
                expected[p, j] = torch.log_softmax(logits[ids].double(), -1).numpy()
    np.testing.assert_allclose(tail.score(prompts, TEXTS, CLASSES), expected, atol=TOL)
    # other layouts have no natural initial prompt
    assert CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER, prompt_position="suffix").initial_prompt(2) is None


def test_template_ending_with_text_and_no_prompt(tiny_llama_dir):
    # No prompt and no tail: the readout is the head's last position, from the text cache.
    backend = CausalLMBackend(tiny_llama_dir, template="Review: {text}", verbalizer=VERBALIZER, cache_size=0, prompt_position="suffix")
    empty = np.zeros((1, 0, backend.embedding_dim), dtype=np.float32)
    ref = naive_causal(backend.model, backend.tokenizer, empty, TEXTS, "Review: {text}", ["positive", "negative"])
    np.testing.assert_allclose(backend.score(empty, TEXTS, CLASSES), ref, atol=TOL)
    prompts = random_prompts(backend, 2, 2)
    ref = naive_causal(backend.model, backend.tokenizer, prompts, TEXTS, "Review: {text}", ["positive", "negative"])
    np.testing.assert_allclose(backend.score(prompts, TEXTS, CLASSES), ref, atol=TOL)


def test_prefix_layout_matches_naive(tiny_llama_dir):
    backend = CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER,
                              prompt_position="prefix", cache_size=0, batch_size=5)
    prompts = random_prompts(backend, 3, 4, seed=2)
    scores = backend.score(prompts, TEXTS, CLASSES)
    ref = naive_causal(backend.model, backend.tokenizer, prompts, TEXTS, CAUSAL_TEMPLATE,
                       ["positive", "negative"], position="prefix")
    assert_nontrivial(ref)
    np.testing.assert_allclose(scores, ref, atol=TOL)
    # The two layouts are different inputs, so they give different scores.
    suffix = CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER, cache_size=0, prompt_position="suffix")
    assert np.abs(suffix.score(prompts, TEXTS, CLASSES) - scores).max() > 1e-3


def test_gpt2_learned_positions(tiny_gpt2_dir):
    # GPT-2: learned absolute positions, no BOS added, biases everywhere.
    backend = CausalLMBackend(tiny_gpt2_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER, cache_size=0,
                              batch_size=5, prompt_position="suffix")
    prompts = random_prompts(backend, 2, 3, seed=3)
    scores = backend.score(prompts, TEXTS, CLASSES)
    model, tok = backend.model, backend.tokenizer
    ref = naive_causal(model, tok, prompts, TEXTS, CAUSAL_TEMPLATE, ["positive", "negative"])
    assert_nontrivial(ref)
    np.testing.assert_allclose(scores, ref, atol=TOL)


def test_readout_equals_model_head(llama):
    # The verbalizer rows of the output layer give exactly the model's own logits.
    handle = llama._get_handle()
    readout = handle.readout()
    assert readout.fast
    hidden = torch.randn(5, llama.embedding_dim)
    ids = [3, 17, 42]
    with torch.no_grad():
        expected = llama.model.get_output_embeddings()(hidden)[:, ids]
        got = readout.logits(hidden, ids)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-5)


def test_full_head_fallback_gives_same_scores(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    fast = CausalLMBackend(model, tok, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER, cache_size=0, prompt_position="suffix")
    slow = CausalLMBackend(model, tok, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER, cache_size=0, prompt_position="suffix")
    slow._handle = hf._handle._ModelHandle(model, tok, "causal")
    slow._handle._readout = hf._handle._Readout(False)  # as for an unrecognised output head
    prompts = random_prompts(fast, 2, 3)
    np.testing.assert_allclose(slow.score(prompts, TEXTS, CLASSES), fast.score(prompts, TEXTS, CLASSES), atol=TOL)


# ------------------------------------------------------------- top tokens
@pytest.mark.parametrize("position", ["suffix", "prefix"])
@pytest.mark.parametrize("fast", [True, False])
def test_top_k_are_the_model_s_largest_log_probabilities(tiny_llama_dir, position, fast):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    backend = CausalLMBackend(model, tok, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER,
                              prompt_position=position)
    if not fast:  # as for an unrecognised output head: the model's own logits
        backend._handle = hf._handle._ModelHandle(model, tok, "causal")
        backend._handle._readout = hf._handle._Readout(False)
    assert backend.max_top_k == model.config.vocab_size
    prompts = random_prompts(backend, 2, 3)
    k = 7
    out = backend.score(prompts, TEXTS, CLASSES, top_k=k)
    assert out.shape == (2, len(TEXTS), len(CLASSES) + 2 * k)
    ref = naive_causal(model, tok, prompts, TEXTS, CAUSAL_TEMPLATE, ["great", "terrible"], position=position,
                       vocabulary=True)
    ids = out[..., len(CLASSES) + k:].astype(int)
    np.testing.assert_allclose(out[..., len(CLASSES): len(CLASSES) + k], np.sort(ref, -1)[..., ::-1][..., :k],
                               atol=TOL)
    np.testing.assert_allclose(np.take_along_axis(ref, ids, -1), out[..., len(CLASSES): len(CLASSES) + k], atol=TOL)
    # the class columns are the plain scores, and a later plain call is answered from the cache
    requests = backend.stats["requests"]
    np.testing.assert_allclose(backend.score(prompts, TEXTS, CLASSES), out[..., : len(CLASSES)], atol=1e-6)
    assert backend.stats["requests"] == requests
    # asked again with the top tokens: the cache answers too
    np.testing.assert_array_equal(backend.score(prompts, TEXTS, CLASSES, top_k=k), out)
    assert backend.stats["requests"] == requests


def test_top_k_is_checked_before_any_query(llama):
    from skprompt.backends import FunctionBackend

    prompts = random_prompts(llama, 1, 2)
    for bad in (-1, 1.5, True):
        with pytest.raises(BackendError, match="top_k"):
            llama.score(prompts, TEXTS, CLASSES, top_k=bad)
    with pytest.raises(BackendError, match="max_top_k"):
        llama.score(prompts, TEXTS, CLASSES, top_k=llama.max_top_k + 1)
    fn = FunctionBackend(lambda p, t, c: np.zeros((len(p), len(t), len(c))), embedding_dim=4)
    assert fn.max_top_k == 0
    with pytest.raises(BackendError, match="max_top_k=0"):
        fn.score(np.zeros((1, 1, 4)), ["a"], [0, 1], top_k=3)
    assert llama.stats["requests"] == 0


def test_masked_lm_top_k(tiny_bert_dir):
    backend = MaskedLMBackend(tiny_bert_dir, template="{text} It was {mask}.",
                              verbalizer={"fresh": "great", "rotten": "terrible"}, cache_size=0)
    prompts = random_prompts(backend, 2, 3)
    out = backend.score(prompts, TEXTS, CLASSES, top_k=5)
    np.testing.assert_allclose(out[..., :2], backend.score(prompts, TEXTS, CLASSES), atol=1e-6)
    values = out[..., 2:7]
    assert np.all(np.diff(values, axis=-1) <= 0) and np.all(values <= 0)
    # the k largest of a distribution over the vocabulary: at most probability 1 together
    assert np.all(np.exp(values).sum(-1) <= 1 + 1e-5)


# ---------------------------------------------------------------- text cache
def test_text_cache_is_reused_across_calls(llama):
    p1, p2 = random_prompts(llama, 3, 2, seed=4), random_prompts(llama, 5, 2, seed=5)
    llama.score(p1, TEXTS, CLASSES)
    first = llama.text_cache_info()
    assert first["misses"] == len(TEXTS) and first["hits"] == 0 and first["entries"] == len(TEXTS)
    assert first["head_forwards"] >= 1
    second_scores = llama.score(p2, TEXTS, CLASSES)
    second = llama.text_cache_info()
    assert second["hits"] == len(TEXTS)
    assert second["head_forwards"] == first["head_forwards"]  # no text encoded again
    assert second["forwards"] > first["forwards"]
    # ... and the cached heads give the same scores as freshly encoded ones.
    fresh = CausalLMBackend(llama.model_path, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER, cache_size=0,
                            text_cache_mb=0, prompt_position="suffix")
    np.testing.assert_allclose(second_scores, fresh.score(p2, TEXTS, CLASSES), atol=TOL)
    assert fresh.text_cache_info()["entries"] == 0


def test_copies_unpickled_in_one_process_share_the_text_cache(tiny_llama_dir):
    """As the tasks of a Dask or loky worker do: every task unpickles its own
    copy of the estimator, and its texts are encoded once per process."""
    import pickle

    original = CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER, cache_size=0)
    blob = pickle.dumps(original)
    first, second = pickle.loads(blob), pickle.loads(blob)
    prompts = random_prompts(first, 3, 2, seed=6)
    scores = first.score(prompts, TEXTS, CLASSES)
    assert first.text_cache_info()["misses"] == len(TEXTS)
    np.testing.assert_allclose(second.score(prompts, TEXTS, CLASSES), scores, atol=TOL)
    assert second.text_cache_info()["hits"] == len(TEXTS) and second.text_cache_info()["head_forwards"] == 0
    assert second.stats["pairs"] == len(prompts) * len(TEXTS)  # the result caches stay each copy's own
    # Another model, or another dtype, is another store.
    other = pickle.loads(pickle.dumps(CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER,
                                                      cache_size=0, dtype="bfloat16")))
    other.score(prompts, TEXTS, CLASSES)
    assert other.text_cache_info()["misses"] == len(TEXTS)
    # The store goes with its last user.
    import gc

    from skprompt.backends.huggingface import causal

    key = first._recipe_key()
    del first, second
    gc.collect()
    assert key not in causal._UNPICKLED_TEXTS


def test_text_cache_respects_memory_bound(tiny_llama_dir):
    probe = CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER, cache_size=0, prompt_position="suffix")
    prompts = random_prompts(probe, 2, 2)
    expected = probe.score(prompts, TEXTS, CLASSES)
    sizes = [e.nbytes for e in probe._texts.entries.values()]
    bound_mb = (sorted(sizes)[0] + sorted(sizes)[1]) / 2**20  # room for two small texts at most
    backend = CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER, cache_size=0,
                              text_cache_mb=bound_mb, batch_size=2, prompt_position="suffix")
    np.testing.assert_allclose(backend.score(prompts, TEXTS, CLASSES), expected, atol=TOL)
    info = backend.text_cache_info()
    assert 1 <= info["entries"] <= 2
    assert info["size_mb"] <= bound_mb + 1e-12


def test_duplicate_texts_and_result_cache(tiny_llama_dir):
    backend = CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER, prompt_position="suffix")
    prompts = random_prompts(backend, 2, 2)
    texts = [TEXTS[0], TEXTS[1], TEXTS[0]]
    scores = backend.score(prompts, texts, CLASSES)
    np.testing.assert_array_equal(scores[:, 0], scores[:, 2])
    assert backend.text_cache_info()["misses"] == 2
    again = backend.score(prompts, texts, CLASSES)
    np.testing.assert_array_equal(again, scores)
    assert backend.stats["cached_pairs"] == 6


def test_concurrent_calls_agree_with_sequential(tiny_llama_dir):
    backend = CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER, cache_size=0,
                              batch_size=3, prompt_position="suffix")
    prompt_sets = [random_prompts(backend, 3, 2, seed=s) for s in range(4)]
    sequential = [backend.score(p, TEXTS, CLASSES) for p in prompt_sets]
    backend.clear_text_cache()
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(lambda p: backend.score(p, TEXTS, CLASSES), prompt_sets))
    for a, b in zip(sequential, parallel):
        np.testing.assert_allclose(a, b, atol=TOL)


def test_concurrent_calls_encode_each_text_once(tiny_llama_dir):
    # n_jobs splits a population over threads that score the same texts: a
    # text another thread is encoding is waited for, not encoded again.
    backend = CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER, cache_size=0,
                              batch_size=64)
    prompt_sets = [random_prompts(backend, 2, 2, seed=s) for s in range(4)]
    expected = [CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER, cache_size=0,
                                text_cache_mb=0).score(p, TEXTS, CLASSES) for p in prompt_sets]
    texts = [f"{t} ({k})" for k in range(6) for t in TEXTS]  # 24 texts, encoded in a few forwards
    for round_ in range(3):  # thread timing varies: whatever the interleaving, each text once
        backend.clear_text_cache()
        before = backend.text_cache_info()["head_forwards"]
        with ThreadPoolExecutor(max_workers=4) as pool:
            parallel = list(pool.map(lambda p: backend.score(p, TEXTS + texts, CLASSES), prompt_sets))
        solo = CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER, cache_size=0,
                               batch_size=64)
        solo.score(prompt_sets[0], TEXTS + texts, CLASSES)
        assert backend.text_cache_info()["head_forwards"] - before == solo.text_cache_info()["head_forwards"]
        assert backend.text_cache_info()["entries"] == len(TEXTS) + len(texts)
        assert not backend._texts.store.pending
        for a, b in zip(expected, parallel):
            np.testing.assert_allclose(b[:, :len(TEXTS)], a, atol=TOL)


# -------------------------------------------------------------- verbalizer
def test_labels_are_argmax_of_scores(llama):
    prompts = random_prompts(llama, 4, 3, seed=6)
    scores = llama.score(prompts, TEXTS, CLASSES)
    labels = llama.predict_labels(prompts, TEXTS, CLASSES)
    np.testing.assert_array_equal(labels, scores.argmax(-1))
    assert len(np.unique(labels)) == 2  # both classes occur: the check is not vacuous


def test_class_order_follows_classes(llama):
    prompts = random_prompts(llama, 2, 2)
    forward = llama.score(prompts, TEXTS, ["fresh", "rotten"])
    backward = llama.score(prompts, TEXTS, ["rotten", "fresh"])
    np.testing.assert_allclose(forward, backward[..., ::-1], atol=1e-12)


def test_default_verbalizer_uses_label_strings(tiny_llama_dir):
    backend = CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, cache_size=0, prompt_position="suffix")
    prompts = random_prompts(backend, 2, 2)
    scores = backend.score(prompts, TEXTS, ["great", "terrible"])
    ref = naive_causal(backend.model, backend.tokenizer, prompts, TEXTS, CAUSAL_TEMPLATE, ["great", "terrible"])
    np.testing.assert_allclose(scores, ref, atol=TOL)
    # numpy string labels (as in classes_) resolve to the same words
    np.testing.assert_allclose(backend.score(prompts, TEXTS, np.array(["great", "terrible"])), scores)


def test_label_word_with_leading_space_is_kept(tiny_llama_dir):
    a = CausalLMBackend(tiny_llama_dir, verbalizer={"fresh": "positive", "rotten": "negative"}, prompt_position="suffix")
    b = CausalLMBackend(tiny_llama_dir, verbalizer={"fresh": " positive", "rotten": " negative"}, prompt_position="suffix")
    assert a._class_token_ids(CLASSES) == b._class_token_ids(CLASSES)
    tok = a.tokenizer
    assert a._class_token_ids(CLASSES) == [_word_id(tok, "positive"), _word_id(tok, "negative")]


def test_verbalizer_errors(tiny_llama_dir):
    backend = CausalLMBackend(tiny_llama_dir, verbalizer=VERBALIZER, prompt_position="suffix")
    with pytest.raises(BackendError, match="'neutral'.*missing from the verbalizer"):
        backend.check_classes(["fresh", "rotten", "neutral"])
    with pytest.raises(BackendError, match="missing from the verbalizer"):
        backend.score(np.zeros((1, 1, backend.embedding_dim)), ["x"], ["fresh", "meh"])
    # two spellings of one word are one token: two classes cannot share it
    with pytest.raises(ValueError, match="share the same first token"):
        CausalLMBackend(tiny_llama_dir, verbalizer={"a": "positive", "b": " positive"}, prompt_position="suffix")
    default = CausalLMBackend(tiny_llama_dir, prompt_position="suffix")
    with pytest.raises(BackendError, match="share the same first token"):
        default.check_classes(["positive", " positive"])
    for bad in ({"fresh": 1, "rotten": "negative"}, {"fresh": "  ", "rotten": "negative"}, {}, ["positive"]):
        with pytest.raises(ValueError, match="verbalizer"):
            CausalLMBackend(tiny_llama_dir, verbalizer=bad, prompt_position="suffix")


def test_multi_token_label_words_are_refused_with_their_tokens(tiny_llama_dir):
    """" positivexyz" is " positive" + more tokens here: on the previous main it
    was silently scored as " positive" (its first token)."""
    tok = CausalLMBackend(tiny_llama_dir, prompt_position="suffix").tokenizer
    pieces = tok.convert_ids_to_tokens(tok(" positivexyz", add_special_tokens=False)["input_ids"])
    assert len(pieces) > 1 and pieces[0] == tok.convert_ids_to_tokens(_word_id(tok, "positive"))
    with pytest.raises(ValueError, match=r"label word 'positivexyz' is \d tokens .*single-token word"):
        CausalLMBackend(tiny_llama_dir, verbalizer={"a": "positive", "b": "positivexyz"}, prompt_position="suffix")
    assert repr(pieces[0]) in str(pytest.raises(
        BackendError, CausalLMBackend(tiny_llama_dir, prompt_position="suffix").check_classes,
        ["negative", "positivexyz"]).value)


@pytest.mark.parametrize("classes", [[0, 1], [True, False], np.array([3, 7])])
def test_non_string_labels_without_verbalizer_are_refused(tiny_llama_dir, classes):
    backend = CausalLMBackend(tiny_llama_dir, prompt_position="suffix")
    with pytest.raises(BackendError, match=r"not strings and the backend has no verbalizer.*verbalizer=\{"):
        backend.check_classes(list(classes))
    # ... and so is a fit with such labels, before any query
    from skprompt import BlackBoxPromptClassifier

    y = np.array([classes[0], classes[1]] * 3)
    clf = BlackBoxPromptClassifier(backend, method="bbt", intrinsic_dim=4, popsize=4, max_iter=1,
                                   validation_fraction=None, random_state=0)
    with pytest.raises(BackendError, match="verbalizer"):
        clf.fit(TEXTS[:2] * 3, y)
    assert backend.stats["pairs"] == 0 and backend.stats["requests"] == 0
    with_words = CausalLMBackend(tiny_llama_dir, verbalizer={classes[0]: "positive", classes[1]: "negative"},
                                 prompt_position="suffix")
    with_words.check_classes(list(classes))


def test_template_and_option_errors(tiny_llama_dir):
    for template in ("no placeholder", "{text} and {text}", 3):
        with pytest.raises(ValueError, match="template"):
            CausalLMBackend(tiny_llama_dir, template=template, prompt_position="suffix")
    with pytest.raises(ValueError, match="prompt_position"):
        CausalLMBackend(tiny_llama_dir, prompt_position="middle")
    with pytest.raises(ValueError, match="batch_size"):
        CausalLMBackend(tiny_llama_dir, batch_size=0, prompt_position="suffix")
    with pytest.raises(ValueError, match="text_cache_mb"):
        CausalLMBackend(tiny_llama_dir, text_cache_mb=-1, prompt_position="suffix")
    with pytest.raises(ValueError, match="local model directory"):
        CausalLMBackend("/nonexistent/model/dir", prompt_position="suffix")
    with pytest.raises(ValueError, match="model must be"):
        CausalLMBackend(object(), prompt_position="suffix")
    # Braces other than {text} are literal.
    backend = CausalLMBackend(tiny_llama_dir, template="{x} Review: {text}\nSentiment:", verbalizer=VERBALIZER, prompt_position="suffix")
    assert backend._layout.head == "{x} Review: "


def test_prompt_shape_is_validated(llama):
    with pytest.raises(BackendError, match="prompt_embeddings must have shape"):
        llama.score(np.zeros((1, 2, llama.embedding_dim + 1)), TEXTS, CLASSES)


# ----------------------------------------------------- facts, copy, pickle
def test_embedding_facts(llama):
    table = llama.model.get_input_embeddings().weight.detach().double().numpy()
    mean, std = llama.embedding_stats()
    assert llama.embedding_dim == table.shape[1] == mean.shape[0]
    np.testing.assert_allclose(mean, table.mean(axis=0), rtol=1e-10)
    assert std == pytest.approx(table.std(), rel=1e-10)
    mean[:] = 0  # callers get a copy
    assert np.abs(llama.embedding_stats()[0]).max() > 0


def test_deepcopy_returns_self(llama):
    assert copy.deepcopy(llama) is llama
    assert copy.deepcopy({"b": llama})["b"] is llama


def test_pickle_is_a_recipe_and_reuses_the_loaded_model(llama, monkeypatch):
    prompts = random_prompts(llama, 2, 3)
    expected = llama.score(prompts, TEXTS, CLASSES)
    data = pickle.dumps(llama)
    n_params = sum(p.numel() for p in llama.model.parameters())
    assert len(data) < n_params  # no weights inside (they take 4 bytes per parameter)

    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("weights were read again")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    restored = pickle.loads(data)
    assert restored is not llama and restored._handle is None  # lazy
    np.testing.assert_array_equal(restored.score(prompts, TEXTS, CLASSES), expected)
    assert restored.model is llama.model
    assert restored.text_cache_info()["entries"] == len(TEXTS)  # its own, fresh, cache
    assert restored.template == llama.template and restored.verbalizer == llama.verbalizer


def test_pickle_loads_from_path_in_a_fresh_process(llama, monkeypatch):
    # A fresh worker process has an empty registry: the recipe loads the path.
    prompts = random_prompts(llama, 2, 3)
    expected = llama.score(prompts, TEXTS, CLASSES)
    data = pickle.dumps(llama)
    monkeypatch.setattr(hf._loading, "_LOADED", {})
    restored = pickle.loads(data)
    np.testing.assert_allclose(restored.score(prompts, TEXTS, CLASSES), expected, atol=1e-6)
    assert restored.model is not llama.model
    assert repr(restored) == repr(llama)


def test_pickle_of_in_memory_model_carries_weights(causal_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(7)
    config = LlamaConfig(vocab_size=len(causal_tokenizer), hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         initializer_range=0.5)
    model = LlamaForCausalLM(config)  # no directory to reload from
    backend = CausalLMBackend(model, causal_tokenizer, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER,
                              cache_size=0, prompt_position="suffix")
    assert backend.model_path is None
    prompts = random_prompts(backend, 2, 2)
    expected = backend.score(prompts, TEXTS, CLASSES)
    data = pickle.dumps(backend)
    assert len(data) > 4 * sum(p.numel() for p in model.parameters())
    same_process = pickle.loads(data)
    assert same_process.model is model  # found in the per-process registry
    hf._loading._OBJECTS.pop(backend._object_key)  # as in another process
    elsewhere = pickle.loads(data)
    assert elsewhere.model is not model
    np.testing.assert_allclose(elsewhere.score(prompts, TEXTS, CLASSES), expected, atol=1e-6)
    with pytest.raises(ValueError, match="tokenizer is required"):
        CausalLMBackend(model, prompt_position="suffix")


def test_model_object_with_directory_pickles_as_path(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    backend = CausalLMBackend(model, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER, prompt_position="suffix")  # tokenizer from the dir
    assert backend.model_path is not None
    data = pickle.dumps(backend)
    assert len(data) < sum(p.numel() for p in model.parameters())
    assert pickle.loads(data).model is model


def test_repr_is_short(llama):
    text = repr(llama)
    assert text.startswith("CausalLMBackend('llama'") and "suffix" in text and len(text) < 150


def test_load_pretrained_is_cached(tiny_llama_dir):
    m1, t1 = hf.load_pretrained(tiny_llama_dir)
    m2, t2 = hf.load_pretrained(tiny_llama_dir + "/")
    assert m1 is m2 and t1 is t2
    assert not m1.training


def test_inference_leaves_global_torch_state_alone(llama):
    threads = torch.get_num_threads()
    grad = torch.is_grad_enabled()
    llama.score(random_prompts(llama, 1, 1), TEXTS[:1], CLASSES)
    assert torch.get_num_threads() == threads and torch.is_grad_enabled() == grad


# -------------------------------------------------------------- masked LMs
@pytest.mark.parametrize("which, template", [
    ("bert", "{text} It was {mask}."),
    ("roberta", "{text} It was {mask}."),
    ("roberta", "{mask} review: {text}"),
])
def test_masked_lm_matches_naive(which, template, request):
    path = request.getfixturevalue(f"tiny_{which}_dir")
    words = {"fresh": "great", "rotten": "terrible"}
    backend = MaskedLMBackend(path, template=template, verbalizer=words, cache_size=0, batch_size=3)
    assert backend._get_handle().readout().fast
    prompts = random_prompts(backend, 3, 4, seed=8)
    scores = backend.score(prompts, TEXTS, CLASSES)
    ref = naive_masked(backend.model, backend.tokenizer, prompts, TEXTS, template, ["great", "terrible"])
    assert_nontrivial(ref)
    np.testing.assert_allclose(scores, ref, atol=TOL)
    # padding invariance: each text alone, unbatched
    alone = MaskedLMBackend(path, template=template, verbalizer=words, cache_size=0, batch_size=1)
    single = np.concatenate([alone.score(prompts, [t], CLASSES) for t in TEXTS], axis=1)
    np.testing.assert_allclose(scores, single, atol=TOL)
    # no soft prompt
    empty = np.zeros((1, 0, backend.embedding_dim), dtype=np.float32)
    ref0 = naive_masked(backend.model, backend.tokenizer, empty, TEXTS, template, ["great", "terrible"])
    np.testing.assert_allclose(backend.score(empty, TEXTS, CLASSES), ref0, atol=TOL)


def test_masked_lm_errors_and_pickle(tiny_bert_dir):
    for template in ("{text} It was great.", "{mask} {mask} {text}", "It was {mask}."):
        with pytest.raises(ValueError, match="template"):
            MaskedLMBackend(tiny_bert_dir, template=template)
    with pytest.raises(BackendError, match="not in the tokenizer's vocabulary"):
        MaskedLMBackend(tiny_bert_dir, verbalizer={"a": "great", "b": "zyzzyva"})
    backend = MaskedLMBackend(tiny_bert_dir, verbalizer={"fresh": "great", "rotten": "terrible"}, cache_size=0)
    strict = MaskedLMBackend(tiny_bert_dir, verbalizer={"fresh": "great", "rotten": "terrible"}, truncation="error")
    with pytest.raises(BackendError, match="too long"):
        strict.score(np.zeros((1, 2, strict.embedding_dim)), ["good " * 80], CLASSES)
    prompts = random_prompts(backend, 2, 2)
    restored = pickle.loads(pickle.dumps(backend))
    np.testing.assert_array_equal(restored.score(prompts, TEXTS, CLASSES), backend.score(prompts, TEXTS, CLASSES))
    assert restored.model is backend.model
    assert repr(backend).startswith("MaskedLMBackend('bert'")


def test_masked_lm_readout_equals_model_head(tiny_roberta_dir):
    backend = MaskedLMBackend(tiny_roberta_dir)
    readout = backend._get_handle().readout()
    hidden = torch.randn(4, backend.embedding_dim)
    ids = [5, 9, 100]
    with torch.no_grad():
        expected = backend.model.lm_head(hidden)[:, ids]
        got = readout.logits(hidden, ids)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-5)


# ----------------------------------------------------------- with the estimator
def test_classifier_fits_with_causal_backend(tiny_llama_dir):
    from sklearn.base import clone

    from skprompt import BlackBoxPromptClassifier

    backend = CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER, prompt_position="suffix")
    X = TEXTS * 3
    y = np.array(["fresh", "rotten"] * 6)
    clf = BlackBoxPromptClassifier(backend, method="bbt", n_prompt_tokens=2, intrinsic_dim=4, popsize=4,
                                   max_iter=2, validation_fraction=None, random_state=0)
    proba = clf.fit(X, y).predict_proba(TEXTS)
    assert proba.shape == (len(TEXTS), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert clone(clf).backend is not backend and clone(clf).backend.model is backend.model
    restored = pickle.loads(pickle.dumps(clf))
    # (the original predicts from the fit's cached texts, the restored copy streams them with
    # one full forward each: the same numbers up to float rounding, which the "topk" read-out
    # that "auto" may choose sums over some 50 token features)
    np.testing.assert_allclose(restored.predict_proba(TEXTS), proba, atol=1e-5)


# ------------------------------------------------ streaming prediction (#12, item 4)
NEW_TEXTS = ["What a joy.", "Tedious and smug, a waste of two hours.", "Clever, warm and very funny.",
             "I fell asleep.", "The best film of the year, by far, and the most moving."]


@pytest.mark.parametrize("position", ["tail", "suffix"])
@pytest.mark.parametrize("n_prompts", [1, 3])  # one prompt: a full forward per new text
def test_stream_texts_scores_without_touching_the_text_cache(tiny_llama_dir, position, n_prompts):
    kw = dict(template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER, cache_size=0, prompt_position=position)
    backend = CausalLMBackend(tiny_llama_dir, batch_size=2, **kw)  # several micro-batches
    reference = CausalLMBackend(tiny_llama_dir, text_cache_mb=0, **kw)
    train = TEXTS[:3]
    backend.score(random_prompts(backend, 2, 2, seed=7), train, CLASSES)  # "fitting": fills the cache
    before = list(backend._texts.entries.items())
    assert sorted(h for h, _ in before) == sorted(CAUSAL_TEMPLATE.split("{text}")[0] + t for t in train)
    info = backend.text_cache_info()

    prompts = random_prompts(backend, n_prompts, 2, seed=8)
    texts = NEW_TEXTS + [train[0]] + NEW_TEXTS[:1]  # new texts, a training text (cached), a duplicate
    with backend.stream_texts() as same:
        assert same is backend
        streamed = backend.score(prompts, texts, CLASSES)
    expected = reference.score(prompts, texts, CLASSES)
    assert_nontrivial(expected)
    np.testing.assert_allclose(streamed, expected, atol=TOL)
    # the training texts' cache is untouched: same entries (the very objects), same LRU order, same size
    assert list(backend._texts.entries.items()) == before
    assert all(a is b for (_, a), (_, b) in zip(backend._texts.entries.items(), before))
    after = backend.text_cache_info()
    assert after["entries"] == info["entries"] and after["size_mb"] == info["size_mb"]
    assert after["hits"] == info["hits"] + 1 and after["misses"] == info["misses"] + len(NEW_TEXTS)
    if n_prompts == 1:  # no cache built for a text used once
        assert after["head_forwards"] == info["head_forwards"]
    else:  # about one micro-batch of texts encoded at a time: here (batch_size 2, 3 prompts) one by one
        assert after["head_forwards"] - info["head_forwards"] == len(NEW_TEXTS)
    # outside the context the backend caches again
    backend.score(prompts, NEW_TEXTS[:2], CLASSES)
    assert backend.text_cache_info()["entries"] == info["entries"] + 2
    assert backend._streaming == 0


def test_streaming_returns_freed_memory_between_chunks(tiny_llama_dir, monkeypatch):
    # Each streamed chunk of texts after the first asks the allocator to give
    # the previous chunks' freed memory back (docs/performance.md); fitting
    # (texts kept) never does.
    calls = []
    monkeypatch.setattr(hf.causal, "_trim_heap", lambda: calls.append(1))
    backend = CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER, cache_size=0,
                              batch_size=2)
    prompts = random_prompts(backend, 3, 2, seed=8)
    backend.score(prompts, NEW_TEXTS, CLASSES)
    assert calls == []
    backend.clear_text_cache()
    with backend.stream_texts():
        backend.score(prompts, NEW_TEXTS, CLASSES)
    assert len(calls) == len(NEW_TEXTS) - 1  # batch_size 2, 3 prompts: one text a chunk
    hf._threads._malloc_trim.cache_clear()
    monkeypatch.undo()
    hf._threads._trim_heap()  # the real one runs (glibc) or does nothing, without error


def test_stream_texts_one_prompt_matches_the_naive_forward(tiny_llama_dir):
    backend = CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER, cache_size=0,
                              prompt_position="suffix")
    prompts = random_prompts(backend, 1, 3, seed=9)
    with backend.stream_texts():
        scores = backend.score(prompts, TEXTS, CLASSES)
    ref = naive_causal(backend.model, backend.tokenizer, prompts, TEXTS, CAUSAL_TEMPLATE, ["positive", "negative"])
    np.testing.assert_allclose(scores, ref, atol=TOL)
    assert backend.text_cache_info()["entries"] == 0


def test_predict_proba_streams_new_texts(tiny_llama_dir, monkeypatch):
    from skprompt import BlackBoxPromptClassifier

    backend = CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER)
    X = TEXTS * 3
    y = np.array(["fresh", "rotten"] * 6)
    clf = BlackBoxPromptClassifier(backend, method="ensemble", n_prompts=2, n_prompt_tokens=2, intrinsic_dim=4,
                                   popsize=4, max_iter=1, validation_fraction=None, random_state=0).fit(X, y)
    cached = list(clf.backend_._texts.entries.items())
    assert len(cached) == len(TEXTS)
    proba = clf.predict_proba(NEW_TEXTS)
    assert list(clf.backend_._texts.entries.items()) == cached  # the fit's text cache is untouched
    # the same probabilities as the old path, which fills the cache
    monkeypatch.setattr(CausalLMBackend, "stream_texts", None)
    clf.backend_.clear_cache()
    np.testing.assert_allclose(clf.predict_proba(NEW_TEXTS), proba, atol=1e-6)
    assert len(clf.backend_._texts.entries) == len(TEXTS) + len(NEW_TEXTS)


# ------------------------------------------------------------ threads (#12, item 5)
@pytest.mark.parametrize("kind", ["causal", "masked"])
def test_num_threads_is_applied_during_scoring_and_restored(tiny_llama_dir, tiny_bert_dir, kind):
    from sklearn.base import clone

    if kind == "causal":
        backend = CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER, cache_size=0,
                                  num_threads=1)
    else:
        backend = MaskedLMBackend(tiny_bert_dir, verbalizer=VERBALIZER, cache_size=0, num_threads=1)
    seen = []
    hook = backend.model.base_model.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        prompts = random_prompts(backend, 2, 2)
        scores = backend.score(prompts, TEXTS, CLASSES)
        assert seen and set(seen) == {1}  # every forward ran with the backend's setting
        assert torch.get_num_threads() == 2  # ... and the process's setting is back
        assert backend.effective_num_threads() == 1 and backend.get_params()["num_threads"] == 1
        twin = clone(backend)
        assert twin.num_threads == 1
        seen.clear()
        twin.set_params(num_threads=2)
        torch.set_num_threads(1)
        np.testing.assert_allclose(twin.score(prompts, TEXTS, CLASSES), scores, atol=1e-5)
        assert set(seen) == {2} and torch.get_num_threads() == 1
    finally:
        hook.remove()
        torch.set_num_threads(before)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="num_threads must be None or a positive int"):
            type(backend)(backend.model_path, verbalizer=VERBALIZER, num_threads=bad)


def test_default_num_threads_follows_omp_num_threads_then_affinity(tiny_llama_dir, monkeypatch):
    import os

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what joblib's loky workers get with n_jobs = cpu count
    assert hf.default_num_threads() == 1
    backend = CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER)
    assert backend.num_threads is None and backend.effective_num_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", str(cpus + 8))  # never more than the CPUs we may use
    assert hf.default_num_threads() == cpus
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert hf.default_num_threads() == cpus == backend.effective_num_threads()


def test_joblib_loky_workers_default_to_their_share_of_the_cpus(monkeypatch):
    # GridSearchCV(n_jobs=k) / cross_val_score(n_jobs=k) run loky workers, which
    # joblib starts with OMP_NUM_THREADS = cpu_count // k (unless it is set):
    # num_threads=None follows it, so the workers never oversubscribe the CPUs.
    from joblib import Parallel, cpu_count, delayed

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    got = Parallel(n_jobs=2, backend="loky")(delayed(hf.default_num_threads)() for _ in range(2))
    assert got == [max(cpu_count() // 2, 1)] * 2
    assert sum(got) <= max(cpu_count(), 2)


# ------------------------------------------------------------------ context
LONG = " ".join(["the film was a long and winding road"] * 60)  # far past the tiny models' 256 positions


@pytest.mark.parametrize("position", ["tail", "suffix", "prefix"])
def test_overlong_texts_are_cut_to_the_context_with_one_warning(tiny_llama_dir, position):
    """On the previous main an overlong text reached the model (position ids
    past the limit). Now it is cut before any scoring, once, with a warning."""
    import warnings

    from skprompt.backends import ContextWarning

    backend = CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER,
                              prompt_position=position, cache_size=0)
    tok = backend.tokenizer
    assert len(tok(LONG)["input_ids"]) > backend.context_length() == 256
    prompts = random_prompts(backend, 2, 3)
    with pytest.warns(ContextWarning, match=r"^1 text\(s\) longer .*256-position context.*keeps their beginning"):
        long_scores = backend.score(prompts, [LONG, TEXTS[0]], CLASSES)
    [cut] = backend._fit_to_context([LONG], 3)
    n_cut = len(tok(cut, add_special_tokens=False)["input_ids"])
    room = 256 - backend._fixed_positions(3)
    assert LONG.startswith(cut) and room - 3 <= n_cut <= room
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # known texts: no second warning; the cut text fits: none either
        np.testing.assert_allclose(backend.score(prompts, [cut, TEXTS[0]], CLASSES), long_scores, atol=1e-5)
        backend.score(prompts, [LONG], CLASSES)


def test_truncation_left_keeps_the_end_and_error_refuses_before_scoring(tiny_llama_dir):
    from skprompt.backends import ContextWarning

    left = CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER, truncation="left")
    tail_text = LONG + " but the ending was great"
    with pytest.warns(ContextWarning, match="keeps their end"):
        [cut] = left._fit_to_context([tail_text], 2)
    assert tail_text.endswith(cut) and cut.endswith("the ending was great") and len(cut) < len(tail_text)

    strict = CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER, truncation="error")
    with pytest.raises(BackendError, match=r"1 text\(s\) are too long .*truncation='error'"):
        strict.score(random_prompts(strict, 1, 2), [TEXTS[0], LONG], CLASSES)
    assert strict.stats["pairs"] == 0
    strict.score(random_prompts(strict, 1, 2), TEXTS, CLASSES)  # short texts are fine
    with pytest.raises(ValueError, match="truncation must be one of"):
        CausalLMBackend(tiny_llama_dir, truncation="middle")
    assert pickle.loads(pickle.dumps(strict)).truncation == "error"


def test_masked_lm_cuts_overlong_texts_instead_of_failing(tiny_bert_dir):
    from skprompt.backends import ContextWarning

    backend = MaskedLMBackend(tiny_bert_dir, verbalizer=VERBALIZER)
    prompts = np.zeros((1, 2, backend.embedding_dim), dtype=np.float32)
    with pytest.warns(ContextWarning, match="64-position context"):
        scores = backend.score(prompts, [LONG], CLASSES)
    assert np.all(np.isfinite(scores))


# ------------------------------------------------------- parameters (#13, item 8)
def test_get_params_clone_and_set_params(tiny_llama_dir):
    from sklearn.base import clone

    backend = CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER, truncation="left")
    params = backend.get_params()
    assert params["model"] == tiny_llama_dir and params["template"] == CAUSAL_TEMPLATE
    assert params["verbalizer"] == VERBALIZER and params["truncation"] == "left"
    assert set(params) == {"model", "tokenizer", "template", "verbalizer", "prompt_position", "batch_size",
                           "cache_size", "text_cache_mb", "device", "dtype", "truncation", "num_threads", "cache"}
    prompts = random_prompts(backend, 2, 2)
    scores = backend.score(prompts, TEXTS, CLASSES)

    twin = clone(backend)
    assert twin is not backend and twin.model is backend.model  # weights shared via the registry
    assert twin.get_params() == params
    np.testing.assert_array_equal(twin.score(prompts, TEXTS, CLASSES), scores)

    other = "Text: {text}\nVerdict:"
    assert twin.set_params(template=other) is twin
    assert twin.template == other and backend.template == CAUSAL_TEMPLATE  # the original is untouched
    assert twin.stats["pairs"] == 0  # rebuilt: caches from the old template are gone
    assert not np.allclose(twin.score(prompts, TEXTS, CLASSES), scores)
    with pytest.raises(ValueError, match=r"Invalid parameter\(s\) \['templat'\]"):
        twin.set_params(templat="x {text}")
    with pytest.raises(ValueError, match="truncation"):
        twin.set_params(truncation="middle")
    assert twin.template == other and twin.truncation == "left"  # a refused change leaves it as it was
    restored = pickle.loads(pickle.dumps(twin))
    assert restored.get_params() == twin.get_params()

    # clones and rebuilt backends share the texts' key/value caches: no text is encoded again
    swapped = clone(backend).set_params(verbalizer={"fresh": "negative", "rotten": "positive"})
    swapped.score(prompts, TEXTS, CLASSES)
    info = swapped.text_cache_info()
    assert info["head_forwards"] == 0 and info["hits"] == len(set(TEXTS)) and info["entries"] > 0

    from_object = CausalLMBackend(backend.model, backend.tokenizer, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER)
    assert from_object.get_params()["model"] is backend.model and from_object.get_params()["device"] is None
    assert clone(from_object).model is backend.model


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_grid_search_tunes_the_template_and_verbalizer(tiny_llama_dir, n_jobs):
    from sklearn.model_selection import GridSearchCV

    from skprompt import BlackBoxPromptClassifier

    backend = CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER)
    clf = BlackBoxPromptClassifier(backend, method="zero-shot", random_state=0)
    grid = {"backend__template": [CAUSAL_TEMPLATE, "Text: {text}\nVerdict:"],
            "backend__verbalizer": [VERBALIZER, {"fresh": "negative", "rotten": "positive"}]}
    X = TEXTS * 4
    y = np.array(["fresh", "rotten"] * (len(X) // 2))
    search = GridSearchCV(clf, grid, cv=2, scoring="neg_log_loss", n_jobs=n_jobs).fit(X, y)
    assert len(search.cv_results_["params"]) == 4
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    # the candidates really differ, and the best one is refitted with its settings
    assert len(set(np.round(search.cv_results_["mean_test_score"], 12))) > 1
    assert search.best_estimator_.backend.template == search.best_params_["backend__template"]
    assert backend.template == CAUSAL_TEMPLATE and backend.verbalizer == VERBALIZER  # untouched


# ------------------------------------- pairs of a text in one row (#12, item 2)
@pytest.mark.parametrize("position", ["tail", "suffix"])
def test_block_rows_match_one_row_per_pair(tiny_llama_dir, position):
    backend = CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER, cache_size=0,
                              prompt_position=position, batch_size=7)  # texts split across micro-batches
    handle = backend._get_handle()
    prompts = random_prompts(backend, 5, 3, seed=11)
    texts = TEXTS + TEXTS[1:2]
    try:
        handle.block_suffix = None
        blocks = backend.score(prompts, texts, CLASSES)
        assert handle.block_suffix is True  # the tiny Llama (SDPA) passed the one-off check
        handle.block_suffix = False
        rows = backend.score(prompts, texts, CLASSES)
    finally:
        handle.block_suffix = None
    assert_nontrivial(rows)
    np.testing.assert_allclose(blocks, rows, atol=TOL)  # float rounding of a different summation order
    if position == "suffix":
        ref = naive_causal(backend.model, backend.tokenizer, prompts, texts, CAUSAL_TEMPLATE, ["positive", "negative"])
        np.testing.assert_allclose(blocks, ref, atol=TOL)


def test_block_rows_are_capped_in_balanced_chunks(tiny_llama_dir, monkeypatch):
    backend = CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER, cache_size=0,
                              prompt_position="suffix")
    handle = backend._get_handle()
    prompts = random_prompts(backend, 7, 2, seed=13)
    handle.block_suffix = False
    rows = backend.score(prompts, TEXTS, CLASSES)
    shapes = []
    handle.block_suffix = True
    hook = backend.model.base_model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["inputs_embeds"].shape[:2])), with_kwargs=True)
    try:
        n_suffix = 2 + len(backend._layout.tail_ids(handle))
        monkeypatch.setattr(hf.causal, "_BLOCK_QUERIES", 3 * n_suffix)  # at most 3 prompts per row
        capped = backend.score(prompts, TEXTS, CLASSES)
    finally:
        hook.remove()
        handle.block_suffix = None
    # 7 prompts per text -> 3 rows of at most 3 blocks (padded to 3): 12 rows for the 4 texts
    assert shapes == [(12, 3 * n_suffix)]
    np.testing.assert_allclose(capped, rows, atol=TOL)


def test_block_rows_fall_back_when_the_check_fails(tiny_llama_dir, monkeypatch):
    backend = CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER, cache_size=0,
                              prompt_position="suffix")
    handle = backend._get_handle()
    real = CausalLMBackend._block_suffix_scores
    monkeypatch.setattr(CausalLMBackend, "_block_suffix_scores",
                        lambda self, *a: real(self, *a) + 1.0)  # a model that ignores the 4-D mask, say
    prompts = random_prompts(backend, 3, 2, seed=12)
    try:
        handle.block_suffix = None
        scores = backend.score(prompts, TEXTS, CLASSES)
        assert handle.block_suffix is False
        assert backend.text_cache_info()["forwards"] == 1  # the check's forwards are not counted
    finally:
        handle.block_suffix = None
    ref = naive_causal(backend.model, backend.tokenizer, prompts, TEXTS, CAUSAL_TEMPLATE, ["positive", "negative"])
    np.testing.assert_allclose(scores, ref, atol=TOL)


# ------------------------------------------------------------ dtype="auto"
@pytest.mark.parametrize("fast", [True, False])
def test_dtype_auto_follows_the_hardware(tiny_llama_dir, monkeypatch, fast):
    monkeypatch.setattr(hf._loading, "fast_bf16", lambda device: fast)
    auto = CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER, dtype="auto")
    assert auto.get_params()["dtype"] == "auto"  # kept as asked: it is chosen again where it is loaded
    assert auto.compute_dtype == ("bfloat16" if fast else "float32")
    assert auto.model.dtype == (torch.bfloat16 if fast else torch.float32)
    fp32 = CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER)
    prompts = random_prompts(fp32, 2, 3)
    got, ref = auto.score(prompts, TEXTS, CLASSES), fp32.score(prompts, TEXTS, CLASSES)
    assert np.isfinite(got).all()
    if fast:
        assert 0 < np.abs(got - ref).max() < 0.2  # bfloat16: close, not equal
        assert auto._cache_identity() != fp32._cache_identity()  # a disk cache never mixes the two
    else:
        np.testing.assert_array_equal(got, ref)
        assert auto._cache_identity() == fp32._cache_identity()


def test_dtype_auto_is_chosen_again_after_unpickling(tiny_llama_dir, monkeypatch):
    monkeypatch.setattr(hf._loading, "fast_bf16", lambda device: True)
    backend = CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER, dtype="auto")
    assert backend.compute_dtype == "bfloat16"
    blob = pickle.dumps(backend)
    monkeypatch.setattr(hf._loading, "fast_bf16", lambda device: False)  # loaded on a machine without AMX
    assert pickle.loads(blob).compute_dtype == "float32"


def test_fast_bf16_reads_torchs_cpu_flags(monkeypatch):
    from skprompt.backends import fast_bf16

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert fast_bf16("cpu") is False
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert fast_bf16("cpu") is True


def test_bad_dtype_is_refused_naming_it(tiny_llama_dir):
    with pytest.raises(ValueError, match='dtype must be None, "auto"'):
        CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER, dtype="fast")
