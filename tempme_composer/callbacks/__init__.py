"""Composer callbacks of the recipe."""

from tempme_composer.callbacks.best_checkpoint import BestCheckpoint
from tempme_composer.callbacks.retrieval_analysis import RetrievalAnalysis
from tempme_composer.callbacks.retrieval_logger import RetrievalLogger
from tempme_composer.callbacks.train_log_line import TrainLogLine

__all__ = ['BestCheckpoint', 'RetrievalAnalysis', 'RetrievalLogger', 'TrainLogLine']
