"""Bad inputs to the data, config, pipeline and stage commands (the consortium's are in cases_consortium.py)."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from corpus_lib import Case, card_spec, npz_file, tiny_card, write, write_yaml

CASES: list[Case] = []


def fill(text: str | bytes, d: Path) -> str | bytes:
    """File contents with `{d}` replaced by the case folder."""
    return text.replace(b"{d}", str(d).encode()) if isinstance(text, bytes) else text.replace("{d}", str(d))


def case(id: str, argv: list[str], make: Callable[[Path], Any], fragment: str, **kw: Any) -> None:
    """Register one case."""
    CASES.append(Case(id, argv, make, fragment, **kw))


def inspect(id: str, make: Callable[[Path], Any], fragment: str) -> None:
    """A broken card under {d}/card, checked by `data inspect`, `data prepare` and `data split`."""
    case(f"inspect-{id}", ["data", "inspect", "{d}/card"], make, fragment)
    case(f"prepare-{id}", ["data", "prepare", "{d}/card", "-o", "{d}/out", "--size", "16"], make, fragment)
    case(f"split-{id}", ["data", "split", "{d}/card", "-o", "{d}/out"], make, fragment)


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height RGB but whose data is a few bytes (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def card_with(**spec: Any) -> Callable[[Path], Path]:
    """A tiny card whose dataset.yaml has keys replaced."""
    return lambda d: tiny_card(d, **spec)


def card_rows(fn: Callable[[pd.DataFrame], pd.DataFrame], **spec: Any) -> Callable[[Path], Path]:
    """A tiny card whose manifest rows are edited by fn."""
    return lambda d: tiny_card(d, rows=fn, **spec)


def card_yaml(text: str | bytes) -> Callable[[Path], Path]:
    """A tiny card whose dataset.yaml is replaced by raw text/bytes."""
    def make(d: Path) -> Path:
        root = tiny_card(d)
        write(root / "dataset.yaml", text)
        return root
    return make


def set_cell(col: str, row: int, value: Any) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """Rows with one cell replaced."""
    def fn(df: pd.DataFrame) -> pd.DataFrame:
        df[col] = df[col].astype(object)
        df.loc[row, col] = value
        return df
    return fn


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
    for p, c in zip("abcde", "bcdef", strict=True)) + "name: *f\nmodality: fundus\n"

# ---- the card file itself ------------------------------------------------------------------------------------

inspect("yaml-not-utf8", card_yaml(b"name: caf\xe9\nmodality: fundus\n"), "{d}/card/dataset.yaml")
inspect("yaml-duplicate-key", card_yaml("name: a\nmodality: fundus\nname: b\n"), "'name'")
inspect("yaml-alias-bomb", card_yaml(ALIAS_BOMB), "{d}/card/dataset.yaml")
inspect("yaml-python-object", card_yaml("name: !!python/object/apply:os.system ['true']\nmodality: fundus\n"),
        "{d}/card/dataset.yaml")
inspect("yaml-syntax", card_yaml("name: [unclosed\nmodality: fundus\n"), "{d}/card/dataset.yaml")
inspect("yaml-list", card_yaml("- name: a\n"), "{d}/card/dataset.yaml")
inspect("yaml-empty", card_yaml(""), "'name'")
inspect("unknown-key", card_with(modalty="fundus"), "modalty")
inspect("bad-modality", card_with(modality="mri"), "modality")
inspect("binary-three-classes", card_with(tasks=[{"name": "grade", "type": "binary", "classes": ["a", "b", "c"]}]),
        "tasks.0")
inspect("repeated-classes", card_with(tasks=[{"name": "grade", "type": "multiclass", "classes": ["a", "a", "b"]}]),
        "repeated class")
inspect("duplicate-tasks", card_with(tasks=[{"name": "grade", "type": "multiclass", "classes": ["a", "b", "c"]}] * 2),
        "task names must be unique")
inspect("split-map-target", card_with(split={"column": "split", "map": {"train": "training"}}), "split.map")
inspect("derive-regex", card_with(derive={"eye": {"source": "path", "regex": "(["}}), "derive.eye.regex")
inspect("derive-nomatch", card_with(derive={"eye": {"source": "path", "regex": "zzz"}}), "derive.eye")
inspect("env-unset", card_with(source={"root": "${SYNTHFM_CORPUS_UNSET_VAR}"}), "SYNTHFM_CORPUS_UNSET_VAR")
inspect("manifest-missing", card_yaml("name: t\nmodality: fundus\nmanifest: nope.csv\n"), "{d}/card/nope.csv")
inspect("manifest-binary", lambda d: tiny_card(d, manifest=bytes(range(256)) * 4), "{d}/card/manifest.csv")
inspect("manifest-header-only", lambda d: tiny_card(d, manifest="path,grade,patient,split,age,sex\n"),
        "{d}/card/manifest.csv")
inspect("manifest-no-column", card_rows(lambda df: df.drop(columns=["grade"])), "'grade'")
inspect("label-nan", card_rows(set_cell("grade", 3, None)), "rows 4")
inspect("label-unknown", card_rows(set_cell("grade", 5, "extreme")), "row 6")
inspect("label-out-of-range", card_rows(set_cell("grade", 2, 7)), "row 3")
inspect("duplicate-ids", card_rows(set_cell("path", 1, "img/000.png")), "duplicate image ids")
inspect("unknown-split", card_rows(set_cell("split", 0, "holdout")), "'holdout'")
inspect("patient-leak", card_rows(set_cell("patient", 8, "P000")), "P000")
inspect("patient-empty", card_rows(set_cell("patient", 4, "")), "empty at rows 5")
inspect("patient-whitespace", card_rows(set_cell("patient", 8, "P000 ")), "rows 1, 2, 9")
inspect("nul-in-value", card_rows(set_cell("sex", 2, "F\0M")), "'sex' holds a NUL character at rows 3")
inspect("nul-in-label", card_rows(set_cell("grade", 7, "mild\0")), "'grade' holds a NUL character at rows 8")
inspect("multilabel-not-binary", card_with(
    tasks=[{"name": "lesions", "type": "multilabel", "classes": ["grade", "age"]}]), "'grade'")
inspect("image-missing", lambda d: (tiny_card(d), (d / "card/img/004.png").unlink()), "{d}/card/img/004.png")
inspect("metadata-collides-id", card_rows(lambda df: df.assign(_id=1), metadata={"extra": ["_id"]}), "'_id'")
inspect("metadata-collides-score", card_rows(lambda df: df.assign(score=0.5), metadata={"extra": ["score"]}),
        "'score'")

# ---- images that are not what they claim ------------------------------------------------------------------------


def bomb_card(width: int, height: int) -> Callable[[Path], Path]:
    """A tiny card whose row 3 image is a PNG header claiming width x height."""
    def make(d: Path) -> Path:
        root = tiny_card(d)
        write(root / "img/002.png", png_header(width, height))
        return root
    return make


for argv in (["data", "inspect", "{d}/card", "--sample", "0"],
             ["data", "prepare", "{d}/card", "-o", "{d}/out", "--size", "16"]):
    verb = argv[1]
    case(f"{verb}-png-bomb-30000", argv, bomb_card(30000, 30000), "{d}/card/img/002.png")
    case(f"{verb}-png-bomb-20000", argv, bomb_card(20000, 20000), "{d}/card/img/002.png")
    case(f"{verb}-png-truncated", argv, lambda d: (tiny_card(d), write(d / "card/img/003.png", b"\x89PNG\r\n")),
         "{d}/card/img/003.png")
    case(f"{verb}-png-is-text", argv, lambda d: (tiny_card(d), write(d / "card/img/001.png", "hello")),
         "{d}/card/img/001.png")

# ---- import-npz ----------------------------------------------------------------------------------------------


def npz_case(id: str, make: Callable[[Path], Any], fragment: str, *extra: str) -> None:
    """`data import-npz {d}/in.npz -o {d}/out` on a broken .npz."""
    case(f"import-npz-{id}", ["data", "import-npz", "{d}/in.npz", "-o", "{d}/out", *extra], make, fragment)


npz_case("object-labels", lambda d: write(d / "in.npz", _object_npz()), "{d}/in.npz")
npz_case("truncated", lambda d: write(d / "in.npz", npz_file(d / "x.npz").read_bytes()[:300]), "{d}/in.npz")
npz_case("text", lambda d: write(d / "in.npz", "not an npz"), "{d}/in.npz")
npz_case("missing", lambda d: None, "{d}/in.npz")
npz_case("nan-labels", lambda d: npz_file(d / "in.npz", train_labels=np.array([[0.0], [np.nan], [1], [2], [0], [1]])),
         "train_labels")
npz_case("negative-labels", lambda d: npz_file(d / "in.npz", train_labels=np.array([[0], [-1], [1], [2], [0], [1]])),
         "train_labels")
npz_case("float-labels", lambda d: npz_file(d / "in.npz", train_labels=np.array([[0.5], [1], [1], [2], [0], [1]])),
         "train_labels")
npz_case("count-mismatch", lambda d: npz_file(d / "in.npz", train_labels=np.zeros((40, 1), dtype=np.int64)),
         "train_labels")
npz_case("no-images", lambda d: np.savez(d / "in.npz", other=np.zeros(3)), "{d}/in.npz")
npz_case("no-labels", lambda d: np.savez(d / "in.npz", train_images=np.zeros((2, 8, 8, 3), np.uint8)), "train_labels")
npz_case("label-width-differs", lambda d: npz_file(d / "in.npz", test_labels=np.zeros((3, 2), dtype=np.int64)),
         "test_labels")
npz_case("images-1d", lambda d: npz_file(d / "in.npz", train_images=np.zeros(6, np.uint8)), "train_images")
npz_case("images-float", lambda d: npz_file(d / "in.npz", train_images=np.random.rand(6, 8, 8, 3)), "train_images")
npz_case("binary-five-classes", lambda d: npz_file(d / "in.npz", train_labels=np.arange(6).reshape(6, 1) % 5),
         "binary", "--task-type", "binary")
npz_case("modality-mri", lambda d: npz_file(d / "in.npz"), "--modality", "--modality", "mri")
npz_case("task-type-bogus", lambda d: npz_file(d / "in.npz"), "--task-type", "--task-type", "regression")
npz_case("duplicate-classes", lambda d: npz_file(d / "in.npz"), "--classes", "--classes", "a,a,b")
npz_case("too-few-classes", lambda d: npz_file(d / "in.npz"), "--classes", "--classes", "a,b")
npz_case("empty-class-name", lambda d: npz_file(d / "in.npz"), "--classes", "--classes", "a,,b")


def _object_npz() -> bytes:
    """An .npz whose labels array is an object array (only loadable with pickle)."""
    import io

    buf = io.BytesIO()
    np.savez(buf, train_images=np.zeros((2, 8, 8, 3), np.uint8),
             train_labels=np.array([{"a": 1}, [2]], dtype=object))
    return buf.getvalue()


# ---- npz cards at prepare time -------------------------------------------------------------------------------


def npz_card(**arrays: Any) -> Callable[[Path], Path]:
    """A card over {d}/card/data.npz with its manifest index column; arrays replaced."""
    def make(d: Path) -> Path:
        root = d / "card"
        npz_file(root / "data.npz", **arrays)
        rows = [{"split": s, "index": i, "grade": i % 3} for s, k in (("train", 6), ("val", 3), ("test", 3))
                for i in range(k)]
        pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
        write_yaml(root / "dataset.yaml", card_spec(source={"format": "npz", "root": "data.npz"}, metadata={}))
        return root
    return make


def npz_card_index(index: int) -> Callable[[Path], Path]:
    """An npz card whose manifest row 2 points past the array."""
    def make(d: Path) -> Path:
        root = npz_card()(d)
        df = pd.read_csv(root / "manifest.csv")
        df.loc[1, "index"] = index
        df.to_csv(root / "manifest.csv", index=False)
        return root
    return make


for verb, argv in (("prepare", ["data", "prepare", "{d}/card", "-o", "{d}/out", "--size", "16"]),
                   ("inspect", ["data", "inspect", "{d}/card", "--sample", "0"])):
    case(f"{verb}-npz-index-out-of-range", argv, npz_card_index(99), "{d}/card/manifest.csv: 'index' values out of "
         "range for 'train_images' (6 images) at rows 2")
    case(f"{verb}-npz-index-negative", argv, npz_card_index(-1), "at rows 2")
    case(f"{verb}-npz-float-images", argv, npz_card(train_images=np.random.rand(6, 8, 8, 3)), "train_images")
    case(f"{verb}-npz-missing-split-array", argv, npz_card(val_images=np.zeros((0, 8, 8, 3), np.uint8)), "val")

# ---- data split / prepare options --------------------------------------------------------------------------

for ratios in ("nan,0.5,0.5", "inf,0,0", "-0.2,0.6,0.6", "0.5,0.5", "a,b,c", "0,0,0"):
    case(f"split-ratios-{ratios.replace(',', '_').replace('.', 'p')}",
         ["data", "split", "{d}/card", "-o", "{d}/out", "--ratios", ratios], tiny_card, "ratios")
case("split-stratify-unknown", ["data", "split", "{d}/card", "-o", "{d}/out", "--stratify", "nope"], tiny_card,
     "'nope'")
case("split-keep-unknown", ["data", "split", "{d}/card", "-o", "{d}/out", "--keep", "holdout"], tiny_card, "holdout")
case("prepare-format-bogus", ["data", "prepare", "{d}/card", "-o", "{d}/out", "--format", "zip"], tiny_card, "format")
case("prepare-size-zero", ["data", "prepare", "{d}/card", "-o", "{d}/out", "--size", "0"], tiny_card, "size")
case("prepare-card-missing", ["data", "prepare", "{d}/nope", "-o", "{d}/out"], lambda d: None, "{d}/nope")
case("inspect-card-missing", ["data", "inspect", "{d}/nope"], lambda d: None, "{d}/nope")

# ---- pipelines ------------------------------------------------------------------------------------------------


def pipeline(text: str | bytes) -> Callable[[Path], Path]:
    """A pipeline file {d}/p.yaml (plus a valid tiny card at {d}/card for it to use)."""
    def make(d: Path) -> Path:
        tiny_card(d)
        return write(d / "p.yaml", fill(text, d))
    return make


def run_case(id: str, text: str | bytes, fragment: str, *extra: str) -> None:
    """`synthfm run {d}/p.yaml -o {d}/out` on a broken pipeline."""
    case(f"run-{id}", ["run", "{d}/p.yaml", "-o", "{d}/out", *extra], pipeline(text), fragment)


GOOD = "name: p\ndata:\n  c: {card: {d}/card}\n"
run_case("not-utf8", b"name: p\ndescription: caf\xe9\n", "{d}/p.yaml")
run_case("duplicate-key", "name: p\ndata:\n  c: {card: x}\ndata:\n  d: {card: y}\n", "'data'")
run_case("duplicate-job", "name: p\ndata:\n  c: {card: x}\n  c: {card: y}\n", "'c'")
run_case("alias-bomb", ALIAS_BOMB.replace("name: *f\nmodality: fundus\n", "name: p\ndescription: *f\n"), "{d}/p.yaml")
run_case("list", "- a\n", "{d}/p.yaml")
run_case("missing-name", "data: {}\n", "'name'")
run_case("bad-name", "name: a b\n", "'name'")
run_case("unknown-stage", "name: p\ntrain: {}\n", "'train'")
run_case("stage-not-mapping", "name: p\ndata: [1, 2]\n", "'data'")
run_case("bad-job-name", "name: p\ndata:\n  'a b': {card: x}\n", "a b")
run_case("unknown-kind", "name: p\ndata:\n  c: {fetch: {url: x}}\n", "data.c")
run_case("later-ref", "name: p\ndata:\n  c: {split: {input: '${data.e}'}}\n  e: {card: x}\n", "${data.e}")
run_case("input-missing", "name: p\ndata:\n  c: {card: {d}/nope}\n", "{d}/nope")
run_case("job-unknown-key", "name: p\ndata:\n  c: {phantom: {n: 4, sizee: 8}}\n", "sizee")
case("run-root-is-file", ["run", "{d}/p.yaml"], pipeline(GOOD + "root: {d}/card/manifest.csv\n"),
     "{d}/card/manifest.csv")
case("run-out-is-file", ["run", "{d}/p.yaml", "-o", "{d}/card/manifest.csv"], pipeline(GOOD), "{d}/card/manifest.csv")
run_case("from-bogus", GOOD, "--from", "--from", "training")
run_case("only-bogus", GOOD, "--only", "--only", "data.x")
case("run-file-missing", ["run", "{d}/nope.yaml"], lambda d: None, "{d}/nope.yaml")

# ---- synth phantom ----------------------------------------------------------------------------------------------


def phantom(id: str, extra: list[str], fragment: str, make: Callable[[Path], Any] = lambda d: None) -> None:
    """`synth phantom -o {d}/out --n 4 --size 32` with bad options."""
    case(f"phantom-{id}", ["synth", "phantom", "-o", "{d}/out", "--n", "4", "--size", "32", *extra], make, fragment)


phantom("condition-grade-9", ["--condition", "dr_grade=9"], "dr_grade")
phantom("condition-unknown", ["--condition", "colour=blue"], "colour")
phantom("condition-not-pair", ["--condition", "dr_grade"], "--condition")
phantom("generator-bogus", ["--generator", "mri_phantom"], "mri_phantom")
phantom("n-zero", ["--n", "0"], "n")
phantom("size-tiny", ["--size", "2"], "size")
phantom("format-bogus", ["--format", "zip"], "format")
phantom("config-missing", ["--config", "{d}/nope.yaml"], "{d}/nope.yaml")
phantom("config-not-utf8", ["--config", "{d}/c.yaml"], "{d}/c.yaml", lambda d: write(d / "c.yaml", b"n: \xff\n"))
phantom("config-duplicate-key", ["--config", "{d}/c.yaml"], "'n'", lambda d: write(d / "c.yaml", "n: 4\nn: 5\n"))
phantom("target-missing", ["--target", "{d}/nope"], "{d}/nope")

# ---- pretrain / adapt configs -------------------------------------------------------------------------------


def config_case(id: str, verb: list[str], text: str | bytes, fragment: str, make: Callable[[Path], Any] = tiny_card
                ) -> None:
    """A stage command on a broken config file {d}/c.yaml, writing to {d}/out."""
    def build(d: Path) -> None:
        make(d)
        write(d / "c.yaml", fill(text, d))
    case(id, [*verb, "{d}/c.yaml", "-o", "{d}/out"], build, fragment)


PRETRAIN = ["pretrain", "run"]
config_case("pretrain-unknown-recipe", PRETRAIN, "recipe: mae_vit_enormous\n", "mae_vit_enormous")
config_case("pretrain-unknown-key", PRETRAIN, "recipe: mae_vit_tiny_demo\nbatchsize: 4\n", "batchsize")
config_case("pretrain-not-utf8", PRETRAIN, b"recipe: mae\xff\n", "{d}/c.yaml")
config_case("pretrain-duplicate-key", PRETRAIN, "recipe: mae_vit_tiny_demo\nrecipe: dino\n", "'recipe'")
config_case("pretrain-source-missing", PRETRAIN, "recipe: mae_vit_tiny_demo\nstages:\n- name: a\n  steps: 2\n"
            "  sources: [{source: '{d}/nope', split: train}]\n", "{d}/nope")
ADAPT = ["adapt"]
ADAPT_OK = "card: {d}/card\ntask: grade\nencoder: 'random:vit_tiny_p8_64'\nimage_size: 16\nepochs: 1\nseeds: [0]\n"
config_case("adapt-unknown-key", ADAPT, ADAPT_OK + "epochz: 2\n", "epochz")
config_case("adapt-task-unknown", ADAPT, ADAPT_OK.replace("task: grade", "task: dr"), "'dr'")
config_case("adapt-card-missing", ADAPT, ADAPT_OK.replace("{d}/card", "{d}/nope"), "{d}/nope")
config_case("adapt-not-utf8", ADAPT, ADAPT_OK.encode() + b"# \xff\n", "{d}/c.yaml")
config_case("adapt-backbone-unknown", ADAPT, ADAPT_OK.replace("vit_tiny_p8_64", "vit_colossal"), "vit_colossal")
config_case("adapt-pth-empty", ADAPT, ADAPT_OK.replace("'random:vit_tiny_p8_64'", "{d}/w.pth") +
            "backbone: vit_tiny_p8_64\n", "{d}/w.pth", lambda d: (tiny_card(d), write(d / "w.pth", b"")))
config_case("adapt-pth-text", ADAPT, ADAPT_OK.replace("'random:vit_tiny_p8_64'", "{d}/w.pth") +
            "backbone: vit_tiny_p8_64\n", "{d}/w.pth", lambda d: (tiny_card(d), write(d / "w.pth", "weights")))
config_case("adapt-encoder-config-bad-json", ADAPT, ADAPT_OK.replace("'random:vit_tiny_p8_64'", "{d}/enc"),
            "{d}/enc/config.json", lambda d: (tiny_card(d), write(d / "enc/config.json", "{not json")))
config_case("adapt-encoder-config-list", ADAPT, ADAPT_OK.replace("'random:vit_tiny_p8_64'", "{d}/enc"),
            "{d}/enc/config.json", lambda d: (tiny_card(d), write(d / "enc/config.json", "[1, 2]")))
def saved_encoder(d: Path) -> None:
    """A tiny card and a saved 32-px ViT encoder at {d}/enc."""
    from synthfm.models.backbones import create_backbone
    from synthfm.models.checkpoint import save_pretrained

    tiny_card(d)
    save_pretrained(create_backbone("vit_tiny_p8_64", 3, img_size=32), d / "enc")


config_case("adapt-image-size-not-patch-multiple", ADAPT,
            ADAPT_OK.replace("'random:vit_tiny_p8_64'", "{d}/enc").replace("image_size: 16", "image_size: 50"),
            "image_size 50 is not a multiple", saved_encoder)
config_case("adapt-no-val-split", ADAPT, ADAPT_OK, "'val'",
            card_rows(lambda df: df.assign(split=df["split"].replace("val", "train"))))

# ---- CLI usage mistakes ---------------------------------------------------------------------------------------

case("cli-unknown-command", ["pretrian", "run"], lambda d: None, "pretrian")
case("cli-unknown-option", ["data", "inspect", "{d}/card", "--sampel", "3"], tiny_card, "--sampel")
case("cli-bad-int", ["data", "inspect", "{d}/card", "--sample", "many"], tiny_card, "--sample")
case("cli-missing-out", ["data", "prepare", "{d}/card"], tiny_card, "--out")

# ---- output-folder locks ----------------------------------------------------------------------------------------


_HELD: list[int] = []  # lock files held open for the rest of the test session


def locked(make: Callable[[Path], Any]) -> Callable[[Path], None]:
    """Inputs plus {d}/out held by a live writer, as another process would hold it (pid 4242 named)."""
    def build(d: Path) -> None:
        import fcntl
        import json
        import os
        import socket

        make(d)
        (d / "out").mkdir(parents=True, exist_ok=True)
        fd = os.open(d / "out/.synthfm.lock", os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, json.dumps({"pid": 4242, "host": socket.gethostname(), "command": "synthfm"}).encode())
        _HELD.append(fd)
    return build


case("lock-phantom", ["synth", "phantom", "-o", "{d}/out", "--n", "2", "--size", "32"], locked(lambda d: None),
     "pid 4242")
case("lock-prepare", ["data", "prepare", "{d}/card", "-o", "{d}/out", "--size", "16"], locked(tiny_card), "pid 4242")
case("lock-split", ["data", "split", "{d}/card", "-o", "{d}/out"], locked(tiny_card), "pid 4242")
case("lock-import-npz", ["data", "import-npz", "{d}/in.npz", "-o", "{d}/out"],
     locked(lambda d: npz_file(d / "in.npz")), "pid 4242")
case("lock-run", ["run", "{d}/p.yaml", "-o", "{d}/out"], locked(pipeline(GOOD)), "pid 4242")
