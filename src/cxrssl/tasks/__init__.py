"""Tasks join data, model, loss and metrics for the training engine."""

from cxrssl.tasks.segmentation import Predictor, SegConfig, predict, train_seg

__all__ = ["Predictor", "SegConfig", "predict", "train_seg"]
