"""The recipe of one classifier training run: an encoder adapted to one card task, fine-tuned or linearly probed.

`ClassifierConfig` is what the classifier trainer (`train/trainer.py`) reads. The adaptation stage's
`AdaptConfig` extends it with what only an experiment needs (external test cards, cross-validation); the gate's
label verifier and domain encoder use it as it is. A field added after configs were hashed into run
directories is listed in `omit_when_default`, so those directories keep their hash.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from synthfm.config import StrictModel
from synthfm.hardware import resolve_precision
from synthfm.models.baselines import PIXELS, pixels_problem


class ProbesConfig(StrictModel):
    """Extra readouts of a linear probe's cached frozen features (policy linear_probe without augmentation).

    Besides the configured head, a linear probe (the same recipe) is trained on every pooling the encoder offers
    (`cls`, `mean`, `cls+mean`) and a DINO k-NN (cosine, k, temperature-weighted votes) is scored on each, all
    from the one feature pass of the run; results go to the experiment's `probes` table.
    """

    pools: bool = Field(True, description="also train a linear probe on every other pooling")
    knn: bool = Field(True, description="score a weighted k-NN (train subset as memory bank) on every pooling")
    knn_k: int = Field(20, ge=1)
    knn_temperature: float = Field(0.07, gt=0)


class ClassifierConfig(StrictModel):
    """The paper's recipe (Zhou et al.): batch 16, 50 epochs, 10 warm-up to 5e-4, cosine to 1e-6, best-val AUROC.

    `lr` is the absolute peak learning rate (not scaled by batch size), as in the paper; `blr` sets it from the
    batch size instead, as RETFound's code does. The RETFound fine-tuning extras are layer-wise lr decay, drop
    path and label smoothing; against a collapse to the majority class at few labels there are `class_balance`
    and early stopping (`patience`) on validation AUROC.
    """

    card: str = Field(description="dataset.yaml of the downstream card")
    task: str = Field(description="task name in the card")
    encoder: str = Field(description="save_pretrained dir, 'random:<backbone>', a checkpoint file (+ backbone), or "
                                     "'pixels' (raw-pixel baseline: linear probe at image_size)")
    backbone: str | None = Field(None, description="registry backbone for a checkpoint file (import_checkpoint)")
    backbone_overrides: dict[str, Any] = Field(default_factory=dict, description="timm kwargs for random:/file")
    policy: Literal["finetune", "linear_probe"] = "finetune"
    image_size: int | None = Field(None, ge=8, description="default: the encoder's image size")
    augment: bool | None = Field(None, description="random resized crop + flip; default on for finetune, off "
                                                   "for linear_probe (then features are computed once per run)")
    batch_size: int = Field(16, ge=1)
    epochs: int = Field(50, ge=1)
    warmup_epochs: float = Field(10, ge=0)
    lr: float = Field(5e-4, gt=0)
    min_lr: float = Field(1e-6, ge=0)
    layer_decay: float = Field(0.65, gt=0, le=1, description="finetune only; 1 disables it")
    drop_path: float = Field(0.1, ge=0, lt=1, description="finetune only")
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float | None = Field(None, gt=0)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4], min_length=1)
    label_fractions: list[float] = Field(default_factory=lambda: [1.0], min_length=1)
    subset_seed: int = Field(0, description="seed of the nested label-fraction subsets (same for every seed)")
    val_split: str = "val"
    test_splits: list[str] = Field(default_factory=lambda: ["test"])
    num_workers: int = Field(0, ge=0)
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = Field(
        "auto", validate_default=True,
        description="'auto': bf16 where the device computes it natively, else fp32 ('no'); resolved when the "
                    "config is read, so the run records the choice (synthfm.hardware)")
    export_encoder: bool = Field(False, description="finetune: also save the best epoch's encoder as a "
                                                    "save_pretrained dir `encoder/` in each run directory")
    pool: Literal["cls", "mean", "cls+mean"] | None = Field(
        None, description="how tokens become the head's input (models/pooling.py); default: the encoder's own "
                          "pooling (the CLS token for synthfm's ViTs)")
    probes: ProbesConfig = Field(default_factory=ProbesConfig, description="linear_probe: every pooling + k-NN")
    class_balance: Literal["none", "loss", "sampler"] = Field(
        "none", description="balanced class weights of the training subset: weight the loss, or sample each class "
                            "equally often (with replacement)")
    blr: float | None = Field(None, gt=0, description="base learning rate: lr = blr * batch_size / 256 (MAE / "
                                                      "RETFound); instead of lr")
    patience: int | None = Field(None, ge=1, description="stop after this many epochs without a better validation "
                                                         "AUROC; default: train every epoch")
    omit_when_default: ClassVar[tuple[str, ...]] = ("export_encoder", "pool", "probes", "class_balance", "blr",
                                                    "patience")

    @field_validator("mixed_precision")
    @classmethod
    def _resolve_precision(cls, value: str) -> str:
        """'auto' becomes this machine's choice (an fp32 machine records 'no', as configs did before 'auto')."""
        return resolve_precision(value)

    @model_validator(mode="after")
    def _pixels_need_size_and_probe(self) -> ClassifierConfig:
        """The raw-pixel baseline is a linear probe at a given image size (checked before any job runs)."""
        problem = pixels_problem(self.image_size, self.policy) if self.encoder == PIXELS else None
        if problem:
            raise ValueError(f"{problem[0]}: {problem[1]}")
        return self

    @model_validator(mode="after")
    def _lr_from_blr(self) -> ClassifierConfig:
        """With blr, lr is blr * batch_size / 256 (kept in lr, so dumps show the peak rate); both given differ."""
        if self.blr is None:
            return self
        scaled = self.blr * self.batch_size / 256
        if "lr" in self.model_fields_set and self.lr != scaled:
            raise ValueError(f"set lr (absolute peak learning rate) or blr (lr = blr * batch_size / 256), not both: "
                             f"lr {self.lr:g} but blr {self.blr:g} x batch_size {self.batch_size} / 256 = {scaled:g}")
        object.__setattr__(self, "lr", scaled)  # not marked as set: a later batch_size rescales it
        return self

    @model_validator(mode="after")
    def _export_needs_finetune(self) -> ClassifierConfig:
        """A linear probe leaves the encoder as it was, so there is nothing new to export."""
        if self.export_encoder and self.policy == "linear_probe":
            raise ValueError("export_encoder needs policy 'finetune': a linear probe does not change the encoder "
                             "(use the probed encoder itself)")
        return self

    @property
    def augments(self) -> bool:
        """Whether training images are augmented."""
        return self.augment if self.augment is not None else self.policy == "finetune"

    def single(self, fraction: float, seed: int) -> ClassifierConfig:
        """This config restricted to one (label fraction, seed): the config of one run directory."""
        return self.model_copy(update={"label_fractions": [fraction], "seeds": [seed]})
