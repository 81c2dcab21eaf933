"""The pretraining engine: one loop that every objective plugs into, over a curriculum of stages.

Device placement, DDP and mixed precision go through Hugging Face Accelerate (`accelerate launch -m synthfm pretrain
run CONFIG -o OUT`, or `... synth train ...` for a generator). The optimiser is AdamW (fused where the device has
the kernel) with a step-based linear warm-up and cosine decay per stage; stage k continues from stage k-1's weights
and optimiser state. Every `checkpoint_every` steps a checkpoint directory is written under a temporary name and
renamed into place: weights (safetensors), optimiser/scaler state and per-rank RNG state (torch.save of tensors and
numbers, read back with weights_only=True), and the position (stage, step). Data order is a pure function of (seed,
position), so a run killed with SIGKILL and resumed ends with the same weights as one that was never interrupted.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from synthfm import hardware
from synthfm.errors import SynthfmError
from synthfm.io import atomic_write_json, atomic_write_text
from synthfm.models.checkpoint import load_state, save_state
from synthfm.pretrain.config import PretrainConfig, StageConfig, pretrain_config
from synthfm.pretrain.data import open_source
from synthfm.pretrain.mae import peak_lr
from synthfm.pretrain.objective import Objective, build_objective
from synthfm.progress import progress_bar
from synthfm.runs import CONFIG_FILE, METRICS_FILE, RunDir
from synthfm.train.mixture import MixtureDataset, MixturePlan, PlanBatchSampler, collate
from synthfm.train.optim import OptimConfig, build_optimizer, lr_at, weight_decay_at
from synthfm.train.state import rng_state, set_rng_state, torch_load

CHECKPOINTS = "checkpoints"
MACHINE_FILE = "machine.json"  # what `auto` resolved to on the machine that ran (not part of the config hash)


class TrainModule(nn.Module):
    """All of an objective's modules in one nn.Module whose forward is the loss (what DDP wraps)."""

    def __init__(self, objective: Objective) -> None:
        super().__init__()
        self.parts = nn.ModuleDict(objective.modules())
        self.objective = objective

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.objective.loss(batch)


@dataclass
class Position:
    """Where training is: stage index, optimiser steps done in that stage, and in total."""

    stage: int = 0
    step: int = 0
    global_step: int = 0


@dataclass
class StagePlan:
    """A stage resolved against its data: dataset, sample plan, length, warm-up and peak lr."""

    index: int
    cfg: StageConfig
    dataset: MixtureDataset
    plan: MixturePlan
    steps: int
    warmup: int
    peak_lr: float
    epoch_len: int


def stage_schedule(stage: StageConfig, optim: OptimConfig, epoch_len: int, global_batch: int) -> tuple[int, int]:
    """A stage's optimiser steps and warm-up steps (epochs converted at ceil(epoch_len / global_batch) steps each)."""
    per_epoch = math.ceil(epoch_len / global_batch)
    steps = stage.steps or math.ceil(stage.epochs * per_epoch)
    warmup = stage.warmup_steps
    if warmup is None:
        epochs = stage.warmup_epochs if stage.warmup_epochs is not None else optim.warmup_epochs
        warmup = round(epochs * per_epoch) if epochs is not None else optim.warmup_steps
    return steps, min(warmup, steps)


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary directories start with '.')."""
    root = run_dir / CHECKPOINTS
    return sorted(root.glob("step_*")) if root.is_dir() else []


class Engine:
    """Runs a PretrainConfig's curriculum in a run directory, resuming from its latest checkpoint."""

    def __init__(self, cfg: PretrainConfig, out_dir: str | Path, accelerator: Accelerator | None = None) -> None:
        self.cfg = cfg
        self.run = RunDir(out_dir, "pretrain", cfg)
        self.threads = hardware.set_threads()
        precision = hardware.checked_precision(cfg.mixed_precision,
                                               accelerator is None and os.environ.get("RANK", "0") == "0")
        self.acc = accelerator or Accelerator(mixed_precision=precision)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.objective = build_objective(cfg)
        module = TrainModule(self.objective).to(self.acc.device)
        self.compiled: bool | None = None  # decided here when explicit, in fit() for 'auto' (it needs the plan)
        if cfg.compile is True:
            self.compiled = self._compile(module)
        elif cfg.compile is False:
            self.compiled = False
        self.model, self.optimizer = self.acc.prepare(module, build_optimizer(module, cfg.optim))
        self.pos = Position()
        self.phase_seconds: dict[str, float] | None = None  # a dict: train_step adds forward/backward/optimiser time
        torch.manual_seed(cfg.seed + 1 + self.acc.process_index)  # masking noise differs per rank
        self._window: dict[str, Any] = {"start": time.perf_counter()}

    @property
    def global_batch(self) -> int:
        """Images per optimiser step over all processes."""
        return self.cfg.batch_size * self.cfg.optim.accumulate * self.acc.num_processes

    @property
    def image_size(self) -> int:
        """The training image size (config, else the encoder's)."""
        return self.cfg.image_size or int(self.objective.encoder().patch_embed.img_size[0])

    def planned_steps(self) -> int:
        """Optimiser steps of the whole curriculum (stages given in epochs open their sources to count)."""
        return sum(stage.steps or self.stage_plan(i).steps for i, stage in enumerate(self.cfg.stages))

    @staticmethod
    def _compile(module: nn.Module) -> bool:
        """torch.compile in place: state-dict keys unchanged; not Accelerate's process-wide dynamo setting."""
        module.compile()
        return True

    def setup_compile(self) -> bool:
        """Resolve `compile: auto` by the rule of synthfm.hardware (run length, device) and compile if it says so."""
        if self.compiled is None:
            device = self.acc.device.type  # counting steps may open sources: only where auto could compile
            steps = self.planned_steps() if self.cfg.compile == "auto" and hardware.resolve_compile(
                "auto", hardware.COMPILE_MIN_STEPS, device) else 0
            self.compiled = hardware.resolve_compile(self.cfg.compile, steps, self.acc.device.type)
            if self.compiled:
                self._compile(self.unwrapped())
        return self.compiled

    def machine_choices(self) -> dict[str, Any]:
        """What this process resolved for the machine: threads, precision, compile, native bf16."""
        return {"device": str(self.acc.device), "threads": self.threads,
                "mixed_precision": {"config": self.cfg.mixed_precision, "used": self.acc.mixed_precision},
                "native_bf16": hardware.native_bf16(self.acc.device.type), "cpu_bf16_flags": hardware.cpu_bf16_flags(),
                "compile": {"config": self.cfg.compile, "used": self.compiled}}

    def unwrapped(self) -> TrainModule:
        """The bare TrainModule (without DDP / autocast wrappers)."""
        return self.acc.unwrap_model(self.model)

    def views(self) -> Callable[[torch.Tensor], dict[str, torch.Tensor]] | None:
        """The objective's per-sample view transform (multi-crop), if it has one."""
        return self.objective.views()

    # ---- data -------------------------------------------------------------------------------------------
    def stage_plan(self, index: int) -> StagePlan:
        """Open a stage's sources and resolve its length, warm-up and peak lr."""
        stage = self.cfg.stages[index]
        cache = Path(self.cfg.cache_dir) if self.cfg.cache_dir else self.run.path / "sources"
        with self.acc.main_process_first():
            opened = [self.objective.open_source(s, cache) for s in stage.sources]
            own = all(d is not None for d in opened)  # an objective's own sources augment per sample
            sources = [d if d is not None else open_source(s, self.image_size, self.cfg.in_chans, None, cache)
                       for d, s in zip(opened, stage.sources, strict=True)]
        lengths = [len(s) for s in sources]
        seed = self.cfg.seed * 1000 + index
        steps, warmup = stage_schedule(stage, self.cfg.optim, sum(lengths), self.global_batch)
        plan = MixturePlan(lengths, [s.weight for s in stage.sources], seed)
        dataset = MixtureDataset(sources, seed, self.views(), None if own else self.cfg.crop_scale)
        return StagePlan(index, stage, dataset, plan, steps, warmup,
                         peak_lr(self.cfg, self.global_batch, stage.base_lr), sum(lengths))

    def batches(self, sp: StagePlan, start_step: int) -> Iterator[dict[str, torch.Tensor]]:
        """This rank's micro-batches from optimiser step `start_step` to the end of the stage."""
        accum = self.cfg.optim.accumulate
        sampler = PlanBatchSampler(sp.plan, self.cfg.batch_size, start_step * accum, (sp.steps - start_step) * accum,
                                   self.acc.process_index, self.acc.num_processes)
        loader = DataLoader(sp.dataset, batch_sampler=sampler, collate_fn=collate, num_workers=self.cfg.num_workers,
                            generator=torch.Generator().manual_seed(0),  # never draws from the global RNG
                            pin_memory=self.acc.device.type == "cuda")
        return iter(loader)

    # ---- one optimiser step -----------------------------------------------------------------------------
    def set_lr(self, lr: float, weight_decay: float | None = None) -> None:
        """Set the learning rate of every parameter group (and the weight decay of the decaying ones)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if weight_decay is not None and group["weight_decay"] > 0:
                group["weight_decay"] = weight_decay

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the wall time of the block to `phase_seconds[name]` when timing is on (device work awaited)."""
        if self.phase_seconds is None:
            yield
            return
        t0 = time.perf_counter()
        yield
        if self.acc.device.type == "cuda":
            torch.cuda.synchronize(self.acc.device)
        self.phase_seconds[name] = self.phase_seconds.get(name, 0.0) + time.perf_counter() - t0

    def train_step(self, micro_batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Forward/backward over the micro-batches (gradient sync on the last), clip, step; return mean logs."""
        logs: dict[str, torch.Tensor] = {}
        n = len(micro_batches)
        for i, batch in enumerate(micro_batches):
            batch = {k: v.to(self.acc.device, non_blocking=True) for k, v in batch.items()}
            sync = contextlib.nullcontext() if i == n - 1 else self.acc.no_sync(self.model)
            with sync:
                with self.phase("forward"):
                    loss, extra = self.model(batch)
                with self.phase("backward"):
                    self.acc.backward(loss / n)
            for k, v in {"loss": loss.detach(), **extra}.items():
                logs[k] = logs.get(k, 0.0) + v.detach().float() / n
        with self.phase("optimiser"):
            if self.cfg.optim.clip_grad is not None:
                logs["grad_norm"] = torch.as_tensor(self.acc.clip_grad_norm_(self.model.parameters(),
                                                                             self.cfg.optim.clip_grad)).detach()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return logs

    # ---- checkpoints ------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Write weights, optimiser, scaler, RNG and position to a temporary directory, then rename it in place."""
        root = self.run.path / CHECKPOINTS
        final = root / f"step_{self.pos.global_step:08d}"
        tmp = root / f".{final.name}.tmp"
        if self.acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.acc.wait_for_everyone()
        torch.save(rng_state(), tmp / f"rng_{self.acc.process_index}.pt")
        if self.acc.is_main_process:
            save_state(self.unwrapped().state_dict(), tmp / "model.safetensors")
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            if self.acc.scaler is not None:
                torch.save(self.acc.scaler.state_dict(), tmp / "scaler.pt")
            atomic_write_json(tmp / "state.json", {**asdict(self.pos), "config_hash": self.run.hash,
                                                   "processes": self.acc.num_processes})
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            for old in checkpoint_dirs(self.run.path)[:-self.cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self.acc.wait_for_everyone()
        return final

    def restore(self) -> bool:
        """Load the latest checkpoint if there is one; return whether training resumes."""
        found = checkpoint_dirs(self.run.path)
        if not found:
            if self.acc.is_main_process and (self.run.path / METRICS_FILE).is_file():
                self._truncate_metrics()  # a first attempt killed before its first checkpoint logged steps
            return False
        ckpt = found[-1]
        state = json.loads((ckpt / "state.json").read_text())
        if state["processes"] != self.acc.num_processes:
            raise SynthfmError(f"{ckpt} was written by {state['processes']} processes, now {self.acc.num_processes}",
                               "resume with the same number of processes (the data order depends on it)")
        self.unwrapped().load_state_dict(load_state(ckpt / "model.safetensors"))
        self.optimizer.load_state_dict(torch_load(ckpt / "optimizer.pt"))
        if self.acc.scaler is not None and (ckpt / "scaler.pt").is_file():
            self.acc.scaler.load_state_dict(torch_load(ckpt / "scaler.pt"))
        set_rng_state(torch_load(ckpt / f"rng_{self.acc.process_index}.pt"))
        self.pos = Position(state["stage"], state["step"], state["global_step"])
        if self.acc.is_main_process:
            self._truncate_metrics()
            self.run.log(event="resume", checkpoint=ckpt.name, global_step=self.pos.global_step)
        return True

    def _truncate_metrics(self) -> None:
        """Drop metric records logged after the checkpoint (they will be logged again)."""
        kept = [r for r in self.run.metrics() if r.get("global_step", 0) <= self.pos.global_step]
        atomic_write_text(self.run.path / METRICS_FILE, "".join(json.dumps(r, default=str) + "\n" for r in kept))

    # ---- logging ----------------------------------------------------------------------------------------
    def _accumulate(self, logs: dict[str, torch.Tensor], images: int) -> None:
        """Add one step's logs to the current logging window."""
        w = self._window
        w["steps"] = w.get("steps", 0) + 1
        w["images"] = w.get("images", 0) + images
        sums = w.setdefault("sums", {})
        for k, v in logs.items():
            sums[k] = sums.get(k, 0.0) + v

    def _flush(self, sp: StagePlan, lr: float) -> None:
        """Reduce the window's means over processes and append one metrics record (main process)."""
        w, self._window = self._window, {"start": time.perf_counter()}
        if not w.get("steps"):
            return
        means = {k: float(self.acc.reduce(torch.as_tensor(v, device=self.acc.device) / w["steps"], "mean"))
                 for k, v in w["sums"].items()}
        if self.acc.is_main_process:
            seconds = time.perf_counter() - w["start"]
            self.run.log(stage=sp.cfg.name, stage_index=sp.index, step=self.pos.step,
                         global_step=self.pos.global_step, epoch=self.pos.step * self.global_batch / sp.epoch_len,
                         lr=lr, images_per_s=w["images"] / max(seconds, 1e-9), **means)

    # ---- the loop ---------------------------------------------------------------------------------------
    def run_stage(self, sp: StagePlan) -> None:
        """Train one stage from the current position to its end."""
        steps = range(self.pos.step, sp.steps)
        if self.acc.is_main_process:
            steps = progress_bar(steps, f"pretrain {sp.cfg.name}", total=len(steps))
        data = self.batches(sp, self.pos.step)
        accum = self.cfg.optim.accumulate
        lr = 0.0
        self._window = {"start": time.perf_counter()}
        for step in steps:
            lr = lr_at(step, sp.steps, sp.warmup, sp.peak_lr, self.cfg.optim.min_lr)
            self.set_lr(lr, weight_decay_at(step, sp.steps, self.cfg.optim))
            with self.phase("data"):
                micro = [next(data) for _ in range(accum)]
            logs = self.train_step(micro)
            self.objective.after_step(step, sp.steps)  # e.g. the DINOv2 teacher EMA
            self.pos.step, self.pos.global_step = step + 1, self.pos.global_step + 1
            self._accumulate(logs, self.global_batch)
            if self.pos.step % self.cfg.log_every == 0 or self.pos.step == sp.steps:
                self._flush(sp, lr)
            if self.pos.global_step % self.cfg.checkpoint_every == 0 and self.pos.step < sp.steps:
                self.save_checkpoint()

    @property
    def export_name(self) -> str:
        """The exported module's directory name: 'encoder', or the objective's own (e.g. 'generator')."""
        return self.objective.export_name

    def export(self, directory: Path, **extra: Any) -> None:
        """Save the encoder with save_pretrained, or what the objective exports (main process)."""
        if self.acc.is_main_process:
            self.objective.export(directory, global_step=self.pos.global_step, **extra)

    def fit(self) -> dict[str, Any]:
        """Run (or resume) every stage; return the run's summary."""
        with self.acc.main_process_first():
            status = self.run.open()
        if status == "done":
            return self.run.summary()
        self.restore()
        self.setup_compile()
        if self.acc.is_main_process:
            atomic_write_json(self.run.path / MACHINE_FILE, self.machine_choices())
        while self.pos.stage < len(self.cfg.stages):
            sp = self.stage_plan(self.pos.stage)
            self.run_stage(sp)
            self.export(self.run.path / "stages" / sp.cfg.name / self.export_name, stage=sp.cfg.name)
            self.pos = Position(self.pos.stage + 1, 0, self.pos.global_step)
            self.save_checkpoint()
        self.export(self.run.path / self.export_name)
        last = next((r for r in reversed(self.run.metrics()) if "loss" in r), {})
        summary = {"global_steps": self.pos.global_step, "final_loss": last.get("loss"),
                   "stages": [s.name for s in self.cfg.stages]}
        if self.acc.is_main_process:
            self.run.complete(**summary)
        self.acc.wait_for_everyone()
        return summary


def pretrain(cfg: PretrainConfig, out_dir: str | Path) -> dict[str, Any]:
    """Run a pretraining config in `out_dir` (resuming if it was interrupted)."""
    return Engine(cfg, out_dir).fit()


def run_config(run_dir: str | Path) -> PretrainConfig:
    """The resolved config stored in a run directory."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise SynthfmError(f"{run_dir} is not a pretraining run (no {CONFIG_FILE})", "point at a run directory")
    return pretrain_config(yaml.safe_load(path.read_text())["config"], str(path))


def export_encoder(run_dir: str | Path, out_dir: str | Path | None = None,
                   checkpoint: str | Path | None = None) -> Path:
    """Save the encoder of a run's latest checkpoint (or of `checkpoint`) with save_pretrained (default: RUN/export)."""
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    found = [Path(checkpoint)] if checkpoint is not None else checkpoint_dirs(run_dir)
    if not found:
        raise SynthfmError(f"{run_dir} has no checkpoint yet", "wait for the first checkpoint_every steps")
    objective = build_objective(cfg)
    TrainModule(objective).load_state_dict(load_state(found[-1] / "model.safetensors"))
    state = json.loads((found[-1] / "state.json").read_text())
    return objective.export(Path(out_dir or run_dir / "export"), global_step=state["global_step"],
                            source_run=str(run_dir))
