"""Shared hypothesis strategies."""

from __future__ import annotations

from hypothesis import strategies as st

from fsm_voice.check import Letter, alphabet

letters = st.sampled_from(alphabet())
sequences = st.lists(letters, max_size=60)


def kwargs(letter: Letter) -> dict[str, object]:
    return letter.kwargs()
