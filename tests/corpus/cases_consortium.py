"""Bundle and compose attacks on `hub verify` and `hub compose` (issue 19: items 1, 4-9, 14; reasons in
docs/consortium.md). Every case starts from one valid signed bundle, built once per process, and breaks it the
way a hostile or careless site would; a tampered bundle is re-signed with the site's own key unless the case
is about the signature, so only the hub's content checks stand between it and acceptance."""

from __future__ import annotations

import atexit
import functools
import io
import json
import os
import shutil
import struct
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from corpus_lib import Case, png, write, write_yaml
from safetensors.numpy import save_file

from synthfm.consortium.bundle import MANIFEST_FILE, SIGNATURE_FILE, Signature, build_manifest
from synthfm.consortium.deidentify import DeidConfig, deidentify_card
from synthfm.consortium.generators import GeneratorConfig, generator_hash
from synthfm.consortium.keys import generate_keypair, key_id, load_private_key, sign
from synthfm.consortium.simulate import ConsortiumConfig, SimSite, site_data
from synthfm.consortium.site import SiteConfig, run_site
from synthfm.consortium.verify import VerifyConfig, ledger_record, verify_bundle

CASES: list[Case] = []
VERIFY = ["hub", "verify", "{d}/bundle", "--keys", "{d}/keys", "--min-k", "5"]
COMPOSE = ["hub", "compose", "{d}/compose.yaml", "-o", "{d}/out"]
GEN = "generator/generator.json"
WEIGHTS = "generator/model.safetensors"
SALT = b"corpus-site-salt-0123456789"
DEEP = 100_000


@functools.lru_cache(maxsize=1)
def base() -> Path:
    """A site card, site keys and site_a's valid bundle at k=5 (built once, removed at exit)."""
    root = Path(tempfile.mkdtemp(prefix="synthfm-corpus-consortium-"))
    atexit.register(shutil.rmtree, root, True)
    cfg = ConsortiumConfig(generator=GeneratorConfig(size=32), sites=[SimSite(name="site_a", n=48)])
    card = site_data(cfg, 0, root / "card_data")
    for site in ("site_a", "site_b"):
        generate_keypair(site, root / "private")
        (root / "keys").mkdir(exist_ok=True)
        shutil.copyfile(root / "private" / f"{site}.pub", root / "keys" / f"{site}.pub")
    site = SiteConfig(site="site_a", card=str(card), generator=GeneratorConfig(size=32), summary={"k": 5},
                      audit={"n_samples": 8}, verify={"min_k": 5})
    run_site(site, root / "private" / "site_a.key", root / "kit")
    deidentify_card(card, root / "deid", DeidConfig(site="site_c", shareable=["dr_grade"], split="train"), SALT)
    return root


def resign(root: Path, key: Path, site: str | None = None, manifest: bytes | None = None) -> None:
    """Rebuild the manifest (or sign given bytes) and the signature, as a site holding a valid key would."""
    private = load_private_key(key)
    manifest = build_manifest(root) if manifest is None else manifest
    (root / MANIFEST_FILE).write_bytes(manifest)
    sig = Signature(key_id=key_id(private.public_key()), site=site or key.stem, signature=sign(private, manifest))
    (root / SIGNATURE_FILE).write_text(sig.model_dump_json())


def rehash(bundle: Path) -> None:
    """bundle.json's generator hash brought in line with the (tampered) generator folder."""
    ghash = generator_hash(bundle / "generator")
    edit_json(bundle / "bundle.json", lambda info: {**info, "generator": {**info["generator"], "hash": ghash}})


def staged(d: Path) -> Path:
    """Copy the valid bundle to d/bundle and the hub keyring to d/keys; return the bundle folder."""
    shutil.copytree(base() / "keys", d / "keys")
    return Path(shutil.copytree(base() / "kit" / "bundle", d / "bundle"))


def edit_json(path: Path, fn: Callable[[Any], Any]) -> None:
    """Rewrite a JSON file through fn."""
    path.write_text(json.dumps(fn(json.loads(path.read_text()))))


def verify_case(id: str, tamper: Callable[[Path], Any], fragment: str, signed: bool = True,
                argv: list[str] | None = None) -> None:
    """A tampered bundle folder checked by `hub verify` (re-signed with site_a's key when `signed`)."""
    def make(d: Path) -> None:
        bundle = staged(d)
        tamper(bundle)
        if signed:
            rehash(bundle)
            resign(bundle, base() / "private" / "site_a.key")
    CASES.append(Case(f"bundle-{id}", argv or VERIFY, make, fragment))


# ---- item 4 and 5: generator.json names files and sizes --------------------------------------------------------

def gen_field(**over: Any) -> Callable[[Path], None]:
    """generator.json with keys replaced."""
    return lambda b: edit_json(b / GEN, lambda g: {**g, **over})


verify_case("gen-weights-traversal", gen_field(weights="../../../x.safetensors"), "weights: Input should be")
verify_case("gen-weights-absolute", gen_field(weights="/etc/passwd"), "weights: Input should be")
verify_case("gen-weights-other-file", gen_field(weights="summary.json"), "weights: Input should be")
verify_case("gen-size-100000", gen_field(size=100000), "size: Input should be less than or equal to 2048")
verify_case("gen-size-3000", gen_field(size=3000), "size: Input should be less than or equal to 2048")
verify_case("gen-size-over-hub-limit", gen_field(size=2000), "image size 2000 is outside 16..1024")
verify_case("gen-name-long", gen_field(name="fundus_phantom" + "x" * 3000), "name: String should have at most 64")
verify_case("gen-name-unknown", gen_field(name="oct_phantom"), "name: Value error, unknown generator 'oct_phantom'")
verify_case("gen-extra-key", gen_field(notes="Jane Doe, MRN 12345"), "notes: Extra inputs are not permitted")

# ---- item 6: work before the signature is checked ----------------------------------------------------------------


def tar_of(bundle: Path, target: Path, extra: list[tuple[tarfile.TarInfo, bytes]] = (),
           skip: tuple[str, ...] = ()) -> Path:
    """A tar (gzip when the name ends in .gz) of a bundle folder plus crafted members; the folder is removed."""
    with tarfile.open(target, "w:gz" if target.name.endswith(".gz") else "w") as tar:
        for p in sorted(q for q in bundle.rglob("*") if q.is_file()):
            if p.relative_to(bundle).as_posix() not in skip:
                tar.add(p, arcname=p.relative_to(bundle).as_posix())
        for info, data in extra:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    shutil.rmtree(bundle)
    return target


def compose_yaml(d: Path, bundles: list[str], **over: Any) -> None:
    """A compose config over bundles (paths relative to d)."""
    write_yaml(d / "compose.yaml", {"keys": str(d / "keys"), "bundles": [{"path": str(d / b), "n": 4}
                                                                          for b in bundles],
                                    "verify": {"min_k": 5}, **over})


def archive_case(id: str, name: str, extra: Callable[[], list[tuple[tarfile.TarInfo, bytes]]], fragment: str,
                 skip: tuple[str, ...] = ()) -> None:
    """A crafted archive, fed to `hub compose` (which stages archives under its output: nothing may stay)."""
    def make(d: Path) -> None:
        tar_of(staged(d), d / name, extra(), skip)
        compose_yaml(d, [name])
    CASES.append(Case(f"archive-{id}", COMPOSE, make, fragment))


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    """A tar header."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


ZEROS = b"\0" * (32 * 2**20)
archive_case("gzip-bomb", "bundle.tar.gz", lambda: [(member("generator/pad.safetensors"), ZEROS)], "[bomb]")
archive_case("gzip-bomb-unsigned", "bundle.tar.gz", lambda: [(member("generator/pad.safetensors"), ZEROS)],
             "[bomb]", skip=(SIGNATURE_FILE,))
archive_case("unsigned-extra-member", "bundle.tar", lambda: [(member("generator/extra.safetensors"), b"\0" * 4096)],
             "files not in the signed manifest: ['generator/extra.safetensors']")
archive_case("unsigned-archive", "bundle.tar", lambda: [], "[unsigned]: bundle has no signature.json",
             skip=(SIGNATURE_FILE,))
archive_case("member-too-deep", "bundle.tar", lambda: [(member("a/b/c/d/e/f/g/h/x.json"), b"{}")],
             "'a/b/c/d/e/f/g/h/x.json' is nested deeper than 6 folders")
archive_case("member-traversal", "bundle.tar", lambda: [(member("../escape.json"), b"{}")], "'../escape.json'")
archive_case("member-symlink", "bundle.tar", lambda: [(member("generator/w.json", tarfile.SYMTYPE, "/etc/passwd"),
                                                       b"")], "[symlink]: archive member generator/w.json")
archive_case("member-resized", "bundle.tar", lambda: [(member("summary.json"), b"{}")],
             "summary.json does not match its signed SHA-256/size", skip=("summary.json",))


def deep_json(path: Path) -> None:
    """A JSON file nested far deeper than any parser's recursion limit."""
    path.write_bytes(b"[" * DEEP + b"]" * DEEP)


verify_case("signature-deep-json", lambda b: deep_json(b / SIGNATURE_FILE), "signature.json nests 100000 levels",
            signed=False)
verify_case("manifest-deep-json", lambda b: resign(b, base() / "private" / "site_a.key",
                                                   manifest=b"[" * DEEP + b"]" * DEEP),
            "MANIFEST.json nests 100000 levels", signed=False)
verify_case("summary-deep-json", lambda b: deep_json(b / "summary.json"), "summary.json nests 100000 levels")


def weights_header(header: dict[str, Any], data: bytes = b"") -> Callable[[Path], None]:
    """model.safetensors replaced by a crafted header and data."""
    def tamper(b: Path) -> None:
        raw = json.dumps(header).encode()
        (b / WEIGHTS).write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return tamper


def deep_header(b: Path) -> None:
    raw = b"[" * DEEP + b"]" * DEEP
    (b / WEIGHTS).write_bytes(struct.pack("<Q", len(raw)) + raw)


verify_case("weights-header-deep-json", deep_header, "(safetensors header) nests 100000 levels")

# ---- item 14: malformed signed files give a reason, not a traceback ----------------------------------------------

verify_case("weights-offsets-strings", weights_header({"age": {"dtype": "F64", "shape": [2],
                                                               "data_offsets": ["a", "b"]}}, b"\0" * 16),
            "tensor 'age' has a malformed data_offsets.0")
verify_case("weights-offsets-short", weights_header({"age": {"dtype": "F64", "shape": [2], "data_offsets": [0]}},
                                                    b"\0" * 16), "tensor 'age' has a malformed data_offsets")
verify_case("weights-offsets-not-list", weights_header({"age": {"dtype": "F64", "shape": [2], "data_offsets": 7}},
                                                       b"\0" * 16), "tensor 'age' has a malformed data_offsets")
verify_case("weights-entry-not-mapping", weights_header({"age": [1, 2, 3]}, b"\0" * 16),
            "tensor 'age' has a malformed")
verify_case("weights-unknown-dtype", weights_header({"age": {"dtype": "Q99", "shape": [2], "data_offsets": [0, 16]}},
                                                    b"\0" * 16), "tensor 'age' has a malformed dtype")
verify_case("weights-hidden-tail", weights_header({"age": {"dtype": "F64", "shape": [2], "data_offsets": [0, 16]}},
                                                  b"\0" * 16 + b"JFIF hidden bytes after the tensors"),
            "bytes after the last tensor (hidden data)")
verify_case("weights-offsets-overlap", weights_header({
    "age": {"dtype": "F64", "shape": [2], "data_offsets": [0, 16]},
    "sex": {"dtype": "F64", "shape": [2], "data_offsets": [8, 24]}}, b"\0" * 24), "overlap or leave a gap")


def summary_edit(fn: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    """summary.json edited in place by fn."""
    def tamper(b: Path) -> None:
        summary = json.loads((b / "summary.json").read_text())
        fn(summary)
        (b / "summary.json").write_text(json.dumps(summary))
    return tamper


verify_case("summary-cell-not-mapping", summary_edit(lambda s: s["tables"][0].update(cells=[5])),
            "summary.json: tables.0.cells.0")
verify_case("summary-table-not-mapping", summary_edit(lambda s: s.update(tables=["x"])), "summary.json: tables.0")
verify_case("summary-not-mapping", lambda b: (b / "summary.json").write_text("[1, 2]"),
            "summary.json: (top level)")
verify_case("summary-free-text", summary_edit(lambda s: s.update(comment="Jane Doe, MRN 123, St Elsewhere")),
            "summary.json: comment: Extra inputs are not permitted")
verify_case("summary-count-float", summary_edit(lambda s: s["tables"][0]["cells"][0].update(count=12.5)),
            "summary.json: tables.0.cells.0.count")
verify_case("bundle-notes-long", lambda b: edit_json(b / "bundle.json", lambda i: {**i, "notes": "Jane Doe " * 200}),
            "bundle.json: notes: String should have at most 256 characters")
verify_case("schema-extra-values", lambda b: edit_json(b / "schema.json", lambda sc: {
    **sc, "variables": [{**v, "values": [*v["values"], "Jane Doe MRN-0003"]} if v["name"] == "device" else v
                        for v in sc["variables"]]}), "schema.json is not the public vocabulary of fundus_phantom")
verify_case("summary-cell-short-values", summary_edit(lambda s: s["tables"][0]["cells"][0].update(values=["0"])),
            "summary.json: (top level): Value error, tables.0.cells.0 values ['0'] are not one value of each")
verify_case("summary-unknown-class", summary_edit(lambda s: s["tables"][0]["cells"][0]["values"].__setitem__(
    0, "Jane Doe")), "tables.0.cells.0 values ['Jane Doe'")
verify_case("summary-domain-not-schema", summary_edit(lambda s: s["domains"]["dr_grade"].append("Jane Doe MRN 3")),
            "summary.json: domains.dr_grade differs from schema.json's values (not in both: ['Jane Doe MRN 3'])")
verify_case("summary-age-band-garbage", summary_edit(lambda s: s["domains"]["age_band"].append("Jane Doe")),
            "domains.age_band holds ['Jane Doe'], not bands like")
verify_case("audit-free-text", lambda b: edit_json(b / "audit.json", lambda a: {**a, "note": "Jane Doe"}),
            "audit.json: note: Extra inputs are not permitted")

# ---- item 7: extra signed files and tensors that are images -------------------------------------------------------

B64_CHUNKS = ["/9j/4AAQSkZJRgABAQ" + "A" * 3000 for _ in range(20)]
verify_case("extra-json-base64-jpeg", lambda b: write(b / "notes.json", json.dumps({"chunks": B64_CHUNKS})),
            "files the bundle format does not have: ['notes.json']")
verify_case("extra-markdown", lambda b: write(b / "README.md", "patient list: Jane Doe\n"),
            "files the bundle format does not have: ['README.md']")
verify_case("extra-generator-json", lambda b: write(b / "generator" / "notes.json", "{}"),
            "files the bundle format does not have: ['generator/notes.json']")


def with_tensors(**extra: np.ndarray) -> Callable[[Path], None]:
    """model.safetensors with tensors added to the fitted priors."""
    def tamper(b: Path) -> None:
        from safetensors.numpy import load_file

        state = load_file(str(b / WEIGHTS))
        save_file({**state, **extra}, str(b / WEIGHTS), metadata={"format": "synthfm.consortium.generator/1"})
    return tamper


def extra_weights_file(b: Path) -> None:
    save_file({"w": np.zeros((64, 64, 3), np.float32)}, str(b / "generator" / "extra.safetensors"))


IMG = np.random.default_rng(0).random((64, 64, 3)).astype(np.float32)
verify_case("tensor-float-image", with_tensors(patient=IMG), "tensor 'patient' is not part of the declared")
verify_case("tensor-flat-uint8", with_tensors(blob=np.frombuffer(b"\xff\xd8\xff" + bytes(5000), np.uint8)),
            "tensor 'blob' is not part of the declared")
verify_case("tensor-reshaped-prior", with_tensors(dr_grade=IMG.astype(np.float64)),
            "tensor 'dr_grade' is F64 [64, 64, 3]; the declared architecture has F64 [5]")
verify_case("tensor-wrong-dtype", with_tensors(age=np.array([50.0, 10.0], np.float32)),
            "tensor 'age' is F32 [2]; the declared architecture has F64 [2]")
verify_case("extra-weights-file", extra_weights_file,
            "files the bundle format does not have: ['generator/extra.safetensors']")

# ---- item 8: the small-cell rule holds in the marginals too -------------------------------------------------------


def first_marginal(s: dict[str, Any]) -> dict[str, int]:
    """The counts of the first variable with released marginals."""
    return next(v for v in s["marginals"].values() if v)


verify_case("marginal-under-k", summary_edit(lambda s: first_marginal(s).update({next(iter(first_marginal(s))): 2})),
            "count(s) under k=5")
verify_case("marginal-not-sum-of-cells", summary_edit(
    lambda s: first_marginal(s).update({next(iter(first_marginal(s))): 5000})),
    "is not the sum of the released cells")
verify_case("marginal-unreleased-variable", summary_edit(lambda s: s["marginals"].update(patient={"P0001": 12})),
            "marginals.patient is not the sum of the released cells")

# ---- item 9: replay and identity ---------------------------------------------------------------------------------


def replayed(d: Path, name: str = "bundle_b", tweak: Callable[[Path], Any] | None = None) -> Path:
    """Site b re-signs a copy of site a's bundle (bundle.json's site changed, optionally another edit)."""
    copy = Path(shutil.copytree(d / "bundle", d / name))
    edit_json(copy / "bundle.json", lambda info: {**info, "site": "site_b"})
    if tweak is not None:
        tweak(copy)
    resign(copy, base() / "private" / "site_b.key")
    return copy


def replay_compose(tweak: Callable[[Path], Any] | None = None) -> Callable[[Path], None]:
    def make(d: Path) -> None:
        staged(d)
        replayed(d, tweak=tweak)
        compose_yaml(d, ["bundle", "bundle_b"])
    return make


def replay_ledger(d: Path) -> None:
    """The hub's ledger holds site a's bundle; site b sends its re-signed copy later."""
    staged(d)
    rec = ledger_record(verify_bundle(d / "bundle", d / "keys", VerifyConfig(min_k=5)), d / "bundle")
    write(d / "ledger.jsonl", json.dumps(rec) + "\n")
    replayed(d)
    shutil.rmtree(d / "bundle")
    (d / "bundle_b").rename(d / "bundle")


def nudge_summary(b: Path) -> None:
    """One count changed: the content hash differs, the generator is still site a's."""
    edit_json(b / "summary.json", lambda s: {**s, "suppression": s["suppression"] + "."})


CASES.append(Case("compose-replay-across-sites", COMPOSE, replay_compose(), "[replay]: site_b's bundle has the "
                  "same content hash as the bundle site_a sent"))
CASES.append(Case("compose-replay-edited-summary", COMPOSE, replay_compose(nudge_summary),
                  "[replay]: site_b's bundle has the same generator hash as the bundle site_a sent"))
CASES.append(Case("verify-replay-in-ledger", [*VERIFY, "--ledger", "{d}/ledger.jsonl"], replay_ledger,
                  "[replay]: site_b's bundle has the same content hash"))


def shared_key(d: Path) -> None:
    staged(d)
    shutil.copyfile(d / "keys" / "site_a.pub", d / "keys" / "site_b.pub")


CASES.append(Case("keyring-one-key-two-sites", VERIFY, shared_key, "is in the keyring twice, as site_a.pub and "
                  "site_b.pub: one site identity per key"))

# ---- item 1: compose copies only files inside a de-identified card ---------------------------------------------


def real_card(edit: Callable[[Path, Path], Any]) -> Callable[[Path], None]:
    """A copy of a de-identified card at d/deid, edited by edit(card, d), composed as site_c's real rows."""
    def make(d: Path) -> None:
        shutil.copytree(base() / "keys", d / "keys")
        card = Path(shutil.copytree(base() / "deid", d / "deid"))
        png(d / "outside" / "secret.png", 7, size=32)
        edit(card, d)
        write_yaml(d / "compose.yaml", {"keys": str(d / "keys"), "real": [{"card": str(card), "site": "site_c"}]})
    return make


def manifest_path(value: Callable[[Path], str]) -> Callable[[Path, Path], None]:
    """Row 1 of the card's manifest pointed at value(d)."""
    def edit(card: Path, d: Path) -> None:
        lines = (card / "manifest.csv").read_text().splitlines()
        head = lines[0].split(",")
        row = lines[1].split(",")
        row[head.index("path")] = value(d)
        (card / "manifest.csv").write_text("\n".join([lines[0], ",".join(row), *lines[2:]]) + "\n")
    return edit


def first_image_linked(kind: str) -> Callable[[Path, Path], None]:
    """Row 1's image replaced by a symbolic or hard link to a file outside the card."""
    def edit(card: Path, d: Path) -> None:
        rel = (card / "manifest.csv").read_text().splitlines()[1].split(",")[0]
        (card / rel).unlink()
        (os.symlink if kind == "symlink" else os.link)(d / "outside" / "secret.png", card / rel)
    return edit


def card_root(card: Path, d: Path) -> None:
    edit_yaml = card / "dataset.yaml"
    text = edit_yaml.read_text().replace("root: .", f"root: {d / 'outside'}")
    edit_yaml.write_text(text)


for cid, edit, fragment in [
    ("absolute-path", manifest_path(lambda d: str(d / "outside" / "secret.png")), "row 2: path '"),
    ("dotdot-path", manifest_path(lambda d: "images/../../outside/secret.png"),
     "row 2: path 'images/../../outside/secret.png' is not images/<pseudonym>.png"),
    ("other-folder", manifest_path(lambda d: "../outside/secret.png"), "row 2: path '../outside/secret.png'"),
    ("symlinked-image", first_image_linked("symlink"), "row 2: images/"),
    ("hardlinked-image", first_image_linked("hardlink"), "is a link or not a regular file"),
    ("root-outside", card_root, "a de-identified card is a folder card with root '.'"),
]:
    CASES.append(Case(f"compose-real-{cid}", COMPOSE, real_card(edit), fragment))

CASES.append(Case("compose-size-huge", COMPOSE, lambda d: (staged(d), compose_yaml(d, ["bundle"], size=100000)),
                  "size"))
