"""`p11tls explain`: parse PKCS#11 call logs into one call model and diagnose them.

Formats: this harness's interposer records (JSON lines), OpenSC pkcs11-spy,
p11-kit log-calls, Pkcs11Interop pkcs11-logger, OpenSC debug logs
(including APDU sizes and reader errors), tpm2-pkcs11's own log and NSS's
module debug log (NSS_DEBUG_PKCS11_MODULE). One module per format; `detect`
picks the format, `rules` holds the diagnosis rules; harness.masking keeps
PINs and key values out of anything echoed.
"""

from __future__ import annotations

from harness.explain.cli import (
    Explanation,
    explain,
    explain_file,
    explain_main,
    parse_file,
    parse_log,
    render_text,
)
from harness.explain.detect import detect_format, read_log
from harness.explain.model import Call, Finding, LogFormat, ParsedLog
from harness.explain.rules import RULE_NAMES, RULES, diagnose

__all__ = [
    "RULES",
    "RULE_NAMES",
    "Call",
    "Explanation",
    "Finding",
    "LogFormat",
    "ParsedLog",
    "detect_format",
    "diagnose",
    "explain",
    "explain_file",
    "explain_main",
    "parse_file",
    "parse_log",
    "read_log",
    "render_text",
]
