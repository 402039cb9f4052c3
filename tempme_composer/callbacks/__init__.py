"""Composer callbacks of the recipe."""

from tempme_composer.callbacks.best_checkpoint import BEST_WEIGHTS, BestCheckpoint
from tempme_composer.callbacks.input_guards import FiniteLossGuard, FramePaddingNotice, NonFiniteLossError
from tempme_composer.callbacks.parameter_report import ParameterReport
from tempme_composer.callbacks.retrieval_analysis import RetrievalAnalysis
from tempme_composer.callbacks.retrieval_logger import RetrievalLogger
from tempme_composer.callbacks.train_log_line import TrainLogLine
from tempme_composer.callbacks.training_scalars import TrainingScalars

__all__ = ['BEST_WEIGHTS', 'BestCheckpoint', 'FiniteLossGuard', 'FramePaddingNotice', 'NonFiniteLossError', 'ParameterReport', 'RetrievalAnalysis', 'RetrievalLogger', 'TrainLogLine', 'TrainingScalars']
