"""Small English corpora for the continuous-training tests: two domains with their own words."""

import random
import sysconfig
from pathlib import Path

from lm_pipeline.data.sources.python_docs import module_docstrings

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

NATURE = BIRDS + PLACES + ("feather wing nest egg song winter summer spring autumn river lake pond tree "
                           "branch twig leaf seed berry insect worm beetle moth dawn dusk flock pair chick "
                           "juvenile adult plumage crest beak talon tail call alarm roost perch glide soar "
                           "dive hover wade forage breed moult").split()


def word_salad(words: list[str], n: int, seed: int) -> list[str]:
    """n documents of sentences of words drawn at random (one in seven a common English word, as
    in prose): a domain with its own vocabulary and no templates, so a model trained elsewhere finds
    it hard (templated text is easy for any model)."""
    rng = random.Random(seed)
    common = "the a and of in is to it on with".split()

    def word() -> str:
        return rng.choice(common) if rng.random() < 0.15 else rng.choice(words)

    return [" ".join(" ".join(word() for _ in range(rng.randint(5, 12))).capitalize() + rng.choice(".!?;")
                     for _ in range(rng.randint(3, 7))) for _ in range(n)]

SKY = ("comet nebula quasar pulsar galaxy orbit eclipse meteor asteroid telescope zenith nadir equinox "
       "solstice crater corona photon spectrum redshift parallax ecliptic perihelion aphelion magnitude "
       "constellation supernova dwarf giant binary cluster halo jet accretion horizon lens plasma flare "
       "sunspot aurora moonrise twilight azimuth declination ascension epoch transit occultation").split()


def stdlib_docstrings_left_out() -> list[str]:
    """Docstrings of the standard library that the python-docs corpus leaves out (idlelib): the
    same kind of text as the corpus, none of it in it."""
    idlelib = Path(sysconfig.get_paths()["stdlib"]) / "idlelib"
    texts = ["\n\n".join(module_docstrings(path)) for path in sorted(idlelib.glob("*.py"))]
    return [t for t in texts if len(t) > 200]
