"""Site-side bundle export: refuse a failed audit, write, hash, sign, then run the hub's own checks on it."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from synthfm import __version__
from synthfm.consortium.bundle import (
    AUDIT_FILE,
    BUNDLE_FILE,
    GENERATOR_DIR,
    MANIFEST_FILE,
    SCHEMA_FILE,
    SIGNATURE_FILE,
    SUMMARY_FILE,
    BundleInfo,
    GeneratorRef,
    Signature,
    build_manifest,
)
from synthfm.consortium.conditions import CardSchema
from synthfm.consortium.generators import generator_files, generator_hash, read_generator_config
from synthfm.consortium.keys import KnownKey, check_site_name, key_id, sign
from synthfm.consortium.verify import BundleRejected, VerifyConfig, verify_bundle
from synthfm.errors import SynthfmError
from synthfm.io import umask_mode


def _write_json(path: Path, obj: Any) -> None:
    """Canonical JSON (sorted keys) into a staged bundle file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _copy_generator(src: Path, dest: Path) -> None:
    """Copy the files the generator declares (generator.json names them), and nothing else: a leftover
    `.name.*.tmp` of an interrupted write stays behind. A declared link or special file is an error."""
    for rel in generator_files(src):
        p = src / rel
        if p.is_symlink() or not p.is_file():
            raise SynthfmError(f"generator file {p} is missing, a link or a special file",
                               "export a generator folder of plain files (weights + config)")
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, target)


def export_bundle(out_dir: str | Path, site: str, generator_dir: str | Path, summary: dict[str, Any],
                  audit: dict[str, Any], schema: CardSchema, key: Ed25519PrivateKey,
                  verify: VerifyConfig | None = None) -> Path:
    """Write and sign a bundle at `out_dir`; refuses a failed audit, and anything the hub would reject."""
    check_site_name(site)
    out_dir = Path(out_dir)
    if audit.get("passed") is not True:
        raise SynthfmError(
            f"the memorisation audit failed ({audit.get('flagged')} of {audit.get('n_synthetic')} samples flagged "
            f"as near-copies of site images); no bundle was written",
            "train the generator longer on more images or with more regularisation, then run the site kit again")
    if out_dir.exists():
        raise SynthfmError(f"{out_dir} already exists", "export to a new folder")
    gen_src = Path(generator_dir)
    kind = read_generator_config(gen_src)["kind"]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # a hidden `.tmp` folder, so that a resumed run sweeps it if a kill leaves it behind
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        _copy_generator(gen_src, stage / GENERATOR_DIR)
        _write_json(stage / SUMMARY_FILE, summary)
        _write_json(stage / AUDIT_FILE, audit)
        _write_json(stage / SCHEMA_FILE, schema.model_dump(mode="json"))
        info = BundleInfo(site=site, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), synthfm_version=__version__,
                          generator=GeneratorRef(kind=kind, hash=generator_hash(stage / GENERATOR_DIR)))
        _write_json(stage / BUNDLE_FILE, info.model_dump(mode="json"))
        manifest = build_manifest(stage)
        (stage / MANIFEST_FILE).write_bytes(manifest)
        public = key.public_key()
        sig = Signature(key_id=key_id(public), site=site, signature=sign(key, manifest))
        _write_json(stage / SIGNATURE_FILE, sig.model_dump(mode="json"))
        try:
            verify_bundle(stage, {sig.key_id: KnownKey(site, public, Path("<own key>"))}, verify)
        except BundleRejected as err:
            raise SynthfmError(f"the bundle failed the hub's checks at the site, so it was not written: {err.message}",
                               err.fix) from None
        stage.chmod(umask_mode("dir"))  # mkdtemp's 0700 would lock out every other uid, whatever the umask
        stage.rename(out_dir)
    finally:
        if stage.exists():
            shutil.rmtree(stage)
    return out_dir
