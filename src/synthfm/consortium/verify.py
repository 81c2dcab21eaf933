"""Hub-side bundle verification: nothing from a bundle is trusted, parsed as code, or unpickled.

Checks run cheapest and most dangerous first, and the first failure rejects the bundle with a reason code:

1. **layout** (tar members before anything is extracted, then the folder): no absolute or `..` paths,
   no symlinks, hard links or special files, limits on file count, depth and sizes, only `.json`,
   `.safetensors`, `.txt`, `.md` files, and no file whose first bytes are a pickle, an image or an archive;
2. **signature**: `signature.json` names a key the hub knows, and the ed25519 signature of `MANIFEST.json`'s
   exact bytes verifies with it;
3. **manifest**: its paths are clean, it lists exactly the files present, and every size and SHA-256 matches;
4. **content**: JSON parses with no embedded blobs; safetensors headers parse (tensors are never loaded) and
   hold no image-shaped uint8 tensor; text is UTF-8 and not a pickle stream (checked with `pickletools`,
   which reads opcodes without executing them);
5. **schema**: bundle.json, summary.json (no count under the hub's k), audit.json (passed), schema.json and the
   generator config validate, the bundle's site is the key's site, and the generator hash matches.
"""

from __future__ import annotations

import io
import json
import os
import pickletools
import stat
import struct
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

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
    KINDS,
    file_sha256,
    generator_hash,
    generator_kind,
    read_generator_config,
)
from synthfm.consortium.keys import KnownKey, load_keyring, signature_valid
from synthfm.consortium.summary import check_summary
from synthfm.errors import SynthfmError

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
    """Limits the hub enforces on every bundle."""

    max_files: int = Field(512, ge=1)
    max_depth: int = Field(6, ge=1)
    max_file_bytes: int = Field(16 * 2**30, ge=1, description="largest weights file")
    max_text_bytes: int = Field(8 * 2**20, ge=1, description="largest .json / .txt / .md file")
    max_total_bytes: int = Field(64 * 2**30, ge=1)
    max_json_string: int = Field(4096, ge=16, description="longest string inside a JSON file")
    min_k: int = Field(10, ge=1, description="smallest small-cell threshold the hub accepts in a summary")


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

    @property
    def site(self) -> str:
        """The signing site."""
        return self.info.site

    @property
    def generator_dir(self) -> Path:
        """The bundle's generator folder."""
        return self.root / GENERATOR_DIR


# ----------------------------------------------------------------------------- layout


def check_name(name: str, where: str) -> str:
    """A member path: relative, '/'-separated, no '..', '.', empty, control or backslash characters."""
    bad_chars = any(ord(ch) < 32 or ch in "\\:" for ch in name)
    parts = (name[:-1] if name.endswith("/") else name).split("/")
    if name.startswith("/") or bad_chars or any(p in ("", ".", "..") for p in parts):
        raise BundleRejected("path-traversal", f"{where}: unsafe path {name!r} (absolute, '..', or odd characters)")
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


def checked_members(tar: tarfile.TarFile, archive: str, cfg: VerifyConfig) -> list[tarfile.TarInfo]:
    """Every member header checked (names, types, sizes) before a byte is extracted."""
    members = tar.getmembers()
    check_totals(len(members), sum(m.size for m in members if m.isfile()), cfg)
    members = [m for m in members if not (m.isdir() and m.name in (".", "./"))]
    for m in members:
        name = check_name(m.name.removeprefix("./"), f"archive {archive}")
        if m.issym() or m.islnk():
            kind = "symlink" if m.issym() else "hardlink"
            raise BundleRejected(kind, f"archive member {name} is a {kind} (to {m.linkname!r})")
        if not (m.isfile() or m.isdir()):
            raise BundleRejected("special-file", f"archive member {name} is not a regular file or folder")
        if m.isfile():
            check_size(name, m.size, cfg)
    return members


def extract_tar(path: Path, dest: Path, cfg: VerifyConfig) -> Path:
    """Check every tar member header, then copy out regular files only (never `extractall`)."""
    try:
        with tarfile.open(path, "r:*") as tar:
            for m in checked_members(tar, path.name, cfg):
                _copy_member(tar, m, dest)
    except (tarfile.TarError, EOFError) as err:
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
        out.write(src.read(m.size) if src is not None else b"")


# ----------------------------------------------------------------------------- signature and manifest


def _model(model: type[BaseModel], data: Any, name: str) -> Any:
    """Validate parsed JSON against a format model, rejecting with reason 'schema'."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise BundleRejected("schema", f"{name}: {where}: {first['msg']}") from None


def read_json(path: Path, name: str, cfg: VerifyConfig) -> Any:
    """Parse a bundle JSON file and reject embedded blobs (long strings, data: URIs)."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleRejected("schema", f"{name} is not valid UTF-8 JSON: {err}") from None
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
    return data


def check_signature(files: dict[str, Path], keys: dict[str, KnownKey], cfg: VerifyConfig) -> tuple[KnownKey, str]:
    """The signing key is known and its signature over MANIFEST.json's bytes verifies."""
    for name in UNLISTED:
        if name not in files:
            raise BundleRejected("unsigned", f"bundle has no {name}", "ask the site to export a signed bundle")
    sig = _model(Signature, read_json(files[SIGNATURE_FILE], SIGNATURE_FILE, cfg), SIGNATURE_FILE)
    known = keys.get(sig.key_id)
    if known is None:
        raise BundleRejected("unknown-key", f"signed with key {sig.key_id}, which is not in the hub's keyring",
                             "add the site's public key (received out of band) to the keyring, or reject the bundle")
    if not signature_valid(known.key, files[MANIFEST_FILE].read_bytes(), sig.signature):
        raise BundleRejected("bad-signature", f"the signature of {MANIFEST_FILE} does not verify with "
                                              f"{known.site}'s key {sig.key_id}")
    return known, sig.key_id


def check_manifest(files: dict[str, Path], cfg: VerifyConfig) -> Manifest:
    """The signed manifest lists exactly the files present, each with the right size and SHA-256."""
    manifest = _model(Manifest, read_json(files[MANIFEST_FILE], MANIFEST_FILE, cfg), MANIFEST_FILE)
    listed = {check_name(e.path, MANIFEST_FILE): e for e in manifest.files}
    present = {n for n in files if n not in UNLISTED}
    if present - set(listed):
        raise BundleRejected("unlisted-file", f"files not in the signed manifest: {sorted(present - set(listed))}")
    if set(listed) - present:
        raise BundleRejected("missing-file", f"files in the manifest but missing: {sorted(set(listed) - present)}")
    for name, entry in sorted(listed.items()):
        size = files[name].stat().st_size
        if size != entry.size or file_sha256(files[name]) != entry.sha256:
            raise BundleRejected("checksum", f"{name} does not match its signed SHA-256/size (tampered or "
                                             f"corrupted: {size} bytes, manifest says {entry.size})")
    return manifest


# ----------------------------------------------------------------------------- content


def safetensors_header(path: Path, name: str) -> dict[str, Any]:
    """The JSON header of a safetensors file, with every tensor's byte range checked (no tensor is loaded)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        raw = fh.read(8)
        n = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
        if n < 2 or 8 + n > size or n > 100 * 2**20:
            raise BundleRejected("schema", f"{name} is not a safetensors file (bad header length)")
        try:
            header = json.loads(fh.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise BundleRejected("schema", f"{name} is not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise BundleRejected("schema", f"{name}: safetensors header is not a mapping")
    for key, t in header.items():
        if key == "__metadata__":
            continue
        ok = isinstance(t, dict) and isinstance(t.get("shape"), list) and isinstance(t.get("data_offsets"), list)
        if not ok or not (0 <= t["data_offsets"][0] <= t["data_offsets"][1] <= size - 8 - n):
            raise BundleRejected("schema", f"{name}: tensor {key!r} has a malformed entry")
    return header


def image_like(shape: list[int]) -> bool:
    """A uint8 tensor shaped like an image: HxW, HxWxC or CxHxW with C in 1/3/4 and sides >= 16."""
    dims = [int(d) for d in shape]
    if len(dims) == 2:
        return min(dims) >= 16
    if len(dims) in (3, 4):
        d = dims[-3:]
        return (d[-1] in (1, 3, 4) and min(d[:2]) >= 16) or (d[0] in (1, 3, 4) and min(d[1:]) >= 16)
    return False


def check_safetensors(path: Path, name: str) -> None:
    """Weights only: no image-shaped uint8 tensor hidden among them (int8 quantised weights are fine)."""
    for key, t in safetensors_header(path, name).items():
        if key != "__metadata__" and t.get("dtype") == "U8" and image_like(t["shape"]):
            raise BundleRejected("image", f"{name}: tensor {key!r} is a {t['dtype']} array of shape {t['shape']} "
                                          "- an image, not weights")


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


def check_content(files: dict[str, Path], cfg: VerifyConfig) -> None:
    """Every file parses as what its name says."""
    for name, path in sorted(files.items()):
        lower = name.lower()
        if lower.endswith(".safetensors"):
            check_safetensors(path, name)
        elif lower.endswith(".json"):
            read_json(path, name, cfg)
        else:
            check_text(path, name)


# ----------------------------------------------------------------------------- schema


def check_schema(files: dict[str, Path], known: KnownKey,
                 cfg: VerifyConfig) -> tuple[BundleInfo, dict, dict, CardSchema]:
    """bundle.json, summary, audit, schema and generator config validate and agree with the key."""
    for name in (BUNDLE_FILE, SUMMARY_FILE, AUDIT_FILE, SCHEMA_FILE, f"{GENERATOR_DIR}/generator.json"):
        if name not in files:
            raise BundleRejected("missing-file", f"bundle has no {name}")
    info = _model(BundleInfo, read_json(files[BUNDLE_FILE], BUNDLE_FILE, cfg), BUNDLE_FILE)
    if info.site != known.site:
        raise BundleRejected("site-mismatch", f"bundle.json says site {info.site!r} but it is signed with "
                                              f"{known.site!r}'s key")
    summary = read_json(files[SUMMARY_FILE], SUMMARY_FILE, cfg)
    problems = check_summary(summary, cfg.min_k) if isinstance(summary, dict) else ["not a mapping"]
    if problems:
        raise BundleRejected("small-cell", f"{SUMMARY_FILE}: " + "; ".join(problems))
    audit = read_json(files[AUDIT_FILE], AUDIT_FILE, cfg)
    if not isinstance(audit, dict) or audit.get("passed") is not True:
        raise BundleRejected("audit-failed", f"{AUDIT_FILE} does not record a passed memorisation audit")
    schema = _model(CardSchema, read_json(files[SCHEMA_FILE], SCHEMA_FILE, cfg), SCHEMA_FILE)
    try:
        gen = read_generator_config(files[f"{GENERATOR_DIR}/generator.json"].parent)
    except SynthfmError as err:
        raise BundleRejected("schema", err.message) from None
    if gen["kind"] not in KINDS or gen["kind"] != info.generator.kind:
        raise BundleRejected("schema", f"generator kind {gen['kind']!r} is unknown or differs from bundle.json")
    problems = generator_kind(gen["kind"]).check(files[f"{GENERATOR_DIR}/generator.json"].parent)
    if problems:
        raise BundleRejected("small-cell", "generator folder: " + "; ".join(problems))
    return info, summary, audit, schema


def verify_bundle(path: str | Path, keys: str | Path | dict[str, KnownKey], cfg: VerifyConfig | None = None,
                  extract_to: str | Path | None = None) -> VerifiedBundle:
    """Run every check on a bundle folder or tar; a tar is extracted (regular files only) to `extract_to`."""
    cfg = cfg or VerifyConfig()
    path = Path(path)
    ring = keys if isinstance(keys, dict) else load_keyring(keys)
    if not path.exists() and not path.is_symlink():
        raise SynthfmError(f"bundle not found: {path}", "give a bundle folder or .tar / .tar.gz file")
    if path.is_symlink():
        raise BundleRejected("symlink", f"{path} itself is a symbolic link")
    if path.is_file():
        path = extract_tar(path, Path(extract_to or tempfile.mkdtemp(prefix="synthfm-bundle-")), cfg)
    checks = []
    files = scan_folder(path, cfg)
    checks.append(f"layout: {len(files)} regular files, no links, no pickles, no images, within limits")
    known, kid = check_signature(files, ring, cfg)
    checks.append(f"signature: ed25519 by {known.site} (key {kid})")
    check_manifest(files, cfg)
    checks.append("manifest: every file listed, sizes and SHA-256 match")
    check_content(files, cfg)
    checks.append("content: JSON, safetensors headers and text parse; no embedded images or blobs")
    info, summary, audit, schema = check_schema(files, known, cfg)
    ghash = generator_hash(path / GENERATOR_DIR)
    if ghash != info.generator.hash:
        raise BundleRejected("checksum", f"generator hash {ghash[:16]}... differs from bundle.json's")
    checks.append(f"schema: bundle, summary (k={summary['k']}), audit (passed), schema, "
                  f"generator {info.generator.kind}")
    return VerifiedBundle(path, info, kid, summary, audit, schema, ghash, checks)
