"""Does a text look like the language a model was trained on? A cheap check, so that `medllm_ner`
can warn when an English pipeline is given Estonian (or Russian, or Chinese) text: its labels there
are confident and wrong.

Two signals, from spaCy's own language data and the standard library:
- the script: letters mostly Cyrillic, Greek, CJK, Arabic... where the language is written in
  Latin letters (or the other way round);
- for a language in Latin letters: few of its function words (spaCy's stop words, e.g. "the",
  "and", "of") together with letters its alphabet does not have (õ, ä, ü for English) or many
  function words of another language. Words in capitals (SOB, HTN) are left out, so clinical
  shorthand, which has few function words of any language, is not taken for another language.

A text with too few letters or words says nothing (None). Evidence from short texts (one sentence
each) adds up over a run (`LanguageCheck.run_mismatch`).
"""

from __future__ import annotations

import importlib.util
import re
import sys
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import spacy.lang

SAMPLE_CHARS = 20_000  # the start of a text that is looked at
MIN_LETTERS = 20
MIN_WORDS = 8  # words (2+ letters, not all capitals) needed to judge a text in Latin letters
RUN_MIN_WORDS = 40  # ... and for a run of short texts together
FEW_FUNCTION_WORDS = 0.10  # a text of the language has more of its stop words than this
FOREIGN_LETTERS = 0.01  # ... and fewer letters outside its alphabet than this share
OTHER_FUNCTION_WORDS = 0.20  # another language's stop words at this share are evidence too

_ASCII = "abcdefghijklmnopqrstuvwxyz"
# The letters of each language's alphabet beyond a-z (lower case).
ALPHABETS = {
    "en": "",
    "et": "õäöüšž",
    "de": "äöüß",
    "fr": "àâæçéèêëîïôœùûüÿ",
    "es": "áéíñóúü",
    "it": "àèéìíîòóùú",
    "pt": "áâãàçéêíóôõú",
    "nl": "éëïöü",
    "fi": "äöåšž",
    "sv": "åäö",
    "da": "æøå",
    "nb": "æøå",
    "pl": "ąćęłńóśźż",
    "lv": "āčēģīķļņšūž",
    "lt": "ąčęėįšųūž",
    "cs": "áčďéěíňóřšťúůýž",
    "hu": "áéíóöőúüű",
    "ro": "ăâîșşțţ",
    "tr": "çğıöşü",
}
# The script of languages not written in Latin letters (the first word of a letter's Unicode name).
SCRIPTS = {
    **dict.fromkeys(("ru", "uk", "bg", "mk", "sr", "be", "kk", "ky", "tt"), "CYRILLIC"),
    "el": "GREEK",
    "grc": "GREEK",
    **dict.fromkeys(("zh", "ja"), "CJK"),
    "ko": "HANGUL",
    **dict.fromkeys(("ar", "fa", "ur"), "ARABIC"),
    "he": "HEBREW",
    **dict.fromkeys(("hi", "mr", "ne", "sa"), "DEVANAGARI"),
    "th": "THAI",
    "hy": "ARMENIAN",
    "ta": "TAMIL",
    "bn": "BENGALI",
}
# Scripts that count as the same writing (Japanese mixes kana and CJK).
_SAME_SCRIPT = {"HIRAGANA": "CJK", "KATAKANA": "CJK"}
LANGUAGE_NAMES = {
    "en": "English", "et": "Estonian", "de": "German", "fr": "French", "es": "Spanish",
    "it": "Italian", "pt": "Portuguese", "nl": "Dutch", "fi": "Finnish", "sv": "Swedish",
    "da": "Danish", "nb": "Norwegian", "pl": "Polish", "lv": "Latvian", "lt": "Lithuanian",
    "cs": "Czech", "hu": "Hungarian", "ro": "Romanian", "tr": "Turkish", "ru": "Russian",
    "el": "Greek", "zh": "Chinese", "ja": "Japanese", "ko": "Korean", "ar": "Arabic",
    "he": "Hebrew", "hi": "Hindi", "uk": "Ukrainian",
}  # fmt: skip
_WORD = re.compile(r"[^\W\d_]{2,}")
_stop_words: dict[str, frozenset[str]] = {}


def stop_words(lang: str) -> frozenset[str]:
    """spaCy's stop words of `lang` (empty if spaCy has none).

    Read from spacy/lang/<lang>/stop_words.py alone: importing it as spacy.lang.<lang>.stop_words
    would first run the language package, which compiles its tokenizer exceptions (seconds for
    French).
    """
    if lang not in _stop_words:
        words: frozenset[str] = frozenset()
        loaded = sys.modules.get(f"spacy.lang.{lang}.stop_words")
        if loaded is not None:
            words = frozenset(getattr(loaded, "STOP_WORDS", ()))
        else:
            path = Path(spacy.lang.__file__).parent / lang / "stop_words.py"
            spec = importlib.util.spec_from_file_location(f"_medllm_stop_words_{lang}", path)
            if path.is_file() and spec is not None and spec.loader is not None:
                module = importlib.util.module_from_spec(spec)
                try:
                    spec.loader.exec_module(module)
                    words = frozenset(getattr(module, "STOP_WORDS", ()))
                except Exception:  # a stop word list that cannot be read alone: no evidence
                    words = frozenset()
        _stop_words[lang] = words
    return _stop_words[lang]


def language_name(lang: str) -> str:
    return f"{LANGUAGE_NAMES[lang]} ({lang})" if lang in LANGUAGE_NAMES else lang


def script_of(char: str) -> str:
    try:
        word = unicodedata.name(char).split()[0]
    except ValueError:
        return "UNKNOWN"
    return _SAME_SCRIPT.get(word, word)


@dataclass
class Evidence:
    """Counts over one text or a run of texts."""

    scripts: Counter = field(default_factory=Counter)
    words: int = 0
    function_words: Counter = field(default_factory=Counter)  # per language: stop words seen
    latin_letters: int = 0
    foreign: Counter = field(default_factory=Counter)  # Latin letters outside the alphabet

    def add(self, other: Evidence) -> None:
        self.scripts.update(other.scripts)
        self.words += other.words
        self.function_words.update(other.function_words)
        self.latin_letters += other.latin_letters
        self.foreign.update(other.foreign)


class LanguageCheck:
    """Judges texts against the language `lang` (an ISO code as in `spacy.blank`)."""

    def __init__(self, lang: str) -> None:
        self.lang = lang
        self.script = SCRIPTS.get(lang, "LATIN")
        self.alphabet = set(_ASCII + ALPHABETS[lang]) if lang in ALPHABETS else None
        self.run = Evidence()

    def evidence(self, text: str) -> Evidence:
        sample = text[:SAMPLE_CHARS]
        found = Evidence()
        for char in sample:
            if char.isalpha():
                script = "LATIN" if char.isascii() else script_of(char)
                found.scripts[script] += 1
                if script == "LATIN":
                    found.latin_letters += 1
                    lower = char.lower()
                    if self.alphabet is not None and lower not in self.alphabet:
                        found.foreign[lower] += 1
        if self.script == "LATIN" and self.alphabet is not None:
            words = [w.lower() for w in _WORD.findall(sample) if not w.isupper()]
            found.words = len(words)
            own = stop_words(self.lang)
            found.function_words[self.lang] = sum(1 for w in words if w in own)
            if found.function_words[self.lang] < FEW_FUNCTION_WORDS * len(words):
                for lang in ALPHABETS:  # other languages only when this one is in doubt
                    if lang != self.lang:
                        listed = stop_words(lang)
                        found.function_words[lang] = sum(1 for w in words if w in listed)
        return found

    def judge(self, found: Evidence, min_words: int = MIN_WORDS) -> str | None:
        """The language (or script) the evidence points to instead of `lang`, or None."""
        letters = sum(found.scripts.values())
        if letters < MIN_LETTERS:
            return None
        dominant, count = found.scripts.most_common(1)[0]
        if dominant != self.script and count / letters >= 0.5:
            return f"text in {dominant if len(dominant) <= 3 else dominant.title()} script"
        if self.alphabet is None or found.words < min_words:
            return None
        share = {lang: n / found.words for lang, n in found.function_words.items()}
        own = share.get(self.lang, 0.0)
        if own >= FEW_FUNCTION_WORDS:
            return None
        foreign = sum(found.foreign.values()) / max(1, found.latin_letters)
        others = {lang: s for lang, s in share.items() if lang != self.lang}
        if foreign >= FOREIGN_LETTERS:
            seen = set(found.foreign)
            fits = [
                lang for lang in ALPHABETS if seen <= set(ALPHABETS[lang]) and lang != self.lang
            ]
            if fits:
                return language_name(max(fits, key=lambda lang: (others.get(lang, 0.0), lang)))
            letters_seen = ", ".join(sorted(seen)[:5])
            return f"another language (letters {letters_seen})"
        best = max(others, key=lambda lang: others[lang], default=None)
        if best is not None and others[best] >= OTHER_FUNCTION_WORDS and others[best] >= 3 * own:
            return language_name(best)
        return None

    def check(self, text: str) -> tuple[str | None, str | None]:
        """(what this text looks like instead, what the run so far looks like instead)."""
        found = self.evidence(text)
        self.run.add(found)
        return self.judge(found), self.judge(self.run, RUN_MIN_WORDS)
