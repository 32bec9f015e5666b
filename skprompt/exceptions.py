"""Warnings and errors of skprompt."""

from .backends.base import BackendError, ContextWarning, TransientBackendError
from .inference.base import BudgetExhausted, PosteriorWarning

__all__ = ["BudgetWarning", "CostWarning", "BackendError", "TransientBackendError", "ContextWarning", "BudgetExhausted", "PosteriorWarning"]


class BudgetWarning(UserWarning):
    """``fit`` stopped because the query ``budget`` ran out; the best prompts
    found so far were kept."""


class CostWarning(UserWarning):
    """An unbudgeted ``fit`` is set up to make so many queries that it would
    take hours; pass ``budget`` to cap it."""
