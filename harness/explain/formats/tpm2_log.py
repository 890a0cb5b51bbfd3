"""tpm2-pkcs11's own log (TPM2_PKCS11_LOG_LEVEL, written to stderr).

    INFO on line: "457" in file: "src/pkcs11.c": enter "C_Login"
    ERROR:esys:src/tss2-esys/api/Esys_Unseal.c:98:Esys_Unseal() Esys Finish ErrorCode (0x0000098e)
    ERROR on line: "1055" in file: "src/lib/tpm.c": Esys_Unseal: tpm:session(1):the authorization …
    INFO on line: "457" in file: "src/pkcs11.c": return "C_Login" value: 160

Level 2 (verbose) logs every call's entry and numeric return value; level 0/1
only the ERROR/WARNING lines, from which the call is inferred where the
message names it. The TSS's own lines (`ERROR:esys:…`) and the client's
(`error: PKCS11 function C_Login failed: rv = CKR_PIN_INCORRECT (0xa0)`,
pkcs11-tool) are read too. No mechanism or data length is in this log.
"""

from __future__ import annotations

import re

from harness.explain import names
from harness.explain.model import Call, KeyBook, LogFormat, ParsedLog

LINE = re.compile(
    r'^(?P<level>INFO|ERROR|WARNING|WARN|DEBUG|VERBOSE) on line: "\d+" in file: "(?P<file>[^"]+)": '
    r"(?P<text>.*)$"
)
ENTER = re.compile(r'^enter "(C_\w+)"')
RETURN = re.compile(r'^return "(C_\w+)" value: (\d+)')
TSS = re.compile(r"^(ERROR|WARNING):(esys\w*|tcti\w*|sys\w*|fapi\w*):\S+?:\d+:(?P<text>.*)$")
CLIENT = re.compile(r"PKCS11 function (C_\w+) failed: rv = (CKR_\w+)")
MECHANISM = re.compile(r"^mechanism: (0x[0-9a-fA-F]+)\s*$")  # sign.c/verify.c at *Init
CREATE_CLASS = re.compile(r"CKA_CLASS\((\d+)\), CKA_KEY_TYPE\((\d+)\)")
# Level 0/1 logs: messages that name the call they come from.
INFERRED = (
    (re.compile(r"Can only create .* objects"), "C_CreateObject"),
    (re.compile(r"Error unsealing wrapping key|Could not start Auth Session"), "C_Login"),
)


def looks_like(line: str) -> bool:
    return bool(LINE.match(line) or TSS.match(line))


def mentions_tpm2(lines: list[str] | tuple[str, ...]) -> bool:
    """True when a log comes from tpm2-pkcs11 (its log lines, its TSS, its names)."""
    markers = ("tpm2-pkcs11", "tpm2_pkcs11", "TPM2_PKCS11", "TPM2.0 Cryptoki", "tss2-esys")
    return any(looks_like(line) or any(m in line for m in markers) for line in lines[:5000])


def _detail(parts: list[str]) -> str | None:
    return "; ".join(dict.fromkeys(p for p in parts if p)) or None


def parse(lines: list[str]) -> ParsedLog:
    book = KeyBook()
    current: dict[str, object] | None = None  # the call entered and not yet returned
    errors: list[str] = []  # ERROR text seen inside the current call (or orphaned)
    saw_enter = False
    pending: list[Call] = []

    def start(fn: str, number: int) -> dict[str, object]:
        return {"fn": fn, "line": number, "errors": [], "class": None, "key_type": None}

    def finish(state: dict[str, object], end: int, rv: str | None, inferred: bool) -> None:
        errs = state["errors"]
        assert isinstance(errs, list)
        pending.append(Call(
            fn=str(state["fn"]), line=int(str(state["line"])), end_line=end, rv=rv,
            object_class=state["class"] if isinstance(state["class"], str) else None,
            key_type=state["key_type"] if isinstance(state["key_type"], str) else None,
            mechanism=_text(state.get("mechanism")),
            detail=_detail(errs), inferred=inferred))

    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip()
        found = LINE.match(line)
        tss = TSS.match(line) if not found else None
        client = CLIENT.search(line) if not (found or tss) else None
        if found:
            text, level = found.group("text"), found.group("level")
            enter, ret = ENTER.match(text), RETURN.match(text)
            if enter:
                saw_enter = True
                if current is not None:  # entered again without a return: the log cut it
                    finish(current, number - 1, None, False)
                current = start(enter.group(1), number)
                continue
            if ret:
                state = current if current and current["fn"] == ret.group(1) else start(
                    ret.group(1), number)
                finish(state, number, names.return_code_name(int(ret.group(2))), False)
                current = None
                continue
            mechanism = MECHANISM.match(text)
            if mechanism and current is not None:
                current["mechanism"] = names.mechanism_name(int(mechanism.group(1), 16))
                continue
            if level != "ERROR":
                continue
            target = current
            if target is None:
                fn = next((fn for pattern, fn in INFERRED if pattern.search(text)), None)
                if fn is None or saw_enter:
                    errors.append(text)
                    continue
                if pending and pending[-1].fn == fn and pending[-1].inferred:
                    last = pending.pop()
                    target = {"fn": fn, "line": last.line,
                              "errors": [*(last.detail or "").split("; "), text],
                              "class": last.object_class, "key_type": last.key_type}
                else:
                    target = start(fn, number)
                _object_of(target, text)
                finish(target, number, None, True)
                continue
            errs = target["errors"]
            assert isinstance(errs, list)
            errs.append(text)
            _object_of(target, text)
        elif tss and current is not None:
            errs = current["errors"]
            assert isinstance(errs, list)
            if tss.group(1) == "ERROR":
                errs.append(" ".join(tss.group("text").split()))
        elif client:
            # pkcs11-tool's own line names the return code a level 0/1 log lacks
            fn, rv = client.groups()
            for i in range(len(pending) - 1, -1, -1):
                if pending[i].fn == fn and pending[i].rv is None:
                    pending[i] = pending[i].replace(rv=rv, end_line=number)
                    break
    if current is not None:
        finish(current, len(lines), None, False)
    for call in pending:
        book.add(call)
    problems: tuple[str, ...] = ()
    if errors and not pending:
        problems = (f"{len(errors)} ERROR line(s) name no PKCS#11 call: {errors[0]}",)
    return ParsedLog(format=LogFormat.TPM2_PKCS11, calls=tuple(book.calls()),
                     lines=tuple(lines), problems=problems)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _object_of(state: dict[str, object], text: str) -> None:
    """C_CreateObject's refusal names the class and key type it was given."""
    found = CREATE_CLASS.search(text)
    if found:
        state["class"] = names.object_class_name(int(found.group(1)))
        state["key_type"] = names.key_type_name(int(found.group(2)))
