"""`synthfm synth merge PART... -o OUT`: several shard cards (generation jobs, filtered sets) become one card.

Each part's shards are linked (or copied where links cannot cross file systems) into `OUT/shards` under a
per-part name (`train-000003.tar` of part 1 becomes `train-p1-000003.tar`), the manifests are concatenated with
their `shards/<file>#<key>` paths rewritten, and ids and synthetic patient ids that two parts share get the part
as a prefix, so no two rows of the merged card can be mistaken for one image or one patient. Parts must agree on
modality and tasks. The card is written last, so a folder with a card is a complete merge; the run directory
makes a rerun with the same parts a no-op.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd

from synthfm.config import StrictModel
from synthfm.data.card import MANIFEST, DatasetCard, Provenance, SourceSpec, SplitSpec, card_file, write_card
from synthfm.data.digest import path_digest
from synthfm.data.manifest import ID, SPLIT, CardData, load_card
from synthfm.data.shards import sample_refs
from synthfm.errors import SynthfmError
from synthfm.io import atomic_path
from synthfm.runs import RunDir


class MergeConfig(StrictModel):
    """The parts of a merge, each pinned by the digest of every file its card reads (a changed part is a new merge)."""

    parts: list[str]
    hashes: list[str]


def _check_parts(parts: list[CardData]) -> None:
    """Every part is a shard card with path references, the same modality and the same tasks."""
    first = parts[0]
    for data in parts:
        where = card_file(data.card_dir)
        if data.card.source.format != "shards":
            raise SynthfmError(f"{where} is a {data.card.source.format} card; merge joins shard cards",
                               "merge the outputs of 'synthfm synth generate' or 'data prepare --format shards'")
        if sample_refs(data.df[data.card.source.path_column].astype(str).tolist()) is None:
            raise SynthfmError(f"{where}: manifest paths are not shards/<file>#<key> references",
                               "regenerate the part with synthfm")
        if data.card.modality != first.card.modality:
            raise SynthfmError(f"{where} is {data.card.modality}, the first part is {first.card.modality}",
                               "merge parts of one modality")
        if [t.model_dump() for t in data.card.tasks] != [t.model_dump() for t in first.card.tasks]:
            raise SynthfmError(f"{where} declares other tasks or classes than {card_file(first.card_dir)}",
                               "merge parts made by the same generator schema")


def _link(src: Path, dst: Path) -> None:
    """Hard-link src to dst, copying when a link is impossible (another file system)."""
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)


def _renamed(name: str, part: int) -> str:
    """A part's shard name in the merged folder: the split prefix stays first (`train-p1-000003.tar`)."""
    prefix, _, rest = name.partition("-")
    return f"{prefix}-p{part}-{rest}" if rest else f"p{part}-{name}"


def _part_rows(data: CardData, part: int, out: Path) -> pd.DataFrame:
    """A part's manifest rows with shard paths renamed, its shards linked into out/shards."""
    col = data.card.source.path_column
    refs = sample_refs(data.df[col].astype(str).tolist()) or []
    root = data.source_root
    for fname in sorted({f for f, _ in refs}):
        src = root / fname
        if not src.is_file() or src.resolve().parent != root.resolve():
            raise SynthfmError(f"{card_file(data.card_dir)}: shard {fname} is missing from {root}",
                               "finish the part (rerun its generation) before merging")
        _link(src, out / "shards" / _renamed(fname, part))
    df = data.df.drop(columns=[ID, SPLIT]).copy()
    df[col] = [f"shards/{_renamed(f, part)}#{k}" for f, k in refs]
    df["merge_part"] = part
    return df


def _unique(df: pd.DataFrame, column: str | None) -> None:
    """Prefix a column's values with their part where two parts share a value."""
    if not column or column not in df.columns:
        return
    values = df[column].astype(str)
    clash = values.groupby(values).transform(lambda v: df.loc[v.index, "merge_part"].nunique() > 1)
    df[column] = values.where(~clash, "p" + df["merge_part"].astype(str) + "-" + values)


def _provenance(cards: list[DatasetCard]) -> Provenance:
    """One provenance for the merge: the shared generator and hash, or every distinct one joined."""
    gens = sorted({c.provenance.generator or "" for c in cards} - {""})
    hashes = sorted({c.provenance.checkpoint_hash or "" for c in cards} - {""})
    rows = [*sorted({col for c in cards for col in c.provenance.row_columns}), "merge_part"]
    kinds = {c.provenance.kind for c in cards}
    return Provenance(kind="synthetic" if "synthetic" in kinds else "real", generator="+".join(gens) or None,
                      checkpoint_hash="+".join(hashes) or None, row_columns=rows,
                      notes=f"merged by synthfm synth merge from {len(cards)} parts")


def merge_cards(parts: list[str | Path], out_dir: str | Path, name: str | None = None) -> Path:
    """Merge shard cards into `out_dir`; return the merged dataset.yaml."""
    if not parts:
        raise SynthfmError("synth merge needs at least one part", "pass the generation folders to merge")
    datas = [load_card(p) for p in parts]
    _check_parts(datas)
    out = Path(out_dir)
    if any(out.resolve() == d.card_dir.resolve() for d in datas):
        raise SynthfmError(f"merge would write into part {out}", "choose a new --out folder")
    cfg = MergeConfig(parts=[str(card_file(d.card_dir).resolve()) for d in datas],
                      hashes=[path_digest(card_file(d.card_dir)) for d in datas])
    run = RunDir(out, "synth.merge", cfg)
    if run.open() == "done":
        return out / "dataset.yaml"
    df = pd.concat([_part_rows(d, j, out) for j, d in enumerate(datas)], ignore_index=True)
    first = datas[0].card
    id_col = first.id_column or "image_id"
    if id_col not in df.columns:
        df[id_col] = [f"{i:08d}" for i in range(len(df))]
    _unique(df, id_col)
    if first.provenance.kind == "synthetic":
        _unique(df, first.metadata.patient_id)
    with atomic_path(out / MANIFEST, ".parquet") as tmp:
        df.to_parquet(tmp, index=False)
    card = first.model_copy(update={
        "name": name or f"{first.name}_merged", "manifest": MANIFEST, "id_column": id_col,
        "source": SourceSpec(format="shards", root="shards", path_column=first.source.path_column),
        "split": first.split or SplitSpec(column="split"), "provenance": _provenance([d.card for d in datas]),
        "description": f"{len(df)} images merged from {len(datas)} parts: {', '.join(d.card.name for d in datas)}"})
    path = write_card(card, out)
    load_card(path)  # the merged card must load like any other (ids, patients, shards)
    run.complete(images=len(df), parts=len(datas))
    return path
