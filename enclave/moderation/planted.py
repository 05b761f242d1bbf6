"""Planted instructions, for the output gate: what the passages ask the model to say, and whether an answer says it.

The context check cuts the sentences of a passage that give the model orders, and some slip through. So the
passages as retrieved (before any cut) are read again for their instruction sentences — those the check cut, an
injection's own words (classifier.injection_pattern), and sentences that ask for something to be said ("reply with
…", "end every answer with …", "include the word …", "tell the user to …") of the model (addressed_to_model),
in so many words ("only", "the word"), or as a bare order with a canary ("Reply with ZX-42.").
Their payloads — quoted strings, canary-like tokens, URLs, e-mail addresses, phone numbers, the words to be said —
are what an answer must not repeat (case, spacing and punctuation aside). Ordinary sentences give none, and what
the question or the passages' ordinary sentences say themselves is never a payload.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from enclave.moderation.classifier import addressed_to_model, injection_pattern
from enclave.moderation.pii import find_pii
from enclave.moderation.sentences import sentences, without

# A payload of more words than this is repeated when any run of this many of its words is.
RUN_WORDS = 6
# Words of a phrase the model is told to say, at most (a clause, not the rest of the passage).
PHRASE_WORDS = 8
# How far past its sentence a quoted payload may run (a quote with a full stop inside is split by the sentences).
QUOTE_CHARS = 300

_ALNUM = re.compile(r"[^\W_]+")
_TOKEN = re.compile(r"(?<![\w-])[^\W_](?:[\w-]*[^\W_])?(?![\w-])")
_QUOTE = {'"': '"', "“": "”", "‘": "’", "«": "»", "'": "'"}

# Verbs that ask for words to be said. `say`: its object is what to say, a phrase; `show`: only a quoted or
# canary-like object counts ("print the value" is documentation); `wrap`: how every answer must begin or end;
# `put`: a word, code or link to be put in the answer.
_ASK = re.compile(
    r"(?i)\b(?:"
    r"(?P<say>say|state|declare|"
    r"(?:tell|inform|remind|advise|urge) (?:the user|users|the reader|the customer|everyone|them|him|her)"
    r"(?: (?:that|to))?|"
    r"(?:reply|respond|answer)(?: (?:only|just|exactly|simply|always))? (?:with|by saying|saying))"
    r"|(?P<show>print|output|write|type|repeat|echo|display|return)"
    r"|(?P<wrap>(?:end|begin|start|finish|close|conclude|prefix|sign|open) "
    r"(?:(?:every|each|all|any|your|the|of) ){1,3}(?:\w+ )?(?:answers?|responses?|repl(?:y|ies)|messages?|outputs?)"
    r"(?: with)?)"
    r"|(?P<put>(?:include|insert|add|append|mention|put|use)(?=[^\n]{0,80}?\b(?:in|to|into|at the (?:end|start|"
    r"beginning) of) (?:your|every|each|all|any|the) (?:\w+ )?(?:answers?|responses?|repl(?:y|ies)|outputs?)\b))"
    r")\b"
)
# Where an ordinary sentence's verb is an order: at its start, after a clause, or after a word that makes it one.
_IMPERATIVE = re.compile(
    r"(?i)(?:^|[,;:!?.(\[\]\"“”'—–]|\b(?:and|then|also|just|only|simply|please|now|instead|always|first|finally|"
    r"you (?:must|should|will|shall|need to|have to)|(?:is|are) to))\s*$"
)
_NAMED = re.compile(
    r"(?i)\s*(?:only|just|exactly|verbatim|(?:the|this) (?:word|words|phrase|code|string|sentence|text|message|token|"
    r"password|following))\b"
)
# An object named as what it is: the word, the phrase, the secret code … (skipped to reach the payload itself).
_LEAD_IN = re.compile(
    r"(?i)(?:\s+|[:,]\s*|\b(?:only|just|exactly|simply|verbatim|literally|back|out|aloud|instead|always|now|"
    r"following|with|by saying|saying|that)\b|\b(?:(?:the|a|an|this|your)\s+)?(?:(?:secret|special|exact|magic|"
    r"following|code|safe|confirmation)\s+)*(?:word|phrase|code|string|text|sentence|token|message|link|url|"
    r"address|password|passphrase|line)s?\b(?:\s+is\b)?)*"
)
# Where a phrase to be said ends.
_CLAUSE_END = re.compile(
    r"(?i)[.!?;](?:\s|$)|\n|\s(?:and|or|but|then|when|before|after|if|unless|because|so|instead|whenever|"
    r"at the (?:start|end|beginning)|to (?:the|every|each|all|any) (?:user|answer|response|reply|message)s?|"
    r"in (?:your|every|each|all|the|any) (?:answers?|responses?|repl(?:y|ies)|messages?|outputs?)|"
    r"(?:every|each) time|nothing else|no matter)\b|,\s"
)
_TO_DO = re.compile(r"(?i)(?:visit|call|phone|ring|e-?mail|contact|write to|go to|open|see|send \w+ to|use)\s+")
# "Say you have a list of numbers": a hypothetical, not an order.
_HYPOTHETICAL = re.compile(r"(?i)^\W*(?:say|suppose)\s+(?:that\s+)?(?:you|we|i|there|someone)\b")
_CODE = re.compile(r"```|^\s*[\w.\[\]\"']+\s*=\s*[\"'\w\[{(]|\w\(.*[=\"'].*\)|\{\s*\"\w+\"\s*:", re.M)
_URL = re.compile(
    r"(?i)(?:\bhttps?://|\bwww\.)[^\s<>\"'`()\[\]{}]+"
    r"|(?<![@\w.-])(?:[a-z0-9-]+\.)+(?:com|net|org|io|ai|co|biz|info|xyz|ru|cn|me|ly|app|dev|site|online|top|tk)"
    r"\b(?:/[^\s<>\"'`()]*)?"
)
# Shouted words of instructions and everyday acronyms: capitals, not canaries.
_ORDINARY_CAPS = set(
    "IMPORTANT SYSTEM OVERRIDE OVERRIDES IGNORE NOTE NOTES NOTICE WARNING ATTENTION URGENT ALERT CRITICAL PRIORITY "
    "INSTRUCTION INSTRUCTIONS DIRECTIVE DIRECTIVES COMMAND COMMANDS EXECUTE HIDDEN INJECT INJECTION ADMIN "
    "ADMINISTRATOR DEVELOPER ASSISTANT AGENT MODEL PROMPT USER USERS STOP EVERYTHING PRINT OUTPUT REPLY RESPOND "
    "ANSWER ALWAYS NEVER PLEASE ONLY UPDATE UPDATED SAFETY FILTER FILTERS MODE ENABLED DISABLED SECRET TEXT WORDS "
    "REPEAT AFTER BEFORE FIRST FINAL TASK REQUIRED MANDATORY CONFIDENTIAL INTERNAL PRIVATE CONTEXT FOLLOW BELOW ABOVE "
    "START BEGIN DEBUG ERROR ERRORS TRUE FALSE NULL NONE TITLE SUMMARY DOCUMENT HTTPS ASCII POSIX LINUX UNIX README "
    "TODO FIXME NGINX MYSQL SQLITE OAUTH GRAPHQL REDIS CHROMA HELM PYTHON DELETE PATCH QUERY TABLE WHERE SELECT INSERT "
    "VALUES FROM ORDER GROUP LIMIT STDOUT STDERR STDIN".split()
)
# Words too common to make a phrase specific.
_COMMON = set(
    "a an the and or but if then so to of in on at by for with from as is are was were be been being am do does did "
    "have has had i you he she it we they me him her us them my your his its our their this that these those here "
    "there what which who whom when where why how all any each every no not only just also very can could will would "
    "shall should may might must yes ok okay sure hello hi thanks thank please answer reply response word words "
    "phrase text message code say said tell user following now again always never nothing everything something "
    "anything one two more most some such than too up down out about into over after before".split()
)


def compact(text: str) -> tuple[str, list[int], list[int]]:
    """`text`'s letters and digits, case-folded, in one string; where each word starts in it and in `text`."""
    out: list[str] = []
    starts: list[int] = []
    raw: list[int] = []
    size = 0
    for m in _ALNUM.finditer(text):
        word = m.group().casefold()
        starts.append(size)
        raw.append(m.start())
        out.append(word)
        size += len(word)
    return "".join(out), starts, raw


def _is_canary(token: str) -> bool:
    """A token no ordinary prose needs: letters mixed with digits (ZX-42, a1b2c3, 9f3ab21c), a long number, or a
    word in capitals (PINEAPPLE) that is no shouted instruction word, acronym or environment variable."""
    letters = sum(c.isalpha() for c in token)
    digits = sum(c.isdigit() for c in token)
    if letters and digits:
        if len(token) < 4 or re.fullmatch(
            r"(?i)\d+(?:st|nd|rd|th|am|pm|[kmgt]i?b|ms|s|h|m|x|px|d|k|hz|[kmg]hz)", token
        ):
            return False
        runs = len(re.findall(r"[^\W\d_]+|\d+", token))
        return digits >= 2 or runs >= 3  # "UTF-8", "Python3", "IPv6" are names
    if digits >= 6 and not letters:
        return token.isdigit()  # a code, not a date or a phone number
    if letters >= 5 and token.isupper():
        env_var = "_" in token  # PYTHONPATH is a word; ENCLAVE_DATA_DIR a setting
        return not env_var and token.replace("-", "") not in _ORDINARY_CAPS and token not in _ORDINARY_CAPS
    return False


@dataclass(frozen=True)
class Payload:
    text: str  # as the passage says it
    kind: str  # quoted, said, canary, url, email, phone, secret
    sentence: str  # the instruction sentence it came from


class PlantedCheck:
    """The payloads of a request's passages' instruction sentences, and whether an answer (so far) repeats one.

    `passages`: the retrieved texts before the context check cut anything; `cut`: the sentences it cut;
    `question`: the user's words (a payload they asked for is theirs to have)."""

    def __init__(self, passages: Iterable[str], question: str = "", cut: Iterable[str] = ()) -> None:
        cut_set = {" ".join(s.split()) for s in cut}
        found: list[Payload] = []
        ordinary: list[str] = []
        self.instructions: list[str] = []
        for text in passages:
            for a, b in sentences(text):
                sentence = text[a:b]
                payloads = _payloads(text, a, b, " ".join(sentence.split()) in cut_set)
                if payloads is None:
                    ordinary.append(sentence)
                    continue
                self.instructions.append(sentence)
                found += payloads
        # A fragment (a chunk cut inside a sentence starts in lower case) may be the tail of an instruction.
        own = [_Keys.of(t) for t in [question, *(s for s in ordinary if not s[:1].islower())] if t.strip()]
        self.payloads: list[Payload] = []
        self._keys: list[tuple[str, Payload]] = []
        seen: set[str] = set()
        for p in found:
            keys = _keys_of(p)
            # The user asked for it, or the documents say it themselves: repeating it obeys no one.
            keys = [k for k in keys if k not in seen and not any(o.has(k) for o in own)]
            if not keys:
                continue
            seen.update(keys)
            self.payloads.append(p)
            self._keys += [(k, p) for k in keys]
        longest = max((len(k) for k, _ in self._keys), default=0)
        self.longest = longest
        # The answer's tail this long holds any payload the latest piece completed (a payload's compact form drops
        # spaces and punctuation, so the raw text it came from is longer; four times is ample).
        self.tail_chars = 4 * longest + 64

    def __bool__(self) -> bool:
        return bool(self._keys)

    def without_instructions(self, text: str) -> str:
        """`text` without the sentences that gave payloads: what Enclave itself quotes of a passage."""
        said = {" ".join(p.sentence.split()) for p in self.payloads}
        cut = [(a, b) for a, b in sentences(text) if " ".join(text[a:b].split()) in said]
        return without(text, cut) if cut else text

    def _tail(self, text: str) -> tuple[int, str]:
        start = max(0, len(text) - self.tail_chars)
        while 0 < start < len(text) and text[start - 1].isalnum():  # never start inside a word
            start += 1
        return start, text[start:]

    def repeated(self, text: str) -> str | None:
        """The payload `text`'s tail repeats (as the passage says it), or None."""
        if not self._keys:
            return None
        _, tail = self._tail(text)
        keys = _Keys.of(tail)
        for key, payload in self._keys:
            if keys.has(key):
                return payload.text
        return None

    def held_from(self, text: str, at_least: float = 0.0) -> int:
        """Where in `text` a payload may be beginning: the start of the earliest word from which the rest of `text`
        is the start of a payload ("ZX-" of ZX-42), else len(text). The gate releases nothing from there on.
        `at_least`: only a start that is this share of its payload or more (an answer's end)."""
        if not self._keys:
            return len(text)
        offset, tail = self._tail(text)
        comp, starts, raw = compact(tail)
        held = len(text)
        for i in range(len(starts) - 1, -1, -1):
            rest = comp[starts[i] :]
            if len(rest) >= self.longest:
                break
            if any(len(rest) >= at_least * len(k) and len(k) > len(rest) and k.startswith(rest) for k, _ in self._keys):
                held = offset + raw[i]
        return held


class _Keys:
    """A text's compact form with its word boundaries: `has(key)` when the key is there from word to word."""

    def __init__(self, comp: str, starts: list[int]) -> None:
        self.comp = comp
        self.bounds = {*starts, len(comp)}

    @classmethod
    def of(cls, text: str) -> _Keys:
        comp, starts, _ = compact(text)
        return cls(comp, starts)

    def has(self, key: str) -> bool:
        i = self.comp.find(key)
        while i >= 0:
            if i in self.bounds and i + len(key) in self.bounds:
                return True
            i = self.comp.find(key, i + 1)
        return False


def _payloads(text: str, a: int, b: int, was_cut: bool) -> list[Payload] | None:
    """The payloads of the sentence text[a:b], or None when it is no instruction sentence."""
    sentence = text[a:b]
    # Cut by the context check, or an injection's own words: an instruction whatever it asks. Speaking to the model
    # makes one only with something to say: documentation about AI products names assistants and models all along.
    strong = was_cut or injection_pattern(sentence)
    # Code that calls a model (`model="gpt-4o", input="Say this is a test"`) names it without speaking to it.
    code = bool(_CODE.search(sentence))
    addressed = addressed_to_model(sentence) and not code
    asked: list[Payload] = []
    for m in _ASK.finditer(sentence):
        kind = m.lastgroup or "show"
        if kind == "say" and _HYPOTHETICAL.match(sentence[m.start() :]) and not sentence[: m.start()].strip():
            continue
        found_obj = _object(text, a + m.end(), b, kind, m.group().lower(), sentence)
        if found_obj is None:
            continue
        obj, direct = found_obj
        # "Reply only with", "output the word", "end every answer with": what to say, named as such.
        named = kind in ("wrap", "put") or bool(_NAMED.match(sentence, m.end())) or " only " in m.group()
        named = named or bool(re.search(r"(?i)\b(?:only|just|simply)\s+$", sentence[: m.start()]))
        if strong or addressed or named:
            strong = True
            asked.append(obj)
        elif kind == "say" and obj.kind != "said" and direct and not code and _IMPERATIVE.search(sentence[: m.start()]):
            # A bare order ("Reply with ZX-42.") is also how documents speak to people ("Reply with your dates to
            # hr@example.com by Friday."): only what is to be said itself, a quote, a canary or an address, makes it
            # one to the model, and only that is taken.
            asked.append(obj)
    if not strong:
        return [p for p in asked if _specific(p)] or None
    found = list(asked)
    for q in _quoted(text, a, b):
        found.append(Payload(q, "quoted", sentence))
    for m in _TOKEN.finditer(sentence):
        if _is_canary(m.group()):
            found.append(Payload(m.group(), "canary", sentence))
    for m in _URL.finditer(sentence):
        found.append(Payload(m.group().rstrip(".,;:!?"), "url", sentence))
    for f in find_pii(sentence):
        kind = f.kind if f.kind in ("email", "phone") else "secret"
        found.append(Payload(sentence[f.start : f.end], kind, sentence))
    return [p for p in found if _specific(p)]


def _object(text: str, at: int, end: int, kind: str, verb: str, sentence: str) -> tuple[Payload, bool] | None:
    """What the verb ending at text[at] asks to be said: a quoted string, a canary, an address, or (for `say`) a
    phrase; and whether it is the object itself ("reply with ZX-42", not "reply with your badge and ZX-42")."""
    lead = _LEAD_IN.match(text, at, end)
    at = lead.end() if lead else at
    if at >= end:
        return None
    if text[at] in _QUOTE:
        q = _quote_at(text, at)
        return (Payload(q, "quoted", sentence), True) if q else None
    stop = _CLAUSE_END.search(text, at, end)
    clause = text[at : stop.start() if stop else end].strip()
    words = clause.split()[:PHRASE_WORDS]
    if not words:
        return None
    phrase = " ".join(words)
    # "tell them to visit https://…": what they are to do with it is no part of it
    skip = _TO_DO.match(phrase) if verb.endswith(" to") else None
    first = skip.end() if skip else 0
    # The first thing in it that is a payload of its own: an address, a number to call, a canary ("code ZX-42").
    found = [(f.start, f.kind, phrase[f.start : f.end]) for f in find_pii(phrase) if f.kind in ("email", "phone")]
    found += [(m.start(), "url", m.group().rstrip(".,;:!?")) for m in _URL.finditer(phrase)]
    found += [(t.start(), "canary", t.group()) for t in _TOKEN.finditer(phrase) if _is_canary(t.group())]
    if found:
        start, what, value = min(found, key=lambda f: (f[0], f[1] == "canary"))
        return Payload(value, what, sentence), start == first
    return (Payload(phrase[first:], "said", sentence), True) if kind == "say" else None


def _quote_at(text: str, at: int) -> str | None:
    close = _QUOTE[text[at]]
    for i in range(at + 1, min(len(text), at + QUOTE_CHARS)):
        # an apostrophe inside a word ("don't") closes nothing
        if text[i] == close and not (close == "'" and i + 1 < len(text) and text[i + 1].isalpha()):
            inner = text[at + 1 : i].strip()
            return inner or None
    return None


def _quoted(text: str, a: int, b: int) -> list[str]:
    out = []
    i = a
    while i < b:
        ch = text[i]
        if ch in _QUOTE and (i == 0 or not text[i - 1].isalnum()):
            q = _quote_at(text, i)
            if q:
                out.append(q)
                i += len(q) + 2
                continue
        i += 1
    return out


def _specific(p: Payload) -> bool:
    """Whether a payload means something: one common word ("yes", "the") does not; a capitalised canary does."""
    comp = compact(p.text)[0]
    if len(comp) < 3:
        return False
    if p.kind in ("url", "email", "phone", "secret"):
        return len(comp) >= 6
    words = _ALNUM.findall(p.text)
    if any(_is_canary(t.group()) for t in _TOKEN.finditer(p.text)):
        return True
    if p.kind == "said" and (_URL.search(p.text) or find_pii(p.text)):
        return False  # "visit https://evil.example.com now": the address is the payload, found on its own
    content = [w for w in words if w.casefold() not in _COMMON]
    if len(words) < 2:
        return False
    return len(content) >= (1 if p.kind == "quoted" else 2)


def _keys_of(p: Payload) -> list[str]:
    """The compact forms an answer repeating `p` contains."""
    if p.kind == "url":
        bare = re.sub(r"(?i)^(?:https?://)?(?:www\.)?", "", p.text).rstrip("/")
        host = re.split(r"[/?#]", bare, maxsplit=1)[0]
        # The host alone too ("visit evil.example.com"), unless it is a site's own name (github.com/…): answers
        # name those for other reasons.
        urls = (bare, host) if host.count(".") >= 2 else (bare,)
        return list(dict.fromkeys(compact(x)[0] for x in urls if len(compact(x)[0]) >= 6))
    if p.kind == "phone":
        digits = re.sub(r"\D", "", p.text)
        return list(dict.fromkeys([digits, digits[-10:]] if len(digits) > 10 else [digits]))
    words = _ALNUM.findall(p.text.casefold())
    if len(words) <= RUN_WORDS:
        return ["".join(words)]
    return list(dict.fromkeys("".join(words[i : i + RUN_WORDS]) for i in range(len(words) - RUN_WORDS + 1)))
