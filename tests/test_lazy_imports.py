"""``import skprompt`` and FunctionBackend users never load torch or transformers.

The heavy names (the gradient estimator, the transformers backends) are
imported on first access (PEP 562 module ``__getattr__``); ``__all__`` and
``dir()`` still list them.
"""

import subprocess
import sys
import textwrap

import pytest

import skprompt
import skprompt.backends

HEAVY = ("torch", "transformers")


def run_clean(code):
    """Run ``code`` in a fresh interpreter (nothing imported yet); return its stdout."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_fitting_on_a_function_backend_imports_neither_torch_nor_transformers():
    out = run_clean(
        """
        import sys
        import numpy as np
        import skprompt
        from skprompt import BlackBoxPromptClassifier
        from skprompt.backends import FunctionBackend

        def fn(prompts, texts):
            x = np.array([len(t) - 3.0 for t in texts])
            w = prompts[:, 0, 0] if prompts.shape[1] else np.zeros(len(prompts))
            s = w[:, None] * x[None, :]
            return np.stack([-s, s], axis=-1)

        texts = ["ab", "abcde", "a", "abcdef", "b", "abcdefg", "c", "abcd"] * 2
        y = ["short", "long", "short", "long", "short", "long", "short", "long"] * 2
        clf = BlackBoxPromptClassifier(FunctionBackend(fn, embedding_dim=4), method="bbt", max_iter=2,
                                       popsize=4, intrinsic_dim=2, random_state=0).fit(texts, y)
        clf.predict_proba(texts)
        dir(skprompt), dir(skprompt.backends)
        print(sorted(m for m in ("torch", "transformers") if m in sys.modules))
        """
    )
    assert out.strip() == "[]"


def test_heavy_names_are_listed_and_load_on_first_access():
    for module, names in ((skprompt, ["GradientPromptClassifier"]),
                          (skprompt.backends, ["CausalLMBackend", "MaskedLMBackend"])):
        assert set(module.__all__) <= set(dir(module))
        assert set(names) <= set(module.__all__)
    out = run_clean(
        """
        import sys
        import skprompt, skprompt.backends
        assert "torch" not in sys.modules
        from skprompt import GradientPromptClassifier
        from skprompt.backends import CausalLMBackend, MaskedLMBackend
        from skprompt.whitebox import GradientPromptClassifier as G
        from skprompt.backends.huggingface import CausalLMBackend as C, MaskedLMBackend as M
        assert (GradientPromptClassifier, CausalLMBackend, MaskedLMBackend) == (G, C, M)
        assert skprompt.GradientPromptClassifier is G and skprompt.backends.CausalLMBackend is C
        print("torch" in sys.modules)
        """
    )
    assert out.strip() == "True"


@pytest.mark.parametrize("module", [skprompt, skprompt.backends])
def test_unknown_names_still_raise_attribute_error(module):
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        module.NoSuchThing
    assert not hasattr(module, "NoSuchThing")


def test_the_served_model_client_stands_beside_the_local_backends_not_above_them():
    # VLLMBackend builds its inputs from the shared tokenizer layer
    # (backends/_tokenized.py), as CausalLMBackend does: importing it must not
    # import the transformers backends, and it borrows none of their methods.
    out = run_clean(
        """
        import sys
        from skprompt.backends import VLLMBackend
        from skprompt.backends._tokenized import _CausalInputs
        assert issubclass(VLLMBackend, _CausalInputs)
        defined = {name: getattr(value, "fget", value) for name, value in vars(VLLMBackend).items()}
        borrowed = [name for name, f in defined.items()
                    if getattr(f, "__module__", VLLMBackend.__module__) != VLLMBackend.__module__]
        print(sorted(m for m in sys.modules if m.startswith("skprompt.backends.huggingface")), borrowed)
        """
    )
    assert out.strip() == "[] []"
