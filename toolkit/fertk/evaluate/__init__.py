"""Metrics for a FER classifier: accuracy, confusion matrices, per-class precision/recall/F1,
macro-F1; JSON + CSV + PNG reports; several test sets (in-database and cross-database) at once.

  metrics     ClassMetrics, confusion_matrix, class_metrics, EvalReport (numbers from counts)
  classifier  Classifier, open_classifier / open_judge, predict_logits (always through an Engine)
  run         evaluate, evaluate_sets, evaluate_paths (`fertk eval`), EvalRun
  reports     write_report(s), figures, safe_name
"""

from fertk.evaluate.classifier import (DEFAULT_BATCH, Classifier, EngineOpener, classifier_classes, classifier_input_size,
                                       open_classifier, open_judge, predict_logits)
from fertk.evaluate.metrics import ClassMetrics, EvalReport, class_metrics, confusion_matrix
from fertk.evaluate.reports import (confusion_figure, per_class_figure, safe_name, unique_stems, write_report,
                                    write_reports)
from fertk.evaluate.run import EvalRun, evaluate, evaluate_paths, evaluate_sets

__all__ = [
    "DEFAULT_BATCH", "ClassMetrics", "Classifier", "EvalReport", "EvalRun", "class_metrics", "classifier_classes",
    "classifier_input_size", "confusion_figure", "confusion_matrix", "evaluate", "evaluate_paths",
    "EngineOpener", "evaluate_sets", "open_classifier", "open_judge", "per_class_figure", "predict_logits", "safe_name",
    "unique_stems", "write_report", "write_reports",
]
