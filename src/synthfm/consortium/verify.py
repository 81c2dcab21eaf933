"""Hub-side bundle verification: nothing from a bundle is trusted, parsed as code, or unpickled.

Checks run cheapest and most dangerous first, and the first failure rejects the bundle with a reason code
(the trust model and the attack table are in docs/consortium.md):

1. **layout**: an archive's member headers one at a time (name, depth, type, size, count, total, expansion
   ratio), then its signature and signed sizes, all before a byte is extracted; a folder's entries (no links,
   no special files, limits, and no file whose first bytes are a pickle, an image or an archive);
2. **signature**: `signature.json` (depth-checked before parsing) names a key the hub knows, and the ed25519
   signature of `MANIFEST.json`'s exact bytes verifies with it;
3. **manifest**: its paths are clean, it lists exactly the files present, and every size and SHA-256 matches;
4. **content**: JSON parses (depth bounded first) with no embedded blobs; safetensors headers are typed and
   their offsets tile the data exactly (tensors are never loaded); text is UTF-8 and not a pickle stream
   (checked with `pickletools`, which reads opcodes without executing them);
5. **files and architecture**: exactly the format's files and those generator.json declares, and every
   weights tensor has the shape and dtype of the declared architecture;
6. **schema**: bundle.json, summary.json (no count under the hub's k in any table or marginal), audit.json
   (passed), schema.json and the generator config validate against closed models, the bundle's site is the
   key's site, and the generator hash matches.

Replay (one site re-signing another's bundle) is checked by the caller against the other bundles it holds
and the hub's ledger: `check_replay`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickletools
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from synthfm.config import StrictModel
from synthfm.consortium.bundle import (
    AUDIT_FILE,
    BUNDLE_FILE,
    GENERATOR_DIR,
    MANIFEST_FILE,
    SCHEMA_FILE,
    SIGNATURE_FILE,
    SUMMARY_FILE,
    UNLISTED,
    BundleInfo,
    Manifest,
    Signature,
)
from synthfm.consortium.conditions import CardSchema
from synthfm.consortium.generators import (
    GENERATOR_FILE,
    KINDS,
    GeneratorConfig,
    GeneratorKind,
    generator_files,
    generator_hash,
    generator_kind,
    phantom_schema,
    read_generator_config,
)
from synthfm.consortium.keys import KnownKey, load_keyring, signature_valid
from synthfm.consortium.schemas import (
    AuditFile,
    DiffusionFile,
    FileError,
    SummaryFile,
    TensorEntry,
    parse_json,
    safetensors_tensors,
    shape_problems,
    validate_file,
)
from synthfm.consortium.summary import check_summary
from synthfm.errors import SynthfmError
from synthfm.io import atomic_write_text, file_sha256

TEXT_SUFFIXES = (".json", ".txt", ".md")
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".joblib", ".npy", ".npz", ".h5", ".pb")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".dcm", ".dicom", ".nii",
                  ".nii.gz", ".jp2", ".j2k", ".heic", ".mha", ".nrrd")
IMAGE_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF87a": "GIF", b"GIF89a": "GIF",
               b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"\x00\x00\x00\x0cjP  ": "JPEG 2000",
               b"\xff\x4f\xff\x51": "JPEG 2000"}
ARCHIVE_MAGIC = {b"PK\x03\x04": "zip (e.g. a torch.save file)", b"\x1f\x8b": "gzip", b"7z\xbc\xaf": "7z",
                 b"BZh": "bzip2", b"\xfd7zXZ": "xz", b"\x93NUMPY": "numpy array"}
SNIFF_BYTES = 1024


class VerifyConfig(StrictModel):
    """Limits the hub enforces on every bundle (all checked before the bytes they bound are read or parsed)."""

    max_files: int = Field(512, ge=1)
    max_depth: int = Field(6, ge=1)
    max_file_bytes: int = Field(16 * 2**30, ge=1, description="largest weights file")
    max_text_bytes: int = Field(8 * 2**20, ge=1, description="largest .json / .txt / .md file")
    max_total_bytes: int = Field(64 * 2**30, ge=1)
    max_json_string: int = Field(4096, ge=16, description="longest string inside a JSON file")
    min_k: int = Field(10, ge=1, description="smallest small-cell threshold the hub accepts in a summary")
    max_json_depth: int = Field(32, ge=2, description="deepest JSON nesting, measured before parsing")
    max_compression_ratio: float = Field(50.0, ge=1, description="archive members' bytes / archive bytes")
    ratio_floor_bytes: int = Field(2**20, ge=0, description="expansion always allowed (small archives of JSON)")
    max_image_size: int = Field(1024, ge=16, description="largest image side a generator may declare")

    omit_when_default = ("max_json_depth", "max_compression_ratio", "ratio_floor_bytes", "max_image_size")


class BundleRejected(SynthfmError):
    """A bundle that failed a check: `reason` is a short code, the message names the file."""

    def __init__(self, reason: str, message: str, fix: str = "") -> None:
        super().__init__(f"bundle rejected [{reason}]: {message}",
                         fix or "do not use this bundle; ask the site to re-export it with 'synthfm site run'")
        self.reason = reason


@dataclass
class VerifiedBundle:
    """A bundle that passed every check, with what the hub needs from it."""

    root: Path
    info: BundleInfo
    key_id: str
    summary: dict[str, Any]
    audit: dict[str, Any]
    schema: CardSchema
    generator_hash: str
    checks: list[str] = field(default_factory=list)
    content_hash: str = ""

    @property
    def site(self) -> str:
        """The signing site."""
        return self.info.site

    @property
    def generator_dir(self) -> Path:
        """The bundle's generator folder."""
        return self.root / GENERATOR_DIR


@contextmanager
def rejecting(name: str = "") -> Iterator[None]:
    """Turn a FileError (limit or schema of one file) into a BundleRejected with the same reason."""
    try:
        yield
    except FileError as err:
        raise BundleRejected(err.reason, err.message) from None


# ----------------------------------------------------------------------------- layout


def check_name(name: str, where: str, cfg: VerifyConfig | None = None) -> str:
    """A member path: relative, '/'-separated, no '..', '.', empty, control or backslash characters, not too deep."""
    # control characters, separators of other systems, and surrogates (bytes of a name that is not UTF-8)
    bad_chars = any(ord(ch) < 32 or ch in "\\:" or 0xD800 <= ord(ch) <= 0xDFFF for ch in name)
    parts = (name[:-1] if name.endswith("/") else name).split("/")
    if name.startswith("/") or bad_chars or any(p in ("", ".", "..") for p in parts):
        raise BundleRejected("path-traversal", f"{where}: unsafe path {name!r} (absolute, '..', or odd characters)")
    if cfg is not None and len(parts) - 1 > cfg.max_depth:
        raise BundleRejected("oversized", f"{where}: {name!r} is nested deeper than {cfg.max_depth} folders")
    return name


def sniff(head: bytes, name: str) -> None:
    """Reject pickles, images and archives by their first bytes, whatever the file is called."""
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        raise BundleRejected("pickle", f"{name} starts with a pickle header (protocol {head[1]}); never loaded")
    if head[128:132] == b"DICM":
        raise BundleRejected("image", f"{name} is a DICOM image; bundles never contain images")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        raise BundleRejected("image", f"{name} is a WebP image; bundles never contain images")
    for magic, kind in IMAGE_MAGIC.items():
        if head.startswith(magic):
            raise BundleRejected("image", f"{name} is a {kind} image; bundles never contain images")
    for magic, kind in ARCHIVE_MAGIC.items():
        if head.startswith(magic):
            raise BundleRejected("file-type", f"{name} is a {kind}, not allowed in a bundle")


def check_suffix(name: str) -> None:
    """Only JSON, safetensors and plain text; pickle-capable and image suffixes get their own reasons."""
    lower = name.lower()
    if lower.endswith(PICKLE_SUFFIXES):
        raise BundleRejected("pickle", f"{name}: pickle-capable file type is never accepted (use safetensors)")
    if lower.endswith(IMAGE_SUFFIXES):
        raise BundleRejected("image", f"{name}: image/archive file type; bundles never contain images")
    if not lower.endswith((*TEXT_SUFFIXES, ".safetensors")):
        raise BundleRejected("file-type", f"{name}: only .json, .safetensors, .txt and .md files are allowed")


def check_size(name: str, size: int, cfg: VerifyConfig) -> None:
    """Per-file limits (text files have a lower one)."""
    limit = cfg.max_text_bytes if name.lower().endswith(TEXT_SUFFIXES) else cfg.max_file_bytes
    if size > limit:
        raise BundleRejected("oversized", f"{name} is {size} bytes, over the limit of {limit}")


def check_totals(count: int, total: int, cfg: VerifyConfig) -> None:
    """Whole-bundle limits."""
    if count > cfg.max_files:
        raise BundleRejected("oversized", f"bundle holds {count} files, over the limit of {cfg.max_files}")
    if total > cfg.max_total_bytes:
        raise BundleRejected("oversized", f"bundle holds {total} bytes, over the limit of {cfg.max_total_bytes}")


def scan_folder(root: Path, cfg: VerifyConfig) -> dict[str, Path]:
    """Every regular file under root by relative path, after the layout checks (links never followed)."""
    files: dict[str, Path] = {}
    total = 0
    stack = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        if depth > cfg.max_depth:
            raise BundleRejected("oversized", f"{folder} is nested deeper than {cfg.max_depth} folders")
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            rel = check_name(Path(entry.path).relative_to(root).as_posix(), "bundle folder")
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                raise BundleRejected("symlink", f"{rel} is a symbolic link; bundles hold regular files only")
            if stat.S_ISDIR(st.st_mode):
                stack.append((Path(entry.path), depth + 1))
                continue
            if not stat.S_ISREG(st.st_mode):
                raise BundleRejected("special-file", f"{rel} is not a regular file (device, fifo or socket)")
            if st.st_nlink > 1:
                raise BundleRejected("hardlink", f"{rel} is a hard link ({st.st_nlink} names)")
            check_size(rel, st.st_size, cfg)
            with open(entry.path, "rb") as fh:
                sniff(fh.read(SNIFF_BYTES), rel)
            check_suffix(rel)
            total += st.st_size
            files[rel] = Path(entry.path)
            check_totals(len(files), total, cfg)
    return files


def check_member(m: tarfile.TarInfo, archive: str, cfg: VerifyConfig) -> str:
    """One member header: a clean, shallow name, a regular file or folder within the size limit."""
    name = check_name(m.name.removeprefix("./"), f"archive {archive}", cfg)
    if m.issym() or m.islnk():
        kind = "symlink" if m.issym() else "hardlink"
        raise BundleRejected(kind, f"archive member {name} is a {kind} (to {m.linkname!r})")
    if not (m.isfile() or m.isdir()):
        raise BundleRejected("special-file", f"archive member {name} is not a regular file or folder")
    if m.isfile():
        check_size(name, m.size, cfg)
        check_suffix(name)
    return name


def scan_members(tar: tarfile.TarFile, archive: Path, cfg: VerifyConfig
                 ) -> tuple[list[tarfile.TarInfo], dict[str, bytes]]:
    """Member headers, read one at a time and each checked (count, total, expansion ratio, name, type, size)
    before the next is read; returns them with the bytes of MANIFEST.json and signature.json."""
    budget = max(cfg.ratio_floor_bytes, int(cfg.max_compression_ratio * archive.stat().st_size))
    members: list[tarfile.TarInfo] = []
    unlisted: dict[str, bytes] = {}
    total = 0
    for m in tar:
        if m.isdir() and m.name in (".", "./"):
            continue
        name = check_member(m, archive.name, cfg)
        total += m.size + tarfile.BLOCKSIZE
        if total > budget:
            raise BundleRejected("bomb", f"archive {archive.name} ({archive.stat().st_size} bytes) expands past "
                                         f"{budget} bytes at member {name} (ratio limit "
                                         f"{cfg.max_compression_ratio:g}); nothing was extracted")
        members.append(m)
        check_totals(sum(x.isfile() for x in members), total, cfg)
        if m.isfile() and name in UNLISTED:
            src = tar.extractfile(m)
            unlisted[name] = src.read(m.size) if src is not None else b""
    return members, unlisted


def extract_tar(path: Path, dest: Path, ring: dict[str, KnownKey], cfg: VerifyConfig) -> Path:
    """Check every member header and the signature over the archive's manifest, and that the members are
    exactly the signed files at their signed sizes, all before a byte is written; then copy out regular files
    (never `extractall`)."""
    if path.stat().st_size > cfg.max_total_bytes:
        raise BundleRejected("oversized", f"archive {path.name} is {path.stat().st_size} bytes, over the limit "
                                          f"of {cfg.max_total_bytes}")
    try:
        with tarfile.open(path, "r:*") as tar:
            members, unlisted = scan_members(tar, path, cfg)
            check_signature(unlisted, ring, cfg)
            listed = signed_sizes(unlisted[MANIFEST_FILE], cfg)
            sizes = {m.name.removeprefix("./"): m.size for m in members if m.isfile()}
            compare_listing({n: s for n, s in sizes.items() if n not in UNLISTED}, listed, f"archive {path.name}")
            if len(sizes) != sum(m.isfile() for m in members):
                raise BundleRejected("format", f"archive {path.name} holds a file name twice")
            for m in members:
                _copy_member(tar, m, dest)
    except (tarfile.TarError, EOFError, zlib.error) as err:
        raise BundleRejected("format", f"{path} is not a readable tar archive: {err}") from None
    except OSError as err:
        raise BundleRejected("format", f"archive {path.name}: a member cannot be placed ({err}); duplicate or "
                                       "clashing names") from None
    return dest


def _copy_member(tar: tarfile.TarFile, m: tarfile.TarInfo, dest: Path) -> None:
    """Write one checked member under dest: folders made, files created new (never overwritten)."""
    target = dest / m.name.removeprefix("./")
    if m.isdir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    src = tar.extractfile(m)
    with open(target, "xb") as out:
        if src is not None:
            shutil.copyfileobj(src, out, 1 << 20)
    if target.stat().st_size != m.size:
        raise BundleRejected("format", f"archive member {m.name} is truncated")


# ----------------------------------------------------------------------------- signature and manifest


def _model(model: type[BaseModel], data: Any, name: str) -> Any:
    """Validate parsed JSON against a format model, rejecting with reason 'schema'."""
    with rejecting():
        return validate_file(model, data, name)


def check_strings(data: Any, name: str, cfg: VerifyConfig) -> None:
    """No embedded blobs: every string (key or value) is short and not a data: URI."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and (len(item) > cfg.max_json_string or item.lstrip().startswith("data:")):
            raise BundleRejected("embedded-data", f"{name} holds a string of {len(item)} characters "
                                                  f"(starting {item[:24]!r}): embedded data is not allowed")


def parse_bytes(raw: bytes, name: str, cfg: VerifyConfig) -> Any:
    """Parse bundle JSON bytes (depth bounded first) and reject embedded blobs (long strings, data: URIs)."""
    with rejecting():
        data = parse_json(raw, name, cfg.max_json_depth)
    check_strings(data, name, cfg)
    return data


def read_json(path: Path, name: str, cfg: VerifyConfig) -> Any:
    """A bundle JSON file, parsed as `parse_bytes` does."""
    return parse_bytes(path.read_bytes(), name, cfg)


def check_signature(unlisted: dict[str, bytes], keys: dict[str, KnownKey], cfg: VerifyConfig) -> tuple[KnownKey, str]:
    """The signing key is known and its signature over MANIFEST.json's bytes verifies."""
    for name in UNLISTED:
        if name not in unlisted:
            raise BundleRejected("unsigned", f"bundle has no {name}", "ask the site to export a signed bundle")
    sig = _model(Signature, parse_bytes(unlisted[SIGNATURE_FILE], SIGNATURE_FILE, cfg), SIGNATURE_FILE)
    known = keys.get(sig.key_id)
    if known is None:
        raise BundleRejected("unknown-key", f"signed with key {sig.key_id}, which is not in the hub's keyring",
                             "add the site's public key (received out of band) to the keyring, or reject the bundle")
    if not signature_valid(known.key, unlisted[MANIFEST_FILE], sig.signature):
        raise BundleRejected("bad-signature", f"the signature of {MANIFEST_FILE} does not verify with "
                                              f"{known.site}'s key {sig.key_id}")
    return known, sig.key_id


def signed_manifest(raw: bytes, cfg: VerifyConfig) -> dict[str, Any]:
    """The signed manifest's entries by clean path."""
    manifest = _model(Manifest, parse_bytes(raw, MANIFEST_FILE, cfg), MANIFEST_FILE)
    entries = {check_name(e.path, MANIFEST_FILE, cfg): e for e in manifest.files}
    if len(entries) != len(manifest.files):
        raise BundleRejected("schema", f"{MANIFEST_FILE} lists a path twice")
    return entries


def signed_sizes(raw: bytes, cfg: VerifyConfig) -> dict[str, int]:
    """Path -> signed size."""
    return {n: e.size for n, e in signed_manifest(raw, cfg).items()}


def compare_listing(present: dict[str, int], listed: dict[str, int], where: str) -> None:
    """The files present are exactly the signed ones, at their signed sizes."""
    if set(present) - set(listed):
        raise BundleRejected("unlisted-file", f"{where}: files not in the signed manifest: "
                                              f"{sorted(set(present) - set(listed))}")
    if set(listed) - set(present):
        raise BundleRejected("missing-file", f"{where}: files in the manifest but missing: "
                                             f"{sorted(set(listed) - set(present))}")
    for name in sorted(present):
        if present[name] != listed[name]:
            raise BundleRejected("checksum", f"{name} does not match its signed SHA-256/size (tampered or "
                                             f"corrupted: {present[name]} bytes, manifest says {listed[name]})")


def check_manifest(files: dict[str, Path], cfg: VerifyConfig) -> dict[str, Any]:
    """The signed manifest lists exactly the files present, each with the right size and SHA-256."""
    listed = signed_manifest(files[MANIFEST_FILE].read_bytes(), cfg)
    present = {n: p.stat().st_size for n, p in files.items() if n not in UNLISTED}
    compare_listing(present, {n: e.size for n, e in listed.items()}, "bundle")
    for name, entry in sorted(listed.items()):
        if file_sha256(files[name]) != entry.sha256:
            raise BundleRejected("checksum", f"{name} does not match its signed SHA-256/size (tampered or "
                                             f"corrupted: {present[name]} bytes, manifest says {entry.size})")
    return listed


def content_hash(listed: dict[str, Any]) -> str:
    """SHA-256 over the signed (path, SHA-256) pairs of everything but bundle.json (which names the site and
    the time): the same content re-signed by another site has the same content hash."""
    lines = [f"{n}\0{e.sha256}\n" for n, e in sorted(listed.items()) if n != BUNDLE_FILE]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


# ----------------------------------------------------------------------------- content


def image_like(shape: list[int]) -> bool:
    """A uint8 tensor shaped like an image: HxW, HxWxC or CxHxW with C in 1/3/4 and sides >= 16."""
    dims = [int(d) for d in shape]
    if len(dims) == 2:
        return min(dims) >= 16
    if len(dims) in (3, 4):
        d = dims[-3:]
        return (d[-1] in (1, 3, 4) and min(d[:2]) >= 16) or (d[0] in (1, 3, 4) and min(d[1:]) >= 16)
    return False


def check_safetensors(path: Path, name: str, cfg: VerifyConfig) -> dict[str, TensorEntry]:
    """Weights only: a well-formed header, short metadata strings, no image-shaped uint8 tensor."""
    with rejecting():
        tensors, meta = safetensors_tensors(path, name, cfg.max_json_depth)
    check_strings(meta, f"{name} (metadata)", cfg)
    for key, t in tensors.items():
        if t.dtype == "U8" and image_like(t.shape):
            raise BundleRejected("image", f"{name}: tensor {key!r} is a {t.dtype} array of shape {t.shape} "
                                          "- an image, not weights")
    return tensors


def is_pickle_stream(data: bytes) -> bool:
    """Whether bytes parse as a complete pickle opcode stream (pickletools reads opcodes; nothing executes)."""
    try:
        return any(op.name == "STOP" for op, _, _ in pickletools.genops(io.BytesIO(data)))
    except Exception:  # any parse error means "not a pickle"
        return False


def check_text(path: Path, name: str) -> None:
    """Plain UTF-8 text that is not a (protocol 0/1) pickle."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise BundleRejected("file-type", f"{name} is not UTF-8 text") from None
    if is_pickle_stream(data):
        raise BundleRejected("pickle", f"{name} is a text-protocol pickle stream; never loaded")


def check_content(files: dict[str, Path], cfg: VerifyConfig) -> dict[str, dict[str, TensorEntry]]:
    """Every file parses as what its name says; returns each weights file's tensors."""
    weights = {}
    for name, path in sorted(files.items()):
        lower = name.lower()
        if lower.endswith(".safetensors"):
            weights[name] = check_safetensors(path, name, cfg)
        elif lower.endswith(".json"):
            read_json(path, name, cfg)
        else:
            check_text(path, name)
    return weights


def check_expected_files(files: dict[str, Path], cfg: VerifyConfig) -> dict[str, Any]:
    """Exactly the files of the format: the five top-level files and what generator.json declares."""
    gen_json = f"{GENERATOR_DIR}/{GENERATOR_FILE}"
    for name in (BUNDLE_FILE, SUMMARY_FILE, AUDIT_FILE, SCHEMA_FILE, gen_json):
        if name not in files:
            raise BundleRejected("missing-file", f"bundle has no {name}")
    try:
        gen = read_generator_config(files[gen_json].parent)
        declared = generator_files(files[gen_json].parent)
    except (SynthfmError, OSError, ValueError, KeyError) as err:
        raise BundleRejected("schema", getattr(err, "message", str(err))) from None
    allowed = {*UNLISTED, BUNDLE_FILE, SUMMARY_FILE, AUDIT_FILE, SCHEMA_FILE}
    allowed |= {f"{GENERATOR_DIR}/{f}" for f in declared}
    extra = sorted(set(files) - allowed)
    if extra:
        raise BundleRejected("unexpected-file", f"files the bundle format does not have: {extra} (a bundle holds "
                                                "bundle.json, summary.json, audit.json, schema.json and the files "
                                                "its generator.json declares, nothing else)")
    missing = sorted(allowed - set(files))
    if missing:
        raise BundleRejected("missing-file", f"generator files declared but missing: {missing}")
    return gen


def check_architecture(files: dict[str, Path], weights: dict[str, dict[str, TensorEntry]], kind: GeneratorKind
                       ) -> None:
    """Every weights file's tensors are those of the architecture generator.json declares."""
    gen_dir = files[f"{GENERATOR_DIR}/{GENERATOR_FILE}"].parent
    try:
        arch = kind.architecture(gen_dir)
    except Exception as err:  # a config the model classes refuse is a schema problem, not a crash
        raise BundleRejected("schema", f"{GENERATOR_DIR}: the declared architecture cannot be built: "
                                       f"{str(err)[:200]}") from None
    problems = []
    for rel, expected in arch.items():
        name = f"{GENERATOR_DIR}/{rel}"
        problems += shape_problems(name, weights.get(name, {}), expected, kind.partial_weights)
    if problems:
        raise BundleRejected("tensor-shape", "; ".join(problems[:5]))


# ----------------------------------------------------------------------------- schema


def check_schema(files: dict[str, Path], known: KnownKey, gen: dict[str, Any],
                 cfg: VerifyConfig) -> tuple[BundleInfo, dict, dict, CardSchema]:
    """bundle.json, summary, audit, schema and generator config validate and agree with the key."""
    info = _model(BundleInfo, read_json(files[BUNDLE_FILE], BUNDLE_FILE, cfg), BUNDLE_FILE)
    if info.site != known.site:
        raise BundleRejected("site-mismatch", f"bundle.json says site {info.site!r} but it is signed with "
                                              f"{known.site!r}'s key")
    summary = _model(SummaryFile, read_json(files[SUMMARY_FILE], SUMMARY_FILE, cfg), SUMMARY_FILE)
    summary = summary.model_dump(exclude_none=False)
    problems = check_summary(summary, cfg.min_k)
    if problems:
        raise BundleRejected("small-cell", f"{SUMMARY_FILE}: " + "; ".join(problems))
    audit = _model(AuditFile, read_json(files[AUDIT_FILE], AUDIT_FILE, cfg), AUDIT_FILE).model_dump()
    if audit["passed"] is not True:
        raise BundleRejected("audit-failed", f"{AUDIT_FILE} does not record a passed memorisation audit")
    schema = _model(CardSchema, read_json(files[SCHEMA_FILE], SCHEMA_FILE, cfg), SCHEMA_FILE)
    if gen["kind"] == "phantom" and schema != phantom_schema(GeneratorConfig(name=gen["name"], size=gen["size"])):
        raise BundleRejected("schema", f"{SCHEMA_FILE} is not the public vocabulary of {gen['name']} (a phantom "
                                       "bundle's schema is fixed by its generator; extra values could carry data)")
    labels = {v.name: v.values for v in schema.variables if v.values}
    for var, values in summary["domains"].items():
        if var in labels and values != labels[var]:
            odd = sorted(set(values) ^ set(labels[var]))[:5] or "same values, another order"
            raise BundleRejected("schema", f"{SUMMARY_FILE}: domains.{var} differs from {SCHEMA_FILE}'s values "
                                           f"(not in both: {odd})")
    if gen["kind"] == "diffusion":
        raw = read_json(files[f"{GENERATOR_DIR}/{GENERATOR_FILE}"], f"{GENERATOR_DIR}/{GENERATOR_FILE}", cfg)
        _model(DiffusionFile, raw, f"{GENERATOR_DIR}/{GENERATOR_FILE}")
    if gen["kind"] not in KINDS or gen["kind"] != info.generator.kind:
        raise BundleRejected("schema", f"generator kind {gen['kind']!r} is unknown or differs from bundle.json")
    size = gen.get("size", gen.get("image_size"))
    if not isinstance(size, int) or not 16 <= size <= cfg.max_image_size:
        raise BundleRejected("oversized", f"{GENERATOR_DIR}/{GENERATOR_FILE}: image size {size!r} is outside "
                                          f"16..{cfg.max_image_size}, the hub's max_image_size")
    problems = generator_kind(gen["kind"]).check(files[f"{GENERATOR_DIR}/{GENERATOR_FILE}"].parent)
    if problems:
        raise BundleRejected("small-cell", "generator folder: " + "; ".join(problems))
    return info, summary, audit, schema


def verify_folder(path: Path, ring: dict[str, KnownKey], cfg: VerifyConfig) -> VerifiedBundle:
    """Every check on a bundle folder (an archive's, once extracted)."""
    checks = []
    files = scan_folder(path, cfg)
    checks.append(f"layout: {len(files)} regular files, no links, no pickles, no images, within limits")
    for name in UNLISTED:
        if name not in files:
            raise BundleRejected("unsigned", f"bundle has no {name}", "ask the site to export a signed bundle")
    known, kid = check_signature({n: files[n].read_bytes() for n in UNLISTED}, ring, cfg)
    checks.append(f"signature: ed25519 by {known.site} (key {kid})")
    listed = check_manifest(files, cfg)
    checks.append("manifest: every file listed, sizes and SHA-256 match")
    weights = check_content(files, cfg)
    checks.append("content: JSON, safetensors headers and text parse; no embedded images or blobs")
    gen = check_expected_files(files, cfg)
    kind = generator_kind(gen["kind"]) if gen["kind"] in KINDS else None
    if kind is None:
        raise BundleRejected("schema", f"generator kind {gen['kind']!r} is unknown")
    check_architecture(files, weights, kind)
    checks.append(f"files: exactly the format's files; weights match the declared {gen['kind']} architecture")
    info, summary, audit, schema = check_schema(files, known, gen, cfg)
    ghash = generator_hash(path / GENERATOR_DIR)
    if ghash != info.generator.hash:
        raise BundleRejected("checksum", f"generator hash {ghash[:16]}... differs from bundle.json's")
    checks.append(f"schema: bundle, summary (k={summary['k']}, every table and marginal), audit (passed), schema, "
                  f"generator {info.generator.kind}")
    return VerifiedBundle(path, info, kid, summary, audit, schema, ghash, checks, content_hash(listed))


def verify_bundle(path: str | Path, keys: str | Path | dict[str, KnownKey], cfg: VerifyConfig | None = None,
                  extract_to: str | Path | None = None) -> VerifiedBundle:
    """Run every check on a bundle folder or tar; a tar is extracted (regular files only) to `extract_to`
    once its headers, signature and signed sizes pass. A rejected tar leaves nothing extracted behind."""
    cfg = cfg or VerifyConfig()
    path = Path(path)
    ring = keys if isinstance(keys, dict) else load_keyring(keys)
    if not path.exists() and not path.is_symlink():
        raise SynthfmError(f"bundle not found: {path}", "give a bundle folder or .tar / .tar.gz file")
    if path.is_symlink():
        raise BundleRejected("symlink", f"{path} itself is a symbolic link")
    if path.is_dir():
        return verify_folder(path, ring, cfg)
    if not path.is_file():
        raise BundleRejected("special-file", f"{path} is not a regular file or folder")
    dest = Path(extract_to) if extract_to is not None else Path(tempfile.mkdtemp(prefix="synthfm-bundle-"))
    created = extract_to is None or not dest.exists()
    try:
        return verify_folder(extract_tar(path, dest, ring, cfg), ring, cfg)
    except BundleRejected:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------- replay


def replay_problem(v: VerifiedBundle, seen: list[dict[str, str]]) -> str | None:
    """Why a bundle replays another site's (same content or generator hash under another site), or None."""
    for rec in seen:
        if rec["site"] == v.site:
            continue
        if rec.get("content_hash") == v.content_hash or rec.get("generator_hash") == v.generator_hash:
            what = "content" if rec.get("content_hash") == v.content_hash else "generator"
            return (f"{v.site}'s bundle has the same {what} hash as the bundle {rec['site']} sent "
                    f"({rec.get('path', 'earlier')}): one site re-signed another's bundle")
    return None


def ledger_record(v: VerifiedBundle, path: str | Path) -> dict[str, str]:
    """What the hub remembers of an accepted bundle."""
    return {"site": v.site, "key_id": v.key_id, "content_hash": v.content_hash,
            "generator_hash": v.generator_hash, "path": str(path)}


def check_replay(v: VerifiedBundle, bundle: str | Path, seen: list[dict[str, str]]) -> dict[str, str]:
    """Reject a replayed bundle; return its ledger record."""
    problem = replay_problem(v, seen)
    if problem:
        raise BundleRejected("replay", problem, "accept each bundle from the site that made it; ask the site "
                                                "that re-signed it what happened")
    return ledger_record(v, bundle)


def read_ledger(path: str | Path | None) -> list[dict[str, str]]:
    """The hub's record of accepted bundles (JSON lines; a missing file is an empty record)."""
    if path is None or not Path(path).is_file():
        return []
    out = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise SynthfmError(f"ledger {path} line {i} is not JSON", "restore the hub's ledger file") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("site"), str):
            raise SynthfmError(f"ledger {path} line {i} is not a bundle record", "restore the hub's ledger file")
        out.append(rec)
    return out


def append_ledger(path: str | Path, rec: dict[str, str]) -> None:
    """Add an accepted bundle to the ledger (the same record twice is kept once)."""
    seen = read_ledger(path)
    if any(r.get("content_hash") == rec["content_hash"] and r.get("site") == rec["site"] for r in seen):
        return
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in [*seen, rec]))
