"""Classification metrics per task type (binary, multiclass, ordinal, multilabel), from scikit-learn."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize

from synthfm.errors import SynthfmError


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean recall over the classes present in y (a class only predicted, absent from y, is not averaged)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "y_pred contains classes not in y_true")
        return float(skm.balanced_accuracy_score(y, pred))


def _check(y: np.ndarray, p: np.ndarray) -> None:
    """Targets and scores line up and are finite."""
    if len(y) != len(p):
        raise SynthfmError(f"{len(y)} targets but {len(p)} predictions", "pass one score row per target")
    if not np.isfinite(p).all():
        raise SynthfmError("predicted scores contain NaN or inf", "check the model's outputs (diverged training?)")


def _binary_auroc(y: np.ndarray, p: np.ndarray) -> float:
    """AUROC of P(positive) scores; NaN when the targets hold one class only."""
    return float(skm.roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """AUROC, AUPRC, accuracy, balanced accuracy, F1, sensitivity, specificity of P(positive) scores."""
    y, p = np.asarray(y).astype(int), np.asarray(p, dtype=float).reshape(-1)
    _check(y, p)
    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    both = len(np.unique(y)) == 2
    return {
        "auroc": _binary_auroc(y, p),
        "auprc": float(skm.average_precision_score(y, p)) if both else float("nan"),
        "accuracy": float((pred == y).mean()),
        "balanced_accuracy": balanced_accuracy(y, pred),
        "f1": float(skm.f1_score(y, pred, zero_division=0)),
        "sensitivity": float(tp / (tp + fn)) if tp + fn else float("nan"),
        "specificity": float(tn / (tn + fp)) if tn + fp else float("nan"),
    }


def _ovr_auroc(onehot: np.ndarray, p: np.ndarray) -> float:
    """Macro one-vs-rest AUROC over the classes both present and absent in the targets."""
    present = onehot.sum(0) > 0
    return float(np.mean([skm.roc_auc_score(onehot[:, c], p[:, c]) for c in np.flatnonzero(present)
                          if onehot[:, c].min() == 0]))


def multiclass_metrics(y: np.ndarray, p: np.ndarray, ordinal: bool = False) -> dict[str, float]:
    """Macro one-vs-rest AUROC and AUPRC, accuracy, balanced accuracy, macro F1 (+ quadratic kappa if ordinal)."""
    y, p = np.asarray(y).astype(int), np.asarray(p, dtype=float)
    _check(y, p)
    k = p.shape[1]
    onehot = label_binarize(y, classes=np.arange(k))
    present = onehot.sum(0) > 0
    pred = p.argmax(1)
    out = {
        "auroc": _ovr_auroc(onehot, p),
        "auprc": float(np.mean([skm.average_precision_score(onehot[:, c], p[:, c]) for c in np.flatnonzero(present)])),
        "accuracy": float((pred == y).mean()),
        "balanced_accuracy": balanced_accuracy(y, pred),
        "f1": float(skm.f1_score(y, pred, average="macro", labels=np.arange(k), zero_division=0)),
    }
    if ordinal:
        out["kappa_quadratic"] = float(skm.cohen_kappa_score(y, pred, weights="quadratic", labels=np.arange(k)))
    return out


def multilabel_metrics(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Macro AUROC / AUPRC over labels with both values present, mean accuracy and macro F1."""
    y, p = np.asarray(y).astype(int), np.asarray(p, dtype=float)
    _check(y, p)
    ok = [c for c in range(y.shape[1]) if 0 < y[:, c].sum() < len(y)]
    pred = (p >= threshold).astype(int)
    return {
        "auroc": float(np.mean([skm.roc_auc_score(y[:, c], p[:, c]) for c in ok])) if ok else float("nan"),
        "auprc": float(np.mean([skm.average_precision_score(y[:, c], p[:, c]) for c in ok])) if ok else float("nan"),
        "accuracy": float((pred == y).mean()),
        "f1": float(skm.f1_score(y, pred, average="macro", zero_division=0)),
    }


def task_metrics(task_type: str, y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Metrics for a card task type: binary scores (N,), class probabilities (N, K) or label scores (N, K)."""
    if task_type == "binary":
        return binary_metrics(y, p)
    if task_type == "multilabel":
        return multilabel_metrics(y, p)
    return multiclass_metrics(y, p, ordinal=task_type == "ordinal")


def task_auroc(task_type: str, y: np.ndarray, p: np.ndarray) -> float:
    """task_metrics(...)["auroc"] alone (the same value), for per-epoch model selection."""
    if task_type == "multilabel":
        return multilabel_metrics(y, p)["auroc"]
    if task_type == "binary":
        y, p = np.asarray(y).astype(int), np.asarray(p, dtype=float).reshape(-1)
        _check(y, p)
        return _binary_auroc(y, p)
    y, p = np.asarray(y).astype(int), np.asarray(p, dtype=float)
    _check(y, p)
    return _ovr_auroc(label_binarize(y, classes=np.arange(p.shape[1])), p)


def confusion(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """K x K confusion matrix (rows: truth, columns: prediction)."""
    return skm.confusion_matrix(np.asarray(y).astype(int), np.asarray(pred).astype(int), labels=np.arange(k))
