"""Measurement 4, paraphrases: caption/paraphrase pairs retrieve each other (precision@1 and
MRR, both ways) under mean and SIF pooling, with and without common-component removal."""
from __future__ import annotations

import numpy as np

from bench.quality import TEXT_MODEL
from shared.encoding.text_encoder import TextEncoder, load_glove

PARAPHRASES: tuple[tuple[str, str], ...] = (
    ("a dog running on the beach", "a puppy plays by the sea"),
    ("a cat sleeping on a sofa", "a kitten naps on the couch"),
    ("a man riding a bicycle down the street", "a guy cycling along the road"),
    ("children playing football in the park", "kids kicking a ball on the grass"),
    ("a plate of pasta with tomato sauce", "spaghetti with marinara on a dish"),
    ("snow covered mountains at sunrise", "snowy peaks in the early morning light"),
    ("a red car parked outside a house", "a crimson automobile in front of a home"),
    ("an old woman reading a book", "an elderly lady with a novel"),
    ("a boat sailing on a calm lake", "a sailboat on still water"),
    ("a bird perched on a branch", "a small songbird sitting in a tree"),
    ("a busy city street at night", "crowded downtown road after dark"),
    ("a cup of coffee on a wooden table", "a mug of espresso on a desk"),
    ("a plane taking off from the airport", "an airliner departing the runway"),
    ("a horse grazing in a field", "a pony eating grass in a meadow"),
    ("a baby laughing in the bath", "an infant giggling in the tub"),
    ("fresh vegetables at a market stall", "produce for sale at the farmers market"),
    ("a train crossing a bridge", "a locomotive going over a viaduct"),
    ("people dancing at a wedding", "guests on the dance floor at the reception"),
    ("a man playing guitar on stage", "a musician performing with his guitar at a concert"),
    ("waves crashing on rocks", "the surf breaking against the cliffs"),
    ("a chef cooking in a restaurant kitchen", "a cook preparing food in a kitchen"),
    ("students sitting in a classroom", "pupils at their desks in school"),
    ("a birthday cake with candles", "a cake lit up for someone's birthday party"),
    ("a laptop on a desk next to a lamp", "a notebook computer beside a desk light"),
    ("a fisherman on a pier", "a man fishing from the dock"),
    ("a tiger walking through the jungle", "a big cat prowling in the rainforest"),
    ("a firefighter spraying water on a burning house", "a fireman putting out a house fire"),
    ("a couple walking hand in hand", "two lovers strolling together"),
    ("a bowl of soup and bread", "hot soup served with a loaf"),
    ("an empty road through the desert", "a deserted highway across the sand"),
    ("a doctor talking to a patient", "a physician examining someone in the hospital"),
    ("a kid eating ice cream", "a child with an ice cream cone"),
    ("rain on the window", "raindrops on the glass pane"),
    ("a soldier in uniform", "a military officer dressed for duty"),
    ("a church with a tall tower", "a cathedral steeple"),
    ("a woman jogging in the morning", "a lady running at dawn"),
    ("flowers in a vase", "a bouquet on the table"),
    ("a truck on the highway", "a lorry driving along the motorway"),
    ("skiers on a snowy slope", "people skiing down the mountain"),
    ("a cow in a barn", "cattle in the stable"),
)


def paraphrase_p1(encoder: TextEncoder) -> tuple[float, float]:
    """(precision@1, MRR): each side of a pair retrieves its partner among the other side."""
    a = np.stack([encoder.encode(x) for x, _ in PARAPHRASES])
    b = np.stack([encoder.encode(y) for _, y in PARAPHRASES])
    sims = a @ b.T
    hits, rr = [], []
    for s in (sims, sims.T):
        ranks = (s > s.diagonal()[:, None]).sum(axis=1)
        hits.extend(ranks == 0)
        rr.extend(1.0 / (ranks + 1))
    return float(np.mean(hits)), float(np.mean(rr))


def paraphrases() -> dict[str, dict[str, float]]:
    glove = load_glove(TEXT_MODEL)
    out = {}
    print(f"  {'pooling':<30}{'p@1':>7}{'MRR':>7}   ({len(PARAPHRASES)} pairs, both directions)")
    for weighting, ccr in (("mean", False), ("mean", True), ("sif", False), ("sif", True)):
        label = f"{weighting}{' + common-component removal' if ccr else ''}"
        p1, mrr = paraphrase_p1(TextEncoder(glove, weighting=weighting, remove_common_component=ccr))
        out[label] = {"p1": p1, "mrr": mrr}
        print(f"  {label:<30}{p1:>7.3f}{mrr:>7.3f}")
    return out
