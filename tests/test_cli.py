"""The CLI: bad input exits 2 with one message naming the problem and the fix, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthfm.cli import main


def run(args: list[str], capsys) -> tuple[int, str, str]:
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_version(capsys) -> None:
    code, out, _ = run(["version"], capsys)
    assert code == 0 and out.strip() == "0.1.0"


def test_inspect_ok(make_card, capsys) -> None:
    code, out, _ = run(["data", "inspect", str(make_card(n=6))], capsys)
    assert code == 0 and "card OK" in out and "tiny" in out


def test_bad_card_exits_2_without_traceback(make_card, capsys) -> None:
    code, _, err = run(["data", "inspect", str(make_card(card={"modality": "mri"}))], capsys)
    assert code == 2 and "bad value for 'modality'" in err and "fix:" in err and "Traceback" not in err


def test_debug_shows_traceback(make_card) -> None:
    from synthfm.errors import SynthfmError
    with pytest.raises(SynthfmError):
        main(["--debug", "data", "inspect", str(make_card(card={"modality": "mri"}))])


def test_inspect_reports_corrupt_image_and_exits_2(make_card, capsys) -> None:
    card = make_card(n=5)
    (card / "img/001.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    code, out, _ = run(["data", "inspect", str(card), "--sample", "0"], capsys)
    assert code == 2 and "img/001.png" in out and "error" in out


def test_inspect_warns_on_grayscale(make_card, capsys) -> None:
    from PIL import Image
    card = make_card(n=3)
    Image.new("L", (16, 16), 50).save(card / "img/002.png")
    code, out, _ = run(["data", "inspect", str(card), "--sample", "0"], capsys)
    assert code == 0 and "grayscale image where RGB is expected" in out


def test_missing_file_exit_2(make_card, capsys) -> None:
    card = make_card(n=3)
    (card / "img/000.png").unlink()
    code, _, err = run(["data", "inspect", str(card)], capsys)
    assert code == 2 and "img/000.png" in err


def test_prepare_split_inspect(make_card, tmp_path: Path, capsys) -> None:
    card = make_card(n=20)
    assert run(["data", "split", str(card), "-o", str(tmp_path / "s"), "--ratios", "0.6,0.2,0.2"], capsys)[0] == 0
    assert run(["data", "prepare", str(tmp_path / "s"), "-o", str(tmp_path / "p"), "--size", "16",
                "--format", "shards", "--shard-size", "4"], capsys)[0] == 0
    code, out, _ = run(["data", "inspect", str(tmp_path / "p")], capsys)
    assert code == 0 and "train" in out and "test" in out


def test_bad_option_value_exit_2(make_card, tmp_path: Path, capsys) -> None:
    code, _, err = run(["data", "prepare", str(make_card()), "-o", str(tmp_path / "p"), "--format", "zip"], capsys)
    assert code == 2 and "'format'" in err
    args = ["data", "split", str(make_card(name="b")), "-o", str(tmp_path / "q"), "--ratios", "a,b"]
    code, _, err = run(args, capsys)
    assert code == 2 and "--ratios" in err


def test_every_stage_has_its_command_group(capsys) -> None:
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and "not yet available" not in out
    for group in ("data", "synth", "quality", "pretrain", "adapt", "evaluate", "analyze", "site", "hub", "run",
                  "report"):
        assert f" {group} " in out


def test_pretrain_curriculum_phantom_then_real(tmp_path: Path, capsys, cards_dir: Path, shared_data: Path) -> None:
    import json

    cfg = tmp_path / "pt.yaml"
    cfg.write_text(
        "recipe: mae_vit_tiny_demo\nbatch_size: 8\nlog_every: 1\ncheckpoint_every: 100\nstages:\n"
        "  - {name: phantom, sources: [{source: phantom, n: 16}], steps: 2}\n"
        f"  - {{name: real, sources: [{{source: '{cards_dir / 'retinamnist.yaml'}', split: train}}], steps: 2}}\n")
    code, out, _ = run(["pretrain", "run", str(cfg), "-o", str(tmp_path / "run")], capsys)
    assert code == 0 and "pretraining finished" in out
    records = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records if "loss" in r] == ["phantom", "phantom", "real", "real"]
    assert (tmp_path / "run/stages/phantom/encoder").is_dir() and (tmp_path / "run/encoder").is_dir()
    code, out, _ = run(["pretrain", "export", str(tmp_path / "run")], capsys)
    assert code == 0 and (tmp_path / "run/export").is_dir()


def test_adapt_evaluate_compare(tmp_path: Path, capsys) -> None:
    from synthfm.synth.writer import PhantomConfig, render_phantom

    card = render_phantom(tmp_path / "card", PhantomConfig(n=48, size=32, ratios=(0.5, 0.25, 0.25)))
    cfg = tmp_path / "adapt.yaml"
    cfg.write_text(f"card: {card}\ntask: cataract\nencoder: 'random:vit_tiny_p8_64'\npolicy: linear_probe\n"
                   "backbone_overrides: {depth: 1, img_size: 32, embed_dim: 48, num_heads: 3}\n"
                   "epochs: 1\nwarmup_epochs: 0\nseeds: [0, 1]\nlabel_fractions: [1.0]\n")
    for name in ("a", "b"):
        code, out, _ = run(["adapt", str(cfg), "-o", str(tmp_path / name)], capsys)
        assert code == 0 and "auroc" in out.lower()
    code, out, _ = run(["evaluate", str(tmp_path / "a")], capsys)
    assert code == 0 and "test" in out
    code, out, _ = run(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c.csv")], capsys)
    assert code == 0 and (tmp_path / "c.csv").is_file()


def test_disk_full_exits_2_naming_the_file(make_card, tmp_path: Path, capsys, monkeypatch) -> None:
    import errno

    import synthfm.data.splits as splits

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "manifest.parquet"))

    monkeypatch.setattr(splits, "_write", full)
    code, out, err = run(["data", "split", str(make_card(n=12)), "-o", str(tmp_path / "out")], capsys)
    assert code == 2 and "Traceback" not in out + err
    assert f"{tmp_path / 'out' / 'manifest.parquet'}: No space left on device" in " ".join(err.split())


def test_usage_mistakes_exit_2_without_a_traceback(make_card, capsys) -> None:
    code, out, err = run(["data", "inspect", str(make_card(n=4)), "--sampel", "3"], capsys)
    assert code == 2 and "--sampel" in err and "Traceback" not in out + err


def test_an_explicit_option_overrides_the_yaml_even_at_its_default(tmp_path: Path, capsys) -> None:
    """`--n 200` (the option's default) still beats `n: 12` in the YAML; options not typed leave the YAML alone."""
    import pandas as pd

    cfg = tmp_path / "phantom.yaml"
    cfg.write_text("n: 12\nsize: 16\nseed: 3\n")
    code, _, err = run(["synth", "phantom", "-o", str(tmp_path / "a"), "--config", str(cfg), "--n", "200"], capsys)
    assert code == 0, err
    assert len(pd.read_parquet(tmp_path / "a" / "manifest.parquet")) == 200
    code, _, err = run(["synth", "phantom", "-o", str(tmp_path / "b"), "--config", str(cfg), "--size", "24"], capsys)
    assert code == 0, err
    assert len(pd.read_parquet(tmp_path / "b" / "manifest.parquet")) == 12  # n from the YAML, size from the option


def _commands(group, path=()):
    """(path, click command) of every leaf command under a click group (duck-typed: Typer may bring its own
    click)."""
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


def test_cli_only_mounts_what_the_stages_own_and_out_is_always_o() -> None:
    """cli.py holds the root app (its callback and `version`); every other command is defined in a stage's
    commands.py. Every `--out` option also answers to `-o`."""
    import ast

    import typer

    from synthfm import cli

    tree = ast.parse(Path(cli.__file__).read_text(encoding="utf-8"))
    assert [f.name for f in tree.body if isinstance(f, ast.FunctionDef) and f.decorator_list] == ["_root", "version"]
    leaves = dict(_commands(typer.main.get_command(cli.app)))
    assert len(leaves) > 25
    homes = {path: cmd.callback.__module__ for path, cmd in leaves.items() if path != ("version",)}
    assert all(m.endswith(".commands") or m == "synthfm.plan" for m in homes.values()), homes
    no_short = [" ".join(path) for path, cmd in leaves.items() for p in cmd.params
                if "--out" in getattr(p, "opts", []) and "-o" not in p.opts]
    assert not no_short, f"--out without -o: {no_short}"
