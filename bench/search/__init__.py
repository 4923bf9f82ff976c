"""The search benchmark of the real stack, `python -m bench.search` (`__main__` says what it
measures), in one module per job: `queries` (the queries and scoring their answers), `collection`
(filling a collection and its memory), `floor` (the in-process index of the same vectors),
`timing` (searches through HTTP), `plan` and `run` (what a run measures, and running it) and
`tables` (the printed report).
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the workers set it, before torch loads
