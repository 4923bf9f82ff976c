"""`python -m mmsearch.cli`: the `mmsearch` command."""
from mmsearch.cli import main

main()
