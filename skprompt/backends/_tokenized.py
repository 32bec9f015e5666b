"""The tokenizer layer: what every backend built on a tokenizer shares.

The local transformers backends (:mod:`skprompt.backends.huggingface`) and
the served model (:class:`~skprompt.backends.VLLMBackend`) build their inputs
here: the construction arguments as scikit-learn parameters, the verbalizer
and its label tokens, fitting texts to the context, the tokenizer and
input-embedding half of a model (:class:`_TokenizerHandle`), and where a
causal model's input puts the template, the text and the soft prompt
(:class:`_CausalLayout`). It never runs a model.
"""

from __future__ import annotations

import hashlib
import inspect
import numbers
import threading
import warnings

import numpy as np
import torch

from .base import BackendError, ContextWarning, PromptBackend

# --------------------------------------------------------------------------
# Checks of construction arguments
# --------------------------------------------------------------------------

TRUNCATION = ("right", "left", "error")
#: Where a causal backend's soft prompt goes (see :class:`_CausalLayout`).
PROMPT_POSITIONS = ("suffix", "tail", "prefix")
#: Positions kept free beyond the counted ones when fitting a text to the
#: context: a text tokenised inside the template may take a token or two more
#: than alone.
_CONTEXT_SLACK = 4


def _check_positive_int(name, value):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}.")
    return int(value)


def _check_placeholder(template, name):
    if not isinstance(template, str):
        raise ValueError(f"template must be a str; got {type(template).__name__}.")
    count = template.count("{" + name + "}")
    if count != 1:
        raise ValueError(
            f"template must contain '{{{name}}}' exactly once (where the {name} goes); "
            f"found it {count} times in {template!r}."
        )


def _check_non_negative_int(name, value):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative int; got {value!r}.")
    return int(value)


def _check_choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}; got {value!r}.")
    return value


# --------------------------------------------------------------------------
# The tokenizer and input-embedding half of a model
# --------------------------------------------------------------------------


class _TokenizerHandle:
    """A tokenizer and an input-embedding layer, and the facts derived from
    them once: what a backend needs to build a model's input embeddings.

    Subclasses set ``tokenizer`` and ``input_embeddings`` (a module mapping
    ids to vectors), then call ``_init_tokenizer_state()``.
    """

    def _init_tokenizer_state(self):
        weight = self.input_embeddings.weight
        self.device = weight.device
        self.dtype = weight.dtype
        self.lock = threading.Lock()
        self.tokenizer_lock = threading.Lock()  # fast tokenizers are not safe to share across threads
        self._stats = None
        self._special_prefix = None
        self._fingerprint = None

    # -- embeddings -------------------------------------------------------
    def fingerprint(self):
        """A digest of the input-embedding table's bytes (computed once): what
        the persistent query cache keys a model's answers by beside its name,
        so that other weights under the same name never replay old answers."""
        with self.lock:
            if self._fingerprint is None:
                weight = self.input_embeddings.weight.detach().to("cpu").contiguous()
                digest = hashlib.blake2b(digest_size=16)
                digest.update(str((tuple(weight.shape), weight.dtype)).encode())
                digest.update(weight.flatten().view(torch.uint8).numpy())
                self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def embedding_stats(self):
        """Mean vector and overall std of what :meth:`embed` gives over the whole vocabulary."""
        with self.lock:
            if self._stats is None:
                self._stats = _embedding_stats(self.input_embeddings)
        mean, std = self._stats
        return mean.copy(), std

    def embed(self, ids):
        """Input embeddings of ``ids`` as the model itself computes them (the
        input embedding layer's output, so scaled where the layer scales, as
        Gemma's does): soft prompts are vectors of this space."""
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.device)
        return self.input_embeddings(ids)

    @property
    def embedding_dim(self):
        return int(self.input_embeddings.weight.shape[1])

    # -- tokenizer ----------------------------------------------------------
    def encode(self, text, add_special_tokens=False):
        with self.tokenizer_lock:
            return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def encode_batch(self, texts):
        if not texts:
            return []
        with self.tokenizer_lock:
            encoded = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [list(ids) for ids in encoded]

    def special_prefix(self):
        """Special tokens the tokenizer puts before a text (e.g. BOS), as ids."""
        with self.lock:
            if self._special_prefix is None:
                probe = "Hello world"
                plain = self.encode(probe)
                full = self.encode(probe, add_special_tokens=True)
                prefix = []
                for start in range(len(full) - len(plain) + 1):
                    if full[start:start + len(plain)] == plain:
                        prefix = full[:start]
                        break
                self._special_prefix = prefix
        return list(self._special_prefix)


_STATS_CHUNK_ELEMENTS = 1 << 22


def _embedding_stats(layer):
    """(mean vector, std of all entries) of the input embedding layer's output over every id.

    For a plain ``nn.Embedding`` that is its table. A layer that transforms
    the rows -- Gemma's ``Gemma3TextScaledWordEmbedding`` multiplies them by
    ``sqrt(hidden_size)`` (about 25 for Gemma 3 270M) -- is run on every id,
    in chunks, so that the statistics describe what the model adds to its
    residual stream for a real token, the space of ``embed``, of
    ``initial_prompt`` and of the soft prompts (the raw table of such a model
    is smaller by the scale). Computed in float64, two passes over chunks
    of about ``_STATS_CHUNK_ELEMENTS`` entries.
    """
    weight = layer.weight
    with torch.inference_mode():
        if type(layer).forward is torch.nn.Embedding.forward:
            table = weight.detach().to("cpu", torch.float64)
            return table.mean(dim=0).numpy(), float(table.std(unbiased=False))
        vocab, dim = weight.shape
        step = max(1, _STATS_CHUNK_ELEMENTS // dim)

        def chunks():
            for start in range(0, vocab, step):
                ids = torch.arange(start, min(start + step, vocab), device=weight.device)
                yield layer(ids[None])[0].to("cpu", torch.float64)

        total = torch.zeros(dim, dtype=torch.float64)
        for rows in chunks():
            total += rows.sum(dim=0)
        mean = total / vocab
        grand = float(mean.mean())
        squares = sum(float(((rows - grand) ** 2).sum()) for rows in chunks())
        return mean.numpy(), float(np.sqrt(squares / (vocab * dim)))


# --------------------------------------------------------------------------
# The backend's parameters, label words and context
# --------------------------------------------------------------------------


class _TokenizedBackend(PromptBackend):
    """What every backend built on a tokenizer shares (the transformers
    backends and :class:`~skprompt.backends.VLLMBackend`): the construction
    arguments as scikit-learn parameters and their shared checks, the
    verbalizer and its label tokens, and fitting texts to the context.

    A subclass calls ``__init__`` first with the shared arguments (checked
    here, before anything is loaded) and provides ``_get_handle()`` (a
    :class:`_TokenizerHandle`), ``context_length()`` and ``_model_name()``.
    """

    _kind = None  # "causal" or "masked"
    #: The placeholders the template must hold, once each.
    _placeholders = ("text",)

    def __init__(self, *, template, verbalizer, truncation, cache_size, cache):
        for name in self._placeholders:
            _check_placeholder(template, name)
        _check_choice("truncation", truncation, TRUNCATION)
        _check_non_negative_int("cache_size", cache_size)
        verbalizer = self._check_verbalizer(verbalizer)
        super().__init__(cache_size=cache_size, cache=cache)
        self.template = template
        self.verbalizer = verbalizer
        self.truncation = truncation

    # -- parameters (scikit-learn's protocol) ----------------------------------
    @classmethod
    def _param_names(cls):
        return [name for name in inspect.signature(cls.__init__).parameters if name != "self"]

    def get_params(self, deep=True):
        """The construction arguments, as scikit-learn's ``get_params``.

        With them a backend is tunable like an estimator's parameter:
        ``GridSearchCV(clf, {"backend__template": [...]})``. ``model`` and
        ``tokenizer`` are the paths the backend was built from, or the
        objects it was given; ``deep`` is accepted for scikit-learn and has
        no effect (a backend holds no estimators).

        Returns
        -------
        dict
        """
        handle_objects = not getattr(self, "_model_given_as_path", True)
        params = {}
        for name in self._param_names():
            if name == "model":
                params[name] = self._get_handle().model if handle_objects else self.model_path
            elif name == "tokenizer":
                params[name] = self._get_handle().tokenizer if handle_objects else self.tokenizer_path
            elif name in ("device", "dtype") and handle_objects:
                params[name] = None  # they apply only to a path (see the class docstring)
            else:
                params[name] = getattr(self, name)
        return params

    def set_params(self, **params):
        """Set construction arguments, as scikit-learn's ``set_params``.

        The backend is rebuilt from the new arguments (checked as the
        constructor checks them; on an error the backend is left as it was):
        the weights come from the per-process model registry, so nothing is
        reloaded; the result cache, which holds answers under the old
        settings, starts empty, while the texts' key/value caches (which
        depend only on the model and the text) are kept.

        Returns
        -------
        self
        """
        current = self.get_params()
        unknown = sorted(set(params) - set(current))
        if unknown:
            raise ValueError(
                f"Invalid parameter(s) {unknown} for {type(self).__name__}; valid parameters: {sorted(current)}."
            )
        current.update(params)
        rebuilt = type(self)(**current)  # validated before anything of self changes
        if hasattr(rebuilt, "_share_runtime_with"):
            rebuilt._share_runtime_with(self)
        self.__dict__.clear()
        self.__dict__.update(rebuilt.__dict__)
        return self

    def __sklearn_clone__(self):
        # sklearn.base.clone: a new backend from the same arguments. It shares
        # the loaded weights (the per-process registry, or the same model
        # object) and the texts' key/value caches, not the result cache, so
        # that set_params on the clone (as GridSearchCV does) never changes
        # the original's answers.
        params = self.get_params()
        if params["verbalizer"] is not None:
            params["verbalizer"] = dict(params["verbalizer"])
        clone = type(self)(**params)
        if hasattr(clone, "_share_runtime_with"):
            clone._share_runtime_with(self)
        return clone

    # -- construction helpers ---------------------------------------------------
    @staticmethod
    def _check_verbalizer(verbalizer):
        if verbalizer is None:
            return None
        if not isinstance(verbalizer, dict) or not verbalizer:
            raise ValueError(
                "verbalizer must be None or a non-empty dict mapping each class label to its label word; "
                f"got {verbalizer!r}."
            )
        for label, word in verbalizer.items():
            if not isinstance(word, str) or not word.strip():
                raise ValueError(f"verbalizer[{label!r}] must be a non-empty str (the label word); got {word!r}.")
        return dict(verbalizer)

    # -- runtime state ----------------------------------------------------------
    def _init_runtime_state(self):
        super()._init_runtime_state()
        self._token_ids = {}
        self._fitted_texts = {}  # text -> the text cut to the context (only texts that were cut)
        self._context_checked = {}  # (n_prompt_tokens, text) -> True for texts known to fit

    def __getstate__(self):
        state = super().__getstate__()
        for key in ("_token_ids", "_fitted_texts", "_context_checked"):
            state.pop(key, None)
        return state

    # -- public facts ---------------------------------------------------------
    @property
    def tokenizer(self):
        """The tokenizer object."""
        return self._get_handle().tokenizer

    def embedding_stats(self):
        return self._get_handle().embedding_stats()

    # -- verbalizer -------------------------------------------------------------
    def label_word(self, label):
        """The label word of class ``label`` (before tokenisation)."""
        if self.verbalizer is None:
            return str(label)
        try:
            return self.verbalizer[label]
        except (KeyError, TypeError):
            raise BackendError(f"class {label!r} is missing from the verbalizer.") from None

    def label_token_id(self, word):
        """Vocabulary id that stands for ``word``.

        The word is tokenised with a leading space (``" " + word``, unless it
        already starts with whitespace) and its first token that is not pure
        whitespace is kept: the token the model would produce right after
        ``"...Answer:"`` or at the mask of ``"It was <mask>"``.
        """
        handle = self._get_handle()
        text = word if word[:1].isspace() else " " + word
        ids = handle.encode(text)
        tok = handle.tokenizer
        # A leading token that is only whitespace (some tokenizers split the
        # space off) is skipped; the word itself must be one token.
        word_ids = [int(i) for i in ids if tok.decode([i]).strip()]
        if not word_ids:
            raise BackendError(f"label word {word!r} has no token; choose another word in the verbalizer.")
        if len(word_ids) > 1:
            # Refused rather than scored by its first token (which silently
            # confuses words that share it) or by the sum of its tokens'
            # log-probabilities (which penalises long words and needs extra
            # positions per class): see the verbalizer's documentation.
            pieces = tok.convert_ids_to_tokens(word_ids)
            raise BackendError(
                f"label word {word!r} is {len(word_ids)} tokens {pieces!r} for this tokenizer, but each class "
                "is read as the logit of one token; choose a single-token word for it in the verbalizer "
                "(a synonym, or a shorter or lower-case form)."
            )
        if tok.unk_token_id is not None and word_ids[0] == tok.unk_token_id:
            raise BackendError(f"label word {word!r} is not in the tokenizer's vocabulary (it maps to the "
                               "unknown token); choose another word in the verbalizer.")
        return word_ids[0]

    def check_classes(self, classes):
        self._class_token_ids(list(classes))

    def _class_token_ids(self, classes):
        key = tuple(map(repr, classes))
        ids = self._token_ids.get(key)
        if ids is not None:
            return ids
        if self.verbalizer is not None:
            missing = [c for c in classes if not self._in_verbalizer(c)]
            if missing:
                raise BackendError(
                    f"classes {missing!r} are missing from the verbalizer (it has {list(self.verbalizer)!r}); "
                    "give a label word for every class."
                )
        else:
            not_words = [c for c in classes if not isinstance(c, str)]
            if not_words:
                # str(True) or str(3) as a label word is almost never what was meant
                example = {c: f"<word for {c!r}>" for c in list(classes)[:3]}
                raise BackendError(
                    f"classes {list(classes)!r} are not strings and the backend has no verbalizer, so their "
                    f"label words would be {[str(c) for c in classes]!r}. Pass the words the model should "
                    f"answer with, e.g. verbalizer={example!r} (one single-token word per class)."
                )
        ids, owner = [], {}
        for label in classes:
            word = self.label_word(label)
            tid = self.label_token_id(word)
            if tid in owner:
                token = self._get_handle().tokenizer.convert_ids_to_tokens(tid)
                raise BackendError(
                    f"classes {owner[tid]!r} and {label!r} share the same first token {token!r} "
                    f"(label words {self.label_word(owner[tid])!r} and {word!r}); the verbalizer must give "
                    "each class a label word with a distinct first token."
                )
            owner[tid] = label
            ids.append(tid)
        self._token_ids[key] = ids
        return ids

    def _in_verbalizer(self, label):
        try:
            return label in self.verbalizer
        except TypeError:
            return False

    # -- context ------------------------------------------------------------------
    def _fixed_positions(self, n_prompt_tokens):
        """Positions an input takes besides its text's own tokens (counted
        generously: the template without the text, the soft prompt, specials)."""
        handle = self._get_handle()
        template = self.template.replace("{text}", "").replace("{mask}", " ")
        specials = len(handle.special_prefix()) + 2
        return len(handle.encode(template)) + n_prompt_tokens + specials + _CONTEXT_SLACK

    def _fit_to_context(self, texts, n_prompt_tokens):
        """``texts`` with the overlong ones cut to the model's context, as
        ``truncation`` says, before any scoring.

        Only the text is cut, never the template (whose tail holds the
        question the label word answers) or the soft prompt. One
        :class:`ContextWarning` per call names how many texts were cut for the
        first time; ``truncation="error"`` raises a :class:`BackendError`
        instead.
        """
        limit = self.context_length()
        if limit is None:
            return list(texts)
        unknown = [t for t in dict.fromkeys(texts)
                   if (n_prompt_tokens, t) not in self._context_checked and t not in self._fitted_texts]
        if unknown:
            room = limit - self._fixed_positions(n_prompt_tokens)
            if room < 1:
                raise BackendError(
                    f"the template and a soft prompt of {n_prompt_tokens} tokens leave no room for a text in "
                    f"the {limit}-position context of {self._model_name()!r}; use fewer prompt tokens."
                )
            handle = self._get_handle()
            tok = handle.tokenizer
            with handle.tokenizer_lock:
                enc = tok(unknown, add_special_tokens=False, return_offsets_mapping=bool(tok.is_fast))
            cut = []
            for i, text in enumerate(unknown):
                ids = enc["input_ids"][i]
                if len(ids) <= room:
                    self._context_checked[(n_prompt_tokens, text)] = True
                    continue
                cut.append((text, len(ids)))
                if self.truncation == "error":
                    continue
                if tok.is_fast:
                    offsets = enc["offset_mapping"][i]
                    short = text[:offsets[room - 1][1]] if self.truncation == "right" else text[offsets[-room][0]:]
                else:
                    short = tok.decode(ids[:room] if self.truncation == "right" else ids[-room:])
                self._fitted_texts[text] = short
            if cut:
                longest = max(n for _, n in cut)
                if self.truncation == "error":
                    raise BackendError(
                        f"{len(cut)} text(s) are too long for the {limit}-position context of "
                        f"{self._model_name()!r} (up to {longest} tokens; {room} fit beside the template and "
                        f"the prompt), and truncation='error'. Shorten them, or pass truncation='right' "
                        "(keep their beginning) or 'left' (keep their end)."
                    )
                warnings.warn(
                    f"{len(cut)} text(s) longer than the {room} tokens that fit in the {limit}-position context "
                    f"of {self._model_name()!r} (up to {longest} tokens) were cut: truncation="
                    f"{self.truncation!r} keeps their {'beginning' if self.truncation == 'right' else 'end'}; "
                    "the template around them is kept whole.",
                    ContextWarning, stacklevel=4,
                )
        return [self._fitted_texts.get(t, t) for t in texts]


# --------------------------------------------------------------------------
# The input of a causal model: where the text and the soft prompt go
# --------------------------------------------------------------------------


class _CausalLayout:
    """Where a causal model's input puts the template, the text and the soft
    prompt: one description for the local model, its differentiable path
    and the served model.

    The template splits at ``{text}`` into a head and a tail. The input of
    the pair (prompt, text) is, by ``position``:

    - ``"tail"``: ``[specials | head + text | tail less its last n tokens | prompt]``,
      the prompt's n vectors in place of the tail's last n tokens
      (:meth:`initial_prompt` gives their embeddings, so the untuned prompt
      is the template);
    - ``"suffix"``: ``[specials | head + text | prompt | tail]``;
    - ``"prefix"``: ``[specials | prompt | head + text + tail]``.

    With ``"tail"`` and ``"suffix"`` the pairs of a text share its *head*
    (``specials | head + text``) and differ in the *suffix* after it, the same
    for every text (:meth:`suffix`): the local backend caches each head's
    keys and values once.
    """

    def __init__(self, template, position):
        self.position = position
        self.head, self.tail = template.split("{text}")
        self._tail_ids = None

    def tail_ids(self, handle):
        if self._tail_ids is None:
            self._tail_ids = handle.encode(self.tail) if self.tail else []
        return self._tail_ids

    # -- the untuned prompt ------------------------------------------------------
    def default_prompt_length(self, handle):
        """With ``"tail"``, the tail's token count (at least 1); else None."""
        if self.position != "tail":
            return None
        return max(len(self.tail_ids(handle)), 1)

    def initial_prompt(self, handle, n_prompt_tokens):
        """With ``"tail"``, the embeddings of the tail tokens a prompt of
        ``n_prompt_tokens`` replaces, the vectors beyond the tail's length at
        the mean input embedding; else None."""
        if self.position != "tail" or n_prompt_tokens <= 0:
            return None
        tail = self.tail_ids(handle)
        kept = tail[max(len(tail) - n_prompt_tokens, 0):]
        with torch.inference_mode():
            emb = handle.embed(kept).float().cpu().numpy() if kept else np.zeros((0, handle.embedding_dim))
        mean, _ = handle.embedding_stats()
        extra = np.tile(np.asarray(mean, dtype=np.float32), (n_prompt_tokens - len(kept), 1))
        return np.vstack([extra, emb]).astype(np.float32)

    # -- heads and suffixes ("tail" and "suffix") --------------------------------
    def heads(self, texts):
        """Each text's head as a string (the key of its cached keys and values)."""
        return [self.head + t for t in texts]

    def head_ids(self, handle, heads):
        """Token ids of head strings, after the tokenizer's special prefix."""
        prefix = handle.special_prefix()
        return [prefix + ids for ids in handle.encode_batch(heads)]

    def suffix(self, handle, prompts):
        """What follows every head, per prompt: (n_prompts, n_suffix, dim),
        differentiable with respect to ``prompts``."""
        tail = self.tail_ids(handle)
        n_prompts = prompts.shape[0]
        if self.position == "tail":
            kept = handle.embed(tail[: max(len(tail) - prompts.shape[1], 0)])
            return torch.cat([kept.unsqueeze(0).expand(n_prompts, -1, -1), prompts], dim=1)
        return torch.cat([prompts, handle.embed(tail).unsqueeze(0).expand(n_prompts, -1, -1)], dim=1)

    # -- whole inputs --------------------------------------------------------------
    def pair_inputs(self, handle, prompts, texts):
        """Every pair's whole input, for the paths that run it in one piece.

        Returns ``(lengths, build)``: ``lengths[j]`` is the input length of
        text ``j``'s pairs, and ``build(pairs)`` gives the (length, dim) input
        embeddings of each ``(j, p)`` in ``pairs`` (text ``j``, prompt ``p``),
        differentiable with respect to ``prompts``; a text is embedded once
        per call of ``build``.
        """
        if self.position == "prefix":
            prefix = handle.special_prefix()
            ids = handle.encode_batch([self.head + t + self.tail for t in texts])
            prefix_emb = handle.embed(prefix)
            lengths = np.array([len(prefix) + prompts.shape[1] + len(b) for b in ids])

            def join(p, text):
                return torch.cat([prefix_emb, prompts[p], text])
        else:
            ids = self.head_ids(handle, self.heads(texts))
            suffix = self.suffix(handle, prompts)
            lengths = np.array([len(h) + suffix.shape[1] for h in ids])

            def join(p, text):
                return torch.cat([text, suffix[p]])

        if np.any(lengths == 0):
            raise BackendError("Nothing to score: an empty text with an empty template and no soft prompt.")

        def build(pairs):
            embedded = {j: handle.embed(ids[j]) for j in dict.fromkeys(j for j, _ in pairs)}
            return [join(p, embedded[j]) for j, p in pairs]

        return lengths, build


class _CausalInputs:
    """A causal backend's ``prompt_position`` and its :class:`_CausalLayout`
    (mixed into ``CausalLMBackend`` and ``VLLMBackend`` before their base)."""

    def __init__(self, *args, prompt_position, **kwargs):
        self.prompt_position = _check_choice("prompt_position", prompt_position, PROMPT_POSITIONS)
        super().__init__(*args, **kwargs)

    @property
    def _layout(self):
        layout = self.__dict__.get("_causal_layout")
        if layout is None:  # built on first use (after unpickling too), from the parameters
            layout = self.__dict__["_causal_layout"] = _CausalLayout(self.template, self.prompt_position)
        return layout

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_causal_layout", None)
        return state

    @property
    def default_prompt_length(self):
        """int or None: with ``prompt_position="tail"``, the tail's token count
        (at least 1): a prompt of that length replaces exactly the tail."""
        return self._layout.default_prompt_length(self._get_handle())

    def initial_prompt(self, n_prompt_tokens):
        """Embeddings of the tail tokens a ``"tail"`` prompt replaces (``None`` otherwise).

        With ``prompt_position="tail"``, ``z = 0`` maps to these embeddings, so
        the untuned prompt reproduces the zero-shot template exactly; vectors
        beyond the tail's length start at the mean input embedding.
        """
        return self._layout.initial_prompt(self._get_handle(), n_prompt_tokens)
