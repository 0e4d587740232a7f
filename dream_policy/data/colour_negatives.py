"""Colour-swapped instructions: the negatives of the colour-contrast loss.

An instruction that names exactly one block colour ("lift the red block") gets the same sentence with each
other colour ("... the blue block", "... the pink block"). Trained to predict the demonstration's noise
better from the true sentence than from a swapped one, the policy has to find the named block in the
images; from the plain action loss it barely does (bench/RESULTS.md, "the policy does not read the
block's colour"). Pure functions; the data set embeds the sentences.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

COLOURS = ("red", "blue", "pink")
_COLOUR = re.compile(r"\b(red|blue|pink)\b")


def swapped_colours(sentence: str) -> tuple[str, ...]:
    """The sentence with its one block colour replaced by each other colour, in ``COLOURS`` order after
    it; () unless the sentence names exactly one colour (once)."""
    found = _COLOUR.findall(sentence)
    if len(found) != 1:
        return ()
    start = COLOURS.index(found[0])
    others = [COLOURS[(start + k) % len(COLOURS)] for k in range(1, len(COLOURS))]
    return tuple(_COLOUR.sub(colour, sentence) for colour in others)


def negative_table(sentences: Sequence[str]) -> tuple[list[str], list[int]]:
    """For annotations ``sentences``: the distinct negative sentences to embed, and per annotation the index
    of its first negative in that list (its ``len(COLOURS) - 1`` negatives follow it), or -1 for none."""
    negatives: list[str] = []
    first: list[int] = []
    for sentence in sentences:
        swapped = swapped_colours(sentence)
        first.append(len(negatives) if swapped else -1)
        negatives.extend(swapped)
    return negatives, first
