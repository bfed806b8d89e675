"""`language`: language consistency (DeepSeek-R1 §2.3.3), as the share of letters in a script.

score = (letters of the completion in the target script) / (all letters of the completion),
after NFKC normalisation. A letter is a character of Unicode category L*; digits, punctuation,
symbols and spaces are not counted. A completion without any letter (empty, whitespace, only
digits) scores 0.0. The target is the `target` arg, else row["language"]: a script name or a
language code mapped to its script(s).
"""

from __future__ import annotations

import unicodedata

from grpokit.rewards.base import Sample
from grpokit.rewards.item import ItemReward, describe_row
from grpokit.rewards.registry import register

# Script of a letter = the first word of its Unicode name, except the CJK ideographs.
SCRIPTS: dict[str, frozenset[str]] = {
    "latin": frozenset({"LATIN"}),
    "cyrillic": frozenset({"CYRILLIC"}),
    "greek": frozenset({"GREEK"}),
    "arabic": frozenset({"ARABIC"}),
    "hebrew": frozenset({"HEBREW"}),
    "devanagari": frozenset({"DEVANAGARI"}),
    "thai": frozenset({"THAI"}),
    "han": frozenset({"CJK"}),
    "kana": frozenset({"HIRAGANA", "KATAKANA"}),
    "hangul": frozenset({"HANGUL"}),
    "cjk": frozenset({"CJK", "HIRAGANA", "KATAKANA", "HANGUL"}),
}
"""Target script names and the Unicode name prefixes they cover."""

LANGUAGES: dict[str, str] = {
    **{code: "latin" for code in ("en", "fr", "de", "es", "it", "pt", "nl", "sv", "pl", "tr", "vi", "id")},
    "ru": "cyrillic", "uk": "cyrillic", "bg": "cyrillic", "sr": "cyrillic",
    "el": "greek", "ar": "arabic", "fa": "arabic", "he": "hebrew", "hi": "devanagari",
    "th": "thai", "zh": "han", "ko": "hangul",
}
"""Language codes and their script; Japanese ("ja") mixes scripts: han, hiragana and katakana."""

_JA = frozenset({"CJK", "HIRAGANA", "KATAKANA"})


def target_script(target: object) -> frozenset[str]:
    """The Unicode name prefixes for a script name or language code (raises on unknown names)."""
    key = str(target).strip().lower()
    if key == "ja":
        return _JA
    key = LANGUAGES.get(key, key)
    if key not in SCRIPTS:
        raise ValueError(
            f"language: unknown target {target!r}; scripts: {', '.join(SCRIPTS)}; "
            f"languages: {', '.join(sorted([*LANGUAGES, 'ja']))}"
        )
    return SCRIPTS[key]


def _script(letter: str) -> str:
    name = unicodedata.name(letter, "")
    return name.split(" ", 1)[0].split("-", 1)[0]


def script_share(text: str, script: frozenset[str]) -> float:
    """The share of the letters of `text` that belong to `script` (0.0 without letters)."""
    letters = [ch for ch in unicodedata.normalize("NFKC", text) if unicodedata.category(ch)[0] == "L"]
    if not letters:
        return 0.0
    return sum(_script(ch) in script for ch in letters) / len(letters)


@register("language")
def build_language(target: str | None = None) -> ItemReward:
    """Factory for `language` (arg target; default row["language"])."""
    fixed = None if target is None else target_script(target)

    def score(sample: Sample) -> float | None:
        script = fixed
        if script is None:
            language = sample.row.get("language")
            if language is None:
                return None
            try:
                script = target_script(language)
            except ValueError as exc:
                raise ValueError(f"{describe_row(sample.row)}: field 'language': {exc}") from exc
        return script_share(sample.completion, script)

    return ItemReward("language", score)
