"""skprompt: reliable gradient-free and likelihood-free soft-prompt tuning of
black-box language models, as scikit-learn classifiers.

``import skprompt`` loads neither torch nor transformers: the names that need
them (:class:`GradientPromptClassifier`) are imported on first use (PEP 562),
so that :class:`BlackBoxPromptClassifier` on a
:class:`~skprompt.backends.FunctionBackend` (a remote API) pays nothing for them.
"""

from ._lazy import lazy_attributes
from .classifier import METHODS, BlackBoxPromptClassifier
from .exceptions import BudgetWarning, CostWarning, PosteriorWarning
from .persistence import skops_trusted_types

__version__ = "0.1.0.dev0"

# name -> submodule that defines it, imported on first access (it imports torch).
_LAZY = {"GradientPromptClassifier": "whitebox"}

__all__ = [
    "BlackBoxPromptClassifier",
    "BudgetWarning",
    "CostWarning",
    "GradientPromptClassifier",
    "METHODS",
    "PosteriorWarning",
    "__version__",
    "skops_trusted_types",
]

__getattr__, __dir__ = lazy_attributes(__name__, globals(), _LAZY, __all__)
