"""A synthetic bilingual corpus for the offline demo: a "source" and a "target" language.

Both languages express the same small world (people and animals doing things to objects, somewhere, sometime)
from one shared meaning generator, so they are parallel, but they differ in what makes language adaptation hard:

- **vocabulary**: every word has an unrelated counterpart;
- **script**: the source is written in Latin letters, the target in Cyrillic (two UTF-8 bytes per letter);
- **word order**: the source is subject–verb–object with adjectives before nouns and prepositions; the target is
  subject–object–verb with adjectives after nouns, postpositions, and the time phrase first.

The text is entirely made up (no real language, no copied text); it is generated deterministically from a seed.
It also produces an instruction task in the source language ("say: X" → "X", "plural: X" → "Xs") for the
SFT-and-merge part of the demo, and the same prompts in the target language to test transfer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# Source vocabulary (an English-like toy language) and its target counterparts (invented Cyrillic words).
NOUNS = {
    "cat": "мурка",
    "dog": "шаро",
    "farmer": "орач",
    "king": "владар",
    "sister": "сестрица",
    "bird": "птица",
    "child": "чедо",
    "horse": "кобила",
    "fish": "рибка",
    "apple": "ябълко",
    "house": "къщурка",
    "river": "рекичка",
    "bread": "питка",
    "stone": "камъче",
    "tree": "дървце",
    "boat": "лодчица",
    "road": "друмче",
    "song": "песенца",
    "window": "прозорче",
    "garden": "градинка",
    "letter": "писмце",
    "friend": "другарче",
    "teacher": "учител",
    "wolf": "вълчо",
}
VERBS = {
    "sees": "гледа",
    "eats": "хапва",
    "finds": "намира",
    "likes": "обича",
    "carries": "носи",
    "paints": "рисува",
    "hears": "слуша",
    "builds": "гради",
    "sells": "продава",
    "follows": "следва",
    "washes": "мие",
    "opens": "отваря",
}
ADJECTIVES = {
    "red": "червен",
    "old": "стар",
    "small": "мъничък",
    "happy": "весел",
    "green": "зелен",
    "quiet": "тих",
    "big": "голям",
    "bright": "светъл",
    "cold": "студен",
    "young": "млад",
}
PLACES = {
    "near the river": "рекичка край",
    "in the garden": "градинка във",
    "on the road": "друмче по",
    "under the tree": "дървце под",
    "behind the house": "къщурка зад",
    "at the market": "пазар на",
}
TIMES = {
    "in the morning": "сутринта",
    "at night": "нощем",
    "every day": "всеки ден",
    "in winter": "зимата",
    "after the rain": "след дъжда",
    "today": "днес",
}
CONNECT = {"and then": "и после", "because": "защото", "while": "докато"}


SOURCE_SYLLABLES = "ba ko ri ten lo mi sar du fen pol gri vu nel tam bro sil".split()
TARGET_SYLLABLES = "бо ка ри зе лу мо щи ти въ жа пе ня гу до си чо".split()


def _coin_words(lexicon: dict[str, str], n: int, seed: int, *, source_suffix: str = "") -> None:
    """Add ``n`` invented word pairs to ``lexicon`` (deterministic): the small core vocabulary above makes both
    languages too easy to learn; a few hundred coined words give them a realistic long tail."""
    rng = random.Random(seed)
    taken_src, taken_tgt = set(lexicon), set(lexicon.values())
    while n:
        k = rng.choice((2, 2, 3))
        src = "".join(rng.choice(SOURCE_SYLLABLES) for _ in range(k)) + source_suffix
        tgt = "".join(rng.choice(TARGET_SYLLABLES) for _ in range(k))
        if src in taken_src or tgt in taken_tgt:
            continue
        lexicon[src] = tgt
        taken_src.add(src)
        taken_tgt.add(tgt)
        n -= 1


# The instruction task uses only the core words (short, frequent, learnable by a tiny model).
CORE_NOUNS, CORE_ADJECTIVES = dict(NOUNS), dict(ADJECTIVES)
_coin_words(NOUNS, 250, seed=1)
_coin_words(VERBS, 60, seed=2, source_suffix="s")
_coin_words(ADJECTIVES, 60, seed=3)


@dataclass(frozen=True)
class Clause:
    """One meaning: who does what to what, optionally with adjectives, a place and a time."""

    subject: str
    subject_adj: str | None
    verb: str
    obj: str
    obj_adj: str | None
    place: str | None
    time: str | None


def sample_clause(rng: random.Random) -> Clause:
    def maybe(d: dict, p: float) -> str | None:
        return rng.choice(list(d)) if rng.random() < p else None

    return Clause(
        subject=rng.choice(list(NOUNS)),
        subject_adj=maybe(ADJECTIVES, 0.35),
        verb=rng.choice(list(VERBS)),
        obj=rng.choice(list(NOUNS)),
        obj_adj=maybe(ADJECTIVES, 0.45),
        place=maybe(PLACES, 0.4),
        time=maybe(TIMES, 0.35),
    )


def render_source(c: Clause) -> str:
    """SVO, adjective before noun, place and time at the end: "the old cat sees a red apple near the river"."""
    subj = " ".join(filter(None, ["the", c.subject_adj, c.subject]))
    obj = " ".join(filter(None, ["a", c.obj_adj, c.obj]))
    return " ".join(filter(None, [subj, c.verb, obj, c.place, c.time]))


def render_target(c: Clause) -> str:
    """SOV, adjective after noun, postpositions, time first: "сутринта мурка стар ябълко червен рекичка край гледа"."""
    subj = " ".join(filter(None, [NOUNS[c.subject], ADJECTIVES.get(c.subject_adj or "")]))
    obj = " ".join(filter(None, [NOUNS[c.obj], ADJECTIVES.get(c.obj_adj or "")]))
    return " ".join(
        filter(None, [TIMES.get(c.time or ""), subj, obj, PLACES.get(c.place or ""), VERBS[c.verb]])
    )


def sentence_pair(rng: random.Random) -> tuple[str, str]:
    """One or two clauses joined by a connective, in both languages, with end punctuation."""
    clauses = [sample_clause(rng)]
    conn = None
    if rng.random() < 0.3:
        conn = rng.choice(list(CONNECT))
        clauses.append(sample_clause(rng))
    src = render_source(clauses[0])
    tgt = render_target(clauses[0])
    if conn:
        src += f" {conn} " + render_source(clauses[1])
        tgt += f" {CONNECT[conn]} " + render_target(clauses[1])
    return src[0].upper() + src[1:] + ".", tgt[0].upper() + tgt[1:] + "."


def documents(n_docs: int, seed: int, *, sentences: tuple[int, int] = (3, 8)) -> tuple[list[str], list[str]]:
    """``n_docs`` parallel documents (one line each) in the source and the target language."""
    rng = random.Random(seed)
    src_docs, tgt_docs = [], []
    for _ in range(n_docs):
        pairs = [sentence_pair(rng) for _ in range(rng.randint(*sentences))]
        src_docs.append(" ".join(p[0] for p in pairs))
        tgt_docs.append(" ".join(p[1] for p in pairs))
    return src_docs, tgt_docs


def plural(noun: str) -> str:
    return noun + ("es" if noun.endswith(("sh", "ch", "s")) else "s")


def instruction_examples(n: int, seed: int, *, language: str = "source") -> list[dict]:
    """The demo's instruction task: ``say: X`` → ``X`` and ``plural: X`` → its plural, as prompt/response pairs.

    In the target language the command is ``кажи:`` ("say:") with target-language words, so these prompts test
    whether instruction following transfers to the new language through merging.
    """
    rng = random.Random(seed)
    out = []
    words = list(CORE_NOUNS) + list(CORE_ADJECTIVES)
    for _ in range(n):
        if language == "source":
            w = rng.choice(words)
            if rng.random() < 0.5 or w in CORE_ADJECTIVES:
                out.append({"prompt": f"say: {w}", "response": w})
            else:
                out.append({"prompt": f"plural: {w}", "response": plural(w)})
        else:
            w = rng.choice(list(CORE_NOUNS.values()) + list(CORE_ADJECTIVES.values()))
            out.append({"prompt": f"кажи: {w}", "response": w})
    return out
