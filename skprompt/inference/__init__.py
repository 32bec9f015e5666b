"""Prompt-distribution learners. Each sees only a problem (candidate vectors
in, losses or labels out) and returns prompt samples with weights."""

from .base import BudgetExhausted, Learner, LearnerResult, aggregate_outputs
from .cmaes import CMAEnsembleLearner

__all__ = ["BudgetExhausted", "Learner", "LearnerResult", "aggregate_outputs", "CMAEnsembleLearner"]
