"""Composer callbacks of the recipe (the best-checkpoint callback is in `tempme_composer.checkpointing`)."""

from tempme_composer.callbacks.input_guards import FiniteLossGuard, FramePaddingNotice
from tempme_composer.callbacks.parameter_report import ParameterReport
from tempme_composer.callbacks.retrieval_analysis import RetrievalAnalysis
from tempme_composer.callbacks.retrieval_logger import RetrievalLogger
from tempme_composer.callbacks.train_log_line import TrainLogLine
from tempme_composer.callbacks.training_scalars import TrainingScalars

__all__ = [
    'FiniteLossGuard',
    'FramePaddingNotice',
    'ParameterReport',
    'RetrievalAnalysis',
    'RetrievalLogger',
    'TrainLogLine',
    'TrainingScalars',
]
