"""The offline training text for ``tiny-lm``: the hand-written files in ``corpus/`` plus seeded templates.

The hand-written files (~37 KB) are too little for a model to learn spelling and grammar in a few minutes,
so ``generated_documents`` adds simple stories and rhyming verses from templates with a fixed seed. The
result is deterministic: the same seed gives byte-identical text on every machine.
Documents in the files are separated by a line holding only ``%``.
"""

from __future__ import annotations

import random
from importlib import resources

CORPUS_PACKAGE = "genqueue_exporter"
CORPUS_DIR = "corpus"
DOC_SEPARATOR = "%"


def handwritten_documents() -> list[str]:
    """Every document of every ``corpus/*.txt`` file, in file-name order."""
    root = resources.files(CORPUS_PACKAGE).joinpath(CORPUS_DIR)
    docs: list[str] = []
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".txt"):
            continue
        text = entry.read_text(encoding="utf-8")
        chunk: list[str] = []
        for line in text.splitlines():
            if line.strip() == DOC_SEPARATOR:
                if chunk:
                    docs.append("\n".join(chunk).strip())
                chunk = []
            else:
                chunk.append(line)
        if chunk:
            docs.append("\n".join(chunk).strip())
    return [d for d in docs if d]


# --- template material -------------------------------------------------------------------------------

_NAMES = [
    "Mia", "Tom", "Lina", "Omar", "Ella", "Jack", "Nora", "Sam", "Ruby", "Max", "Ivy", "Leo", "Anna",
    "Finn", "Zara", "Ben", "Lucy", "Kai", "Maya", "Hugo", "Rosa", "Eli", "June", "Theo", "Ada", "Nico",
]
_CREATURES = [
    ("rabbit", "she"), ("fox", "he"), ("bear", "he"), ("mouse", "she"), ("owl", "she"), ("duck", "he"),
    ("cat", "she"), ("dog", "he"), ("frog", "he"), ("goat", "she"), ("hedgehog", "he"), ("squirrel", "she"),
    ("turtle", "he"), ("sparrow", "she"), ("badger", "he"), ("deer", "she"), ("girl", "she"), ("boy", "he"),
]
_ADJS = ["little", "curious", "brave", "shy", "clever", "kind", "sleepy", "cheerful", "young", "gentle"]
_PLACES = [
    "in a hole under an old oak tree", "by a quiet river", "at the edge of a big forest", "on a windy hill",
    "in a small house near the sea", "in a village of red roofs", "behind a farm with a blue gate",
    "in a garden full of flowers", "near a pond with tall reeds", "at the foot of a snowy mountain",
]
_LIKES = [
    "collect shiny stones", "watch the clouds", "sing to the birds", "pick berries", "read old books",
    "splash in puddles", "count the stars", "bake little cakes", "build towers of sticks", "draw pictures",
    "play by the water", "look for four-leaf clovers",
]
_PROBLEMS = [
    ("lost a favourite blue ball", "found the ball stuck in a bush"),
    ("could not find the way home", "followed the smell of supper all the way home"),
    ("was too afraid to cross the bridge", "crossed the bridge one careful step at a time"),
    ("dropped a basket of apples into the stream", "fished the apples out with a long stick"),
    ("wanted to see the top of the hill", "climbed all the way to the top and saw the whole valley"),
    ("had no friends to play with", "met a new friend who liked the same games"),
    ("broke a jar of honey", "cleaned up the mess and made a new jar of jam"),
    ("heard a strange noise in the night", "found that the noise was only the wind in the chimney"),
    ("forgot a friend's birthday", "made a card and a cake and said sorry"),
    ("got stuck in the mud", "pulled free with a little help and a lot of laughing"),
    ("could not sleep because of the storm", "listened to the rain until it sounded like a song"),
    ("saw that the garden was dry", "carried water from the well for every plant"),
]
_HELPERS = [
    "a wise old owl", "a friendly frog", "a tall heron", "a busy beaver", "an old tortoise", "a small robin",
    "a kind grandmother", "a laughing fisherman", "a sleepy cat", "a gentle horse",
]
_ADVICE = [
    "Do not worry. Every problem is smaller when two friends look at it.",
    "Take a deep breath and try again.",
    "Slow down and look around you. The answer is often close.",
    "Ask for help. There is no shame in it.",
    "Be brave, but be careful too.",
    "Start with the first small step.",
    "Listen, and the world will tell you.",
]
_FEELINGS = ["sad", "worried", "scared", "cross", "lonely", "tired", "upset"]
_ENDINGS = [
    "always remembered that a friend can make any day better",
    "was never quite so afraid again",
    "shared everything with the other animals",
    "told the story to everyone who would listen",
    "smiled every time the sun went down",
    "learned that patience is a kind of magic",
    "went to bed happy and slept until morning",
]
_TIMES = ["morning", "afternoon", "evening", "rainy day", "windy day", "snowy morning", "summer night"]

# Verse endings: line A ends on a noun, line B is a clause that rhymes with it. Whole clauses (not single
# rhyme words) keep every generated line grammatical.
_RHYMES: dict[str, list[str]] = {
    "night": ["and every star is bright", "we hold the candle light", "the snow is soft and white"],
    "sea": ["the gulls are flying free", "the wind comes home to me"],
    "day": ["the clouds have gone away", "the children run and play"],
    "sky": ["the swallows learn to fly", "we watch the geese go by"],
    "hill": ["the evening air is still", "the water turns the mill"],
    "moon": ["the frogs will sing their tune", "and summer comes so soon"],
    "rain": ["the flowers wake again", "it taps upon the pane"],
    "snow": ["the fire is warm and low", "the rivers hardly flow"],
    "sun": ["the day has just begun", "the foxes laugh and run"],
    "tree": ["a robin sings to me", "as happy as can be"],
    "stone": ["a lizard sleeps alone", "the moss has overgrown"],
    "star": ["the road is long and far", "I wonder where you are"],
}
_LINE_A = [
    "The {n} is quiet under the {w},",
    "I walk beside the {n} beneath the {w},",
    "A {n} is singing to the {w},",
    "We sit together by the {n} and the {w},",
    "The {n} looks up and sees the {w},",
]
_NOUNS = ["river", "garden", "old cat", "wind", "little boat", "forest", "robin", "lantern", "meadow"]


def _story(rng: random.Random) -> str:
    name = rng.choice(_NAMES)
    creature, pron = rng.choice(_CREATURES)
    poss = "her" if pron == "she" else "his"
    problem, fix = rng.choice(_PROBLEMS)
    helper = rng.choice(_HELPERS)
    opening = rng.choice(
        [
            f"Once upon a time, there was a {rng.choice(_ADJS)} {creature} named {name} who lived {rng.choice(_PLACES)}.",
            f"There was once a {rng.choice(_ADJS)} {creature} called {name}. {pron.capitalize()} lived {rng.choice(_PLACES)}.",
            f"Long ago, {rng.choice(_PLACES)}, lived a {rng.choice(_ADJS)} {creature} named {name}.",
        ]
    )
    parts = [
        opening,
        f"Every day {name} liked to {rng.choice(_LIKES)}.",
        f"One {rng.choice(_TIMES)}, {name} {problem}.",
        f"{pron.capitalize()} felt {rng.choice(_FEELINGS)} and sat down under a tree.",
        f"Then {helper} came along and said, \"{rng.choice(_ADVICE)}\"",
        f"So {name} {fix}.",
        f"{name} thanked the {helper.split(' ', 1)[1]} with {poss} whole heart.",
        f"From that day on, {name} {rng.choice(_ENDINGS)}.",
    ]
    if rng.random() < 0.3:
        parts.insert(2, f"{pron.capitalize()} also liked to {rng.choice(_LIKES)}, but only when it was sunny.")
    return " ".join(parts)


def _verse(rng: random.Random) -> str:
    lines: list[str] = []
    for _ in range(rng.choice([1, 2, 2, 3])):
        word = rng.choice(sorted(_RHYMES))
        lines.append(rng.choice(_LINE_A).format(n=rng.choice(_NOUNS), w=word))
        lines.append(rng.choice(_RHYMES[word]) + rng.choice([".", ".", "!"]))
    return "\n".join(lines)


def generated_documents(n_stories: int, n_verses: int, seed: int = 1234) -> list[str]:
    rng = random.Random(seed)
    docs = [_story(rng) for _ in range(n_stories)] + [_verse(rng) for _ in range(n_verses)]
    rng.shuffle(docs)
    return docs


def corpus_documents(seed: int = 1234, n_stories: int = 110, n_verses: int = 90) -> list[str]:
    """All documents, hand-written first then generated: ~100 KB with the defaults.

    Roughly a third is hand-written; with many more templates the model would learn only the templates.
    """
    return handwritten_documents() + generated_documents(n_stories, n_verses, seed)
