"""`python -m synthfm` (also what `accelerate launch -m synthfm` runs)."""

from synthfm.cli import main

main()
