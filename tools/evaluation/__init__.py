"""Evaluation: COCO detection (:mod:`.coco`), Cityscapes segmentation (:mod:`.cityscapes`) and classification
(:mod:`.classification`) metrics,
the evaluation loops over a model and a dataset (:mod:`.evaluators`), segmentation inference modes (whole,
sliding window, multi-scale + flip: :mod:`.seg_inference`) and report PNGs (:mod:`.reports`)."""

from .classification import ClassificationEvaluator, ClsMetrics, evaluate_classifier
from .cityscapes import InstanceStats, SegConfusion, SegMetrics, evaluate_label_pngs, metrics_from_confusion
from .coco import CocoEvalResult, detections_to_coco_results, evaluate_coco, write_coco_results
from .evaluators import evaluate_detector, evaluate_segmenter, predict_detections
from .seg_inference import MultiScaleFlip, SlidingWindow, inference_mode

__all__ = ["ClassificationEvaluator", "ClsMetrics", "evaluate_classifier",
           "CocoEvalResult", "SegConfusion", "SegMetrics", "detections_to_coco_results", "evaluate_coco",
           "evaluate_detector", "evaluate_label_pngs", "evaluate_segmenter", "metrics_from_confusion",
           "predict_detections", "write_coco_results", "InstanceStats", "MultiScaleFlip", "SlidingWindow",
           "inference_mode"]
