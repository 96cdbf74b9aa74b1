"""The C library's reading of numbers and prefixes, as OpenSM's parser gets them.

OpenSM reads every number of partitions.conf with ``strtoul(s, &end, 0)``
(``strtoull`` for GUIDs, the same on LP64) and compares words with
``strncmp(token, word, strlen(token))``; both accept more than they seem to
(octal, signs, blanks, any prefix of a word), and pkeyd's parser must accept
exactly the same.
"""

from __future__ import annotations

import re

U32 = 0xFFFF_FFFF
ULONG_MAX = 0xFFFF_FFFF_FFFF_FFFF
C_SPACE = b" \t\n\v\f\r"  # isspace() in the C locale
HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")

_PLAIN_HEX = re.compile(rb"0[xX][0-9a-fA-F]+")
_BASE_DIGITS = {8: frozenset(b"01234567"), 10: frozenset(b"0123456789"), 16: HEX_DIGITS}


def strtoul(s: bytes) -> tuple[int, int, int]:
    """glibc strtoul(s, &end, 0) on LP64: (value, end offset, base used).

    ``end`` is 0 when nothing was converted. Leading C blanks and a sign are
    accepted, a negative value wraps modulo 2**64, overflow gives ULONG_MAX,
    and "0x" without a hex digit converts the "0" only.
    """
    if _PLAIN_HEX.fullmatch(s):
        return min(int(s[2:], 16), ULONG_MAX), len(s), 16
    n, i = len(s), 0
    while i < n and s[i] in C_SPACE:
        i += 1
    negative = i < n and s[i] == 0x2D
    if i < n and s[i] in b"+-":
        i += 1
    if i + 2 < n and s[i] == 0x30 and s[i + 1] in b"xX" and s[i + 2] in HEX_DIGITS:
        base, i = 16, i + 2
    else:
        base = 8 if i < n and s[i] == 0x30 else 10
    start, digits = i, _BASE_DIGITS[base]
    while i < n and s[i] in digits:
        i += 1
    if i == start:
        return 0, 0, base
    value = int(s[start:i], base)
    if value > ULONG_MAX:
        value = ULONG_MAX
    elif negative:
        value = -value & ULONG_MAX
    return value, i, base


def prefixes(*words: bytes) -> dict[bytes, bytes]:
    """Every prefix of ``words`` -> the first word it is a prefix of.

    A lookup here is OpenSM's chain of ``!strncmp(token, word, strlen(token))``
    tests: the first word the token is a prefix of wins.
    """
    table: dict[bytes, bytes] = {}
    for word in words:
        for n in range(len(word) + 1):
            table.setdefault(word[:n], word)
    return table
