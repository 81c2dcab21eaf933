"""The fundus phantom's labels are learnable from its pixels alone: a small classifier beats chance clearly.

300 images at 64 px (balanced DR grade x glaucoma through the condition; AMD and cataract fixed to
"no" so they do not mask the signal; age, sex, ethnicity and device drawn from the priors) are turned
into pixel statistics inside the field of view found from the pixels (colour histograms plus
histograms of two high-pass residuals) and fed to a logistic regression trained on 2/3 and tested on
1/3. Measured on four render seeds: DR balanced accuracy 0.45-0.50 (chance 0.2), quadratic kappa
0.82-0.83, glaucoma AUROC 0.90-0.97 (chance 0.5); the thresholds leave margin below the worst of those.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from synthfm.data.preprocess import fov_mask
from synthfm.synth.fundus import FundusPhantom

N_IMAGES = 300
SIZE = 64
SEED = 5000
BINS = 16
HIGH_PASS_SIGMAS = (1.0, 3.0)
MIN_DR_BALANCED_ACCURACY = 0.35  # chance 0.20; measured 0.45-0.50 over four seeds
MIN_DR_KAPPA = 0.6  # quadratic-weighted kappa, chance 0; measured 0.82-0.83 over four seeds
MIN_GLAUCOMA_AUROC = 0.80  # chance 0.50; measured 0.90-0.97 over four seeds


def pixel_features(image: np.ndarray) -> np.ndarray:
    """Per-channel intensity and high-pass histograms inside the field of view (pixels only)."""
    fov = fov_mask(image)
    x = image.astype(np.float32) / 255.0
    feats = []
    for c in range(3):
        feats.append(np.histogram(x[..., c][fov], BINS, (0.0, 1.0))[0])
        for sigma in HIGH_PASS_SIGMAS:
            residual = x[..., c] - ndimage.gaussian_filter(x[..., c], sigma)
            feats.append(np.histogram(residual[fov], BINS, (-0.15, 0.15))[0])
    return np.concatenate(feats) / fov.sum()


@pytest.fixture(scope="module")
def phantom_set() -> dict[str, np.ndarray]:
    """Features and labels of a balanced phantom set (DR grade cycles fastest, glaucoma alternates per 5)."""
    gen = FundusPhantom()
    feats, dr, glaucoma = [], [], []
    for i in range(N_IMAGES):
        cond = {"dr_grade": i % 5, "glaucoma": (i // 5) % 2, "amd": 0, "cataract": 0}
        sample = gen.generate(cond, SEED + i, SIZE)
        assert sample.labels["dr_grade"] == cond["dr_grade"] and sample.labels["glaucoma"] == cond["glaucoma"]
        feats.append(pixel_features(sample.image))
        dr.append(cond["dr_grade"])
        glaucoma.append(cond["glaucoma"])
    train = np.arange(N_IMAGES) < 2 * N_IMAGES // 3
    return {"x": np.stack(feats), "dr_grade": np.array(dr), "glaucoma": np.array(glaucoma), "train": train}


def _fit(data: dict[str, np.ndarray], task: str) -> tuple[np.ndarray, np.ndarray]:
    """Train a standardised logistic regression on the train part; return test labels and probabilities."""
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))
    x, y, train = data["x"], data[task], data["train"]
    model.fit(x[train], y[train])
    return y[~train], model.predict_proba(x[~train])


def test_classes_balanced_in_both_parts(phantom_set: dict[str, np.ndarray]) -> None:
    """Each DR grade and glaucoma class is equally frequent in train and test (chance is 1/5 and 1/2)."""
    for part in (phantom_set["train"], ~phantom_set["train"]):
        for task, k in (("dr_grade", 5), ("glaucoma", 2)):
            counts = np.bincount(phantom_set[task][part], minlength=k)
            assert counts.min() == counts.max() == part.sum() // k


def test_dr_grade_learnable_from_pixels(phantom_set: dict[str, np.ndarray]) -> None:
    """DR grade (5 classes) from pixel statistics: balanced accuracy and weighted kappa well above chance."""
    y, prob = _fit(phantom_set, "dr_grade")
    pred = prob.argmax(axis=1)
    score = balanced_accuracy_score(y, pred)
    kappa = cohen_kappa_score(y, pred, weights="quadratic")
    assert score >= MIN_DR_BALANCED_ACCURACY, f"DR balanced accuracy {score:.3f}"
    assert kappa >= MIN_DR_KAPPA, f"DR quadratic-weighted kappa {kappa:.3f}"


def test_glaucoma_learnable_from_pixels(phantom_set: dict[str, np.ndarray]) -> None:
    """Glaucoma (enlarged cup) from pixel statistics: AUROC well above chance."""
    y, prob = _fit(phantom_set, "glaucoma")
    score = roc_auc_score(y, prob[:, 1])
    assert score >= MIN_GLAUCOMA_AUROC, f"glaucoma AUROC {score:.3f}"
