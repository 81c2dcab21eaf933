"""Site signing keys: ed25519 key pairs, key ids, a hub keyring of known site public keys."""

from __future__ import annotations

import base64
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from synthfm.errors import SynthfmError
from synthfm.io import atomic_write_bytes

PASSPHRASE_ENV = "SYNTHFM_KEY_PASSPHRASE"
SITE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def check_site_name(site: str, where: str = "site") -> str:
    """A site name: lower-case letters, digits, '_' and '-' (it names files and provenance rows)."""
    if not SITE_NAME.match(site):
        raise SynthfmError(f"{where} {site!r} is not a valid site name",
                           "use 1-64 lower-case letters, digits, '_' or '-', starting with a letter or digit")
    return site


def key_id(public: Ed25519PublicKey) -> str:
    """The key id: the first 32 hex digits of SHA-256 over the raw 32-byte public key."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:32]


def _passphrase() -> bytes | None:
    """The private-key passphrase from the environment, if one is set."""
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode() if value else None


def generate_keypair(site: str, out_dir: str | Path) -> tuple[Path, Path]:
    """Write `<site>.key` (PKCS8 PEM, mode 0600, encrypted if $SYNTHFM_KEY_PASSPHRASE is set) and `<site>.pub`."""
    check_site_name(site)
    out = Path(out_dir)
    priv_path, pub_path = out / f"{site}.key", out / f"{site}.pub"
    if priv_path.exists():
        raise SynthfmError(f"{priv_path} already exists; refusing to overwrite a site key",
                           "choose another --out folder, or move the old key away first")
    key = Ed25519PrivateKey.generate()
    secret = _passphrase()
    enc = serialization.BestAvailableEncryption(secret) if secret else serialization.NoEncryption()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    atomic_write_bytes(priv_path, pem, perms=0o600)  # private from its first byte, whatever the umask
    atomic_write_bytes(pub_path, public_pem(key.public_key()))
    return priv_path, pub_path


def public_pem(public: Ed25519PublicKey) -> bytes:
    """A public key as SubjectPublicKeyInfo PEM."""
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """Read a site's ed25519 private key (PEM), using $SYNTHFM_KEY_PASSPHRASE if it is encrypted."""
    path = Path(path)
    if not path.is_file():
        raise SynthfmError(f"private key not found: {path}", "create one with 'synthfm site keygen'")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=_passphrase())
    except (ValueError, TypeError) as err:
        raise SynthfmError(f"cannot read private key {path}: {err}",
                           f"give the PEM written by 'synthfm site keygen' (and set {PASSPHRASE_ENV} if it "
                           "is encrypted)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SynthfmError(f"{path} is not an ed25519 key", "create one with 'synthfm site keygen'")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """Read an ed25519 public key (PEM)."""
    path = Path(path)
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (ValueError, OSError) as err:
        raise SynthfmError(f"cannot read public key {path}: {err}",
                           "give a .pub file from 'synthfm site keygen'") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SynthfmError(f"{path} is not an ed25519 public key", "give a .pub file from 'synthfm site keygen'")
    return key


@dataclass(frozen=True)
class KnownKey:
    """A site public key the hub trusts."""

    site: str
    key: Ed25519PublicKey
    path: Path


def load_keyring(path: str | Path) -> dict[str, KnownKey]:
    """Known site keys by key id: a folder of `<site>.pub` files (or one such file)."""
    path = Path(path)
    files = sorted(path.glob("*.pub")) if path.is_dir() else [path] if path.is_file() else []
    if not files:
        raise SynthfmError(f"no site public keys found at {path}",
                           "give a folder of <site>.pub files received from the sites (out of band)")
    ring: dict[str, KnownKey] = {}
    for f in files:
        known = KnownKey(check_site_name(f.stem, f"key file {f.name}: site"), load_public_key(f), f)
        kid = key_id(known.key)
        if kid in ring:
            raise SynthfmError(f"keyring refused [shared-key]: key {kid} is in the keyring twice, as "
                               f"{ring[kid].path.name} and {f.name}: one "
                               "site identity per key", "keep the .pub file of the site that sent the key; a "
                               "site that sends another site's key is impersonating it")
        ring[kid] = known
    return ring


def sign(private: Ed25519PrivateKey, data: bytes) -> str:
    """A base64 ed25519 signature of `data`."""
    return base64.b64encode(private.sign(data)).decode()


def signature_valid(public: Ed25519PublicKey, data: bytes, signature_b64: str) -> bool:
    """Whether a base64 ed25519 signature of `data` is valid for `public` (malformed base64 is invalid)."""
    try:
        public.verify(base64.b64decode(signature_b64, validate=True), data)
    except (InvalidSignature, ValueError):
        return False
    return True
