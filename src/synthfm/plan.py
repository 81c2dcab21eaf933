"""`synthfm plan PIPELINE.yaml [--device cpu|h100|a100]`: FLOPs, peak memory and wall time of every job, before any run.

The pipeline is planned exactly as `synthfm run --dry-run` plans it (every job validated, references resolved).
Each job's work is then counted: model FLOPs from a forward pass on the meta device (`plan_flops.count_model`,
checked against `torch.utils.flop_counter` in the tests) times the steps, images and runs the config asks for,
or, for jobs without a model (rendering, preparation, the gate's CPU checks), a count of images or pixels.
Wall time is `runs x c + steps x o + work / rate` with per-family rates:

* `cpu`: measured on this repository's CPU machine by `benchmarks/plan_rates.py` (two calibration pipelines of
  different sizes per family, fitted for `c` and `rate`), stored in `docs/bench/plan/cpu_rates.json`. They are CPU
  seconds of one torch thread, i.e. wall time on an otherwise idle machine; on a machine shared with other work
  the wall time is longer by about the load average over the cores;
* `h100` / `a100`: the card's published dense peak FLOP/s times an assumed efficiency, plus an assumed per-step
  overhead, labelled "assumed" until `benchmarks/device_check.sh` has written `docs/bench/device.json` on that
  card, whose measured efficiencies are then used instead. Jobs without a model use the CPU rates.

Peak memory is parameters x bytes of optimiser state + batch x kept activations, and a job whose peak exceeds the
device memory is flagged.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from synthfm import hardware
from synthfm.config import validate_config
from synthfm.errors import SynthfmError
from synthfm.models.backbones import image_size
from synthfm.models.encoders import random_backbone
from synthfm.plan_flops import ModelCost, count_model, on_meta

BENCH = Path(__file__).resolve().parents[2] / "docs" / "bench"
CPU_RATES = "plan/cpu_rates.json"
DEVICE_FILE = "device.json"
GiB = 1024**3

# Published dense peaks (no sparsity) of the SXM parts, and memory; the A100 is the 80 GB model.
GPUS: dict[str, dict[str, Any]] = {
    "h100": {"name": "NVIDIA H100 SXM 80GB", "bf16": 989e12, "fp32": 67e12, "memory": 80e9},
    "a100": {"name": "NVIDIA A100 SXM 80GB", "bf16": 312e12, "fp32": 19.5e12, "memory": 80e9},
}
# Assumed until measured (device.json): share of peak reached per family, seconds of overhead per optimiser
# step or sampled batch (kernel launches, Python, logging), seconds per run (CUDA context, model build).
ASSUMED = {"efficiency": {"vit": 0.30, "unet": 0.20}, "step_overhead_s": 0.015, "run_overhead_s": 15.0}

# family -> what its work is counted in ("flops" or a unit of its own) and which model kind it runs
FAMILIES: dict[str, dict[str, str]] = {
    "data.card": {"unit": "rows"}, "data.phantom": {"unit": "megapixels"}, "data.prepare": {"unit": "megapixels"},
    "data.split": {"unit": "rows"},
    "synth.generator": {"unit": "flops", "model": "unet"}, "synth.generate": {"unit": "flops", "model": "unet"},
    "synth.consortium": {"unit": "jobs"},
    "quality.gate": {"unit": "images"},
    "pretrain.mae": {"unit": "flops", "model": "vit"}, "pretrain.rasd": {"unit": "flops", "model": "vit"},
    "pretrain.dinov2": {"unit": "flops", "model": "vit"},
    "adapt.linear_probe": {"unit": "head steps", "model": "vit"}, "adapt.finetune": {"unit": "flops", "model": "vit"},
    "evaluate": {"unit": "jobs"},
    "analyze.morphology": {"unit": "megapixels"}, "analyze.latent": {"unit": "images"},
    "analyze.keymeta": {"unit": "jobs"}, "analyze.gradcam": {"unit": "images"}, "report.html": {"unit": "jobs"},
}
# a family without its own calibration borrows another's rates
FALLBACK = {"pretrain.rasd": "pretrain.mae", "pretrain.dinov2": "pretrain.mae", "data.split": "data.card",
            "synth.consortium": "evaluate", "analyze.keymeta": "evaluate"}


@dataclass
class Work:
    """What one job does, in the units its family's rate is given in, and what it holds in memory."""

    family: str
    runs: int = 1
    steps: int = 0
    flops: float = 0.0
    units: float = 0.0
    params: int = 0
    param_bytes: float = 4.0  # bytes held per parameter (16: fp32 weights + grads + AdamW moments)
    activation_bytes: float = 0.0  # per micro-batch
    note: str = ""
    mixed: str = "no"  # the job's mixed precision: which GPU peak applies

    @property
    def work(self) -> float:
        """The amount the family's rate divides."""
        return self.flops if FAMILIES[self.family]["unit"] == "flops" else self.units

    @property
    def peak_bytes(self) -> float:
        """Parameters and optimiser state plus one micro-batch of kept activations."""
        return self.params * self.param_bytes + self.activation_bytes


@dataclass
class Estimate:
    """One job's estimate as `synthfm plan` prints it."""

    job: str
    kind: str
    family: str
    flops: float
    peak_bytes: float
    seconds: float
    fits: bool
    work: float
    unit: str
    runs: int
    steps: int
    note: str = ""


@dataclass
class Rates:
    """Per-family (c seconds per run, o seconds per step, rate work per second) on one device, and their source."""

    device: str
    memory: float
    source: str
    measured: bool
    families: dict[str, dict[str, float]] = field(default_factory=dict)

    def family(self, name: str) -> dict[str, float]:
        """A family's rates (or its fallback's, or the 'evaluate' constant)."""
        for key in (name, FALLBACK.get(name), "evaluate"):
            if key in self.families:
                return self.families[key]
        raise SynthfmError(f"no rates for job family {name!r} in {self.source}",
                           "rerun benchmarks/plan_rates.py so every family is measured")


# ---- counting models ------------------------------------------------------------------------------------------

def _meta(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.zeros(*shape, device="meta", dtype=dtype)


def _vit_kwargs(cfg: Any) -> dict[str, Any]:
    """Backbone overrides of a pretraining config at its training size."""
    overrides = dict(cfg.backbone_overrides)
    if getattr(cfg, "image_size", None) is not None:
        overrides.setdefault("img_size", cfg.image_size)
    return overrides


def encoder_cost(backbone: str, overrides: dict[str, Any], size: int, chans: int, train: bool,
                 frozen: bool = False) -> ModelCost:
    """Per-image cost of a registry backbone (or the pixels baseline) at `size` (frozen: no weight gradients)."""
    from synthfm.models.backbones import backbone_spec, create_backbone
    from synthfm.models.baselines import PIXELS, PixelEncoder

    kw = {k: v for k, v in overrides.items() if k != "in_chans"}
    if backbone != PIXELS and backbone_spec(backbone).family == "vit":
        kw["img_size"] = size  # a CNN takes any size
    model = PixelEncoder(chans, size) if backbone == PIXELS else on_meta(lambda: create_backbone(backbone, chans, **kw))
    if frozen:
        model.requires_grad_(False)
    return count_model(model.train(train), _meta(2, chans, size, size), train=train)


def mae_cost(cfg: Any) -> ModelCost:
    """Per-image training cost of the MAE model of a pretraining config."""
    from synthfm.pretrain.mae import build_mae

    model = on_meta(lambda: build_mae(cfg).model).train()
    size = image_size(model.encoder, cfg.image_size)
    return count_model(model, _meta(2, cfg.in_chans, size, size))


def unet_cost(unet: dict[str, Any], conditions: int, train: bool) -> ModelCost:
    """Per-image cost of the conditional UNet with `unet` (UNet2DModel kwargs) and `conditions` fields."""
    from synthfm.synth.diffusion.model import ConditionalUNet

    model = on_meta(lambda: ConditionalUNet(unet, [2] * conditions)).train(train)
    size, chans = unet["sample_size"], unet["in_channels"]
    return count_model(model, _meta(2, chans, size, size), _meta(2, dtype=torch.long),
                       _meta(2, max(conditions, 1), dtype=torch.long), train=train)


# ---- what each job does ---------------------------------------------------------------------------------------

@dataclass
class Context:
    """What earlier jobs of the plan will produce: card sizes per split, and the configs behind outputs."""

    cards: dict[str, dict[str, int]] = field(default_factory=dict)
    configs: dict[str, Any] = field(default_factory=dict)
    channels: dict[str, int] = field(default_factory=dict)

    def card(self, ref: str) -> dict[str, int]:
        """{split: rows, 'all': rows} of a card made earlier in the plan, or read from disk."""
        key = str(ref)
        if key not in self.cards:
            from synthfm.data.card import card_yaml
            from synthfm.data.manifest import load_card

            data = load_card(card_yaml(ref), check_files=False)
            counts = {s: len(data.indices(s)) for s in ("train", "val", "test")}
            self.cards[key] = {**counts, "all": len(data)}
            self.channels[key] = data.channels
        return self.cards[key]

    def rows(self, ref: str, split: str | None) -> int:
        """Rows of one split of a card (all rows for None)."""
        return self.card(ref).get(split or "all", 0)


def _source_rows(ctx: Context, source: Any) -> int:
    """Images per pass over one pretraining source."""
    if source.source in ("phantom", "rasd"):
        return source.n
    return ctx.rows(source.source, source.split)


def _stage_steps(ctx: Context, cfg: Any) -> int:
    """Optimiser steps of every curriculum stage (epochs converted with the stage's images per pass)."""
    batch = cfg.batch_size * cfg.optim.accumulate
    total = 0
    for st in cfg.stages:
        if st.steps is not None:
            total += st.steps
        else:
            total += math.ceil(st.epochs * sum(_source_rows(ctx, s) for s in st.sources) / batch)
    return total


def _train_bytes(mixed: str) -> tuple[float, float]:
    """(bytes per parameter with AdamW, bytes per activation element) for a precision setting."""
    return 16.0, 2.0 if mixed in ("bf16", "fp16") else 4.0


def _pretrain_work(cfg: Any, ctx: Context, family: str) -> Work:
    """Optimiser steps x batch x per-image training FLOPs of the objective."""
    steps = _stage_steps(ctx, cfg)
    images = steps * cfg.batch_size * cfg.optim.accumulate
    size = cfg.image_size
    note = ""
    if cfg.objective == "mae":
        cost = mae_cost(cfg)
    else:
        from synthfm.models.backbones import backbone_geometry, create_backbone

        enc = on_meta(lambda: create_backbone(cfg.backbone, cfg.in_chans, **_vit_kwargs(cfg)))
        size = size or backbone_geometry(enc)["img_size"]
        cost = encoder_cost(cfg.backbone, _vit_kwargs(cfg), size, cfg.in_chans, train=True)
        if cfg.objective == "rasd":
            cost = cost.scaled(cfg.rasd.views)
            note = "encoder x views; projection head and on-the-fly rendering not counted"
        else:  # dinov2: student on 2 global + local crops (fwd + bwd), EMA teacher on the 2 globals (fwd)
            d = cfg.dinov2
            local = d.local_size or max(8, round(size * 96 / 224))
            loc = encoder_cost(cfg.backbone, _vit_kwargs(cfg), local, cfg.in_chans, True) if d.local_crops \
                else ModelCost()
            k = d.local_crops
            cost = ModelCost(4 * cost.forward + k * loc.forward, 2 * cost.backward + k * loc.backward,
                             2 * cost.activations + k * loc.activations, 2 * cost.params, cost.trainable)
            note = "student crops + teacher globals; DINO / iBOT heads not counted"
    pbytes, abytes = _train_bytes(cfg.mixed_precision)
    return Work(family, 1, steps, images * cost.train, images, cost.params, pbytes,
                cfg.batch_size * cost.activations * abytes, note)


def _generator_unet(cfg: Any, ctx: Context) -> tuple[dict[str, Any], int, str]:
    """UNet kwargs, condition count and a note for a generator pretraining config."""
    from synthfm.synth.diffusion.model import unet_kwargs

    d = cfg.diffusion
    size = cfg.image_size or 64
    chans, note = cfg.in_chans, ""
    if d.model != "pixel":
        size, chans = size // 8, 4
        note = f"{d.model}: UNet at {size} px latents; the VAE / text encoder passes are not counted"
    conditions = len(d.conditions) if d.conditions is not None else 2
    return unet_kwargs(d.unet, size, chans), conditions, note


def _generator_work(cfg: Any, ctx: Context) -> Work:
    """Steps x batch x per-image UNet training FLOPs (EMA weights held beside the model)."""
    unet, conditions, note = _generator_unet(cfg, ctx)
    cost = unet_cost(unet, conditions, train=True)
    steps = _stage_steps(ctx, cfg)
    images = steps * cfg.batch_size * cfg.optim.accumulate
    pbytes, abytes = _train_bytes(cfg.mixed_precision)
    return Work("synth.generator", 1, steps, images * cost.train, images, cost.params, pbytes + 4,
                cfg.batch_size * cost.activations * abytes, note)


def _generator_shape(ref: str, ctx: Context) -> tuple[dict[str, Any], int, str]:
    """The UNet of a generator made earlier in the plan, or of an exported generator folder."""
    cfg = ctx.configs.get(str(ref))
    if cfg is not None:
        return _generator_unet(cfg, ctx)
    path = Path(ref)
    for name in ("unet/config.json", "model/config.json", "config.json"):
        if (path / name).is_file():
            data = json.loads((path / name).read_text())
            if "unet_config" in data:
                return data["unet_config"], len(data.get("condition_sizes", [])), ""
    raise SynthfmError(f"cannot read the generator's UNet shape from {ref}",
                       "plan the pipeline that trains it, or point at a folder exported by a generator job")


def _generate_work(cfg: Any, ctx: Context) -> Work:
    """Images x sampler evaluations x per-image UNet forward (doubled under classifier-free guidance)."""
    unet, conditions, note = _generator_shape(cfg.generator, ctx)
    cost = unet_cost(unet, conditions, train=False)
    guided = 2 if cfg.sampler.guidance_scale not in (0.0, 1.0) else 1
    batches = math.ceil(cfg.n / cfg.batch_size)
    abytes = 2.0 if cfg.dtype != "float32" else 4.0
    return Work("synth.generate", 1, batches * cfg.sampler.steps, cfg.n * cfg.sampler.steps * guided * cost.forward,
                cfg.n, cost.params, abytes, cfg.batch_size * guided * cost.activations * abytes * 0.25, note)


def _adapt_encoder(cfg: Any, ctx: Context) -> tuple[str, dict[str, Any]]:
    """(backbone, overrides) of an adaptation's encoder: random:<name>, a pretraining job of the plan, or a folder."""
    name = random_backbone(cfg.encoder)
    if name is not None:
        return name, dict(cfg.backbone_overrides)
    if cfg.encoder == "pixels":
        return "pixels", {}
    pre = ctx.configs.get(str(cfg.encoder))
    if pre is not None:
        return pre.backbone, _vit_kwargs(pre)
    conf = Path(cfg.encoder) / "config.json"
    if conf.is_file():
        data = json.loads(conf.read_text())
        return data.get("backbone", cfg.backbone or "vit_tiny_p8_64"), dict(data.get("overrides", {}))
    return cfg.backbone or "vit_tiny_p8_64", dict(cfg.backbone_overrides)


def _cv_rows(cfg: Any, ctx: Context) -> tuple[int, int, int, int]:
    """Train, validation and test rows of one cross-validation fold, and the folds x repeats run."""
    cv = cfg.cv
    pool = ctx.rows(cfg.card, None) if "all" in cv.pool else sum(ctx.rows(cfg.card, s) for s in set(cv.pool))
    n_test = round(pool / cv.folds)
    n_val = round((pool - n_test) / cv.inner_folds)
    return pool - n_test - n_val, n_val, n_test, cv.folds * cv.repeats


def _adapt_work(cfg: Any, ctx: Context) -> Work:
    """Every fraction x seed: linear probe = cached features once + head steps; fine-tune = FLOPs of every epoch."""
    from synthfm.adapt.probes import probe_heads

    backbone, overrides = _adapt_encoder(cfg, ctx)
    size = cfg.image_size or overrides.get("img_size") or 64
    chans = ctx.channels.get(str(cfg.card), 3)
    n_train, n_val = ctx.rows(cfg.card, "train"), ctx.rows(cfg.card, cfg.val_split)
    n_test = sum(ctx.rows(cfg.card, s) for s in cfg.test_splits)
    runs, seeds = len(cfg.seeds) * len(cfg.label_fractions), len(cfg.seeds)
    if getattr(cfg, "cv", None) is not None:  # small-data mode: every (repeat, fold) is a run over the CV pool
        n_train, n_val, n_test, folds = _cv_rows(cfg, ctx)
        runs, seeds = runs * folds, seeds * folds
    probe = cfg.policy == "linear_probe" and not cfg.augments
    heads = probe_heads(cfg) if probe else 1  # a probe run also trains a head per other pooling (adapt/probes.py)
    infer = encoder_cost(backbone, overrides, size, chans, train=False)
    abytes = 2.0 if cfg.mixed_precision != "no" else 4.0
    steps = flops = 0.0
    for frac in cfg.label_fractions:
        n = max(1, round(frac * n_train))
        per_epoch = math.ceil(n / cfg.batch_size)
        steps += seeds * cfg.epochs * per_epoch * heads
        if probe:
            flops += seeds * (n + n_val + n_test) * infer.forward
        else:
            train = encoder_cost(backbone, overrides, size, chans, train=True, frozen=cfg.policy == "linear_probe")
            flops += seeds * (cfg.epochs * (n * train.train + n_val * infer.forward) + n_test * infer.forward)
    if probe:
        return Work("adapt.linear_probe", runs, int(steps), flops, steps, infer.params, 4.0,
                    cfg.batch_size * infer.activations * abytes * 0.25, "features cached once per run")
    train = encoder_cost(backbone, overrides, size, chans, train=True, frozen=cfg.policy == "linear_probe")
    pbytes, _ = _train_bytes(cfg.mixed_precision)
    return Work("adapt.finetune", runs, int(steps), flops, flops, train.params, pbytes,
                cfg.batch_size * train.activations * abytes)


def _gate_work(cfg: Any, ctx: Context) -> Work:
    """The gate's checks over every image, plus fine-tuning its domain encoder when a space asks for one.

    The domain encoder is cached under the pipeline's root, so a rerun skips it; the plan counts it once.
    """
    from synthfm.quality.config import DOMAIN, QualityConfig
    from synthfm.quality.domain import adapt_settings
    from synthfm.train.classifier_config import ClassifierConfig

    images = ctx.rows(cfg.synthetic, None) + ctx.rows(cfg.real, None)
    qcfg = validate_config(QualityConfig, cfg.config, "quality job config")
    if not any(s.kind == "synthfm" and s.encoder == DOMAIN for s in qcfg.spaces):
        return Work("quality.gate", units=images)
    domain = _adapt_work(ClassifierConfig(**adapt_settings(cfg.real, qcfg.domain.task or "task", qcfg.domain)), ctx)
    return Work("quality.gate", runs=domain.runs, flops=domain.flops, units=images, params=domain.params,
                param_bytes=domain.param_bytes, activation_bytes=domain.activation_bytes,
                note=f"with the domain encoder's {qcfg.domain.epochs}-epoch fine-tune (cached afterwards)")


def _megapixels(n: int, size: int | None) -> float:
    return n * (size or 512) ** 2 / 1e6


def job_work(job: Any, ctx: Context) -> Work:
    """The work of one planned job (`pipeline.runner.Job`), recording what it will hand to later jobs."""
    stage, kind, cfg = job.spec.stage, job.spec.kind, job.config
    out = str(job.output)
    if stage == "data":
        if kind == "card":
            counts = ctx.card(cfg.path)
            ctx.cards[out], ctx.channels[out] = counts, ctx.channels.get(str(cfg.path), 3)
            return Work("data.card", units=min(counts["all"], cfg.sample or counts["all"]))
        if kind == "phantom":
            from synthfm.synth.writer import plan_splits

            splits = plan_splits(cfg.n, cfg.ratios, cfg.seed)
            ctx.cards[out] = {**{s: splits.count(s) for s in ("train", "val", "test")}, "all": cfg.n}
            ctx.channels[out] = 1 if "cxr" in cfg.generator else 3
            return Work("data.phantom", units=_megapixels(cfg.n, cfg.size))
        counts = ctx.card(cfg.input)
        ctx.cards[out], ctx.channels[out] = dict(counts), ctx.channels.get(str(cfg.input), 3)
        if kind == "prepare":
            return Work("data.prepare", units=_megapixels(counts["all"], cfg.size))
        return Work("data.split", units=counts["all"])
    if stage == "synth":
        if kind == "generator":
            ctx.configs[out] = cfg
            return _generator_work(cfg, ctx)
        if kind == "generate":
            ctx.cards[out] = {"train": cfg.n, "val": 0, "test": 0, "all": cfg.n}
            return _generate_work(cfg, ctx)
        return Work("synth.consortium", units=1, note="consortium simulation: not broken down")
    if stage == "quality":
        return _gate_work(cfg, ctx)
    if stage == "pretrain":
        ctx.configs[out] = cfg
        return _pretrain_work(cfg, ctx, f"pretrain.{cfg.objective}")
    if stage == "adapt":
        return _adapt_work(cfg, ctx)
    if stage == "analyze":
        if kind == "morphology":
            n = ctx.rows(cfg.card, None)
            return Work("analyze.morphology", units=_megapixels(min(n, cfg.limit or n), cfg.size))
        if kind == "latent":
            return Work("analyze.latent", units=sum(min(ctx.rows(c, None), cfg.n) for c in cfg.cards))
        if kind == "gradcam":
            return Work("analyze.gradcam", units=cfg.n)
        return Work("analyze.keymeta", units=1)
    if stage == "report":
        return Work("report.html", units=1)
    return Work("evaluate", units=1)


# ---- rates and estimates --------------------------------------------------------------------------------------

def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def cpu_memory() -> float:
    """This machine's memory in bytes (MemTotal)."""
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return float(line.split()[1]) * 1024
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def load_rates(device: str, bench: Path = BENCH) -> Rates:
    """Rates for one device: measured CPU rates, or a GPU's peak x efficiency (measured in device.json if there)."""
    cpu = _read(bench / CPU_RATES)
    if cpu is None:
        raise SynthfmError(f"{bench / CPU_RATES} is missing (the measured CPU rates)",
                           "run `/work/notes/heavy python benchmarks/plan_rates.py` or restore the file from git")
    families = {k: dict(v) for k, v in cpu["families"].items()}
    if device == "cpu":
        load = cpu.get("loadavg_1min")
        basis = "CPU seconds of one thread = wall time on an idle machine" if cpu.get("basis", "cpu") == "cpu" \
            else "wall seconds on the shared machine as it was loaded then"
        return Rates("cpu", cpu_memory(), f"measured ({CPU_RATES}, {cpu.get('machine', '?')}, {basis}; load "
                     f"average {load})", True, families)
    if device not in GPUS:
        raise SynthfmError(f"unknown device {device!r}", "use one of: cpu, " + ", ".join(GPUS))
    gpu = GPUS[device]
    eff, step_s, run_s = dict(ASSUMED["efficiency"]), ASSUMED["step_overhead_s"], ASSUMED["run_overhead_s"]
    dev = _read(bench / DEVICE_FILE)
    measured = bool(dev and dev.get("rates") and device in str(dev.get("device", {}).get("name", "")).lower())
    if measured:
        eff.update({k: v for k, v in dev["rates"].get("efficiency", {}).items() if v})
        step_s = dev["rates"].get("step_overhead_s") or step_s
        source = f"measured efficiency from {DEVICE_FILE} ({dev['device']['name']})"
    else:
        source = (f"ASSUMED, not measured: {gpu['name']} published peak x efficiency {eff} + {step_s} s/step; "
                  f"no {DEVICE_FILE} from this card yet (run benchmarks/device_check.sh on it)")
    for name, fam in FAMILIES.items():
        if fam.get("model"):
            families[name] = {"c": run_s, "o": step_s, "rate": gpu["fp32"] * eff[fam["model"]],
                              "rate_bf16": gpu["bf16"] * eff[fam["model"]]}
    families["adapt.linear_probe"] = {"c": run_s, "o": step_s, "rate": float("inf")}
    return Rates(device, gpu["memory"], source, measured, families)


def _rate(fam: dict[str, float], mixed: str) -> float:
    """The family's rate at the job's precision (GPU families carry a bf16 rate beside the fp32 one)."""
    return fam.get("rate_bf16", fam.get("rate", 0.0)) if mixed in ("bf16", "fp16") else fam.get("rate", 0.0)


def seconds_of(work: Work, rates: Rates) -> float:
    """runs x c + steps x o + work / rate (+ FLOPs / the fine-tune rate for a probe's feature pass off CPU)."""
    fam = rates.family(work.family)
    secs = work.runs * fam.get("c", 0.0) + work.steps * fam.get("o", 0.0)
    rate = _rate(fam, work.mixed)
    if rate and math.isfinite(rate):
        secs += work.work / rate
    if work.family == "adapt.linear_probe" and rates.device != "cpu":
        secs += work.flops / _rate(rates.family("adapt.finetune"), work.mixed)
    if work.family == "quality.gate" and work.flops:  # the domain encoder's fine-tune, at the fine-tune rate
        tune = rates.family("adapt.finetune")
        secs += work.runs * tune.get("c", 0.0) + work.flops / _rate(tune, work.mixed)
    return secs


def estimate(path: str | Path, device: str = "cpu", bench: Path = BENCH) -> tuple[list[Estimate], Rates]:
    """Estimates for every job of a pipeline file on one device."""
    from synthfm.pipeline.kinds import KINDS
    from synthfm.pipeline.runner import plan
    from synthfm.pipeline.spec import load_spec

    spec = load_spec(path, KINDS)
    with hardware.assume_native_bf16(True if device in GPUS else None):  # `auto`: bf16 on the listed GPUs
        jobs = plan(spec, Path("/nonexistent-plan-root") / spec.name)
    ctx = Context()
    works = [(job, job_work(job, ctx)) for job in jobs]
    for job, w in works:
        w.mixed = getattr(job.config, "mixed_precision", None) or ("bf16" if getattr(job.config, "dtype", "float32")
                                                                    != "float32" else "no")
    rates = load_rates(device, bench)
    out = []
    overhead = 0.5 * GiB if device == "cpu" else 1.0 * GiB  # interpreter + torch, or the CUDA context
    for job, w in works:
        peak = w.peak_bytes + overhead
        out.append(Estimate(job.name, job.spec.kind, w.family, w.flops, peak, seconds_of(w, rates),
                            peak <= 0.9 * rates.memory, w.work, FAMILIES[w.family]["unit"], w.runs, w.steps,
                            w.note))
    return out, rates


def as_json(estimates: list[Estimate], rates: Rates) -> dict[str, Any]:
    """The plan as a JSON-able mapping."""
    return {"device": rates.device, "memory_bytes": rates.memory, "rates_source": rates.source,
            "measured": rates.measured, "jobs": [asdict(e) for e in estimates],
            "total": {"flops": sum(e.flops for e in estimates), "seconds": sum(e.seconds for e in estimates),
                      "peak_bytes": max((e.peak_bytes for e in estimates), default=0.0)},
            "warnings": [f"{e.job}: needs ~{e.peak_bytes / GiB:.1f} GiB, more than 90% of the "
                         f"{rates.memory / GiB:.0f} GiB of {rates.device}" for e in estimates if not e.fits]}


def human(x: float, unit: str = "") -> str:
    """1.2e12 -> '1.20 T'."""
    for scale, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {prefix}{unit}"
    return f"{x:.0f} {unit}".strip()


def duration(seconds: float) -> str:
    """Seconds as s, min or h."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def plan_cli(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline YAML (e.g. configs/experiments/retinamnist.yaml)")],
    device: Annotated[str, typer.Option(help="cpu (measured rates), h100 or a100 (assumed until device.json)")] = "cpu",
    as_json_out: Annotated[bool, typer.Option("--json", help="Print the plan as JSON")] = False,
) -> None:
    """Estimate FLOPs, peak memory and wall time of every job of a pipeline on a device; warn when one won't fit."""
    from rich.console import Console
    from rich.table import Table

    estimates, rates = estimate(pipeline, device)
    doc = as_json(estimates, rates)
    console = Console()
    if as_json_out:
        console.print_json(json.dumps(doc))
        return
    table = Table(title=f"{pipeline} on {device} ({human(rates.memory, 'B')} memory)")
    for col in ("job", "kind", "FLOPs", "work", "peak memory", "time", "note"):
        table.add_column(col, justify="right" if col in ("FLOPs", "work", "peak memory", "time") else "left")
    for e in estimates:
        mem = f"{e.peak_bytes / GiB:.2f} GiB" + ("" if e.fits else " !")
        work = "" if e.unit == "flops" else f"{human(e.work)} {e.unit}"
        table.add_row(e.job, e.kind, human(e.flops), work, mem, duration(e.seconds), e.note)
    table.add_row("total", "", human(doc["total"]["flops"]), "", f"{doc['total']['peak_bytes'] / GiB:.2f} GiB",
                  duration(doc["total"]["seconds"]), "")
    console.print(table)
    console.print(f"rates: {rates.source}", highlight=False)
    for w in doc["warnings"]:
        console.print(f"[bold yellow]warning:[/] {w} (smaller batch_size, mixed_precision bf16, or "
                      "grad_checkpointing)", highlight=False)
