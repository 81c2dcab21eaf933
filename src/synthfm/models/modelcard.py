"""Model cards: the `README.md` beside every saved encoder and exported classifier.

A card says what the model is and how to load it with plain timm, what it was pretrained on (each source card's
kind and, for synthetic data, the generator and its hash, the sampler and the quality gate's verdict, each with
the file it was read from), its downstream metrics with 95% CIs and subgroup results where they were computed,
intended use and limits, and the licence and citation fields of every card involved. Everything is read from
files already on disk (run configs, dataset cards, manifests, `quality.json`, metrics and prediction tables);
what cannot be found is written as "not recorded", never guessed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from synthfm import __version__
from synthfm.errors import SynthfmError
from synthfm.models.backbones import backbone_kwargs, backbone_spec

README = "README.md"
NOT_RECORDED = "not recorded"
GATE_FILE = "quality.json"
PROCEDURAL = {"phantom": "procedural phantoms (synthfm.synth, rendered from a seed)",
              "rasd": "RaSD randomized synthesis (synthfm.synth.rasd, drawn from a seed)"}


# ---- plain timm --------------------------------------------------------------------------------------------
def timm_args(config: dict[str, Any], num_classes: int = 0) -> tuple[str, dict[str, Any]]:
    """The timm architecture and keyword arguments that rebuild a saved backbone (`config.json` of save_pretrained)."""
    spec = backbone_spec(config["name"])
    kwargs = backbone_kwargs(config["name"], int(config.get("in_chans", 3)), **config.get("overrides", {}))
    return spec.timm_name, {**kwargs, "num_classes": num_classes}


def plain_timm(kwargs: dict[str, Any]) -> bool:
    """Whether timm alone can build the model: every argument is plain data (a 3D patch embedding class is not)."""
    return all(isinstance(v, (int, float, str, bool, type(None), list, tuple)) for v in kwargs.values())


def timm_snippet(architecture: str, kwargs: dict[str, Any], weights: str = "model.safetensors") -> str:
    """Python that loads the folder with plain timm (no synthfm), or with synthfm where timm lacks a part."""
    if not plain_timm(kwargs):
        custom = ", ".join(f"{k}={getattr(v, '__qualname__', v)}" for k, v in kwargs.items() if not plain_timm({k: v}))
        return (f"# timm `{architecture}` with a synthfm part ({custom}): load it through synthfm\n"
                "from synthfm.models.checkpoint import from_pretrained\n\n"
                'model = from_pretrained("path/to/this/folder")')
    args = "".join(f", {k}={v!r}" for k, v in kwargs.items())
    size, chans, classes = kwargs.get("img_size", 224), kwargs.get("in_chans", 3), kwargs.get("num_classes", 0)
    # num_classes in the overlay too: timm drops a head whose size differs from the pretrained config's
    head = f', "num_classes": {classes}' if classes else ""
    overlay = f'{{"file": "path/to/this/folder/{weights}", "input_size": ({chans}, {size}, {size}){head}}}'
    return (f'import timm\n\nmodel = timm.create_model("{architecture}", pretrained=True,\n'
            f'                          pretrained_cfg_overlay={overlay}{args})')


# ---- provenance of pretraining data -------------------------------------------------------------------------
@dataclass
class SourceRecord:
    """One pretraining source as the card reports it."""

    source: str
    kind: str = NOT_RECORDED
    name: str = ""
    generator: str = ""
    generator_hash: str = ""
    sampler: str = ""
    gate: str = ""
    licence: str = ""
    citation: str = ""
    notes: list[str] = field(default_factory=list)


def _read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping, or {} when the file is absent or unreadable."""
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def gate_verdict(card_yaml: Path) -> tuple[str, str]:
    """(verdict, file) of the quality gate run on a synthetic card, or ('', '') when none is found.

    Looked for where `synthfm quality` leaves it: the card is the gate's `filtered/` card (quality.json one
    folder up), or a quality run within three folders above the card names it as its synthetic card.
    """
    card_dir = card_yaml.parent.resolve()
    if (card_dir.parent / GATE_FILE).is_file() and card_dir.name == "filtered":
        found = card_dir.parent / GATE_FILE
        return str(json.loads(found.read_text()).get("verdict", "")), str(found)
    for root in list(card_dir.parents)[:3]:
        for found in sorted(root.glob(f"*/{GATE_FILE}")) + sorted(root.glob(f"*/*/{GATE_FILE}")):
            synthetic = (_read_yaml(found.parent / "config.yaml").get("config") or {}).get("synthetic", "")
            if synthetic and _same_card(synthetic, card_yaml):
                return str(json.loads(found.read_text()).get("verdict", "")), str(found)
    return "", ""


def _same_card(given: str, card_yaml: Path) -> bool:
    """Whether a card reference (folder or YAML) names `card_yaml`."""
    path = Path(given)
    path = path / "dataset.yaml" if path.suffix not in (".yaml", ".yml") else path
    try:
        return path.resolve() == card_yaml.resolve()
    except OSError:
        return False


def _sampler(card_dir: Path, card: Any) -> str:
    """The sampler(s) recorded per row in a synthetic card's manifest (`sampler` provenance column)."""
    if "sampler" not in card.provenance.row_columns:
        return ""
    manifest = card_dir / card.manifest
    try:
        df = (pd.read_parquet(manifest, columns=["sampler"]) if manifest.suffix == ".parquet"
              else pd.read_csv(manifest, usecols=["sampler"]))
    except (OSError, ValueError, KeyError):
        return ""
    return "; ".join(sorted(df["sampler"].dropna().astype(str).unique())[:3])


def card_record(source: str) -> SourceRecord:
    """Provenance of one pretraining source: a card path, or a procedural generator name."""
    from synthfm.data.card import card_file, read_card

    if source in PROCEDURAL:
        return SourceRecord(source, "synthetic", generator=PROCEDURAL[source],
                            generator_hash="code (no checkpoint)", licence="generated; no patient images")
    try:
        card, card_dir = read_card(source)
        path = card_file(source)
    except (SynthfmError, OSError) as err:
        return SourceRecord(source, notes=[f"card unreadable now: {getattr(err, 'message', err)}"])
    rec = SourceRecord(source, card.provenance.kind, card.name, licence=card.license, citation=card.citation)
    if card.provenance.kind == "synthetic":
        rec.generator = card.provenance.generator or NOT_RECORDED
        rec.generator_hash = card.provenance.checkpoint_hash or NOT_RECORDED
        rec.sampler = _sampler(card_dir, card) or NOT_RECORDED
        verdict, where = gate_verdict(path)
        rec.gate = f"{verdict} ({where})" if verdict else "no quality gate run found for this card"
    if card.provenance.notes:
        rec.notes.append(card.provenance.notes)
    return rec


def pretraining_sources(encoder_config: dict[str, Any]) -> tuple[list[SourceRecord], str]:
    """Every source of every stage of the pretraining run that produced an encoder, and where that was read."""
    run = encoder_config.get("source_run")
    if not run:
        return [], ""
    header = _read_yaml(Path(run) / "config.yaml")
    stages = (header.get("config") or {}).get("stages") or []
    records = [card_record(str(s["source"])) for st in stages for s in st.get("sources", []) if "source" in s]
    unique = {r.source: r for r in records}
    return list(unique.values()), str(Path(run) / "config.yaml")


def pretraining_section(encoder_config: dict[str, Any]) -> list[str]:
    """Markdown lines on the pretraining data of an encoder."""
    records, where = pretraining_sources(encoder_config)
    if not records:
        init = encoder_config.get("init", "")
        return ["## Pretraining data", "",
                f"No pretraining run is recorded with this encoder{f' ({init})' if init else ''}: it is a random "
                "initialisation or an imported checkpoint, whose own documentation describes its data.", ""]
    lines = ["## Pretraining data", "", f"Read from `{where}`.", "",
             "| source | kind | card | generator | generator hash | sampler | quality gate | licence |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in records:
        cells = [r.source, r.kind, r.name, r.generator, r.generator_hash, r.sampler, r.gate, r.licence]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    notes = [f"- `{r.source}`: {n}" for r in records for n in r.notes]
    return [*lines, "", *notes, *([""] if notes else [])]


def _cell(value: object) -> str:
    """A table cell: pipes escaped, empty shown as a dash."""
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text if text else "-"


# ---- the cards -----------------------------------------------------------------------------------------------
def front_matter(licences: list[str], pipeline_tag: str, modality: str) -> list[str]:
    """Hugging Face style YAML header."""
    shown = sorted({x for x in licences if x})
    return ["---", "library_name: timm", f"pipeline_tag: {pipeline_tag}",
            f"license: {'other' if shown else 'unknown'}",
            f"tags: [synthfm, {modality}, vision-transformer]", "---", ""]


def licence_section(records: list[SourceRecord], extra: dict[str, tuple[str, str]]) -> list[str]:
    """Licence and citation fields of every card involved (pretraining sources and downstream cards)."""
    rows = {r.name or r.source: (r.licence, r.citation) for r in records} | extra
    lines = ["## Licence", "",
             "The weights are derived from the data below; their licence terms carry over. Fields as written "
             "in each dataset card (empty: the card records none).", "",
             "| data | licence | citation |", "| --- | --- | --- |"]
    lines += [f"| {_cell(k)} | {_cell(lic)} | {_cell(cit)} |" for k, (lic, cit) in rows.items()]
    if not rows:
        lines.append("| none recorded (random initialisation or an imported file) | - | - |")
    return [*lines, ""]


LIMITS = ("## Intended use and limits", "",
          "- Research use: feature extraction, linear probing and fine-tuning on images of the same modality, "
          "preprocessed as the training data was (see the config). Not a medical device; not validated for "
          "clinical decisions.",
          "- Metrics hold for the evaluation data named here; other sites, devices and populations can differ. "
          "Check subgroup results before relying on the model for any group.",
          "- Synthetic pretraining data carries its generator's biases; the gate verdict above is what was "
          "measured, not a guarantee.", "")


def encoder_card(config: dict[str, Any]) -> str:
    """README.md of a saved encoder (`config.json` of save_pretrained, with `source_run` when pretrained here)."""
    arch, kwargs = timm_args(config)
    records, _ = pretraining_sources(config)
    modality = "grey" if int(config.get("in_chans", 3)) == 1 else "rgb"
    step = f", step {config['global_step']}" if "global_step" in config else ""
    made = (f"pretraining run `{config['source_run']}`" if config.get("source_run") else
            f"fine-tuning on `{config['adapted_on']}`" if config.get("adapted_on") else
            "create_backbone or import_checkpoint (no run recorded)")
    lines = [*front_matter([r.licence for r in records], "image-feature-extraction", modality),
             f"# {config['name']} encoder", "",
             "## What it is", "",
             f"A ViT encoder saved by synthfm {__version__}: registry backbone `{config['name']}` (timm "
             f"`{arch}`), {config.get('in_chans', 3)} input channel(s), no classifier head (it returns the pooled "
             f"feature). Made by {made}{step}.", "",
             "## Load it", "", "```python", timm_snippet(arch, kwargs), "```", "",
             "or `synthfm.models.checkpoint.from_pretrained(folder)`.", "",
             *pretraining_section(config), *LIMITS, *licence_section(records, {})]
    return "\n".join(lines)
