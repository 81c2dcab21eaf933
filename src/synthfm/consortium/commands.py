"""`synthfm site ...` and `synthfm hub ...`: thin Typer commands over the consortium functions.

Mount in cli.py with `app.add_typer(site_app, name="site")` and `app.add_typer(hub_app, name="hub")`
(`app` here holds both, for `python -m synthfm.consortium.commands`).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from synthfm.errors import SynthfmError

console = Console()
err_console = Console(stderr=True)

site_app = typer.Typer(no_args_is_help=True, help="Consortium site kit: keys, de-identification, generator bundles.")
hub_app = typer.Typer(no_args_is_help=True, help="Consortium hub: verify bundles, compose a global set.")
app = typer.Typer(no_args_is_help=True, help="The consortium kit.")
app.add_typer(site_app, name="site")
app.add_typer(hub_app, name="hub")


@site_app.command("keygen")
def keygen_cmd(
    site: Annotated[str, typer.Option(help="Site name (lower-case letters, digits, '_' or '-')")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for <site>.key and <site>.pub")],
) -> None:
    """Create the site's ed25519 signing key; send <site>.pub to the hub out of band, keep <site>.key."""
    from synthfm.consortium.keys import generate_keypair, key_id, load_public_key

    priv, pub = generate_keypair(site, out)
    console.print(f"private key [bold]{priv}[/] (keep it at the site); public key [bold]{pub}[/] "
                  f"(key id {key_id(load_public_key(pub))}; give it to the hub)")


@site_app.command("summarize")
def summarize_cmd(
    config: Annotated[Path, typer.Argument(help="Site YAML (SiteConfig)")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the summary JSON here")] = None,  # noqa: UP045
) -> None:
    """Print the metadata summary the site would release (review it before running the kit)."""
    from synthfm.config import load_config
    from synthfm.consortium.site import SiteConfig, site_summary
    from synthfm.io import atomic_write_json

    summary = site_summary(load_config(SiteConfig, config))
    if out is not None:
        atomic_write_json(out, summary)
    console.print_json(json.dumps(summary))


@site_app.command("run")
def site_run_cmd(
    config: Annotated[Path, typer.Argument(help="Site YAML (SiteConfig)")],
    key: Annotated[Path, typer.Option(help="The site's private key (from 'synthfm site keygen')")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder; the bundle is written to OUT/bundle")],
) -> None:
    """Summarise, train the generator, audit it, and export a signed bundle (refused if the audit fails)."""
    from synthfm.config import load_config
    from synthfm.consortium.site import SiteConfig, run_site

    bundle = run_site(load_config(SiteConfig, config), key, out)
    console.print(f"[green]bundle ready[/]: [bold]{bundle}[/] - send it (or {out}/<site>.bundle.tar) to the hub")


@site_app.command("deidentify")
def deidentify_cmd(
    card: Annotated[Path, typer.Argument(help="The site's folder card")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the de-identified card")],
    site: Annotated[str, typer.Option(help="Site name")],
    shareable: Annotated[str, typer.Option(help="Comma-separated manifest columns the site may share")],
    salt_file: Annotated[Optional[Path], typer.Option(help="Secret salt file (default: $SYNTHFM_SALT)")] = None,  # noqa: UP045
    split: Annotated[Optional[str], typer.Option(help="Send only this split")] = None,  # noqa: UP045
    age_cap: Annotated[float, typer.Option(help="Top-code ages above this")] = 90.0,
    keep_dicom: Annotated[bool, typer.Option(help="Also keep stripped DICOM files")] = False,
    keep_text: Annotated[str, typer.Option(help="Comma-separated DICOM free-text keywords allowed to stay "
                                                "(default: none)")] = "",
    share_text: Annotated[str, typer.Option(help="Comma-separated card fields to share: name, description, "
                                                 "license, citation (default: none)")] = "",
) -> None:
    """Strip EXIF/DICOM identifiers, pseudonymise ids, drop unshared columns: a card the hub accepts."""
    from synthfm.config import validate_config
    from synthfm.consortium.deidentify import DeidConfig, deidentify_card, load_salt

    def items(text: str) -> list[str]:
        return [c.strip() for c in text.split(",") if c.strip()]

    cfg = validate_config(DeidConfig, {"site": site, "shareable": items(shareable), "split": split,
                                       "age_cap": age_cap, "keep_dicom": keep_dicom, "keep_text": items(keep_text),
                                       "share_text": items(share_text)}, "command-line options")
    console.print(f"wrote de-identified card [bold]{deidentify_card(card, out, cfg, load_salt(salt_file))}[/]")


@hub_app.command("verify")
def verify_cmd(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder or .tar / .tar.gz")],
    keys: Annotated[Path, typer.Option(help="Folder of known site public keys (<site>.pub)")],
    min_k: Annotated[int, typer.Option(help="Smallest small-cell threshold accepted in a summary")] = 10,
    ledger: Annotated[Optional[Path], typer.Option(help="The hub's record of accepted bundles (JSON lines): "  # noqa: UP045
                                                        "refuse one another site sent, record this one")] = None,
) -> None:
    """Check a bundle (signature, checksums, schema, types, sizes; no pickle, link or image); exit 2 if rejected."""
    from synthfm.consortium.verify import (
        BundleRejected,
        VerifyConfig,
        append_ledger,
        check_replay,
        read_ledger,
        verify_bundle,
    )

    with tempfile.TemporaryDirectory(prefix="synthfm-verify-") as tmp:
        try:
            v = verify_bundle(bundle, keys, VerifyConfig(min_k=min_k), extract_to=Path(tmp) / "bundle")
            record = check_replay(v, bundle, read_ledger(ledger))
        except BundleRejected as err:
            err_console.print(f"[bold red]REJECTED[/] ({err.reason}): {escape(err.message)}", highlight=False,
                              soft_wrap=True)
            raise typer.Exit(2) from None
    if ledger is not None:
        append_ledger(ledger, record)
    for check in v.checks:
        console.print(f"[green]ok[/] {check}")
    console.print(f"[green]ACCEPTED[/] bundle from [bold]{v.site}[/], generator {v.info.generator.kind} "
                  f"{v.generator_hash[:16]}")


@hub_app.command("compose")
def compose_cmd(
    config: Annotated[Path, typer.Argument(help="Compose YAML (ComposeConfig: keys, bundles, real cards, target)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the composed pretraining card")],
) -> None:
    """Verify every bundle, generate per-site synthetic data to each summary (or target), merge real cards."""
    from synthfm.config import load_config
    from synthfm.consortium.compose import ComposeConfig, compose

    console.print(f"wrote composed card [bold]{compose(load_config(ComposeConfig, config), out)}[/]")


@hub_app.command("simulate")
def simulate_cmd(
    config: Annotated[Path, typer.Argument(help="Consortium YAML (e.g. configs/consortium.yaml)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder")],
) -> None:
    """Run a simulated consortium: phantom sites -> bundles -> hub -> composed set -> pretrain -> evaluation."""
    from synthfm.consortium.simulate import run_consortium

    summary = run_consortium(config, out)
    console.print_json(json.dumps(summary, default=str))


def main() -> None:
    """Run `app` with the project's error convention (bad input: one message, exit 2)."""
    try:
        app(standalone_mode=False)
    except SynthfmError as err:
        err_console.print(f"[bold red]error:[/] {err}", highlight=False)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
