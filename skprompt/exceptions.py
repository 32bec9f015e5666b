"""Warnings and errors of skprompt."""

from .backends.base import BackendError, ContextWarning
from .inference.base import BudgetExhausted, PosteriorWarning

__all__ = ["BudgetWarning", "BackendError", "ContextWarning", "BudgetExhausted", "PosteriorWarning"]


class BudgetWarning(UserWarning):
    """``fit`` stopped because the query ``budget`` ran out; the best prompts
    found so far were kept."""
