"""Small English corpora for the continuous-training tests: two domains with their own words."""

import random

PYTHON = ("tuple list dict set string module function class method attribute exception iterator "
          "generator decorator keyword argument value object index slice").split()
BIRDS = ("heron sparrow falcon owl swallow wren kestrel robin starling finch plover curlew lapwing "
         "egret osprey").split()
PLACES = ("marsh meadow estuary hedgerow moorland coast woodland reed bed shingle bank").split()


def documents(words: list[str], n: int, seed: int) -> list[str]:
    """n documents of a few sentences of English around `words` (distinct enough that none is a
    near duplicate of another)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        sentences = [f"The {rng.choice(words)} is {rng.choice(['often', 'rarely', 'always', 'seldom'])} "
                     f"seen with a {rng.choice(words)} in the {rng.choice(words)}, and it "
                     f"{rng.choice(['returns', 'stays', 'waits', 'moves'])} {rng.randint(2, 99)} times."
                     for _ in range(rng.randint(3, 6))]
        out.append(" ".join(sentences))
    return out
