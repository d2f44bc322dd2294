"""Personal data and secrets in text: found by pattern, confirmed by structure, replaced by a
typed placeholder.

Each category is a pattern for candidates and a check that rejects look-alikes: an IPv4 address
has four octets of at most 255 (a version number 3.11.2 has three), an IPv6 address parses and has
at least three groups (a slice `a[::2]` does not), a card number passes the Luhn checksum (an order
number of the same length almost never does), a phone number has separators in a phone's places
(a date or an ISBN does not), a secret has a known issuer's prefix and length or is a PEM
private-key block. What is not caught: phone numbers written without separators, names and postal
addresses, secrets of issuers not listed here (docs/filter.md#personal-data says so).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

PLACEHOLDERS = {"email": "<EMAIL>", "phone": "<PHONE>", "ip_address": "<IP_ADDRESS>",
                "credit_card": "<CREDIT_CARD>", "secret": "<SECRET>"}

SECRET_PATTERNS = (
    r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----[\s\S]*?-----END (?:[A-Z]+ )*PRIVATE KEY-----",
    r"\bAKIA[0-9A-Z]{16}\b",  # AWS access key id
    r"\bgh[pousr]_[A-Za-z0-9]{36,255}\b",  # GitHub token
    r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b",  # Slack token
    r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}\b",  # OpenAI / Anthropic style API key
    r"\bAIza[0-9A-Za-z_-]{35}\b",  # Google API key
    r"\bglpat-[A-Za-z0-9_-]{20}\b",  # GitLab token
)

PATTERNS = {
    "secret": re.compile("|".join(SECRET_PATTERNS)),
    "email": re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
    "credit_card": re.compile(r"(?<![\d-])(?<!\d\.)\d(?:[ -]?\d){12,18}(?![\d-])(?!\.\d)"),
    "ip_address": re.compile(r"(?<![\w.:])(?:\d{1,3}(?:\.\d{1,3}){3}"  # v4
                             r"|[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7})(?![\w.:])"),  # v6
    "phone": re.compile(r"(?<![\w+])(?<!\d[ .-])(?:\+\d{1,3}[ .-]?)?"  # country code
                        r"(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{4}(?![ .-]?\d)(?!\w)"),
}


def luhn_valid(candidate: str) -> bool:
    digits = [int(c) for c in candidate if c.isdigit()]
    total = sum(d if i % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2) for i, d in enumerate(reversed(digits)))
    return total % 10 == 0


def ip_valid(candidate: str) -> bool:
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return address.version == 4 or sum(1 for g in candidate.split(":") if g) >= 3


CONFIRM: dict[str, Callable[[str], bool]] = {"credit_card": luhn_valid, "ip_address": ip_valid}
# Secrets first: a key block may hold anything; cards before phones (a card's digits hold phone shapes).
ORDER = ("secret", "email", "credit_card", "ip_address", "phone")


def find(text: str, category: str) -> list[re.Match]:
    confirm = CONFIRM.get(category, bool)
    return [m for m in PATTERNS[category].finditer(text) if confirm(m.group())]


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
