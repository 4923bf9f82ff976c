"""Regenerates shared/encoding/data/imagenet_hypernyms.tsv from WordNet 3.0 (Debian `wordnet-base`).

For each ImageNet-1k class (timm's synset list gives the WordNet noun offsets in class order),
the lemmas of its hypernym chain, nearest first: `class_id<TAB>wnid<TAB>level1|level2|...`, each
level a comma-separated lemma list. ConSE uses them so that "bird" reaches a goldfinch.

    apt-get download wordnet-base && dpkg-deb -x wordnet-base_*.deb /tmp/wn
    python bench/build_hypernyms.py /tmp/wn/usr/share/wordnet/data.noun
"""
from __future__ import annotations

import sys
from pathlib import Path

LEVELS = 8
OUT = Path(__file__).resolve().parent.parent / "shared" / "encoding" / "data" / "imagenet_hypernyms.tsv"


def parse_nouns(path: Path) -> dict[str, tuple[list[str], list[str]]]:
    """offset -> (lemmas, hypernym offsets) for every noun synset."""
    synsets = {}
    for line in path.read_text(encoding="latin-1").splitlines():
        if line.startswith(" "):
            continue  # licence header
        fields = line.split(" | ")[0].split()
        offset, words = fields[0], int(fields[3], 16)
        lemmas = [fields[4 + 2 * i].replace("_", " ") for i in range(words)]
        rest = fields[4 + 2 * words:]
        pointers = int(rest[0])
        hypernyms = [rest[1 + 4 * i + 1] for i in range(pointers) if rest[1 + 4 * i] in ("@", "@i")]
        synsets[offset] = (lemmas, hypernyms)
    return synsets


def chain(synsets: dict[str, tuple[list[str], list[str]]], offset: str) -> list[list[str]]:
    """Lemmas per level up the first-hypernym path."""
    levels = []
    current = synsets[offset][1]
    while current and len(levels) < LEVELS:
        lemmas, parents = synsets[current[0]]
        levels.append(lemmas)
        current = parents
    return levels


def main(data_noun: str) -> None:
    from timm.data import ImageNetInfo

    synsets = parse_nouns(Path(data_noun))
    lines = []
    for class_id, wnid in enumerate(ImageNetInfo().label_names()):
        levels = chain(synsets, wnid[1:])
        lines.append(f"{class_id}\t{wnid}\t" + "|".join(",".join(level) for level in levels))
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} classes to {OUT}")


if __name__ == "__main__":
    main(sys.argv[1])
