"""Persistence (skprompt/persistence.py, docs/persistence.md).

Fitted estimators are saved with skops, pickle and joblib, loaded in a fresh
Python process (an empty model registry, nothing imported) and must predict
exactly as the originals did. ``skops_trusted_types()`` is checked to be
complete (every saved file needs nothing else, apart from the user's own
query function) and minimal (each entry is needed by some estimator). Files
of transformers backends hold no weights, no absolute path other than the
model directory, and no token from the environment.

Only toy FunctionBackends and the tiny random models of conftest.py are used.
"""

import copy
import doctest
import importlib
import json
import os
import pickle
import pickletools
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import joblib
import numpy as np
import pytest

sio = pytest.importorskip("skops.io")

import skprompt
from skprompt import BlackBoxPromptClassifier, skops_trusted_types
from skprompt.backends import FunctionBackend

from conftest import CAUSAL_TEMPLATE, TEXTS, VERBALIZER
from toy_tasks import linear_toy_scores, make_toy_task

TESTS = Path(__file__).resolve().parent

# Loads every file of a manifest in a fresh interpreter and saves its
# predict_proba; the transformers backends find an empty model registry there
# and load the weights from the directory the file names.
LOADER = """
import json, pickle, sys
sys.path.insert(0, {tests!r})
import joblib
import numpy as np
import skops.io as sio

entries = json.load(open(sys.argv[1]))
for e in entries:
    if e["format"] == "skops":
        est = sio.load(e["path"], trusted=e["trusted"])
    elif e["format"] == "pickle":
        with open(e["path"], "rb") as f:
            est = pickle.load(f)
    else:
        est = joblib.load(e["path"])
    np.save(e["out"], est.predict_proba(e["texts"]))
    model_path = getattr(est.backend_, "model_path", None)
    with open(e["out"] + ".json", "w") as f:
        json.dump({{"model_path": model_path, "type": type(est).__name__}}, f)
"""


def save_all(estimators, folder, formats=("skops", "pickle")):
    """Dump each estimator in each format; return the manifest entries."""
    entries = []
    for name, (est, texts, user_types) in estimators.items():
        for fmt in formats:
            path = folder / f"{name}.{fmt}"
            if fmt == "skops":
                sio.dump(est, path)
            elif fmt == "pickle":
                path.write_bytes(pickle.dumps(est))
            else:
                joblib.dump(est, path)
            entries.append({"name": name, "format": fmt, "path": str(path), "texts": list(texts),
                            "trusted": skops_trusted_types() + user_types,
                            "out": str(folder / f"{name}.{fmt}.proba.npy")})
    return entries


def load_in_fresh_process(entries, folder):
    """Run LOADER on ``entries``; return {(name, format): (proba, facts)}."""
    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps(entries))
    proc = subprocess.run([sys.executable, "-c", LOADER.format(tests=str(TESTS)), str(manifest)],
                          cwd=folder, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return {(e["name"], e["format"]): (np.load(e["out"]), json.loads(Path(e["out"] + ".json").read_text()))
            for e in entries}


def fit_quietly(est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # budget / posterior warnings of these tiny fits
        return est.fit(X, y)


# --------------------------------------------------------- toy FunctionBackends
FUNCTION_TYPE = "toy_tasks.linear_toy_scores"  # a module-level function
OBJECT_TYPE = "toy_tasks.LinearToyModel"  # a callable object

TOY_FITS = {
    "zero-shot": dict(method="zero-shot"),
    "bbt": dict(method="bbt", n_prompt_tokens=1, intrinsic_dim=4, popsize=4, max_iter=4),
    "ensemble": dict(method="ensemble", n_prompts=2, n_prompt_tokens=1, intrinsic_dim=4, popsize=4, max_iter=3,
                     method_params={"bootstrap": True}),
    "vi": dict(method="vi", n_prompts=4, n_prompt_tokens=1, intrinsic_dim=4, popsize=4, max_iter=3,
               method_params={"n_mc": 2}),
    "abc-smc": dict(method="abc-smc", n_prompts=8, n_prompt_tokens=1, intrinsic_dim=4,
                    method_params={"max_rounds": 2}),
    "snpe": dict(method="snpe", n_prompts=8, n_prompt_tokens=1, intrinsic_dim=4,
                 method_params={"inference": "factorised", "n_rounds": 1, "n_simulations": 40}),
}
# Which methods get the module-level function (the others: the callable object).
WITH_FUNCTION = {"zero-shot", "vi", "abc-smc"}


@pytest.fixture(scope="module")
def toy_saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("persist_toy")
    backend, texts, y, model = make_toy_task(n_texts=48, seed=3)
    function_backend = FunctionBackend(linear_toy_scores, embedding_dim=model.embedding_dim)
    X, X_new = texts[:36], texts[36:]
    estimators, expected = {}, {}
    for name, params in TOY_FITS.items():
        use_function = name in WITH_FUNCTION
        est = fit_quietly(BlackBoxPromptClassifier(function_backend if use_function else backend,
                                                   random_state=0, **params), X, y[:36])
        estimators[name] = (est, X_new, [FUNCTION_TYPE if use_function else OBJECT_TYPE])
        expected[name] = est.predict_proba(X_new)
    entries = save_all(estimators, folder)
    entries += save_all({"bbt": estimators["bbt"]}, folder, formats=("joblib",))
    return {"estimators": estimators, "expected": expected, "entries": entries,
            "loaded": load_in_fresh_process(entries, folder)}


@pytest.mark.parametrize("fmt", ["skops", "pickle"])
@pytest.mark.parametrize("name", list(TOY_FITS))
def test_toy_estimator_predicts_identically_in_a_fresh_process(toy_saved, name, fmt):
    proba, facts = toy_saved["loaded"][(name, fmt)]
    assert facts["type"] == "BlackBoxPromptClassifier"
    np.testing.assert_array_equal(proba, toy_saved["expected"][name])


def test_joblib_round_trip_in_a_fresh_process(toy_saved):
    proba, _ = toy_saved["loaded"][("bbt", "joblib")]
    np.testing.assert_array_equal(proba, toy_saved["expected"]["bbt"])


def test_the_users_function_must_be_trusted_too(toy_saved):
    for entry in toy_saved["entries"]:
        if entry["format"] == "skops" and entry["name"] in ("zero-shot", "bbt"):
            user_type = entry["trusted"][-1]
            assert sio.get_untrusted_types(file=entry["path"]) == sorted([
                user_type, "skprompt.backends.function.FunctionBackend",
                "skprompt.classifier.BlackBoxPromptClassifier", "skprompt.projection.RandomProjection"])
            with pytest.raises(sio.exceptions.UntrustedTypesFoundException, match=user_type):
                sio.load(entry["path"], trusted=skops_trusted_types())


# ------------------------------------------------------- transformers backends
@pytest.fixture(scope="module")
def hf_saved(tmp_path_factory, tiny_llama_dir, tiny_bert_dir):
    from transformers import AutoModelForCausalLM

    from skprompt import GradientPromptClassifier
    from skprompt.backends import CausalLMBackend, MaskedLMBackend

    folder = tmp_path_factory.mktemp("persist_hf")
    X = TEXTS * 3
    y = np.array(["fresh", "rotten"] * 6)
    X_new = ["A lovely, funny film.", "Boring and awful.", "It was fine."]
    llama = CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER)
    # A model object loaded from its directory saves as that directory too.
    llama_object = CausalLMBackend(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), template=CAUSAL_TEMPLATE,
                                   verbalizer=VERBALIZER)
    bert = MaskedLMBackend(tiny_bert_dir, verbalizer={"fresh": "great", "rotten": "terrible"})
    bbt = dict(method="bbt", n_prompt_tokens=2, intrinsic_dim=4, popsize=4, max_iter=2, validation_fraction=None,
               random_state=0)
    estimators = {
        "llama-bbt": BlackBoxPromptClassifier(llama, **bbt),
        "llama-object-zero-shot": BlackBoxPromptClassifier(llama_object, method="zero-shot"),
        "llama-gradient": GradientPromptClassifier(llama, n_prompt_tokens=2, max_iter=2, validation_fraction=None,
                                                   random_state=0),
        "bert-bbt": BlackBoxPromptClassifier(bert, **bbt),
    }
    estimators = {name: (fit_quietly(est, X, y), X_new, []) for name, est in estimators.items()}
    expected = {name: est.predict_proba(X_new) for name, (est, _, _) in estimators.items()}
    entries = save_all(estimators, folder)
    weights = {"llama": os.path.getsize(Path(tiny_llama_dir) / "model.safetensors"),
               "bert": os.path.getsize(Path(tiny_bert_dir) / "model.safetensors")}
    return {"estimators": estimators, "expected": expected, "entries": entries, "weights": weights,
            "dirs": {"llama": tiny_llama_dir, "bert": tiny_bert_dir},
            "loaded": load_in_fresh_process(entries, folder)}


HF_NAMES = ["llama-bbt", "llama-object-zero-shot", "llama-gradient", "bert-bbt"]


@pytest.mark.parametrize("fmt", ["skops", "pickle"])
@pytest.mark.parametrize("name", HF_NAMES)
def test_transformers_estimator_reloads_weights_from_its_directory(hf_saved, name, fmt):
    proba, facts = hf_saved["loaded"][(name, fmt)]
    # Loaded in a process whose registry was empty: from the directory the file names.
    assert facts["model_path"] == os.path.realpath(hf_saved["dirs"][name.split("-")[0]])
    np.testing.assert_array_equal(proba, hf_saved["expected"][name])


def _npy_members(path):
    with zipfile.ZipFile(path) as archive:
        return {info.filename: info.file_size for info in archive.infolist() if info.filename.endswith(".npy")}


@pytest.mark.parametrize("name", HF_NAMES)
def test_saved_files_hold_no_weights(hf_saved, name):
    est = hf_saved["estimators"][name][0]
    table = est.backend_.model.get_input_embeddings().weight
    table_bytes = table.numel() * table.element_size()
    weights = hf_saved["weights"][name.split("-")[0]]
    for entry in hf_saved["entries"]:
        if entry["name"] != name:
            continue
        size = os.path.getsize(entry["path"])
        if entry["format"] == "skops":  # its schema is text that names things, and grows with fit_info_
            with zipfile.ZipFile(entry["path"]) as archive:
                size -= archive.getinfo("schema.json").compress_size
        assert size < weights / 2, (entry["format"], size, weights)
        if entry["format"] == "skops":
            sizes = sorted(_npy_members(entry["path"]).values())
            # the "topk" read-out's token maps grow with the top tokens (at most
            # MAX_TOKENS per kept prompt), not with the model: a tiny model's
            # vocabulary is small enough for them to matter here, so they are
            # set aside (an .npy header of a small array is 128 bytes)
            for array in (a for m in (getattr(est, "token_maps_", None) or []) for a in m.values()):
                sizes.remove(array.nbytes + 128)
            # The largest other array is a kept prompt or the projection, far
            # below the embedding table (vocabulary x hidden size).
            assert max(sizes, default=0) < table_bytes / 8, sizes
            assert sum(sizes) < table_bytes / 2, sizes


def _skops_strings(path):
    """Every str in a skops file's schema (the arrays are numbers); a str
    attribute is stored JSON-encoded (``"content": "\\"...\\""``)."""
    with zipfile.ZipFile(path) as archive:
        schema = json.loads(archive.read("schema.json"))
    found = []

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                found.append(key)
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, str):
            found.append(node)
            if node.startswith('"'):
                walk(json.loads(node))

    walk(schema)
    return found


def _pickle_strings(data):
    return [arg for op, arg, _ in pickletools.genops(data) if isinstance(arg, str)]


def test_no_absolute_path_but_the_model_directory_and_no_token(tiny_llama_dir, monkeypatch, tmp_path):
    from skprompt.backends import CausalLMBackend

    secret = "hf_persistence_test_token_0123456789"
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.setenv(var, secret)
    backend = CausalLMBackend(tiny_llama_dir, template=CAUSAL_TEMPLATE, verbalizer=VERBALIZER)
    clf = fit_quietly(BlackBoxPromptClassifier(backend, method="zero-shot"), TEXTS, ["fresh", "rotten"] * 2)
    path = tmp_path / "clf.skops"
    sio.dump(clf, path)
    data = pickle.dumps(clf)
    with zipfile.ZipFile(path) as archive:
        raw = b"".join(archive.read(member) for member in archive.namelist())
    for blob in (raw, data):
        assert secret.encode() not in blob
    for strings in (_skops_strings(path), _pickle_strings(data)):
        paths = {s for s in strings if os.path.isabs(s)}
        assert paths == {os.fspath(tiny_llama_dir)}, paths


# ------------------------------------------------------------ conformal sets
@pytest.fixture(scope="module")
def conformal_saved():
    from skprompt.conformal import SplitConformalSets

    backend, texts, y, _ = make_toy_task(n_texts=80, seed=3)
    clf = fit_quietly(BlackBoxPromptClassifier(backend, random_state=0, **TOY_FITS["bbt"]), texts[:36], y[:36])
    sets = SplitConformalSets(clf, random_state=0).conformalize(texts[36:60], y[36:60])
    return sets, sio.dumps(sets), texts[60:], [OBJECT_TYPE]


def test_conformal_sets_round_trip_with_skops(conformal_saved):
    sets, data, X_new, user_types = conformal_saved
    loaded = sio.loads(data, trusted=skops_trusted_types() + user_types)
    assert loaded.threshold_ == sets.threshold_
    for got, want in zip(loaded.predict_set(X_new), copy.deepcopy(sets).predict_set(X_new)):
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------- the list: complete and minimal
def test_trusted_types_are_complete_and_minimal(toy_saved, hf_saved, conformal_saved):
    listed = set(skops_trusted_types())
    used = set(sio.get_untrusted_types(data=conformal_saved[1])) - set(conformal_saved[3])
    assert used <= listed, sorted(used - listed)
    for saved in (toy_saved, hf_saved):
        for entry in saved["entries"]:
            if entry["format"] != "skops":
                continue
            needed = set(sio.get_untrusted_types(file=entry["path"]))
            user = set(saved["estimators"][entry["name"]][2])
            assert needed <= listed | user, (entry["name"], sorted(needed - listed - user))
            assert user <= needed, entry["name"]  # the user's function is a type to trust
            used |= needed & listed
    assert used == listed, sorted(listed - used)


def test_trusted_types_name_the_classes():
    names = skops_trusted_types()
    assert names == sorted(set(names)) and names is not skops_trusted_types()
    for name in names:
        module_name, _, qualname = name.rpartition(".")
        cls = getattr(importlib.import_module(module_name), qualname)
        assert isinstance(cls, type) and f"{cls.__module__}.{cls.__qualname__}" == name
    assert skprompt.skops_trusted_types is skops_trusted_types and "skops_trusted_types" in skprompt.__all__


def test_import_needs_neither_skops_nor_torch():
    code = "import sys, skprompt; skprompt.skops_trusted_types(); print(sorted({'skops', 'torch', 'transformers'} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_docstring_example_runs():
    import skprompt.persistence as module

    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 10 and result.failed == 0


def test_a_pipeline_needs_no_other_type(toy_saved):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    est, X_new, user_types = toy_saved["estimators"]["bbt"]
    pipe = make_pipeline(FunctionTransformer(None).fit(X_new), est)  # fitted steps: a fitted pipeline
    data = sio.dumps(pipe)
    assert set(sio.get_untrusted_types(data=data)) <= set(skops_trusted_types() + user_types)
    restored = sio.loads(data, trusted=skops_trusted_types() + user_types)
    np.testing.assert_array_equal(restored.predict_proba(X_new), toy_saved["expected"]["bbt"])


# ------------------------------------------- files saved before a refactoring
SAVED_BEFORE = Path(__file__).parent / "data" / "saved_before_package"


@pytest.mark.parametrize("fmt", ["pkl", "skops"])
@pytest.mark.parametrize("name", ["llama-bbt", "bert-bbt"])
def test_files_saved_before_the_transformers_package_load_and_predict_the_same(name, fmt, tiny_llama_dir,
                                                                                 tiny_bert_dir):
    """Saved by commit dd1e400, when ``skprompt.backends.huggingface`` was one
    module (tests/data/saved_before_package): the classes are found where the
    files name them, and the estimators predict what they predicted then
    (the tiny models are rebuilt from fixed seeds; the files name the
    directory of the session that saved them, which is gone, so the backend
    is rebuilt from its saved parameters on this session's directory)."""
    path = SAVED_BEFORE / f"{name}.{fmt}"
    if fmt == "pkl":
        with open(path, "rb") as fh:
            est = pickle.load(fh)
    else:
        import skops.io as sio

        est = sio.load(path, trusted=skops_trusted_types())
    from skprompt.backends import CausalLMBackend, MaskedLMBackend

    assert isinstance(est.backend_, CausalLMBackend if name.startswith("llama") else MaskedLMBackend)
    params = dict(est.backend_.get_params(), model=tiny_llama_dir if name.startswith("llama") else tiny_bert_dir)
    est.backend_ = type(est.backend_)(**params)
    expected = json.loads((SAVED_BEFORE / "expected.json").read_text())
    # float32 forward passes differ in the sixth decimal between CPUs (on an
    # AVX2-only AMD EPYC the tiny BERT's probabilities differed from the
    # saved ones by 1.3e-6); a wrong class or a lost parameter moves them by
    # tenths.
    np.testing.assert_allclose(est.predict_proba(expected["texts"]), expected["proba"][name], atol=1e-4)
