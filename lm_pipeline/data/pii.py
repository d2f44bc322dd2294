"""Personal data and secrets in text: found by pattern, confirmed by structure, replaced by a
typed placeholder.

Each category is a pattern for candidates and a check that rejects look-alikes: an IPv4 address
has four octets of at most 255 (a version number 3.11.2 has three), an IPv6 address parses and has
at least three groups (a slice `a[::2]` does not), a card number has an issuer's prefix and length
and passes the Luhn checksum (a tenth of all numbers pass it alone), a phone number has separators
in a phone's places and an area code's shape (a date, an ISBN or a run of years does not), a
secret has a known issuer's prefix and length or is a PEM private-key block. What is not
caught: phone numbers written without separators, names and postal addresses, secrets of issuers
not listed here (docs/filter.md#personal-data says so).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

PLACEHOLDERS = {"email": "<EMAIL>", "phone": "<PHONE>", "ip_address": "<IP_ADDRESS>",
                "credit_card": "<CREDIT_CARD>", "secret": "<SECRET>"}

SECRET_PATTERNS = (
    r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?"  # PEM, and PGP's KEY BLOCK
    r"-----END (?:[A-Z]+ )*PRIVATE KEY(?: BLOCK)?-----",
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",  # AWS access key id (ASIA: temporary credentials)
    r"\bgh[pousr]_[A-Za-z0-9]{36,255}\b",  # GitHub token
    r"\bgithub_pat_[A-Za-z0-9_]{22,255}\b",  # GitHub fine-grained token
    r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b",  # Slack token
    r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}\b",  # OpenAI / Anthropic style API key
    r"\bAIza[0-9A-Za-z_-]{35}\b",  # Google API key
    r"\bglpat-[A-Za-z0-9_-]{20,}",  # GitLab token (20 characters, more in newer ones)
)

PATTERNS = {
    "secret": re.compile("|".join(SECRET_PATTERNS)),
    # Starting only where the run of local-part characters starts (not at each word inside it,
    # as \b would: quadratic in a run such as `a.a.a.`, minutes for a document of 1 MB).
    "email": re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
                        r"\.[A-Za-z]{2,}\b"),
    # Up to 19 digits and the other digits beside them: find_cards looks for the card inside.
    "credit_card": re.compile(r"(?<![\d-])(?<!\d\.)\d(?:[ -]?\d){12,}(?![\d-])(?!\.\d)"),
    # A sentence's full stop may follow either; a :port may follow v4 (v6 writes [addr]:port);
    # a dot and a word (a host name's next label, a fifth version part) may not. v4 may follow a
    # label's colon (`addr:10.0.0.1`), not an IPv6 group's (`::10.0.0.1`: not half an address).
    "ip_address": re.compile(r"(?<![\w.])(?<![0-9A-Fa-f:]:)\d{1,3}(?:\.\d{1,3}){3}(?!\w)(?!\.\w)"  # v4
                             r"|(?<![\w.:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}"  # v6
                             r"(?![\w:])(?!\.\w)"),
    # The area code: any after a country code (+44, (+44), with a trunk (0) or not); without one,
    # three digits, one in parentheses, one after a trunk 0 (020 7946 0958), or North America's
    # after its trunk 1 (1-800-...: from 2 to 9). Runs of numbers (2019 2020 2021, version
    # 20.100.2024, 1 128 256 1024) have none of these shapes.
    "phone": re.compile(r"(?<![\w+])(?<!\d[ .-])"
                        r"(?:(?:\+\d{1,3}|\(\+\d{1,3}\))[ .-]?(?:\(0\)[ .-]?)?"
                        r"(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])"
                        r"|\(\d{2,4}\)[ .-]?|\d{3}[ .-]|0\d{1,3}[ .-]"
                        r"|1[ .-](?:\([2-9]\d{2}\)[ .-]?|[2-9]\d{2}[ .-]))"
                        r"\d{3,4}[ .-]\d{4}(?![ .-]?\d)(?!\w)"),
}


def prefixes(*ranges: tuple[int, int]) -> tuple[str, ...]:
    return tuple(str(n) for low, high in ranges for n in range(low, high + 1))


# Card issuers' number prefixes (IIN ranges) and lengths: Visa; Mastercard; American Express;
# Discover; Diners Club; JCB; UnionPay; Maestro; Mir; RuPay. A tenth of all numbers pass Luhn;
# few also look issued.
CARD_ISSUERS = ((prefixes((4, 4)), range(13, 20)), (prefixes((51, 55), (2221, 2720)), range(16, 17)),
                (prefixes((34, 34), (37, 37)), range(15, 16)),
                (prefixes((6011, 6011), (644, 649), (65, 65)), range(16, 20)),
                (prefixes((300, 305), (3095, 3095), (36, 36), (38, 39)), range(14, 20)),
                (prefixes((3528, 3589)), range(16, 20)), (prefixes((62, 62), (81, 81)), range(16, 20)),
                (prefixes((50, 50), (56, 69)), range(12, 20)), (prefixes((2200, 2204)), range(16, 20)),
                (prefixes((508, 508), (60, 60), (82, 82)), range(16, 17)))


def card_valid(candidate: str) -> bool:
    digits = "".join(c for c in candidate if c.isdigit())
    issued = any(digits.startswith(starts) and len(digits) in lengths for starts, lengths in CARD_ISSUERS)
    return issued and luhn_valid(digits)


def luhn_valid(candidate: str) -> bool:
    digits = [int(c) for c in candidate if c.isdigit()]
    total = sum(d if i % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2) for i, d in enumerate(reversed(digits)))
    return total % 10 == 0


def ip_valid(candidate: str) -> bool:
    if ":" not in candidate:  # v4: ipaddress refuses zero-padded octets (192.168.001.010)
        return all(int(octet) <= 255 for octet in candidate.split("."))
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return address.version == 4 or sum(1 for g in candidate.split(":") if g) >= 3


CONFIRM: dict[str, Callable[[str], bool]] = {"ip_address": ip_valid}
# Secrets first: a key block may hold anything; cards before phones (a card's digits hold phone shapes).
ORDER = ("secret", "email", "credit_card", "ip_address", "phone")
DIGIT_GROUP, DIGIT_GROUPS = re.compile(r"\d+"), re.compile(r"\d(?:[ -]?\d)*")
EMAIL_HERE = re.compile(PATTERNS["email"].pattern.removeprefix("(?<![A-Za-z0-9._%+-])"))


def card_shaped(lengths: list[int]) -> bool:
    """How cards are printed: in fours (the last group shorter), or 4-6-5 and 4-6-4 (Amex, Diners)."""
    return (len(lengths) >= 4 and set(lengths[:-1]) == {4} and lengths[-1] <= 4) or \
        lengths in ([4, 6, 5], [4, 6, 4])


def find(text: str, category: str) -> list[re.Match]:
    if category == "email":
        return find_emails(text)
    if category == "credit_card":
        return [card for run in PATTERNS[category].finditer(text) for card in find_cards(text, run)]
    confirm = CONFIRM.get(category, bool)
    return [m for m in PATTERNS[category].finditer(text) if confirm(m.group())]


def find_emails(text: str) -> list[re.Match]:
    """The email pattern's matches, and an address right after one (`a@x.com-b@y.org`), which its
    look-behind refuses: it sees a local-part character there."""
    found, pos = [], 0
    while m := PATTERNS["email"].search(text, pos):
        found.append(m)
        while joined := EMAIL_HERE.match(text, found[-1].end()):
            found.append(joined)
        pos = found[-1].end()
    return found


def find_cards(text: str, run: re.Match) -> list[re.Match]:
    """The cards in a run of digit groups: the whole run if it is one, else the longest valid
    number of whole groups, grouped as cards are printed, from each group on (`Qty 2 4111 1111
    1111 1111`, `4111 1111 1111 1111 123`: a count or a CVV beside it; not `1 2 4 8 ... 2048`)."""
    groups = [(m.start(), m.end()) for m in DIGIT_GROUP.finditer(text, run.start(), run.end())]
    cards, i = [], 0
    while i < len(groups):
        if text[groups[i][0]] in "0179":  # no issuer's prefix starts so
            i += 1
            continue
        ends, digits = [], 0  # the groups a card from group i could end with: 13 to 19 digits
        for j in range(i, len(groups)):
            digits += groups[j][1] - groups[j][0]
            if digits > 19:
                break
            whole = i == 0 and j == len(groups) - 1
            if digits >= 13 and (whole or card_shaped([b - a for a, b in groups[i:j + 1]])):
                ends.append(j)
        j = next((j for j in reversed(ends) if card_valid(text[groups[i][0]:groups[j][1]])), None)
        if j is not None:
            cards.append(DIGIT_GROUPS.fullmatch(text, groups[i][0], groups[j][1]))
        i = i + 1 if j is None else j + 1
    return cards


def scrub(text: str, actions: dict[str, str]) -> tuple[str, dict[str, int], str | None]:
    """(text with every category to redact replaced by its placeholder, matches per category, the
    first category whose action is drop and that was found, or None)."""
    found: dict[str, int] = {}
    for category in ORDER:
        action = actions.get(category, "keep")
        if action == "keep":
            continue
        matches = find(text, category)
        if not matches:
            continue
        found[category] = len(matches)
        if action == "drop":
            return text, found, category
        text = replace(text, matches, PLACEHOLDERS[category])
    return text, found, None


def replace(text: str, matches: list[re.Match], placeholder: str) -> str:
    parts, last = [], 0
    for m in matches:
        parts += [text[last:m.start()], placeholder]
        last = m.end()
    return "".join(parts) + text[last:]


def redact_all(text: str) -> str:
    """Every category replaced, whatever the configured actions: for text shown in reports."""
    return scrub(text, dict.fromkeys(PLACEHOLDERS, "redact"))[0]
