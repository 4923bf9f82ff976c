"""The layouts of a shard's hnswlib graphs: which graphs a shard keeps over its items' blocks,
which of them a query searches, and the query kinds each layout calibrates.

Items are fused vectors `[image / sqrt2, text / sqrt2]` (`shared.encoding.fusion`); a shard with
an `image_dim` stores them as two blocks, "image" and "text" (its vector store keeps one part
per block), one without as one block, "vector". A query's block bits are those of its
non-zero blocks; a query with none counts as one with every block.

- "fused" (the default): a graph "fused" over the whole vectors of every item, which image
  and fused queries search, and a graph "text" over the text blocks of the items that have
  one, which text queries search. hnswlib's inner product over the whole vector is then
  the exact score of an image query (its text part is zeros) and of a fused query at any
  weights, so no query joins two graphs' candidates. A text query stays out of the fused
  graph: its neighbourhoods are made by the images.
- "blocks" (snapshots of format version 3 and before): one graph per block; a fused query
  searches both and joins their candidates (`shared.index.join`).
- "whole" (no image_dim): one graph over the whole vectors, queries of kind "vector".
"""
from __future__ import annotations

import numpy as np

from shared.index.graph import IMAGE, TEXT, Block, Graph

LAYOUTS = ("fused", "blocks", "whole")
DEFAULT_LAYOUT = "fused"
BOTH = IMAGE | TEXT
_KINDS = {IMAGE: "image", TEXT: "text", BOTH: "fused"}


def check(layout: str, image_dim: int) -> str:
    """The layout of a shard with `image_dim` (0: "whole" whatever is asked); ValueError for
    an unknown one, or "whole" with an image_dim."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if not image_dim:
        return "whole"
    if layout == "whole":
        raise ValueError(f"a shard with image_dim {image_dim} keeps blocks: layout 'fused' or 'blocks'")
    return layout


def blocks(dim: int, image_dim: int) -> list[Block]:
    """The blocks of a shard's items (and the parts of its vector store)."""
    if not image_dim:
        return [Block("vector", IMAGE, 0, dim)]
    return [Block("image", IMAGE, 0, image_dim), Block("text", TEXT, image_dim, dim)]


def graphs(layout: str, dim: int, image_dim: int) -> list[Block]:
    """The graphs a shard of `layout` keeps (name, the bits of the items each holds, its dims), in
    the order of its snapshot."""
    if layout == "fused":
        return [Block("fused", BOTH, 0, dim), Block("text", TEXT, image_dim, dim)]
    return blocks(dim, image_dim)


def projectable(layout: str) -> bool:
    """Whether a shard of `layout` may project its wide graphs (`shared.index.projection`): where
    a query searches one graph alone. A per-block fused search bounds what its lists missed by
    the graphs' own scores, which a projection would make approximate."""
    return layout != "blocks"


def kinds(layout: str) -> tuple[str, ...]:
    """The query kinds a shard of `layout` calibrates."""
    return ("vector",) if layout == "whole" else ("image", "text", "fused")


def bits_of(parts: list[Block], vector: np.ndarray) -> int:
    """The bits of the blocks of `vector` that are not all zeros."""
    return sum(part.bit for part in parts if part.part(vector).any())


def kind_of(layout: str, bits: int) -> str:
    """The kind of a query with block bits `bits`."""
    return "vector" if layout == "whole" else _KINDS[bits or BOTH]


def parts_of(parts: list[Block], kind: str) -> list[Block]:
    """The blocks a query of `kind` has."""
    return [part for part in parts if kind in ("fused", "vector") or part.name == kind]


def searched(graphs_: list[Graph], bits: int) -> list[Graph]:
    """The graphs a query with block bits `bits` searches: the smallest one that holds every item
    with any of them (its scores are then whole), else all of them (a per-block fused query)."""
    bits = bits or BOTH
    holding = [graph for graph in graphs_ if graph.bit & bits == bits]
    return [min(holding, key=lambda graph: graph.stop - graph.start)] if holding else graphs_
