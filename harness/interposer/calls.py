"""The interposer's record file: one JSON object per PKCS#11 call.

The interposer (harness/interposer/interposer.c) appends one line per call:

- always: ``fn``, ``seq`` (per process, in call order), ``pid``, ``tid``, ``ts``
  (wall clock at the start, seconds), ``rv`` (``"CKR_OK"``; ``"0x..."`` when
  unnamed), ``us`` (time in the real module);
- ``session``, ``slot``, ``object`` handles where the function has them;
- *Init, key generation, wrap/unwrap/derive: ``mechanism`` {name, value} and
  ``params`` (PSS: hash, mgf, salt_len; OAEP: hash, mgf, source, label_len;
  other parameters: {len}; none: null); with a key: ``key_handle`` and ``key``
  {class, key_type, id (hex), label, ec_params (hex, EC keys)};
- data: ``in_len`` (``sig_len`` for C_Verify/C_VerifyFinal), and for output
  buffers ``out_buf`` (the caller's buffer size, null for a NULL-buffer size
  query) and ``out_len`` (the length the module reported; -1 for
  CK_UNAVAILABLE_INFORMATION); list functions use the same pair for counts;
- C_Login/C_InitPIN/C_SetPIN/C_InitToken: ``user_type``, ``pin_len`` (never the PIN);
- templates (C_CreateObject, C_GenerateKey(Pair), C_FindObjectsInit,
  C_Get/SetAttributeValue, ...): [{type, len, value}], the value only for
  CKA_CLASS, CKA_KEY_TYPE, booleans, CKA_ID, CKA_LABEL, CKA_EC_PARAMS and
  CKA_MODULUS_BITS;
- C_GetMechanismList: ``mechanisms`` (what the client was offered);
- PKCS#11 3.0 functions: C_LoginUser ``user_type``, ``pin_len``, ``username_len``;
  the message-based functions ``param_len``, ``aad_len`` and their data lengths;
  C_SessionCancel ``flags``;
- under an emulation profile: ``emulated`` (what the interposer decided instead
  of the token: hidden, mechanism_list, combined, limit, no_multipart,
  refuse_create, pin_counter, pin_locked, pin_flags, fail_after), with
  ``real_mechanism``, ``limit_bytes``, ``op_in_len``, ``latency_ms`` and the
  like where they apply.

`RecordedCall` gives the common fields typed and keeps the whole object in `RecordedCall.raw`.
`parse_records` is the one reader of this format (the runner's per-case
chunks, `p11tls calls`, `p11tls explain`): a line that is not JSON (a client
killed mid-write) is skipped and reported, and so is a gap in a process's
`seq` numbers (a line the interposer could not write).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.process import read_bounded

MAX_RECORD_BYTES = 1 << 30  # a whole matrix run's calls are a few MB

__all__ = [
    "RecordedCall",
    "RecordedCalls",
    "format_calls_table",
    "load_calls",
    "parse_records",
    "sign_summary",
]


@dataclass(frozen=True)
class RecordedCall:
    """One PKCS#11 call as the interposer saw it."""

    fn: str  # "C_Sign"
    seq: int  # per process, in the order the calls started
    pid: int
    tid: int
    rv: str  # "CKR_OK", or "0x..." for a code the interposer has no name for
    us: int  # time spent in the real module, microseconds
    session: int | None = None
    mechanism: str | None = None  # "CKM_ECDSA" on *Init and key-generation calls
    mechanism_value: int | None = None
    params: Mapping[str, Any] | None = field(default=None, hash=False)
    key: Mapping[str, Any] | None = field(default=None, hash=False)  # class/key_type/id/label
    in_len: int | None = None
    out_buf: int | None = None  # size of the caller's output buffer; None for a size query
    out_len: int | None = None  # length the module reported back
    query: bool = False  # the output buffer was NULL: "how long will it be?"
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False, hash=False)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> RecordedCall:
        """A record line's object (load_calls checks fn, seq and rv first)."""
        mech = obj.get("mechanism")
        mech = mech if isinstance(mech, Mapping) else {}
        return cls(
            fn=obj["fn"], seq=obj.get("seq", 0), pid=obj.get("pid", 0), tid=obj.get("tid", 0),
            rv=obj.get("rv", ""), us=obj.get("us", 0), session=obj.get("session"),
            mechanism=mech.get("name"), mechanism_value=mech.get("value"),
            params=obj.get("params"), key=obj.get("key"), in_len=obj.get("in_len"),
            out_buf=obj.get("out_buf"), out_len=obj.get("out_len"),
            query="out_buf" in obj and obj["out_buf"] is None,
            raw=dict(obj),
        )

    def to_json(self) -> dict[str, Any]:
        """The record line as written (for results.json)."""
        return dict(self.raw)


class RecordedCalls(list[RecordedCall]):
    """The calls of a record (file order: the order the calls ended) and what
    was wrong with the record: torn lines, seq gaps, foreign lines."""

    def __init__(self, calls: Iterable[RecordedCall] = (), problems: Iterable[str] = ()) -> None:
        super().__init__(calls)
        self.problems: list[str] = list(problems)


def _record_problem(obj: Any) -> str | None:
    """Why a parsed line is not a record line, or None if it is one."""
    if not isinstance(obj, dict):
        return "not a JSON object"
    missing = [k for k, t in (("fn", str), ("seq", int), ("rv", str))
               if not isinstance(obj.get(k), t) or isinstance(obj.get(k), bool)]
    if missing:
        return f"no {', '.join(missing)}"
    return None


def parse_records(text: str) -> RecordedCalls:
    """The calls in record text (a file or a piece cut from one).

    Lines that are not JSON are skipped and reported with their number;
    JSON lines that are not records are skipped and reported; per process,
    seq numbers missing between the lowest and highest seen are reported
    (a piece cut from a longer record starts wherever the case started).
    """
    calls: list[RecordedCall] = []
    problems: list[str] = []
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            last = number == len(lines) and not text.endswith("\n")
            problems.append(
                f"line {number} is torn (not JSON"
                + ("; the last line, cut off mid-write" if last else "") + ")"
            )
            continue
        why = _record_problem(obj)
        if why is not None:
            problems.append(f"line {number} is not a call record ({why})")
            continue
        calls.append(RecordedCall.from_json(obj))
    problems.extend(seq_gaps(calls))
    return RecordedCalls(calls, problems)


def seq_gaps(calls: Sequence[RecordedCall]) -> list[str]:
    """Per process, the seq numbers missing between the lowest and highest seen."""
    by_pid: dict[int, set[int]] = {}
    for call in calls:
        by_pid.setdefault(call.pid, set()).add(call.seq)
    out = []
    for pid, seqs in sorted(by_pid.items()):
        missing = sorted(set(range(min(seqs), max(seqs) + 1)) - seqs)
        if missing:
            shown = ", ".join(map(str, missing[:5])) + (" ..." if len(missing) > 5 else "")
            out.append(f"pid {pid}: {len(missing)} call record(s) missing (seq {shown})")
    return out


def load_calls(path: Path) -> RecordedCalls:
    """Every call in a record file, in file order (the order the calls ended).

    A ConfigError if the file cannot be read or its first line is not a call
    record (another kind of file); later torn lines and seq gaps are kept in
    the result's `problems`.
    """
    try:
        text = read_bounded(path, MAX_RECORD_BYTES).decode("utf-8", errors="replace")
    except OSError as exc:
        raise ConfigError(f"cannot read record file {path}: {exc.strerror}") from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            why = _record_problem(json.loads(line))
        except json.JSONDecodeError as exc:
            why = f"not JSON ({exc.msg})"
        except RecursionError:
            why = "JSON nested too deeply"
        if why is not None:
            raise _not_a_record(path, number, why)
        break
    try:
        return parse_records(text)
    except RecursionError:
        raise ConfigError(f"{path} is not an interposer record file: a line is JSON nested "
                          "too deeply") from None


def _not_a_record(path: Path, number: int, why: str) -> ConfigError:
    return ConfigError(
        f"{path} is not an interposer record file: line {number} is {why}; expected one "
        "JSON object per line with fn, seq and rv, as written by the p11tls interposer"
    )


def _as_calls(calls: Sequence[RecordedCall | Mapping[str, Any]]) -> list[RecordedCall]:
    """Calls, also from the plain JSON objects kept in HandshakeRecord.calls."""
    return [c if isinstance(c, RecordedCall) else RecordedCall.from_json(c) for c in calls
            if isinstance(c, RecordedCall) or isinstance(c.get("fn"), str)]


def _ends_operation(call: RecordedCall) -> bool:
    """Whether this call ends the signing operation it belongs to (PKCS#11 5.2)."""
    if call.fn == "C_SignUpdate":
        return call.rv != "CKR_OK"
    # C_Sign / C_SignFinal: a size query or a too-small buffer keeps it active.
    return not call.query and call.rv != "CKR_BUFFER_TOO_SMALL"


def sign_summary(calls: Sequence[RecordedCall | Mapping[str, Any]]) -> dict[str, Any] | None:
    """The signing operation a CertificateVerify used: the last C_SignInit and the
    C_Sign or C_SignUpdate...C_SignFinal calls after it in the same session.

    ``{"mechanism", "params", "parts", "input_bytes", "rv"}``: `parts` counts
    C_SignUpdate calls (0 for a single-part C_Sign); `input_bytes` counts each
    byte once (size queries repeat the input) and is None when no data was
    passed; `rv` is the code that ended the operation, the C_SignInit code when
    that failed, and None when the operation never ended. None without any
    C_SignInit. `calls` may be RecordedCall objects or the record's JSON objects.
    """
    calls = _as_calls(calls)
    inits = [i for i, c in enumerate(calls) if c.fn == "C_SignInit"]
    if not inits:
        return None
    init = calls[inits[-1]]
    summary: dict[str, Any] = {
        "mechanism": init.mechanism, "params": dict(init.params) if init.params else None,
        "parts": 0, "input_bytes": None, "rv": init.rv,
    }
    if init.rv != "CKR_OK":
        return summary
    summary["rv"] = None
    single: int | None = None
    updates: list[int] = []
    for call in calls[inits[-1] + 1:]:
        if (call.pid, call.session) != (init.pid, init.session) or call.fn not in (
            "C_Sign", "C_SignUpdate", "C_SignFinal"
        ):
            continue
        if call.fn == "C_Sign":
            single = call.in_len
        elif call.fn == "C_SignUpdate":
            updates.append(call.in_len or 0)
        if _ends_operation(call):
            summary["rv"] = call.rv
            break
    summary["parts"] = len(updates)
    summary["input_bytes"] = sum(updates) if updates else single
    return summary


def _params_text(params: Mapping[str, Any] | None) -> str:
    if not params:
        return ""
    short = {"hash": "", "mgf": "mgf=", "salt_len": "salt=", "source": "src=",
             "label_len": "label=", "len": "param_len="}
    parts = []
    for key, value in params.items():
        text = str(value).removeprefix("CKM_").removeprefix("CKG_").removeprefix("CKZ_")
        parts.append(f"{short.get(key, key + '=')}{text}")
    return "(" + ",".join(parts) + ")"


def _out_text(call: RecordedCall) -> str:
    if "out_len" not in call.raw:
        return ""
    if call.query:
        return f"size? {call.out_len}"
    if call.out_buf is not None and call.out_buf != call.out_len:
        return f"{call.out_len} (buf {call.out_buf})"
    return str(call.out_len)


def format_calls_table(calls: Sequence[RecordedCall | Mapping[str, Any]]) -> str:
    """A readable table: one row per call (function, mechanism, bytes in/out, rv,
    time), the signing summary and the record's problems under it."""
    calls_in = calls
    calls = _as_calls(calls)
    threads = {(c.pid, c.tid) for c in calls}
    header = ["seq", "function", "session", "mechanism", "in", "out", "rv", "us"]
    if len(threads) > 1:
        header.insert(1, "pid/tid")
    rows = []
    for c in calls:
        mechanism = (c.mechanism or "") + _params_text(c.params)
        if c.fn == "C_Login":
            mechanism = str(c.raw.get("user_type", ""))
        in_len = c.raw.get("in_len", c.raw.get("sig_len"))
        row = [str(c.seq), c.fn, "" if c.session is None else str(c.session), mechanism,
               "" if in_len is None else str(in_len), _out_text(c), c.rv, str(c.us)]
        if len(threads) > 1:
            row.insert(1, f"{c.pid}/{c.tid}")
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    numeric = {"seq", "session", "in", "us"}

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.rjust(w) if name in numeric else cell.ljust(w)
            for cell, w, name in zip(cells, widths, header)
        ).rstrip()

    out = [line(header), line(["-" * w for w in widths]), *map(line, rows)]
    sign = sign_summary(calls)
    total_ms = sum(c.us for c in calls) / 1000
    out.append(f"{len(calls)} calls, {total_ms:.1f} ms in the module")
    for problem in getattr(calls_in, "problems", ()):
        out.append(f"record problem: {problem}")
    if sign is not None:
        parts = "single-part" if sign["parts"] == 0 else f"{sign['parts']} parts"
        out.append(
            f"signing: {sign['mechanism']}{_params_text(sign['params'])}, "
            f"{sign['input_bytes']} bytes, {parts}, {sign['rv']}"
        )
    return "\n".join(out) + "\n"


def parse_calls(chunk: bytes) -> list[dict[str, Any]]:
    """The call records of a piece of a record file, as their JSON objects
    (read by parse_records: torn lines are skipped)."""
    return [call.to_json() for call in parse_records(chunk.decode(errors="replace"))]


def size_of(path: Path | None) -> int:
    try:
        return path.stat().st_size if path is not None else 0
    except FileNotFoundError:
        return 0


def read_from(path: Path, offset: int) -> bytes:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read()
    except FileNotFoundError:
        return b""


# The DigestInfo a CKM_RSA_PKCS signature of a TLS scheme covers: prefix + digest.
_DIGEST_INFO = {35: "rsa_pkcs1_sha1", 51: "rsa_pkcs1_sha256", 67: "rsa_pkcs1_sha384",
                83: "rsa_pkcs1_sha512"}
_ECDSA_DIGEST = {32: "ecdsa_secp256r1_sha256", 48: "ecdsa_secp384r1_sha384",
                 64: "ecdsa_secp521r1_sha512"}
_PSS_HASH = {"CKM_SHA256": "rsa_pss_rsae_sha256", "CKM_SHA384": "rsa_pss_rsae_sha384",
             "CKM_SHA512": "rsa_pss_rsae_sha512"}


def scheme_of_signing_call(sign: Mapping[str, Any] | None) -> str | None:
    """The TLS signature scheme a host-hashing client's signing call implies,
    for a peer whose log does not name it (openvpn 2.6, hostapd): from the
    mechanism, the PSS hash or the digest length. None when the call does not
    tell (raw CKM_RSA_X_509, a combined mechanism, no call)."""
    if not sign or sign.get("rv") != "CKR_OK":
        return None
    mechanism, size = sign.get("mechanism"), sign.get("input_bytes")
    if mechanism == "CKM_ECDSA":
        return _ECDSA_DIGEST.get(size) if isinstance(size, int) else None
    if mechanism == "CKM_RSA_PKCS":
        return _DIGEST_INFO.get(size) if isinstance(size, int) else None
    if mechanism == "CKM_RSA_PKCS_PSS":
        return _PSS_HASH.get(str((sign.get("params") or {}).get("hash")))
    if mechanism == "CKM_EDDSA":
        return "ed25519"
    return None
