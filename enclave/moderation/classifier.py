"""Topical harm categories: a TF-IDF + logistic-regression classifier trained on the shipped labelled set,
plus a few high-precision patterns for prompt injection. Trains in about a second, offline.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data"
CATEGORIES = ["violence_weapons", "sexual", "hate_harassment", "self_harm", "illegal_activity", "prompt_injection"]

_INJECTION = re.compile(
    r"(?i)\b(?:ignore|disregard|forget|override|bypass)\b[^.\n]{0,40}\b(?:previous|prior|above|earlier|all|your|any|the)"
    r"\b[^.\n]{0,30}\b(?:instructions?|directives?|prompts?|rules|guidelines|policy|policies|restrictions|filters?)\b"
    r"|\b(?:reveal|print|show|output|repeat)\b[^.\n]{0,40}\b(?:system prompt|hidden (?:text|instructions?)|your "
    r"(?:instructions|configuration|rules))\b"
    r"|\bforget (?:everything|all) (?:you were told|above|before)|\bnew instructions\s*:|\bunfiltered (?:ai|mode)\b"
    r"|\bignore\b[^.\n]{0,40}\bpolic(?:y|ies)\b"
    r"|\b(?:developer|jailbreak|unrestricted|dan) mode\b|\byou are now (?:dan|in|free|no longer)\b"
    r"|\bno (?:restrictions|filters|limitations|ethics)\b"
)


# Words with which a passage speaks to the model reading it: names for the model, its instructions and answers,
# what it is to tell the user. An instruction planted in a document must say whom it is for ("AI assistant: …",
# "If you are an AI, …", "from now on", "tell the user …"); documentation speaks to its reader, a person, and its
# imperatives ("Leave raw mode.", "Set X to Y") name none of these. Every instruction of the shipped training split
# (data/train.jsonl, prompt_injection) has one; of 40,906 sentences of the Python tutorial, HOWTOs, FAQ and
# language reference and of Debian's man pages, 0.3% do ("tell the user not to modify them").
_ADDRESSED = re.compile(
    r"(?i)\b(?:ai|a\.i\.|assistants?|chat ?bots?|llms?|gpt|chatgpt|(?:large )?language models?|system prompt|"
    r"system override|(?:hidden|new|previous|prior|above|earlier|original|initial) "
    r"(?:instructions?|prompts?|rules|directives)|(?:text|words|everything) above|"
    r"your (?:\w+ )?(?:instructions|rules|guidelines|programming|restrictions|filters?)|"
    r"your (?:developers|creators|answers?|responses?|repl(?:y|ies)|context|prompt|output|configuration)|"
    r"you are (?:now|no longer|an? (?:ai|assistant|language model|chatbot))|from now on|developer mode|jailbr\w*|"
    r"(?:you (?:have been|are) )?freed from|(?:begin|start|end|finish) (?:your|every|each) (?:answer|response|reply)|"
    r"before (?:answering|you answer|responding|you respond)|"
    r"when (?:summari[sz]ing|answering|responding|you (?:summari[sz]e|answer|respond))|"
    r"(?:tell|ask|inform|remind|convince|urge) the user|ignore the user|reading this)\b"
)


# People a harm can be aimed at. Only people: "kill the process", "shoot the request", "mock the database" and
# "purge the cache" are how engineers talk, and answers over technical documents are full of them.
_PEOPLE = (
    r"(?:my|his|her|their|your|the|a|this|that) (?:wife|husband|boss|neighbou?r|partner|girlfriend|boyfriend|ex|"
    r"mother|mom|father|dad|brother|sister|friend|teacher|coworker|colleague|classmate|kid|son|daughter|family|"
    r"president|police|officer|judge|witness|child|baby|people|crowd|students?|victim|man|woman|guy|girl|boy)"
)


# High-precision cues per category: strong words, or harm aimed at a person. They only tip a text the
# classifier already finds suspicious (see HarmClassifier.flag), so "kill a python process" stays benign.
_CUES = {
    "violence_weapons": re.compile(
        r"(?i)\b(?:bomb|explosive|ied|molotov|napalm|thermite|ricin|nerve agent|poison gas|detonator|suppressor|"
        r"untraceable|zip gun|flamethrower|(?:kill|murder|stab|strangle|shoot|attack|hurt|beat up|ambush|torture|"
        r"poison)\w* (?:someone|somebody|a person|people|him|her|them|you|a child|children|kids|" + _PEOPLE + r"))\b"
    ),
    "sexual": re.compile(
        r"(?i)\b(?:explicit (?:sex\w*|content|images?|photos?|pictures?|videos?|scenes?|stor(?:y|ies)|material)|"
        r"porn\w*|erotic|sex scene|sexual|nude|naked|sext\w*|smut|orgasm|genitals|lewd|fetish|"
        r"intercourse|masturbat\w*|hardcore (?:sex|porn\w*|videos?|scenes?)|onlyfans)\b"
    ),
    "hate_harassment": re.compile(
        r"(?i)\b(?:inferior|superior race|slurs?|go back to (?:your|her|his) country|worthless|idiot|retard\w*|"
        r"vermin|dehumaniz\w*|harass\w*|bully|humiliate|mock(?:s|ed|ing)? (?:him|her|them|someone|people|"
        + _PEOPLE
        + r")|"
        r"insults?|make fun of|hate speech about|"
        r"genetically less|belong in the kitchen)\b"
    ),
    "self_harm": re.compile(
        r"(?i)\b(?:kill myself|end my life|suicid\w*|want to die|to die\b|never wake up|cut myself|hurt myself|"
        r"harm myself|self-harm|slit (?:my )?wrists|overdose|hang myself|end it all|starve myself|binge and purge|"
        r"purge myself|pro-ana)\b"
    ),
    "illegal_activity": re.compile(
        r"(?i)\b(?:launder\w*|cocaine|meth|methamphetamine|crystal meth|heroin|crack cocaine|"
        r"phishing email|ransomware|malware|keylogger|"
        r"counterfeit|forge|fake ids?|shoplift\w*|smuggl\w*|bribe|fraud|scam\w*|ponzi|ddos|hack (?:into|a)|"
        r"steal\w*|skim\w*|"
        r"without a prescription|stolen|evade taxes|hitman|sql injection payload|credit card number generator)\b"
    ),
}


# Talking about a harm to prevent it, report it or help someone is not asking for it.
_HELP = re.compile(
    r"(?i)\b(?:prevent\w*|hotline|helpline|recogni[sz]e|signs? (?:of|that)|support (?:her|him|them|a|my)|report\w*|"
    r"protect|detect\w*|why is .* harmful|train my staff|awareness|history of|penalty for|law|legal)\b"
)


def cue_categories(text: str) -> list[str]:
    if _HELP.search(text):
        return []
    return [c for c, rx in _CUES.items() if rx.search(text)]


def load_rows(split: str) -> list[dict[str, str]]:
    return [json.loads(line) for line in (DATA / f"{split}.jsonl").read_text().splitlines() if line.strip()]


@dataclass
class Scores:
    label: str  # the most likely harmful category
    probability: float  # the probability that the text is harmful at all (1 - P(benign))
    by_label: dict[str, float]


class HarmClassifier:
    def __init__(self, rows: list[dict[str, str]] | None = None) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import FeatureUnion, make_pipeline

        rows = rows if rows is not None else load_rows("train")
        features = FeatureUnion(
            [
                ("words", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1, lowercase=True)),
                ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True, min_df=1)),
            ]
        )
        self.model: Any = make_pipeline(features, LogisticRegression(C=8.0, class_weight="balanced", max_iter=3000))
        self.model.fit([r["text"] for r in rows], [r["label"] for r in rows])
        self.labels: list[str] = list(self.model.classes_)

        # Scoring by hand skips sklearn's per-call validation and sparse-matrix building: a check must take
        # well under 5 ms. Per vectorizer: its analyzer, vocabulary, idf, and its block of the coefficients.
        lr = self.model.steps[1][1]
        coef = lr.coef_.T.astype("float32")
        self._parts = []
        offset = 0
        for _, vec in self.model.steps[0][1].transformer_list:
            size = len(vec.vocabulary_)
            self._parts.append(
                (vec.build_analyzer(), vec.vocabulary_, vec.idf_.astype("float32"), coef[offset : offset + size])
            )
            offset += size
        self._intercept = lr.intercept_.astype("float32")

    def scores(self, text: str) -> Scores:
        import numpy as np

        logits = self._intercept.copy()
        for analyze, vocab, idf, coef in self._parts:
            counts: dict[int, int] = {}
            for gram in analyze(text[-4000:]):
                j = vocab.get(gram)
                if j is not None:
                    counts[j] = counts.get(j, 0) + 1
            if not counts:
                continue
            idx = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
            tf = np.fromiter(counts.values(), dtype=np.float32, count=len(counts))
            w = (1.0 + np.log(tf)) * idf[idx]  # sublinear tf, then idf, then l2 norm: as TfidfVectorizer does
            w /= np.linalg.norm(w) or 1.0
            logits += w @ coef[idx]
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        by_label = {label: float(p) for label, p in zip(self.labels, probs, strict=True)}
        harmful = {k: v for k, v in by_label.items() if k != "benign"}
        best = max(harmful, key=lambda k: harmful[k])
        return Scores(best, 1.0 - by_label.get("benign", 0.0), by_label)

    def flag(self, text: str, threshold: float) -> list[str]:
        """Harm categories for `text`. A cue (a strong word, or harm aimed at a person) plus a classifier
        that half agrees flags; the classifier alone flags only when it is nearly sure."""
        s = self.scores(text)
        cues = cue_categories(text)
        if cues and s.probability >= threshold * 0.7:
            return [s.label] if s.label in cues else cues[:1]
        if s.probability >= max(threshold, 0.99):
            return [s.label]
        return []


def injection_pattern(text: str) -> bool:
    return bool(_INJECTION.search(text))


def addressed_to_model(text: str) -> bool:
    """Whether `text` speaks to the model that reads it (see _ADDRESSED)."""
    return bool(_ADDRESSED.search(text))
