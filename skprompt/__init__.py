"""skprompt: reliable gradient-free and likelihood-free soft-prompt tuning of
black-box language models, as scikit-learn classifiers."""

from .classifier import METHODS, BlackBoxPromptClassifier
from .exceptions import BudgetWarning, PosteriorWarning
from .whitebox import GradientPromptClassifier

__version__ = "0.1.0.dev0"

__all__ = [
    "BlackBoxPromptClassifier",
    "BudgetWarning",
    "GradientPromptClassifier",
    "METHODS",
    "PosteriorWarning",
    "__version__",
]
