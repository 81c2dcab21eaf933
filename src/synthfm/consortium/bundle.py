"""The bundle format: what a site sends the hub, a SHA-256 manifest over it, the site's signature, packing.

A bundle is a folder (or a `.tar` / `.tar.gz` of one)::

    bundle.json       site, creation time, synthfm version, generator kind and hash
    generator/        generator.json + safetensors weights (see consortium/generators.py)
    summary.json      the site's released metadata summary (consortium/summary.py)
    audit.json        the memorisation audit result (consortium/audit.py)
    schema.json       the dataset-card schema: tasks, classes, metadata vocabularies (no data)
    MANIFEST.json     path, size and SHA-256 of every file above
    signature.json    ed25519 signature of MANIFEST.json's exact bytes, with the signing key's id

Never an image, a pickle, a link or a path outside the folder: the hub checks all of it (consortium/verify.py).
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path
from typing import Literal

from pydantic import Field

from synthfm.config import StrictModel
from synthfm.io import atomic_path, file_sha256

BUNDLE_FILE = "bundle.json"
MANIFEST_FILE = "MANIFEST.json"
SIGNATURE_FILE = "signature.json"
SUMMARY_FILE = "summary.json"
AUDIT_FILE = "audit.json"
SCHEMA_FILE = "schema.json"
GENERATOR_DIR = "generator"
UNLISTED = (MANIFEST_FILE, SIGNATURE_FILE)


class GeneratorRef(StrictModel):
    """The generator inside a bundle: folder, kind and content hash."""

    dir: Literal["generator"] = GENERATOR_DIR
    kind: str
    hash: str = Field(pattern=r"^[0-9a-f]{64}$")


class BundleInfo(StrictModel):
    """bundle.json."""

    format: Literal["synthfm.consortium.bundle/1"] = "synthfm.consortium.bundle/1"
    site: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    created: str = Field(max_length=64)
    synthfm_version: str = Field(max_length=64)
    generator: GeneratorRef
    summary: Literal["summary.json"] = SUMMARY_FILE
    audit: Literal["audit.json"] = AUDIT_FILE
    schema_file: Literal["schema.json"] = SCHEMA_FILE
    notes: str = Field("", max_length=256, description="short free text; the hub shows it, nothing reads it")


class ManifestEntry(StrictModel):
    """One file of the bundle."""

    path: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Manifest(StrictModel):
    """MANIFEST.json."""

    format: Literal["synthfm.consortium.manifest/1"] = "synthfm.consortium.manifest/1"
    algorithm: Literal["sha256"] = "sha256"
    files: list[ManifestEntry]


class Signature(StrictModel):
    """signature.json."""

    format: Literal["synthfm.consortium.signature/1"] = "synthfm.consortium.signature/1"
    algorithm: Literal["ed25519"] = "ed25519"
    key_id: str
    site: str
    signed_file: Literal["MANIFEST.json"] = MANIFEST_FILE
    signature: str


def bundle_files(root: Path) -> list[Path]:
    """Every regular file of a bundle folder except the manifest and signature, sorted."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.relative_to(root).as_posix() not in UNLISTED)


def build_manifest(root: Path) -> bytes:
    """MANIFEST.json bytes for a bundle folder (canonical: sorted keys and entries)."""
    entries = [ManifestEntry(path=p.relative_to(root).as_posix(), size=p.stat().st_size, sha256=file_sha256(p))
               for p in bundle_files(root)]
    return (json.dumps(Manifest(files=entries).model_dump(), indent=2, sort_keys=True) + "\n").encode()


def pack_bundle(root: str | Path, target: str | Path) -> Path:
    """A byte-reproducible tar (gzip when the name ends in .gz) of a bundle folder: regular files only."""
    root, target = Path(root), Path(target)
    with atomic_path(target) as tmp, open(tmp, "wb") as raw:
        gz = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if target.name.endswith(".gz") else None
        with tarfile.open(fileobj=gz or raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for p in sorted(q for q in root.rglob("*") if q.is_file()):
                info = tarfile.TarInfo(p.relative_to(root).as_posix())
                data = p.read_bytes()
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))
        if gz is not None:
            gz.close()
    return target
