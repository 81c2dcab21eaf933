"""What each kind of pipeline job validates, runs and hands to later jobs.

A kind is a config model, a function that does the work in the job's folder by calling the package's
own stage function (no shell), the path a `${stage.job}` reference to it resolves to, and the external
files it reads (checked before anything runs, and hashed into the job's key). Stages that land later
register their kinds here; a new kind is a new entry, not a new branch in the runner.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, Field, field_validator, model_validator

from synthfm.adapt.config import AdaptConfig
from synthfm.config import StrictModel, check_block, validate_config
from synthfm.data.preprocess import PrepareConfig
from synthfm.data.splits import SplitConfig
from synthfm.io import atomic_write_json, atomic_write_text, write_table_pair
from synthfm.pretrain.config import PretrainConfig, pretrain_config
from synthfm.synth.writer import PhantomConfig

CARD_FILE = "dataset.yaml"


@dataclass(frozen=True)
class Kind:
    """One kind of job: validate its config, run it into a folder, say what a reference to it means."""

    validate: Callable[[Any, str], BaseModel]
    run: Callable[[Any, Path], dict[str, Any]]
    output: Callable[[Any, Path], Path] = lambda cfg, d: d
    inputs: Callable[[Any], list[str]] = field(default=lambda cfg: [])
    help: str = ""


def model_kind(model: type[BaseModel]) -> Callable[[Any, str], BaseModel]:
    """A validator for a plain config model."""
    return lambda raw, where: validate_config(model, raw, where)


def card_file(path: str | Path) -> Path:
    """A card folder or its dataset.yaml, as the dataset.yaml path."""
    p = Path(path)
    return p / CARD_FILE if p.is_dir() or not p.suffix else p


# ---- data ---------------------------------------------------------------------------------------------------

class CardJob(StrictModel):
    """An existing dataset card, checked (counts, labels, files of a sample) and passed on."""

    path: str = Field(description="card folder or dataset.yaml")
    sample: int = Field(50, ge=0, description="images decoded by the check (0 = all)")


def _card_validate(raw: Any, where: str) -> BaseModel:
    """A bare path is shorthand for {path: ...}."""
    return validate_config(CardJob, {"path": raw} if isinstance(raw, str) else raw, where)


def _card_run(cfg: CardJob, out: Path) -> dict[str, Any]:
    """Inspect the card and keep the report; errors in the card stop the pipeline."""
    from synthfm.data.inspect import inspect_card
    from synthfm.errors import SynthfmError

    rep = inspect_card(card_file(cfg.path), cfg.sample)
    problems = [{"severity": p.severity, "where": p.where, "message": p.message} for p in rep.problems]
    atomic_write_json(out / "inspect.json", {"rows": rep.rows, "splits": rep.splits, "labels": rep.labels,
                                             "problems": problems})
    if rep.errors:
        first = next(p for p in rep.problems if p.severity == "error")
        raise SynthfmError(f"card {cfg.path} has {len(rep.errors)} error(s), first: {first.where}: {first.message}",
                           f"run `synthfm data inspect {cfg.path}` and fix what it lists")
    return {"rows": rep.rows, "splits": rep.splits}


class PrepareJob(PrepareConfig):
    """`data prepare` of an earlier card: field-of-view crop, pad, resize, folder or shards."""

    input: str = Field(description="card to prepare, usually ${data.<job>}")


class SplitJob(SplitConfig):
    """`data split` of an earlier card: patient-level, stratified train/val/test."""

    input: str = Field(description="card to split, usually ${data.<job>}")


def _phantom_run(cfg: PhantomConfig, out: Path) -> dict[str, Any]:
    """Render phantoms into the job folder."""
    from synthfm.synth.writer import render_phantom

    render_phantom(out, cfg)
    return {"images": cfg.n}


def _prepare_run(cfg: PrepareJob, out: Path) -> dict[str, Any]:
    """Prepare the input card into the job folder."""
    from synthfm.data.prepare import prepare_card

    prepare_card(cfg.input, out, PrepareConfig(**cfg.model_dump(exclude={"input"})))
    return {"size": cfg.size, "format": cfg.format}


def _split_run(cfg: SplitJob, out: Path) -> dict[str, Any]:
    """Split the input card into the job folder."""
    from synthfm.data.splits import split_card

    split_card(cfg.input, out, SplitConfig(**cfg.model_dump(exclude={"input"})))
    return {"ratios": list(cfg.ratios)}


def _card_out(cfg: Any, d: Path) -> Path:
    """Jobs that write a card: it lies in the job folder."""
    return d / CARD_FILE


DATA_KINDS = {
    "card": Kind(_card_validate, _card_run, lambda cfg, d: card_file(cfg.path), lambda cfg: [str(card_file(cfg.path))],
                 help="an existing dataset card"),
    "phantom": Kind(model_kind(PhantomConfig), _phantom_run, _card_out, help="render fundus / CXR phantoms"),
    "prepare": Kind(model_kind(PrepareJob), _prepare_run, _card_out, lambda cfg: [cfg.input],
                    help="preprocess a card (crop, resize, shards)"),
    "split": Kind(model_kind(SplitJob), _split_run, _card_out, lambda cfg: [cfg.input],
                  help="patient-level stratified split"),
}


def _pretrain_inputs(cfg: PretrainConfig) -> list[str]:
    """Card sources of every curriculum stage (phantom and RaSD are generated)."""
    return [s.source for st in cfg.stages for s in st.sources if s.source not in ("phantom", "rasd")]


def _pretrain_run(cfg: PretrainConfig, out: Path) -> dict[str, Any]:
    """Pretrain in the job folder (the engine resumes an interrupted run)."""
    from synthfm.pretrain.engine import pretrain

    return pretrain(cfg, out)


# ---- synth ------------------------------------------------------------------------------------------------

def _consortium_validate(raw: Any, where: str) -> BaseModel:
    """A consortium config inline, or the path of one (e.g. configs/consortium.yaml)."""
    from synthfm.consortium.simulate import ConsortiumConfig, load_consortium_config

    return load_consortium_config(raw) if isinstance(raw, str) else validate_config(ConsortiumConfig, raw, where)


def _consortium_run(cfg: BaseModel, out: Path) -> dict[str, Any]:
    """Sites -> signed bundles -> hub verification -> composed card -> pretraining -> per-site evaluation."""
    from synthfm.consortium.simulate import run_consortium

    summary = run_consortium(cfg, out)
    return {"composed_card": summary["composed_card"], "evaluation": summary.get("evaluation")}


def _generator_validate(raw: Any, where: str) -> BaseModel:
    """A pretraining config whose objective is the diffusion generator."""
    from synthfm.errors import SynthfmError

    cfg = pretrain_config({"objective": "diffusion", **(raw or {})}, where)
    if cfg.objective != "diffusion":
        raise SynthfmError(f"{where}: a generator job needs objective 'diffusion', got {cfg.objective!r}",
                           "drop the objective key, or move the job to the pretrain stage")
    return cfg


def _generate_validate(raw: Any, where: str) -> BaseModel:
    """`synthfm synth generate`'s config."""
    from synthfm.synth.diffusion.config import GenerateConfig

    return validate_config(GenerateConfig, raw, where)


def _generate_run(cfg: Any, out: Path) -> dict[str, Any]:
    """Generate the synthetic card into the job folder (resumes at the first missing shard)."""
    from synthfm.synth.diffusion.generate import generate

    return generate(cfg, out)


SYNTH_KINDS = {
    "generator": Kind(_generator_validate, _pretrain_run, lambda cfg, d: d / "generator", _pretrain_inputs,
                      help="train a conditional diffusion generator on cards"),
    "generate": Kind(_generate_validate, _generate_run, _card_out,
                     lambda cfg: [cfg.generator] + ([cfg.target.card] if cfg.target else []),
                     help="generate a synthetic card to a target distribution of conditions"),
    "consortium": Kind(_consortium_validate, _consortium_run, lambda cfg, d: d / "hub" / "composed" / CARD_FILE,
                       help="simulated consortium: site bundles -> hub -> composed pretraining card"),
}


# ---- quality ----------------------------------------------------------------------------------------------

class QualityJob(StrictModel):
    """The quality and privacy gate of a synthetic card against a real one; a failed gate stops the pipeline."""

    synthetic: str = Field(description="synthetic card, usually ${synth.<job>}")
    real: str = Field(description="real card, usually ${data.<job>}")
    config: dict[str, Any] = Field(default_factory=dict, description="QualityConfig keys (spaces, gate, ...)")

    @field_validator("config")
    @classmethod
    def _quality_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        """QualityConfig keys, checked when the pipeline is planned."""
        from synthfm.quality.config import QualityConfig

        return check_block(QualityConfig, value)


def _quality_run(cfg: QualityJob, out: Path) -> dict[str, Any]:
    """Run every check, write the tables, then apply the gate (the domain encoder cached in the pipeline's root)."""
    from synthfm.quality.config import QualityConfig
    from synthfm.quality.run import run_quality

    qcfg = validate_config(QualityConfig, cfg.config, "quality.config")
    if qcfg.domain.cache_dir is None:
        qcfg = qcfg.model_copy(update={"domain": qcfg.domain.model_copy(update={"cache_dir": str(out.parent.parent
                                                                                                / "cache")})})
    summary = run_quality(cfg.synthetic, cfg.real, qcfg, out)
    return {"verdict": summary.get("verdict")}


# ---- pretrain / adapt ---------------------------------------------------------------------------------------

def _adapt_inputs(cfg: AdaptConfig) -> list[str]:
    """The downstream card, and the encoder unless it is random init or raw pixels."""
    from synthfm.models.baselines import builds_from_scratch

    return [cfg.card] + ([] if builds_from_scratch(cfg.encoder) else [cfg.encoder])


def _adapt_run(cfg: AdaptConfig, out: Path) -> dict[str, Any]:
    """Every label fraction x seed (finished seeds are never redone)."""
    from synthfm.adapt.experiment import run_experiment

    results = run_experiment(cfg, out)
    test = results[(results["metric"] == "auroc") & (results["split"] == cfg.test_splits[0])]
    return {"runs": int(test.shape[0]), "test_auroc_mean": float(test["value"].mean())}


# ---- evaluate -----------------------------------------------------------------------------------------------

class CompareJob(StrictModel):
    """Paired (by seed) t-tests of adaptation experiment A vs B per label fraction, Holm-corrected."""

    a: str = Field(description="experiment A, usually ${adapt.<job>}")
    b: str = Field(description="experiment B (the baseline)")
    metric: str = "auroc"
    split: str = "test"
    label_a: str | None = Field(None, description="name of A in tables and the verdict (default: job name)")
    label_b: str | None = None


def _compare_run(cfg: CompareJob, out: Path) -> dict[str, Any]:
    """Write the comparison table (CSV + JSON records)."""
    from synthfm.evaluate.results import compare
    from synthfm.io import atomic_path

    table = compare(cfg.a, cfg.b, metric=cfg.metric, split=cfg.split)
    with atomic_path(out / "comparison.csv", ".csv") as tmp:
        table.to_csv(tmp, index=False)
    records = json.loads(table.to_json(orient="records"))
    atomic_write_json(out / "comparison.json", {"a": cfg.a, "b": cfg.b, "label_a": cfg.label_a,
                                                "label_b": cfg.label_b, "metric": cfg.metric,
                                                "split": cfg.split, "rows": records})
    return {"rows": len(records)}


class FairnessJob(StrictModel):
    """Subgroup tables and gaps from an adaptation experiment's saved predictions (`synthfm evaluate`)."""

    experiment: str = Field(description="adaptation experiment, usually ${adapt.<job>}")
    fairness: dict[str, Any] = Field(default_factory=dict, description="FairnessConfig keys (attributes, min_n...)")
    metric: str = "auroc"

    @field_validator("fairness")
    @classmethod
    def _fairness_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        """FairnessConfig keys, checked when the pipeline is planned."""
        from synthfm.evaluate.fairness import FairnessConfig

        return check_block(FairnessConfig, value)


def _fairness_run(cfg: FairnessJob, out: Path) -> dict[str, Any]:
    """Compute the tables (written beside the experiment too) and keep copies in the job folder."""
    from synthfm.evaluate.experiment import evaluate_experiment
    from synthfm.evaluate.fairness import FairnessConfig

    tables = evaluate_experiment(cfg.experiment, validate_config(FairnessConfig, cfg.fairness, "fairness"),
                                 cfg.metric)
    for name in ("subgroup_summary", "gap_summary"):
        write_table_pair(tables[name], out / name)
    return {"subgroups": int(tables["subgroup_summary"].shape[0])}


class EfficiencyJob(StrictModel):
    """Label-efficiency curves of several experiments and the label fraction each needs to match a reference."""

    models: dict[str, str] = Field(description="display name -> adaptation experiment (${adapt.<job>})")
    reference: str = Field(description="the display name whose score at its largest fraction is the target")
    metric: str = "auroc"
    split: str = "test"


def _efficiency_run(cfg: EfficiencyJob, out: Path) -> dict[str, Any]:
    """Write label_curve and labels_needed tables."""
    import pandas as pd

    from synthfm.evaluate.efficiency import label_curve, labels_needed
    from synthfm.evaluate.results import load_results

    results = pd.concat([load_results(path).assign(experiment=name) for name, path in cfg.models.items()])
    needed = labels_needed(results, cfg.reference, cfg.metric, cfg.split)
    write_table_pair(label_curve(results, cfg.metric, cfg.split), out / "label_curve")
    write_table_pair(needed, out / "labels_needed")
    return {row["experiment"]: row["note"] for row in needed.to_dict("records")}


class ArmsJob(StrictModel):
    """Many arms at once: mean ± CI per arm and fraction, t-tests vs baselines (one Holm family), labels to match."""

    arms: dict[str, str] = Field(description="display name -> adaptation experiment (${adapt.<job>}), in table order")
    baselines: list[str] = Field(min_length=1, description="arms every other arm is tested against")
    reference: str = Field(description="the arm whose mean at 100% labels the others must match")
    metrics: list[str] = Field(default_factory=lambda: ["auroc", "accuracy"], min_length=1)
    split: str = "test"
    title: str | None = Field(None, description="what the arms share, e.g. 'linear probe, RetinaMNIST DR grade'")
    controls: list[str] = Field(default_factory=list, description="arms without pretraining (raw pixels, a CNN from "
                                "scratch): tested like baselines; the verdict says if any pretrained arm beats each")
    omit_when_default: ClassVar[tuple[str, ...]] = ("controls",)

    @model_validator(mode="after")
    def _controls_are_arms(self) -> ArmsJob:
        """Each control is one of the arms (checked when the pipeline is planned, before anything runs)."""
        missing = [c for c in self.controls if c not in self.arms]
        if missing:
            raise ValueError(f"'controls' names {missing}, which are not arms; use names from {list(self.arms)}")
        return self


def _arms_run(cfg: ArmsJob, out: Path) -> dict[str, Any]:
    """Write arms_summary, arms_tests, arms_match (CSV + Parquet) and arms.json for the report."""
    from synthfm.evaluate.arms import arm_tables

    tables = arm_tables(cfg.arms, [*cfg.baselines, *cfg.controls], cfg.reference, cfg.metrics, cfg.split)
    for name, df in tables.items():
        write_table_pair(df, out / f"arms_{name}")
    doc = {**cfg.model_dump(), **{name: json.loads(df.to_json(orient="records")) for name, df in tables.items()}}
    atomic_write_json(out / "arms.json", doc)
    return {"tests": len(doc["tests"]), "significant": sum(bool(r["significant"]) for r in doc["tests"])}


class CheckpointsJob(StrictModel):
    """Downstream score against pretraining step: adapt from every kept checkpoint of a pretraining job."""

    pretrain: str = Field(description="pretraining job (${pretrain.<job>}) or run folder")
    adapt: dict[str, Any] = Field(description="AdaptConfig keys; 'encoder' is set to each checkpoint")

    @field_validator("adapt")
    @classmethod
    def _adapt_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        """AdaptConfig keys (the encoder is each checkpoint's), checked when the pipeline is planned."""
        from synthfm.adapt.config import AdaptConfig

        return check_block(AdaptConfig, value, encoder="checkpoint")


def _pretrain_folder(ref: str) -> Path:
    """A pretraining job's reference is its exported encoder; the run folder is its parent."""
    path = Path(ref)
    return path.parent if path.name == "encoder" else path


def _checkpoints_run(cfg: CheckpointsJob, out: Path) -> dict[str, Any]:
    """Run checkpoint_curve into the job folder."""
    from synthfm.adapt.checkpoints import checkpoint_curve

    adapt = validate_config(AdaptConfig, {"encoder": "checkpoint", **cfg.adapt}, "checkpoints.adapt")
    curve = checkpoint_curve(_pretrain_folder(cfg.pretrain), adapt, out)
    return {"checkpoints": int(curve["pretrain_step"].nunique())}


# ---- analyze ----------------------------------------------------------------------------------------------

def _analysis_kind(module: str, model: str, func: str, inputs: Callable[[Any], list[str]], help: str) -> Kind:
    """A kind whose config model and run function live in synthfm.analyze.<module> (imported on use)."""
    import importlib

    def validate(raw: Any, where: str) -> BaseModel:
        """Validate against the analysis module's own config model."""
        return validate_config(getattr(importlib.import_module(f"synthfm.analyze.{module}"), model), raw, where)

    def run(cfg: BaseModel, out: Path) -> dict[str, Any]:
        """Run the analysis into the job folder."""
        getattr(importlib.import_module(f"synthfm.analyze.{module}"), func)(cfg, out)
        return {}

    return Kind(validate, run, inputs=inputs, help=help)


ANALYZE_KINDS = {
    "morphology": _analysis_kind("morphology", "MorphologyConfig", "run_morphology", lambda cfg: [cfg.card],
                                 "vessel segmentation and retinal morphology indices per image"),
    "latent": _analysis_kind("latent", "LatentConfig", "run_latent",
                             lambda cfg: list(cfg.cards) + ([] if ":" in cfg.encoder else [cfg.encoder]),
                             "t-SNE / UMAP of encoder features coloured by source, labels, metadata"),
    "keymeta": _analysis_kind("keymeta", "KeyMetaConfig", "run_keymeta",
                              lambda cfg: list(cfg.morphology) + ([cfg.latent] if cfg.latent else []),
                              "which metadata fields matter (stratified Kruskal-Wallis, separability)"),
    "gradcam": _analysis_kind("gradcam", "GradCAMConfig", "run_gradcam", lambda cfg: [cfg.adapt_run],
                              "Grad-CAM heat maps of an adapted classifier, pointing game"),
    "vessel_study": _analysis_kind("vessel_study", "VesselStudyConfig", "run_vessel_study", lambda cfg: [cfg.card],
                                   "vessel U-Net with vs without phantom pretraining, Sato, second observer"),
}


# ---- report -------------------------------------------------------------------------------------------------

class ReportJob(StrictModel):
    """The HTML report over every job of the pipeline."""

    title: str | None = Field(None, description="default: the pipeline's name")
    grid: int = Field(8, ge=1, le=64, description="sample images per card in the grids")


def _report_run(cfg: ReportJob, out: Path) -> dict[str, Any]:
    """Render report.html from the pipeline root (the job folder's grandparent)."""
    from synthfm.report.html import render_report

    root = out.parent.parent
    path = render_report(root, out / "report.html", title=cfg.title, grid=cfg.grid)
    atomic_write_text(root / "report.html", path.read_text())
    return {"report": str(root / "report.html")}


KINDS: dict[str, dict[str, Kind]] = {
    "data": DATA_KINDS,
    "synth": SYNTH_KINDS,
    "quality": {"gate": Kind(model_kind(QualityJob), _quality_run, inputs=lambda cfg: [cfg.synthetic, cfg.real],
                             help="fidelity, memorisation audit, label and metadata checks, gate")},
    "pretrain": {"pretrain": Kind(pretrain_config, _pretrain_run, lambda cfg, d: d / "encoder", _pretrain_inputs,
                                  help="self-supervised pretraining (MAE, DINOv2, RaSD)")},
    "adapt": {"adapt": Kind(model_kind(AdaptConfig), _adapt_run, inputs=_adapt_inputs,
                            help="fine-tune / linear probe over fractions x seeds")},
    "evaluate": {
        "compare": Kind(model_kind(CompareJob), _compare_run, help="paired t-tests A vs B, Holm"),
        "fairness": Kind(model_kind(FairnessJob), _fairness_run, lambda cfg, d: d, lambda cfg: [cfg.experiment],
                         help="subgroup metrics and gaps from saved predictions"),
        "efficiency": Kind(model_kind(EfficiencyJob), _efficiency_run, inputs=lambda cfg: list(cfg.models.values()),
                           help="label-efficiency curves, labels needed to match a reference"),
        "arms": Kind(model_kind(ArmsJob), _arms_run, inputs=lambda cfg: list(cfg.arms.values()),
                     help="many arms: mean ± CI, t-tests vs baselines (Holm over all), labels to match"),
        "checkpoints": Kind(model_kind(CheckpointsJob), _checkpoints_run,
                            inputs=lambda cfg: [str(_pretrain_folder(cfg.pretrain))],
                            help="downstream score vs pretraining checkpoint"),
    },
    "analyze": ANALYZE_KINDS,
    "report": {"html": Kind(model_kind(ReportJob), _report_run, lambda cfg, d: d / "report.html",
                            help="the HTML report")},
}
