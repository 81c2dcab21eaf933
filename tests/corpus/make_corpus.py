"""Write every bad-input case of the corpus into a folder: `python tests/corpus/make_corpus.py OUT [ID...]`.

Each case gets OUT/<id>/ holding its inputs and a case.json with the command to run, the exit code it must
give and the message fragment it must print. The corpus test builds the same cases in pytest's tmp folders.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus_lib import all_cases, write_case


def main(argv: list[str]) -> int:
    """Build the named cases (all when none are named) under argv[0]."""
    if not argv:
        print(__doc__)
        return 2
    out, wanted = Path(argv[0]), set(argv[1:])
    cases = [c for c in all_cases() if not wanted or c.id in wanted]
    for case in cases:
        write_case(case, out / case.id)
    print(f"wrote {len(cases)} case(s) under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
