"""Manifests: one row per image, read from CSV or Parquet and checked against the card."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from synthfm.data.card import FILE_FORMATS, SPLITS, DatasetCard, TaskSpec, card_file, read_card, resolve_path
from synthfm.data.modality import preset
from synthfm.errors import SynthfmError

ID, SPLIT = "_id", "_split"
_SHOW = 5


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet table with a clear error if it is missing or unreadable."""
    if not path.is_file():
        raise SynthfmError(f"manifest not found: {path}", "check the card's 'manifest' key")
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype_backend="numpy_nullable", keep_default_na=True)
    except Exception as err:  # pandas raises many types for a bad file
        raise SynthfmError(f"cannot read manifest {path}: {err}", "write it as CSV or Parquet") from None


def write_table(df: pd.DataFrame, path: Path) -> None:
    """Write a manifest table as Parquet or CSV by suffix (caller makes it atomic)."""
    if path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False)


def _rows(index: pd.Index | np.ndarray) -> str:
    """Manifest row numbers (1-based, header excluded) for a message."""
    idx = list(index)
    shown = ", ".join(str(int(i) + 1) for i in idx[:_SHOW])
    return shown + (f" and {len(idx) - _SHOW} more" if len(idx) > _SHOW else "")


def declared_columns(card: DatasetCard) -> dict[str, str]:
    """Every manifest column the card relies on -> the card key that names it."""
    cols: dict[str, str] = {}
    if card.source.format in FILE_FORMATS:
        cols[card.source.path_column] = "source.path_column"
    if card.source.format == "npz":
        cols[card.source.index_column] = "source.index_column"
    if card.split is not None:
        cols[card.split.column] = "split.column"
    if card.id_column:
        cols[card.id_column] = "id_column"
    for t in card.tasks:
        cols.update({c: f"tasks[{t.name}].columns" for c in t.columns})
    cols.update({c: f"metadata.{k}" for k, c in card.metadata.columns().items()})
    cols.update({c: f"masks.{k}" for k, c in card.masks.items()})
    cols.update({d.source: f"derive.{k}.source" for k, d in card.derive.items()})
    return {c: k for c, k in cols.items() if c not in card.derive}


def check_columns(card: DatasetCard, df: pd.DataFrame, where: str) -> None:
    """Every column the card declares is in the manifest."""
    missing = {c: k for c, k in declared_columns(card).items() if c not in df.columns}
    if missing:
        detail = ", ".join(f"'{c}' (from {k})" for c, k in missing.items())
        raise SynthfmError(f"manifest {where} lacks column(s) {detail}; it has {list(df.columns)}",
                           "rename the manifest column or change the card key to the column's name")


def derive_columns(card: DatasetCard, df: pd.DataFrame) -> pd.DataFrame:
    """Add the card's regex-derived columns."""
    for name, spec in card.derive.items():
        pattern = spec.regex if re.compile(spec.regex).groups else f"({spec.regex})"
        got = df[spec.source].astype(str).str.extract(pattern, expand=False)
        if isinstance(got, pd.DataFrame):
            got = got.iloc[:, 0]
        bad = got.isna()
        if bad.any():
            raise SynthfmError(
                f"derive.{name}: regex {spec.regex!r} does not match column '{spec.source}' "
                f"at rows {_rows(df.index[bad])} "
                f"(e.g. {df[spec.source][bad].iloc[0]!r})",
                "widen the regex so every value matches")
        df[name] = got
    return df


def encode_task(task: TaskSpec, df: pd.DataFrame, where: str) -> np.ndarray:
    """Class indices (N,) for single-label tasks, or a 0/1 matrix (N, K) for multilabel."""
    if task.type == "multilabel":
        return np.stack([_binary_column(df, c, task, where) for c in task.columns], axis=1)
    return _class_indices(df[task.columns[0]], task, where)


def _nan_check(col: pd.Series, task: TaskSpec, where: str) -> None:
    """A missing label is an error naming the rows."""
    bad = col.isna()
    if bad.any():
        raise SynthfmError(f"manifest {where}: column '{col.name}' (task '{task.name}') has missing/NaN labels "
                           f"at rows {_rows(col.index[bad])}", "fill those labels or drop the rows")


def _class_indices(col: pd.Series, task: TaskSpec, where: str) -> np.ndarray:
    """Map class names (or integer class indices) to indices, rejecting unknown values."""
    _nan_check(col, task, where)
    names = {n: i for i, n in enumerate(task.classes)}
    out = np.empty(len(col), dtype=np.int64)
    for pos, value in enumerate(col.tolist()):
        idx = _lookup(value, names, len(task.classes))
        if idx is None:
            raise SynthfmError(
                f"manifest {where}: row {col.index[pos] + 1} has label {value!r} in column '{col.name}', "
                f"not one of task '{task.name}' classes {task.classes}",
                "fix the label, or add the class to the card's task")
        out[pos] = idx
    return out


def _lookup(value: object, names: dict[str, int], k: int) -> int | None:
    """One label value -> class index: by name first, then as an integer index."""
    text = str(value).strip()
    if text in names:
        return names[text]
    try:
        num = float(text)
    except ValueError:
        return None
    if num.is_integer() and 0 <= int(num) < k:
        return int(num)
    return None


def _binary_column(df: pd.DataFrame, column: str, task: TaskSpec, where: str) -> np.ndarray:
    """A 0/1 multilabel column."""
    col = df[column]
    _nan_check(col, task, where)
    vals = pd.to_numeric(col, errors="coerce")
    bad = vals.isna() | ~vals.isin([0, 1])
    if bad.any():
        raise SynthfmError(f"manifest {where}: multilabel column '{column}' must be 0/1; "
                           f"bad rows {_rows(col.index[bad])}",
                           "write 0 or 1 in every row")
    return vals.to_numpy(dtype=np.int64)


def make_ids(card: DatasetCard, df: pd.DataFrame, where: str) -> pd.Series:
    """The unique image id per row; duplicates are an error."""
    if card.id_column:
        ids = df[card.id_column].astype(str)
    elif card.source.format == "npz":
        ids = df[card.split.column].astype(str) + "/" + df[card.source.index_column].astype(str)
    elif card.source.path_column in df.columns:
        ids = df[card.source.path_column].astype(str)
    else:
        ids = pd.Series([f"{i:08d}" for i in range(len(df))], index=df.index)
    dup = ids.duplicated(keep=False)
    if dup.any():
        raise SynthfmError(f"manifest {where}: duplicate image ids {sorted(set(ids[dup]))[:_SHOW]} at rows "
                           f"{_rows(df.index[dup])}", "remove the duplicate rows or give each image a unique id")
    return ids


def canonical_splits(card: DatasetCard, df: pd.DataFrame, where: str) -> pd.Series:
    """Split names mapped to train/val/test ('' where the card has no split)."""
    if card.split is None:
        return pd.Series([""] * len(df), index=df.index)
    raw = df[card.split.column].astype("string").fillna("")
    mapped = raw.map(lambda v: card.split.map.get(v, v))
    bad = ~mapped.isin([*SPLITS, ""])
    if bad.any():
        raise SynthfmError(f"manifest {where}: unknown split value(s) {sorted(set(raw[bad]))} in column "
                           f"'{card.split.column}'", f"map them onto {list(SPLITS)} with 'split.map' in the card")
    return mapped


# Columns the toolkit writes beside a card's metadata fields (prediction tables, fairness and label checks):
# a metadata field of the same name would collide with them, so a card may not use one.
RESERVED_FIELDS = ("image_id", "index", "y", "score", "predicted", "row", "target", "logit")
RESERVED_PREFIXES = ("y_", "score_", "prob_", "_")


def check_reserved(card: DatasetCard, where: str) -> None:
    """No metadata field may take a name the toolkit writes into tables next to it."""
    bad = [f for f in card.metadata.columns() if f in RESERVED_FIELDS or f.startswith(RESERVED_PREFIXES)]
    if bad:
        raise SynthfmError(
            f"card {where}: metadata field(s) {bad} (metadata.extra) take names the toolkit writes into prediction "
            f"and fairness tables ({', '.join(RESERVED_FIELDS)}, or starting {', '.join(RESERVED_PREFIXES)})",
            "give the column another name: derive a copy (derive: {cataract_score: {source: score, regex: '.*'}}) "
            "and 'extra: [cataract_score]'")


def check_text(df: pd.DataFrame, where: str) -> None:
    """No text cell holds a NUL character (it truncates values silently in C-backed readers and writers)."""
    for col in df.columns:
        if df[col].dtype.kind not in "OSU" and not pd.api.types.is_string_dtype(df[col]):
            continue
        bad = df[col].astype("string").str.contains("\0", regex=False, na=False)
        if bad.any():
            raise SynthfmError(f"manifest {where}: column '{col}' holds a NUL character at rows {_rows(df.index[bad])}",
                               "remove the NUL bytes (the file was probably exported as binary or UTF-16)")


def patient_column(df: pd.DataFrame, col: str, where: str) -> pd.Series:
    """Patient ids as text with surrounding spaces removed ('P000 ' is 'P000'); an empty id is an error."""
    ids = df[col].astype("string").str.strip()
    empty = ids.isna() | (ids == "")
    if empty.any():
        raise SynthfmError(f"manifest {where}: column '{col}' (metadata.patient_id) is empty at rows "
                           f"{_rows(df.index[empty])}",
                           "give every image its patient id (the leakage check and patient-level splits need it)")
    return ids


def check_leakage(df: pd.DataFrame, patient_col: str, where: str) -> None:
    """The same patient in two splits is an error."""
    sub = df[df[SPLIT] != ""]
    per = sub.groupby(patient_col)[SPLIT].nunique()
    leaked = per[per > 1]
    if len(leaked):
        ex = leaked.index[0]
        splits = sorted(sub.loc[sub[patient_col] == ex, SPLIT].unique())
        raise SynthfmError(
            f"patient leakage in {where}: {len(leaked)} patient(s) appear in more than one split, "
            f"e.g. {patient_col}={ex!r} in {splits} (rows {_rows(sub.index[sub[patient_col] == ex])})",
            "re-split at patient level with 'synthfm data split'")


@dataclass
class CardData:
    """A validated card with its manifest, encoded labels and canonical splits."""

    card: DatasetCard
    card_dir: Path
    df: pd.DataFrame
    labels: dict[str, np.ndarray]

    @property
    def channels(self) -> int:
        """Channels of images in this card's modality."""
        return preset(self.card.modality).channels

    @cached_property
    def source_root(self) -> Path:
        """The resolved image root / npz file / shard folder."""
        return resolve_path(self.card_dir, self.card.source.root)

    def __len__(self) -> int:
        return len(self.df)

    def indices(self, split: str | None = None) -> np.ndarray:
        """Row positions of one split (all rows when split is None)."""
        if split is None:
            return np.arange(len(self.df))
        if split not in SPLITS:
            raise SynthfmError(f"unknown split {split!r}", f"use one of {list(SPLITS)}")
        return np.flatnonzero(self.df[SPLIT].to_numpy() == split)

    def image_path(self, i: int) -> Path:
        """Path of row i's image (folder cards)."""
        return self.source_root / str(self.df[self.card.source.path_column].iat[i])

    def patient_ids(self) -> pd.Series:
        """Patient id per row (the image id when the card records no patient)."""
        col = self.card.metadata.patient_id
        return self.df[col].astype(str) if col else self.df[ID]

    def subset(self, rows: np.ndarray) -> CardData:
        """The same card restricted to some rows (renumbered from 0)."""
        rows = np.asarray(rows)
        return CardData(self.card, self.card_dir, self.df.iloc[rows].reset_index(drop=True),
                        {k: v[rows] for k, v in self.labels.items()})

    def row_labels(self, i: int) -> dict[str, np.ndarray | int]:
        """Encoded labels of row i, by task name."""
        return {k: v[i] for k, v in self.labels.items()}


def load_card(path: str | Path, check_files: bool = True) -> CardData:
    """Read a card and its manifest and check every declared column, label, id, split and file."""
    card, card_dir = read_card(path)
    mpath = resolve_path(card_dir, card.manifest)
    where = str(mpath)
    df = read_table(mpath).reset_index(drop=True)
    if df.empty:
        raise SynthfmError(f"manifest {where} has no rows (empty dataset)", "point the card at a manifest with images")
    if card.tags:
        df = _tags_into_manifest(card, card_dir, df, where)
    check_reserved(card, str(card_file(path)))
    check_columns(card, df, where)
    check_text(df, where)
    df = derive_columns(card, df)
    labels = {t.name: encode_task(t, df, where) for t in card.tasks}
    df[ID] = make_ids(card, df, where)
    df[SPLIT] = canonical_splits(card, df, where)
    if card.metadata.patient_id:
        df[card.metadata.patient_id] = patient_column(df, card.metadata.patient_id, where)
        check_leakage(df, card.metadata.patient_id, where)
    data = CardData(card, card_dir, df, labels)
    if check_files:
        check_sources(data)
    return data


def _tags_into_manifest(card: DatasetCard, card_dir: Path, df: pd.DataFrame, where: str) -> pd.DataFrame:
    """A DICOM card's `tags` read from its files' headers into manifest columns."""
    from synthfm.data.dicom import fill_from_tags

    col = card.source.path_column
    if col not in df.columns:
        raise SynthfmError(f"manifest {where} lacks column '{col}' (from source.path_column); it has "
                           f"{list(df.columns)}", "rename the manifest column or change the card key")
    root = resolve_path(card_dir, card.source.root)
    return fill_from_tags(df, [root / str(p) for p in df[col]], card.tags)


def check_sources(data: CardData) -> None:
    """Every image file (folder) or array (npz) / shard folder the card names exists."""
    root = data.source_root
    fmt = data.card.source.format
    if fmt in FILE_FORMATS:
        missing = [i for i in range(len(data)) if not data.image_path(i).is_file()]
        if missing:
            raise SynthfmError(f"{len(missing)} image file(s) listed in the manifest are missing, e.g. "
                               f"{data.image_path(missing[0])} (row {missing[0] + 1})",
                               "restore the files, fix source.root, or drop those rows")
    elif not root.exists():
        raise SynthfmError(f"source.root {root} does not exist", "fix source.root in the card")
    elif fmt == "npz":
        check_npz_rows(data, root)


def npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array in an .npz, read from the .npy headers (no array data is loaded)."""
    import zipfile

    out = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                with zf.open(name) as fh:
                    version = np.lib.format.read_magic(fh)
                    fmt = np.lib.format
                    read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                    shape, _, dtype = read(fh)
                out[name.removesuffix(".npy")] = (shape, dtype)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise SynthfmError(f"cannot read {path} as .npz: {err}", "re-export the .npz") from None
    return out


def check_npz_rows(data: CardData, path: Path) -> None:
    """Each split's image array exists, is uint8 images, and holds every index the manifest names."""
    heads = npz_headers(path)
    col = data.card.source.index_column
    for split, rows in data.df.groupby(SPLIT, sort=True):
        key = data.card.source.npz_key.format(split=split)
        if key not in heads:
            raise SynthfmError(f"{path} has no array '{key}' for the {split or '(no split)'} rows of the manifest "
                               f"(it has {sorted(heads)})", "fix source.npz_key in the card, or the split column")
        shape, dtype = heads[key]
        if dtype != np.uint8 or len(shape) not in (3, 4):
            raise SynthfmError(f"{path}: array '{key}' is {dtype} {shape}; images must be uint8 (N, H, W[, C])",
                               "re-export the images as uint8 0..255")
        idx = pd.to_numeric(rows[col], errors="coerce")
        bad = idx.isna() | (idx < 0) | (idx >= shape[0]) | (idx != idx.round())
        if bad.any():
            where = resolve_path(data.card_dir, data.card.manifest)
            raise SynthfmError(f"manifest {where}: '{col}' values out of range for '{key}' ({shape[0]} images) "
                               f"at rows {_rows(rows.index[bad])}",
                               f"give indices 0..{shape[0] - 1}")
