"""The import graph is layered: shared layers at the bottom, stage packages above them, pipeline and CLI on top.

Every `import synthfm.X...` / `from synthfm.X... import` in src/ (at any depth, including imports inside
functions) is an arrow from the importing package to X. The rule is the one docs/architecture.md states.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "synthfm"

# Rank of each top-level package or module: an arrow may only point to a lower rank, or between stages along
# STAGE_ARROWS.
RANK = {"errors": 0, "config": 1, "io": 1, "locks": 1, "hardware": 1, "progress": 1, "runs": 2, "jobs": 2, "data": 3,
        "models": 4, "train": 4.5, "evaluate": 5, "synth": 5, "pretrain": 5, "adapt": 5, "quality": 5, "analyze": 5,
        "report": 5, "consortium": 5, "pipeline": 6, "plan_flops": 6, "plan": 7, "cli": 8, "__main__": 9}
STAGES = {name for name, rank in RANK.items() if rank == 5}
# Which stage may import which: a stage reads the results of those before it in the pipeline.
STAGE_ARROWS = {
    "evaluate": set(),
    "report": {"evaluate", "analyze"},
    "synth": set(),
    "pretrain": {"synth"},
    "adapt": {"evaluate", "pretrain"},
    "quality": {"evaluate"},
    "analyze": {"adapt", "evaluate", "synth"},
    "consortium": {"adapt", "pretrain", "synth"},
}
# Package cycles not yet broken. Each must still exist: when one is broken, remove it here so it cannot come
# back.
PENDING_CYCLES: set[frozenset[str]] = set()


def _package(path: Path) -> str:
    """The top-level package (or module) a source file belongs to."""
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imported(node: ast.AST) -> list[str]:
    """The synthfm top-level packages an import statement names."""
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        names = [node.module]
    elif isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        return []
    return [n.split(".")[1] for n in names if n.startswith("synthfm.")]


def import_arrows() -> dict[tuple[str, str], list[str]]:
    """(importer, imported) package pairs across packages, with the files that hold them."""
    arrows: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(SRC.rglob("*.py")):
        pkg = _package(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            for target in _imported(node):
                if target != pkg:
                    arrows[(pkg, target)].append(str(path.relative_to(SRC)))
    return arrows


def test_every_package_has_a_rank() -> None:
    """A new top-level package or module is placed in the layers on purpose."""
    found = {_package(p) for p in SRC.rglob("*.py")} - {"__init__"}
    assert found <= set(RANK), f"give these a rank in RANK: {sorted(found - set(RANK))}"


def test_arrows_point_down_or_along_the_stage_order() -> None:
    """No package imports a higher layer; a stage imports another stage only as STAGE_ARROWS allows."""
    bad = []
    for (src, dst), files in import_arrows().items():
        ok = dst in STAGE_ARROWS[src] if src in STAGES and dst in STAGES else RANK[dst] < RANK[src]
        if not ok:
            bad.append(f"{src} -> {dst} ({', '.join(sorted(set(files)))})")
    assert not bad, "arrows against the layers:\n" + "\n".join(bad)


def test_stage_arrows_are_acyclic_apart_from_the_pending_cycle() -> None:
    """The stage order is a DAG once the pending cycles are set aside, and each pending cycle is still real."""
    arrows = {(s, d) for s, targets in STAGE_ARROWS.items() for d in targets}
    pending = {tuple(sorted(c)) for c in PENDING_CYCLES}
    used = set(import_arrows())
    for a, b in pending:
        assert (a, b) in used and (b, a) in used, f"{a} <-> {b} is broken: remove it from PENDING_CYCLES"
    graph = {(s, d) for s, d in arrows if tuple(sorted((s, d))) not in pending}
    order, left = [], set(STAGES)
    while left:
        free = sorted(n for n in left if not any(s == n and d in left for s, d in graph))
        assert free, f"stage arrows form a cycle among {sorted(left)}"
        order += free
        left -= set(free)


def test_stage_arrows_in_use() -> None:
    """Every allowed stage arrow is used (the rule describes the code, not a wish)."""
    used = set(import_arrows())
    unused = [(s, d) for s, targets in STAGE_ARROWS.items() for d in targets if (s, d) not in used]
    assert not unused, f"allowed but unused stage arrows (drop them from STAGE_ARROWS): {unused}"
