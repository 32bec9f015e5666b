"""Prompt-distribution learners. Each sees only a problem (candidate vectors
in, losses or labels out) and returns prompt samples with weights."""

from .abc_smc import ABCSMCLearner
from .base import BudgetExhausted, Learner, LearnerResult, aggregate_outputs, select_without
from .cmaes import CMAEnsembleLearner
from .snpe import SNPELearner
from .vi import VariationalLearner

__all__ = ["ABCSMCLearner", "BudgetExhausted", "CMAEnsembleLearner", "Learner", "LearnerResult", "SNPELearner",
           "VariationalLearner", "aggregate_outputs", "select_without"]
