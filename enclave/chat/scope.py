"""Whether a question asks about the user's own organisation — facts only its documents can hold, never the model.

A question is about the organisation when it asks after *this* organisation's people, internal systems,
credentials, addresses, policies, benefits, schedules, customers, projects or premises: "who is our CEO",
"the office wifi password", "how many vacation days do I get", "when is payday". With no document about it the
answer is "I have no documents about that", since a base model asked such a thing invents one ("The CEO of our
company is John Doe.").

Where the line is: the same words asked *in general* are general knowledge and go to the model — "What is a
VPN?", "What does a CEO do?", "How do I configure a VPN on Linux?", "Who is the CEO of Microsoft?" (a named
company's, not ours), "How can we sort a list in Python?" (a generic "we"). A question framed as typical, usual,
average or legal ("What is a typical vacation policy in Germany?", "How many vacation days are legally required in
France?"), as a definition ("What is an org chart?") or as personal advice ("How do I ask my manager for a raise?")
is general unless it also says "our …" or "the company": "What is the typical leave policy at our company?" is
about the organisation.

The rules are lexical and run on the lower-cased question with punctuation turned to spaces and "who's"-style
contractions spelt out, so case and punctuation change nothing. Strong cues ("our <anything but planet, body, …>",
"the company", "the Berlin office") decide alone; weak cues (a named role, a first-person entitlement, an internal
system, a premises word …) are overruled by a general framing. Every cue is a named group of one compiled pattern,
so `reason` can say which words decided. The labelled set and its figures: `bench/data/org_questions.jsonl`,
`tests/test_scope.py`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_MAX_CHARS = 2000  # a question, not a pasted document: the rules need its first lines only
# Cues that pair two words ("we" … "customers") look at most 120 characters apart, about a sentence: it keeps
# every search linear (an adversarial 2000 characters: ~10 ms; a question: ~0.05 ms).


def _alt(*words: str) -> str:
    return "(?:" + "|".join(words) + ")"


# What "our" may be followed by and still be general: the speaker's species, planet or body, not an employer.
_GENERIC_OUR = _alt(
    "planet",
    "world",
    "solar",
    "galaxy",
    "universe",
    "sun",
    "moon",
    "earth",
    "atmosphere",
    "oceans?",
    "climate",
    "bodies",
    "body",
    "brains?",
    "minds?",
    "ancestors",
    "species",
    "society",
    "civili[sz]ation",
    "environment",
    "lives",
    "life",
    "immune",
    "dna",
    "genes?",
    "eyes",
    "skin",
    "hearts?",
    "blood",
    "senses",
    "conversation",
    "chat",
    "discussion",
    "own",
    "everyday",
    "daily",
)
_ROLE = _alt(
    "ceo",
    "cto",
    "cfo",
    "coo",
    "cio",
    "ciso",
    "cmo",
    "cpo",
    "cdo",
    "chro",
    "managing director",
    "md",
    "founders?",
    "co-founders?",
    "owners?",
    "chair(?:man|woman|person)?",
    "board",
    r"(?:head|vp|vice president|director|chief) of (?!state|government)\w+",
    "dpo",
    r"data protection officer",
    "security officer",
    "compliance officer",
    "privacy officer",
    "office manager",
    "receptionist",
    "product owner",
    "product manager",
    "project manager",
    "scrum master",
    "team ?lead",
    "tech lead",
    "line manager",
    "hr (?:manager|contact|person|partner|business partner|rep)",
    "payroll (?:team|contact)",
    "it admin",
    "sysadmin",
    "system administrator",
    "fire warden",
    "first aider",
    "works council",
)
# Things only an organisation (or a member speaking of it) has; used beside "we" and "which".
_ORG_NOUN = _alt(
    "company",
    "firm",
    "organi[sz]ation",
    "employer",
    "offices?",
    "headquarters",
    "hq",
    "site",
    "building",
    "campus",
    "departments?",
    "staff",
    "employees?",
    "colleagues?",
    "coworkers?",
    "customers?",
    "clients?",
    "vendors?",
    "suppliers?",
    "budget",
    "revenue",
    "payroll",
    "salar(?:y|ies)",
    "bonus(?:es)?",
    "pension",
    "benefits",
    "polic(?:y|ies)",
    "dress code",
    "holidays",
    "vacation",
    "pto",
    "leave",
    "intranet",
    "vpn",
    "wifi",
    "wiki",
    "cloud provider",
    "provider",
    "laptops?",
    "badges?",
    "parking",
    "canteen",
    "cafeteria",
    "headcount",
    "new hires",
    "interns",
    "contractors",
    "roadmap",
    "okrs",
    "on-call",
    "ceo",
    "cto",
    "cfo",
    "hr",
)
_BENEFIT = _alt(
    "vacation",
    "holidays?",
    "pto",
    "sick (?:days?|leave|pay)",
    "(?:parental|maternity|paternity|annual|unpaid|compassionate|special) leave",
    "leave",
    "days off",
    "time off",
    "bonus(?:es)?",
    "per diem",
    "allowance",
    "pension",
    "overtime",
    "remote work",
    "work from home",
    "wfh",
    "home office budget",
    "training budget",
    "gym",
    "expenses?",
    "reimburse(?:d|ment)?",
    "mileage",
    "company car",
    "stock options",
    "share scheme",
    "equity",
    "health insurance",
    "dental",
    "payday",
    "payslips?",
    "salary",
    "pay rise",
    "discount",
)
_PREMISES = _alt(
    r"(?:first|second|third|fourth|fifth|sixth|ground|top|\d+(?:st|nd|rd|th)) floor",
    r"floor \d+",
    "canteen",
    "cafeteria",
    "server room",
    "meeting rooms?",
    "conference rooms?",
    "car park",
    "parking (?:lot|garage|spaces?)",
    "reception",
    "front desk",
    "lobby",
    "mail ?room",
    "break room",
    "bike (?:room|racks?|storage|shed)",
    "fire (?:exit|assembly point|extinguishers?)",
    "assembly point",
    "lockers?",
    "printers?",
)
_INTERNAL_THING = _alt(
    "intranet",
    "vpn",
    "wifi",
    "guest (?:wifi|network)",
    "(?:it )?help ?desk",
    "service desk",
    "it support",
    "it department",
    "wiki",
    "shared drive",
    "file server",
    "staging (?:server|environment)",
    "production (?:server|database)",
    "jira",
    "confluence",
    "okta",
    "sso portal",
    "hr portal",
    "hr system",
    "on-call (?:rota|rotation|schedule|roster)",
    "org chart",
    "holiday calendar",
    "all-hands",
    "town hall",
    "team offsite",
    "offsite",
    "expense (?:system|tool|portal|limit)",
    "handbook",
    r"(?:travel|meal|home office|training|equipment|relocation|phone|mileage|per diem) (?:allowance|budget|limit)",
    r"(?:(?:[\w-]+ ){0,2}(?:expense|travel|leave|remote|home|wfh|hybrid|holiday|vacation|pto|security|it|password|"
    r"byod|device|laptop|retention|privacy|refund|returns?|overtime|on-call|parking|pet|social media|acceptable use|"
    r"gifts?|hiring|referral|bonus|pension|training|relocation|whistleblowing|harassment|sick) )polic(?:y|ies)"
    r"(?! (?:of|at) )",
    "employee handbook",
    "escalation path",
    "brand guidelines",
)
_CREDENTIAL = _alt(
    "passwords?",
    "passcodes?",
    "pin",
    "login(?: details)?",
    "log-in",
    "credentials",
    "ssid",
    "door code",
    "alarm code",
    "access code",
    "wifi code",
    "key code",
    "api key",
    "license key",
    "licence key",
)

# "we" of a company, not of people in general nor of a "how can we …" in a tutorial.
_WE = (
    r"(?<!how do )(?<!how can )(?<!how should )(?<!how could )(?<!how would )(?<!why do )(?<!why does )"
    r"(?<!can )(?<!could )(?<!should )(?<!would )(?<!if )(?<!so )"
)

_STRONG_CUES: dict[str, tuple[str, str]] = {
    "our": ("'our' + what an organisation has", rf"\bour (?!{_GENERIC_OUR}\b)[\w'-]+"),
    "company": (
        "'the company' (the user's employer)",
        r"\b(?:the|this|my|our|at) (?:company|firm|organi[sz]ation|employer|workplace)(?:'s)?\b"
        r"(?! (?:that|which|who|whose)\b)|\bcompany-wide\b|\bis there an? (?:company|office|staff|employee) \w+",
    ),
    "office": (
        "a named office of the organisation",
        r"\bthe (?:[\w-]+ ){0,2}?(?<!post )(?<!box )(?<!oval )(?<!home )(?<!back )(?<!front )office(?:s|'s)?\b"
        r"(?! of\b| hours of\b| (?:365|suite|software|apps?|show|series)\b)",
    ),
}

_WEAK_CUES: dict[str, tuple[str, str]] = {
    "role": (
        "a role in the organisation",
        rf"\bwho (?:is|are|was|will be) (?:the |our |my )?(?:current |new |acting |interim )?{_ROLE}\b"
        r"(?! (?:of|at|in) (?!(?:the|our|this) (?:company|firm|organi[sz]ation|team|department|office)))"
        rf"|\b(?:replaced?|new|our|the) \w+ as {_ROLE}\b|\b(?:the|our) {_ROLE} (?:here|at work)\b",
    ),
    "who_does": (
        "who does what here",
        r"\bwho (?:approves|signs off|authori[sz]es|handles|is responsible for|is in charge of|looks after|"
        r"takes care of|owns|maintains|decides|is on[- ]call|are on[- ]call)\b"
        r"|\bwho (?:leads|runs|manages|heads|does|processes|owns) (?:the )?(?:[\w -]{0,30}\b(?:team|department|"
        r"project|office|squad|group|budget|account|programme|program)|payroll|procurement|hiring|recruiting|"
        r"onboarding|facilities|accounting|invoicing|it support)\b"
        r"|\bwho (?:is|are) (?:in|on|the members of|part of) (?:the|our|my) [\w -]{0,30}\b(?:team|department|"
        r"board|squad|committee|council)\b"
        r"|\bwho is [\w-]+(?: [\w-]+)?'s (?:manager|boss|line manager|team lead|deputy|assistant|replacement)\b"
        r"|\bwho (?:do|should|can|could|must) i (?:contact|call|ask|talk to|speak to|email|report to|go to|"
        r"reach out to|turn to|notify|inform|tell)\b",
    ),
    "my_work": (
        "'my' + a thing of the user's job",
        r"\bmy (?:(?:line |direct )?manager|boss|supervisor|team(?: ?lead)?|salary(?: band)?|pay|payslips?|"
        r"pay ?slips?|paycheck|bonus|contract|(?:work|company) (?:laptop|phone|email|account|car)|(?:access )?badge|"
        r"department|overtime|timesheets?|leave(?: balance)?|holidays?|vacation(?: days)?|pto|pension|"
        r"expenses?|expense claim|health insurance|benefits|colleagues?|coworkers?|team ?mates?|employer|job title|"
        r"performance review|appraisal|notice period|probation|start date|bank details|"
        r"(?:vpn|okta|sso|yubikey|rsa|2fa|mfa)(?: token| password| account| login| access)?|"
        r"remaining (?:leave|holidays?|vacation|days)|office)\b",
    ),
    "entitlement": (
        "what the user or staff are entitled to",
        rf"\b{_BENEFIT}\b.{{0,120}}\b(?:do|does|can|will|am|are|have|get) (?:i|we|new hires|employees|staff|interns|"
        r"contractors|new starters|part-timers|managers) (?:get|have|take|earn|accrue|allowed|entitled|receive)\b"
        r"|\b(?:when|how often) (?:do|will|does|am|are) (?:we|i|staff|employees) (?:get )?paid\b"
        r"|\b(?:am i|are we|are employees|are staff|can i|can we|may i|may we) (?:allowed|permitted|entitled|"
        r"supposed|required|expected) to\b"
        rf"|\b(?:do|does|will) (?:employees|staff|we|i|new hires) get (?:a |an |any )?{_BENEFIT}\b"
        r"|\bcan i (?:expense|claim|get reimbursed|be reimbursed)\b"
        r"|\b(?:can|may) (?:i|we) (?:work from home|work remotely|work from abroad|wfh|bring (?:my |our )?(?:dogs?|"
        r"pets?|kids?|children|guests?|visitors?|partners?))\b"
        r"|\b(?:laptops?|monitors?|phones?|headsets?|equipment|hardware)\b.{0,120}\b(?:can|may|do) i "
        r"(?:order|get|request)\b"
        r"|\b(?:can|may) i (?:order|get|request|borrow) (?:a |an |the |my )?(?:new )?(?:laptop|monitor|company "
        r"car|parking|desk|badge|headset|equipment)\b",
    ),
    "process": (
        "how to do something in the organisation",
        r"\bhow (?:do|can|should|would) (?:i|we) (?:request|apply for|book|take|submit|file|log|record|claim(?: back)?|"
        r"report|enrol|enroll|sign up for|register for|get|access|reset|change|update|order|join|connect to|"
        r"download) (?:a |an |the |my |some |for )?(?:new |lost |stolen )?(?:(?:parental|sick|annual|maternity|"
        r"paternity|unpaid|compassionate|special) )?(?:leave|holidays?|vacation|time off|days? off|pto|expenses?|"
        r"expense claim|expense reports?|timesheets?|overtime|mileage|(?:access )?badge|laptop|admin rights|"
        r"business cards|"
        r"parking(?: permit| space)?|desk|pension|share scheme|payslips?|bank details|sick note|business trip|"
        r"travel|hardware|equipment|onboarding)\b",
    ),
    "internal": (
        "an internal system or document",
        rf"\bthe {_INTERNAL_THING}\b|\binternal (?:phone|extension|number|ip|network|wiki|tools?|systems?|portal|"
        r"website|site|app|docs?|documentation|jobs?|vacancies|postings?|polic(?:y|ies)|training|email|mailing list|"
        r"newsletter|chat|slack|channel|repo|repository|gitlab|registry|dashboard|ticket(?:ing)?|hotline)\b"
        # a named team of the organisation ("the platform team", "the data team's")
        r"|\b(?:which|what) (?:slack |teams |chat )?channel\b"
        r"|\bthe (?:[\w-]+ ){1,2}team(?:'s)?\b(?! (?:of|in|at|behind)\b)",
    ),
    "credential": (
        "a credential of the organisation",
        rf"\b{_CREDENTIAL} (?:for|of|to|at|on) (?:the|our)\b|\bthe (?:[\w-]+ ){{0,2}}{_CREDENTIAL}\b"
        r"(?! (?:hash|hashing|manager|strength|requirements|complexity|policy|generator)\b)"
        r"|(?<!a )(?<!strong )(?<!secure )\bwifi (?:password|code|key|ssid)\b"
        r"|\bcode for the (?:printer|door|alarm|gate|safe|lockers?|building|garage|bike room)\b",
    ),
    "premises": ("a place on the premises", rf"\bthe (?:nearest |closest |main |big )?{_PREMISES}\b|\bon floor \d+\b"),
    "hr_vocab": (
        "a word of the organisation's own calendar or pay",
        r"\b(?:payday|pay day|payslips?|pay slips?|per diem|all-hands|on-call (?:rota|rotation|schedule|roster|"
        r"compensation|pay|allowance|duty)|core hours|dress code|leave balance|expense claims?|share scheme|"
        r"assembly point|escalation path|holiday calendar|salary band|new hires|new starters)\b"
        r"|\bwhen (?:is|are|does|do|will) (?:the )?(?:next )?(?:[\w-]+ ){0,2}?(?:all-hands|town hall|offsite|"
        r"performance reviews?|appraisals?|board meeting|team meeting|office party|christmas party|summer party|"
        r"kick-off)\b"
        r"|\bthe (?:q[1-4]|quarterly|annual|yearly) (?:budget|targets?|goals|okrs|roadmap|planning|review|results|"
        r"numbers|forecast)\b",
    ),
    "business": (
        "the organisation's customers or projects",
        r"\bwhich (?:customers|clients|accounts|offices?|departments?|vendors|suppliers)\b"
        r"|\bwhich projects? (?:is|are|does|do|did|has|have) \w+ (?:working|work|worked|assigned|staffed|leading|on)\b"
        r"|\b(?:status|update|progress|deadline|owner|lead|budget|timeline) (?:of|on|for) (?:the )?project "
        r"(?!management\b)\w+"
        r"|\bproject (?!management\b|manager\b)\w+ (?:still|on track|on schedule|delayed|behind|late|launching|"
        r"shipping|going)\b",
    ),
    "we": (
        "'we' of the organisation",
        r"(?<!how )(?<!why )\b(?:did|do|does|have|will|are|were) we (?:ship|release|deploy|launch|sign|lose|win|"
        r"hire|sell|close|invoice|buy|migrate|onboard|use|offer|support|pay|provide|reimburse|cover|employ|allow|"
        r"host|run|sponsor|accept|match)\b"
        r"|(?<!can )(?<!could )(?<!should )(?<!would )(?<!how )(?<!why )(?<!if )\bwe (?:use|host|run|pay|sell|"
        r"shipped|released|deployed|launched|signed|lost|won|hired|sold|closed)\b"
        rf"|{_WE}\b(?:we|us)\b.{{0,120}}\b{_ORG_NOUN}\b|\b{_ORG_NOUN}\b.{{0,120}}{_WE}\b(?:we|us)\b",
    ),
    "here": (
        "'here' (at the user's workplace)",
        r"^(?=.*\b(?:who|process|procedure|polic(?:y|ies)|rules?|allowed|employees?|staff|teams?|departments?|"
        r"head|managers?|in charge|onboarding|works?|hours|lunch|parking)\b).* here$"
        r"|^(?:who|where|which|when)\b.* at work$",
    ),
}

# A general framing: a definition, what is typical or legal, advice for anyone, or a named product's setting.
# It overrules weak cues only.
_GENERAL = re.compile(
    r"^(?:what|who) (?:is|are) (?:a|an)\b|^what (?:does|do) (?:a|an|the) .* (?:do|mean|stand for)$"
    r"|\bwhat does .{0,120} (?:mean|stand for)\b|^explain (?:what )?(?:a|an)\b|^define\b|\bmeaning of\b"
    r"|\bdifference between\b"
    r"|\b(?:typical(?:ly)?|usual(?:ly)?|generally|in general|normally|commonly|on average|average|standard|"
    r"best practices?|most companies|companies|organi[sz]ations|employers|legal(?:ly)?|by law|the law|mandated|"
    r"statutory|required by|under (?:the )?(?:gdpr|hipaa|ccpa|law)|according to (?:the )?law)\b"
    r"|^how (?:do|can|should|would|could) (?:you|one|a company|companies|teams|managers|employers)\b"
    r"|^how (?:do|can|should|could) i (?:ask|tell|approach|convince|talk to|speak to|deal with|handle|negotiate|"
    r"impress|thank|become|prepare for|write|improve|choose|pick|find a|get a (?:raise|promotion|job))\b"
    r"|\b(?:linux|ubuntu|debian|windows|macos|mac|iphone|android|python|javascript|mysql|postgres(?:ql)?|django|"
    r"docker|kubernetes|github|git|aws|azure|sql|bash|root user|sudo|router|chrome|excel)\b"
)


def _compile(cues: dict[str, tuple[str, str]]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?P<{name}>{pattern})" for name, (_, pattern) in cues.items()))


_STRONG = _compile(_STRONG_CUES)
_WEAK = _compile(_WEAK_CUES)
_LABELS = {name: label for name, (label, _) in (_STRONG_CUES | _WEAK_CUES).items()}

_QUOTES = str.maketrans({"’": "'", "‘": "'", "`": "'", "´": "'"})
_CONTRACTION = re.compile(r"\b(who|what|where|when|how|which|that|there|it)'s\b")
_PUNCT = re.compile(r"[^\w'-]+|(?<!\w)['-]+|['-]+(?!\w)")
_WIFI = re.compile(r"\bwi[- ]?fi\b")
_ON_CALL = re.compile(r"\bon[ -]?call\b")
_ALL_HANDS = re.compile(r"\ball[ -]?hands\b")


def _normalise(text: str) -> str:
    t = text[:_MAX_CHARS].lower().translate(_QUOTES)
    t = _CONTRACTION.sub(r"\1 is", t)
    t = _PUNCT.sub(" ", t)
    t = _WIFI.sub("wifi", t)
    t = _ON_CALL.sub("on-call", t)
    t = _ALL_HANDS.sub("all-hands", t)
    return " ".join(t.split())


@dataclass(frozen=True)
class Cue:
    """The rule that matched: its name, what it means, and the words of the question it matched."""

    name: str
    label: str
    words: str

    def __str__(self) -> str:
        words = self.words if len(self.words) <= 60 else self.words[:57] + "..."
        return f"{self.label}: '{words}'"


def find_cue(text: str) -> Cue | None:
    """The cue that makes `text` a question about the organisation, or None when it is a general question."""
    t = _normalise(text)
    m = _STRONG.search(t)
    if m is None:
        m = _WEAK.search(t)
        if m is None or _GENERAL.search(t):
            return None
    name = m.lastgroup or ""
    return Cue(name, _LABELS[name], m.group(name))


def about_organisation(text: str) -> bool:
    """True when `text` asks about the user's own organisation (see the module docstring for the line)."""
    return find_cue(text) is not None


def reason(text: str) -> str | None:
    """The matched cue in words, e.g. "'our' + what an organisation has: 'our vpn'"; None for a general question."""
    cue = find_cue(text)
    return None if cue is None else str(cue)
