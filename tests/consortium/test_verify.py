"""Hub verification: every attack in the acceptance list is rejected with a clear reason; nothing is unpickled."""

from __future__ import annotations

import _pickle
import base64
import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import save_file

from synthfm.consortium.bundle import MANIFEST_FILE, SIGNATURE_FILE, pack_bundle
from synthfm.consortium.keys import load_keyring
from synthfm.consortium.verify import BundleRejected, VerifyConfig, is_pickle_stream, verify_bundle

from .conftest import resign

HUB = VerifyConfig(min_k=5)
WEIGHTS = "generator/model.safetensors"


class Evil:
    """An object whose unpickling would run code."""

    def __reduce__(self) -> tuple:
        return (os.system, ("echo pwned > /tmp/synthfm_pwned",))


@pytest.fixture(autouse=True)
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any unpickling during these tests fails loudly (pickle, _pickle and torch.load all patched)."""
    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("something tried to unpickle")

    for mod in (pickle, _pickle):
        for name in ("load", "loads", "Unpickler"):
            monkeypatch.setattr(mod, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)


def reject(path: Path, keys: Path | dict, cfg: VerifyConfig = HUB, **kw: object) -> BundleRejected:
    """Verify and return the rejection (failing the test if the bundle is accepted)."""
    with pytest.raises(BundleRejected) as info:
        verify_bundle(path, keys, cfg, **kw)
    return info.value


def png_bytes() -> bytes:
    """A small PNG."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_valid_bundle_folder_and_archives_verify(bundle: Path, keys: dict, tmp_path: Path) -> None:
    v = verify_bundle(bundle, keys["hub"], HUB)
    assert v.site == "site_a" and v.info.generator.kind == "phantom" and len(v.checks) == 6
    for name in ("b.tar", "b.tar.gz"):
        packed = pack_bundle(bundle, tmp_path / name)
        got = verify_bundle(packed, keys["hub"], HUB, extract_to=tmp_path / f"x_{name}")
        assert got.generator_hash == v.generator_hash
    assert (tmp_path / "b.tar").read_bytes() == pack_bundle(bundle, tmp_path / "again.tar").read_bytes()


def test_tampered_weight_file(bundle: Path, keys: dict) -> None:
    data = bytearray((bundle / WEIGHTS).read_bytes())
    data[-1] ^= 0x01
    (bundle / WEIGHTS).write_bytes(bytes(data))
    err = reject(bundle, keys["hub"])
    assert err.reason == "checksum" and WEIGHTS in err.message and "tampered" in err.message


def test_manifest_edited_to_match_tampering_breaks_the_signature(bundle: Path, keys: dict) -> None:
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    manifest["files"][0]["size"] += 1
    (bundle / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert reject(bundle, keys["hub"]).reason == "bad-signature"


def test_wrong_signature(bundle: Path, keys: dict, tmp_path: Path) -> None:
    """A signature made with site_b's key but claiming site_a's key id."""
    site_a_sig = json.loads((bundle / SIGNATURE_FILE).read_text())
    resign(bundle, keys["site_b"], site="site_a")
    forged = json.loads((bundle / SIGNATURE_FILE).read_text())
    (bundle / SIGNATURE_FILE).write_text(json.dumps({**forged, "key_id": site_a_sig["key_id"]}))
    err = reject(bundle, keys["hub"])
    assert err.reason == "bad-signature" and "site_a" in err.message


def test_unknown_key(bundle: Path, keys: dict) -> None:
    only_b = {k: v for k, v in load_keyring(keys["hub"]).items() if v.site == "site_b"}
    err = reject(bundle, only_b)
    assert err.reason == "unknown-key" and "not in the hub's keyring" in err.message


def test_bundle_claiming_another_site(bundle: Path, keys: dict) -> None:
    resign(bundle, keys["site_b"])
    err = reject(bundle, keys["hub"])
    assert err.reason == "site-mismatch" and "site_b" in err.message


@pytest.mark.parametrize("name", ["generator/model.bin", "generator/extra.pt", "payload.pkl", "notes.json",
                                  "extra.safetensors", "readme.txt"])
def test_pickle_payload(bundle: Path, keys: dict, name: str) -> None:
    (bundle / name).write_bytes(pickle.dumps(Evil(), protocol=4))
    resign(bundle, keys["site_a"])
    err = reject(bundle, keys["hub"])
    assert err.reason == "pickle" and name in err.message
    assert not Path("/tmp/synthfm_pwned").exists()


def test_text_protocol_pickle_is_found_without_running_it(bundle: Path, keys: dict) -> None:
    payload = pickle.dumps(Evil(), protocol=0)
    assert payload[:1] != b"\x80" and is_pickle_stream(payload) and not is_pickle_stream(b'{"a": 1}\n')
    (bundle / "notes.txt").write_bytes(payload)
    resign(bundle, keys["site_a"])
    assert reject(bundle, keys["hub"]).reason == "pickle"


def test_torch_save_zip_is_rejected(bundle: Path, keys: dict) -> None:
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    (bundle / "generator" / "weights.safetensors").write_bytes(buf.getvalue())
    assert reject(bundle, keys["hub"]).reason == "file-type"


def _tar_with(bundle: Path, out: Path, extra: tarfile.TarInfo, data: bytes = b"") -> Path:
    """A tar of the bundle plus one crafted member."""
    with tarfile.open(out, "w") as tar:
        for p in sorted(q for q in bundle.rglob("*") if q.is_file()):
            tar.add(p, arcname=p.relative_to(bundle).as_posix())
        extra.size = len(data) if extra.isfile() else 0
        tar.addfile(extra, io.BytesIO(data) if extra.isfile() else None)
    return out


@pytest.mark.parametrize("name", ["../evil.json", "generator/../../evil.json", "/etc/evil.json", "a/./b.json"])
def test_path_traversal_in_archive(bundle: Path, keys: dict, tmp_path: Path, name: str) -> None:
    tar = _tar_with(bundle, tmp_path / "b.tar", tarfile.TarInfo(name), b"{}")
    dest = tmp_path / "staged"
    err = reject(tar, keys["hub"], extract_to=dest)
    assert err.reason == "path-traversal" and repr(name) in err.message
    assert not (tmp_path / "evil.json").exists() and not dest.exists()


def test_path_traversal_in_signed_manifest(bundle: Path, keys: dict) -> None:
    resign(bundle, keys["site_a"])
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    manifest["files"].append({"path": "../outside.json", "size": 2, "sha256": "0" * 64})
    from synthfm.consortium.keys import key_id, load_private_key, sign

    key = load_private_key(keys["site_a"])
    raw = json.dumps(manifest).encode()
    (bundle / MANIFEST_FILE).write_bytes(raw)
    (bundle / SIGNATURE_FILE).write_text(json.dumps({"key_id": key_id(key.public_key()), "site": "site_a",
                                                     "signature": sign(key, raw)}))
    assert reject(bundle, keys["hub"]).reason == "path-traversal"


def test_symlink_in_folder(bundle: Path, keys: dict, tmp_path: Path) -> None:
    """A weights file replaced by a link to identical bytes elsewhere still fails: links are never followed."""
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes((bundle / WEIGHTS).read_bytes())
    (bundle / WEIGHTS).unlink()
    (bundle / WEIGHTS).symlink_to(outside)
    err = reject(bundle, keys["hub"])
    assert err.reason == "symlink" and WEIGHTS in err.message


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_links_in_archive(bundle: Path, keys: dict, tmp_path: Path, kind: bytes) -> None:
    link = tarfile.TarInfo("generator/evil.json")
    link.type, link.linkname = kind, "/etc/passwd"
    err = reject(_tar_with(bundle, tmp_path / "b.tar", link), keys["hub"], extract_to=tmp_path / "staged")
    assert err.reason == ("symlink" if kind == tarfile.SYMTYPE else "hardlink") and "/etc/passwd" in err.message


@pytest.mark.parametrize("name", ["notes.txt", "fundus.png", "summary_extra.json"])
def test_image_smuggled_in(bundle: Path, keys: dict, name: str) -> None:
    (bundle / name).write_bytes(png_bytes())
    resign(bundle, keys["site_a"])
    err = reject(bundle, keys["hub"])
    assert err.reason == "image" and name in err.message and "never contain images" in err.message


def test_dicom_smuggled_in(bundle: Path, keys: dict) -> None:
    (bundle / "notes.txt").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    resign(bundle, keys["site_a"])
    assert reject(bundle, keys["hub"]).reason == "image"


def test_image_hidden_as_a_tensor(bundle: Path, keys: dict) -> None:
    img = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    save_file({"w": np.zeros(4, np.float32), "patient": img}, str(bundle / "generator" / "extra.safetensors"))
    resign(bundle, keys["site_a"])
    err = reject(bundle, keys["hub"])
    assert err.reason == "image" and "'patient'" in err.message


def test_image_embedded_in_json(bundle: Path, keys: dict) -> None:
    summary = json.loads((bundle / "summary.json").read_text())
    summary["note"] = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    (bundle / "summary.json").write_text(json.dumps(summary))
    resign(bundle, keys["site_a"])
    assert reject(bundle, keys["hub"]).reason == "embedded-data"


def test_oversized_file(bundle: Path, keys: dict) -> None:
    (bundle / "notes.txt").write_text("x" * 5000)
    resign(bundle, keys["site_a"])
    err = reject(bundle, keys["hub"], VerifyConfig(min_k=5, max_text_bytes=4096))
    assert err.reason == "oversized" and "notes.txt is 5000 bytes" in err.message


def test_oversized_archive_member_is_refused_before_extraction(bundle: Path, keys: dict, tmp_path: Path) -> None:
    big = tarfile.TarInfo("generator/big.safetensors")
    tar = _tar_with(bundle, tmp_path / "b.tar", big, b"\0" * 20_000)
    dest = tmp_path / "staged"
    err = reject(tar, keys["hub"], VerifyConfig(min_k=5, max_file_bytes=10_000), extract_to=dest)
    assert err.reason == "oversized" and not dest.exists()


def test_too_many_files(bundle: Path, keys: dict) -> None:
    assert reject(bundle, keys["hub"], VerifyConfig(min_k=5, max_files=3)).reason == "oversized"


def test_unlisted_and_missing_files(bundle: Path, keys: dict) -> None:
    (bundle / "notes.md").write_text("hello\n")
    assert reject(bundle, keys["hub"]).reason == "unlisted-file"
    (bundle / "notes.md").unlink()
    (bundle / "audit.json").unlink()
    assert reject(bundle, keys["hub"]).reason == "missing-file"


def test_failed_audit_and_small_cells_are_rejected_even_when_signed(bundle: Path, keys: dict) -> None:
    assert reject(bundle, keys["hub"], VerifyConfig()).reason == "small-cell"  # k=5 is under the default 10
    audit = json.loads((bundle / "audit.json").read_text())
    (bundle / "audit.json").write_text(json.dumps({**audit, "passed": False}))
    resign(bundle, keys["site_a"])
    assert reject(bundle, keys["hub"]).reason == "audit-failed"


def test_summary_showing_a_small_cell_is_rejected(bundle: Path, keys: dict) -> None:
    summary = json.loads((bundle / "summary.json").read_text())
    summary["tables"][0]["cells"].append({"values": ["4", "[70,120)", "F"], "count": 2})
    (bundle / "summary.json").write_text(json.dumps(summary))
    resign(bundle, keys["site_a"])
    err = reject(bundle, keys["hub"])
    assert err.reason == "small-cell" and "under k=5" in err.message


# ---- issue 19: limits before extraction and parsing, closed file set, architecture, replay ----------------------


def test_json_depth_is_measured_without_parsing() -> None:
    from synthfm.consortium.schemas import json_depth

    assert json_depth(b'{"a": [1, {"b": "[[[{{{"}], "c": "\\"]"}') == 3  # brackets in strings do not count
    assert json_depth(b"[" * 100_000 + b"]" * 100_000) == 100_000 and json_depth(b"7") == 0


def test_gzip_bomb_is_refused_before_a_byte_is_extracted(bundle: Path, keys: dict, tmp_path: Path) -> None:
    tar = _tar_with(bundle, tmp_path / "b.tar", tarfile.TarInfo("generator/pad.safetensors"), b"\0" * (8 * 2**20))
    import gzip

    gz = tmp_path / "b.tar.gz"
    gz.write_bytes(gzip.compress(tar.read_bytes()))
    dest = tmp_path / "staged"
    err = reject(gz, keys["hub"], extract_to=dest)
    assert err.reason == "bomb" and "nothing was extracted" in err.message and not dest.exists()


def test_archive_signature_and_sizes_are_checked_before_extraction(bundle: Path, keys: dict, tmp_path: Path) -> None:
    (bundle / "summary.json").write_text('{"k": 1}')  # tampered after signing
    dest = tmp_path / "staged"
    err = reject(pack_bundle(bundle, tmp_path / "b.tar"), keys["hub"], extract_to=dest)
    assert err.reason == "checksum" and "summary.json" in err.message and not dest.exists()
    resign(bundle, keys["site_b"], site="site_a")
    sig = json.loads((bundle / SIGNATURE_FILE).read_text())
    (bundle / SIGNATURE_FILE).write_text(json.dumps({**sig, "key_id": "0" * 32}))
    assert reject(pack_bundle(bundle, tmp_path / "c.tar"), keys["hub"], extract_to=dest).reason == "unknown-key"
    assert not dest.exists()


def test_weights_must_have_the_declared_architecture(bundle: Path, keys: dict) -> None:
    from safetensors.numpy import load_file

    from synthfm.consortium.generators import generator_hash

    state = load_file(str(bundle / WEIGHTS))
    save_file({**state, "dr_grade": np.zeros(7)}, str(bundle / WEIGHTS))
    info = json.loads((bundle / "bundle.json").read_text())
    info["generator"]["hash"] = generator_hash(bundle / "generator")
    (bundle / "bundle.json").write_text(json.dumps(info))
    resign(bundle, keys["site_a"])
    err = reject(bundle, keys["hub"])
    assert err.reason == "tensor-shape"
    assert "'dr_grade' is F64 [7]; the declared architecture has F64 [5]" in err.message


def test_generator_json_cannot_point_outside_its_folder(bundle: Path) -> None:
    from synthfm.consortium.generators import load_generator
    from synthfm.errors import SynthfmError

    gen = bundle / "generator" / "generator.json"
    gen.write_text(json.dumps({**json.loads(gen.read_text()), "weights": "../../outside.safetensors"}))
    with pytest.raises(SynthfmError, match=r"weights: Input should be 'model\.safetensors'"):
        load_generator(bundle / "generator")  # refused even where nothing verified the bundle first


def test_replay_is_refused_by_content_or_generator_hash(bundle: Path, keys: dict, tmp_path: Path) -> None:
    from synthfm.consortium.verify import append_ledger, check_replay, read_ledger

    ledger = tmp_path / "ledger.jsonl"
    a = verify_bundle(bundle, keys["hub"], HUB)
    append_ledger(ledger, check_replay(a, bundle, read_ledger(ledger)))
    append_ledger(ledger, check_replay(a, bundle, read_ledger(ledger)))  # the same site again: kept once
    assert len(read_ledger(ledger)) == 1
    info = json.loads((bundle / "bundle.json").read_text())
    (bundle / "bundle.json").write_text(json.dumps({**info, "site": "site_b"}))
    resign(bundle, keys["site_b"])
    b = verify_bundle(bundle, keys["hub"], HUB)
    assert b.content_hash == a.content_hash and b.site == "site_b"
    with pytest.raises(BundleRejected, match=r"\[replay\].*same content hash as the bundle site_a sent"):
        check_replay(b, bundle, read_ledger(ledger))


def test_one_site_identity_per_key(keys: dict, tmp_path: Path) -> None:
    import shutil

    from synthfm.errors import SynthfmError

    ring = tmp_path / "ring"
    shutil.copytree(keys["hub"], ring)
    shutil.copyfile(ring / "site_a.pub", ring / "site_z.pub")
    with pytest.raises(SynthfmError, match=r"in the keyring twice, as site_a\.pub and site_z\.pub"):
        load_keyring(ring)
