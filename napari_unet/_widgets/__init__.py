"""Dock widgets (Qt only here): they turn choices into configs, run compute generators in
workers and turn the events into plots, progress and layers. No training or tiling logic."""

from ._annotate import AnnotateWidget
from ._batch import BatchWidget
from ._predict import PredictWidget
from ._train import TrainWidget

__all__ = ["AnnotateWidget", "BatchWidget", "PredictWidget", "TrainWidget"]
