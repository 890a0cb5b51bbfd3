"""What the token offers predicts what each TLS client will ask of it.

Two layers. `notes()` are short statements over the token's mechanism list
(what `p11tls doctor` prints under "predictions"). `predict()` is the
prediction per matrix cell — client × key × TLS version (× the server forcing
rsa_pkcs1_sha256): the mechanism the client will ask for, how many bytes the
token will be given, and whether the handshake works.

A cell's prediction comes from rules over what the token offers (its
mechanisms; under an emulation profile also its input cap, multi-part
support and refused imports), restating what the matrix measured (docs/design.md,
the README, harness/data/). Where the token offers what the measured token
(SoftHSM 2.6.1) offered as far as the cell goes, the facts measured on the
installed versions (harness/data/expected_mechanisms.toml, known_failures.toml,
keyed by harness/versions.py) take the place of the rule; on versions with no
fact the rules stand alone. `matches()` says whether a record is what was
predicted: same outcome, same mechanism, bytes inside the predicted range.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from typing import Any

from harness.interposer.profile import Profile
from harness.matrix.cases import Case, cases
from harness.matrix.keys import Provisioning, key_spec
from harness.tls.version import TLSVersion
from harness.token.measurements import Measurement
from harness.verdict.expectations import (
    EXPECTED_MECHANISMS,
    KNOWN_FAILURES,
    Expectation,
    FactTable,
    first_match,
    load_table,
)
from harness.versions import Versions


@dataclass(frozen=True)
class Note:
    """One prediction from what the token offers (or lacks)."""

    when: str  # the token's fact: "advertises CKM_ECDSA_SHA256"
    then: str  # what the clients will do

    def __str__(self) -> str:
        return f"{self.when}: {self.then}"


def notes(mechanisms: set[str]) -> list[Note]:
    """The predictions that follow from the token's mechanism names (CKM_…)."""
    have = {m.removeprefix("CKM_") for m in mechanisms}
    found: list[Note] = []
    combined_ec = sorted(m for m in have if m.startswith("ECDSA_SHA"))
    if combined_ec:
        found.append(Note(
            f"advertises {', '.join('CKM_' + m for m in combined_ec)}",
            "Java 17+ (SunPKCS11) and pkcs11-provider send the whole TLS 1.2 transcript "
            "(~1.5-3 KB) through C_SignUpdate; a card with a small input buffer fails there "
            "(java-nocombined, OpenSSL engine and GnuTLS hash on the host and sign 32-64 B)"))
    if "ECDSA" not in have and combined_ec:
        found.append(Note("no raw CKM_ECDSA", "OpenSSL (engine) and GnuTLS cannot sign with "
                          "EC keys: they hash on the host and need CKM_ECDSA"))
    if "RSA_PKCS_PSS" not in have:
        found.append(Note(
            "no CKM_RSA_PKCS_PSS",
            "TLS 1.3 with RSA keys fails for every client (TLS 1.3 allows only RSA-PSS); in "
            "TLS 1.2 GnuTLS and Java fall back to PKCS#1 v1.5 (CKM_RSA_PKCS, 51 B), while the "
            "libp11 engine falls back to CKM_RSA_X_509"
            + (" (offered here)" if "RSA_X_509" in have else ", which is not offered either")))
    combined_rsa = sorted(m for m in have if m.startswith("SHA") and m.endswith("_RSA_PKCS"))
    if combined_rsa:
        found.append(Note(
            f"advertises {', '.join('CKM_' + m for m in combined_rsa)}",
            "Java picks the combined mechanism when the server forces rsa_pkcs1_sha256 in "
            "TLS 1.2 and streams the transcript (~2.3 KB) through C_SignUpdate"))
    if "EDDSA" not in have:
        found.append(Note("no CKM_EDDSA", "Ed25519 keys are skipped (no client can sign)"))
    return found


# -- per-cell predictions ---------------------------------------------------------------

# What a combined mechanism (or EdDSA) is given: in TLS 1.2 every handshake
# message before the CertificateVerify (2.0-2.7 KB in the matrix, ~1.6 KB with
# a bare server; a longer chain or more CA names make it longer), in TLS 1.3
# 64 + 34 + the transcript hash: 130 (SHA-256 suite) or 146 (SHA-384).
TLS12_TRANSCRIPT = (1500, 3000)
TLS13_MESSAGE = (130, 146)
# An input cap inside the TLS 1.2 range: the usual transcript is past this.
TYPICAL_TLS12_TRANSCRIPT = sum(TLS12_TRANSCRIPT) // 2
DIGEST = {256: 32, 384: 48, 512: 64}
CURVE_HASH = {"p256": 256, "p384": 384, "p521": 512}
DIGEST_INFO_SHA256 = 51  # 19-byte DigestInfo prefix + 32-byte SHA-256 digest
# Combined hash-and-sign mechanisms: Java and pkcs11-provider feed them the
# message through C_SignUpdate.
_STREAMED = re.compile(r"^CKM_(ECDSA_SHA\d+|SHA\d+_RSA_PKCS(_PSS)?)$")
CKK = {"rsa": "CKK_RSA", "ecdsa": "CKK_EC", "eddsa": "CKK_EC_EDWARDS"}

# What the embedded SoftHSM 2.6.1 token offers: the token the stack facts of
# harness/data/ were measured on.
MEASURED_TOKEN = frozenset({
    "CKM_RSA_PKCS", "CKM_RSA_PKCS_PSS", "CKM_RSA_X_509",
    "CKM_SHA1_RSA_PKCS", "CKM_SHA224_RSA_PKCS", "CKM_SHA256_RSA_PKCS",
    "CKM_SHA384_RSA_PKCS", "CKM_SHA512_RSA_PKCS", "CKM_SHA1_RSA_PKCS_PSS",
    "CKM_SHA224_RSA_PKCS_PSS", "CKM_SHA256_RSA_PKCS_PSS", "CKM_SHA384_RSA_PKCS_PSS",
    "CKM_SHA512_RSA_PKCS_PSS", "CKM_ECDSA", "CKM_EDDSA",
})


# Tokens whose input limits and imports are known without measuring: software
# tokens (no input buffer; they import), by CK_TOKEN_INFO.manufacturerID.
SOFTWARE_TOKENS = frozenset({"SoftHSM project"})
MEASURE = "measure with p11tls token-sweep"


@dataclass(frozen=True)
class TokenFacts:
    """What is known of a token: its mechanisms (CKM_ names) and, when an
    emulation profile says so or p11tls token-sweep measured it, how it limits
    signing and imports. What a token does not advertise and nobody measured
    is unknown: `limits_known` False, `imports_known` without the key type."""

    mechanisms: frozenset[str]
    max_input_bytes: int | None = None
    limit_mechanisms: frozenset[str] | None = None  # None: the cap holds for every mechanism
    over_limit_rv: str = "CKR_GENERAL_ERROR"
    multipart: bool = True
    refused_imports: tuple[tuple[str | None, str], ...] = ()  # private keys: (CKK_ or any, rv)
    limits_known: bool = True
    imports_known: frozenset[str] | None = None  # CKK_ types; None: every one
    measured: bool = False  # the limits come from p11tls token-sweep

    @classmethod
    def of(cls, mechanisms: Iterable[str], profile: Profile | None = None, *,
           measurement: Measurement | None = None,
           manufacturer: str | None = None, write_protected: bool = False) -> TokenFacts:
        """From mechanism names (with or without CKM_) as the clients see them
        (under a profile: through the interposer), the profile's own rules, and
        what p11tls token-sweep measured. `manufacturer` None: a token the
        caller vouches for (the embedded SoftHSM2); else a software token's
        maker (SOFTWARE_TOKENS) makes limits and imports known. `write_protected`
        (CKF_WRITE_PROTECTED): no import can work, known without writing. No
        other import probe writes nothing everywhere (OpenSC may store a
        CKA_TOKEN=FALSE private key on the card), so none is made."""
        names = frozenset("CKM_" + m.removeprefix("CKM_") for m in mechanisms)
        if write_protected:
            facts = cls.of(names, profile, measurement=measurement, manufacturer=manufacturer)
            return replace(facts, imports_known=None, refused_imports=(
                (None, "CKR_TOKEN_WRITE_PROTECTED"),))
        if measurement is not None:
            return cls._measured(names, measurement)
        if profile is None:
            known = manufacturer is None or manufacturer.strip() in SOFTWARE_TOKENS
            return cls(names, limits_known=known,
                       imports_known=None if known else frozenset())
        sign = profile.sign
        return cls(
            names, max_input_bytes=sign.max_input_bytes,
            limit_mechanisms=(frozenset(sign.limit_mechanisms)
                              if sign.limit_mechanisms is not None else None),
            over_limit_rv=sign.over_limit_rv, multipart=sign.multipart,
            refused_imports=tuple((r.key_type, r.rv) for r in profile.create_object.refuse
                                  if r.object_class == "CKO_PRIVATE_KEY"))

    @classmethod
    def _measured(cls, names: frozenset[str], found: Measurement) -> TokenFacts:
        """The smallest limit token-sweep found, on the mechanisms that had one."""
        limited = {m: v for m, v in found.limits.items() if v.get("smallest_refused")}
        cap = min(((v.get("largest_ok") or 0, str(v.get("refused_rv") or "CKR_GENERAL_ERROR"))
                   for v in limited.values()), default=None)
        return cls(
            names, max_input_bytes=cap[0] if cap else None,
            limit_mechanisms=frozenset(limited) if limited else None,
            over_limit_rv=cap[1] if cap else "CKR_GENERAL_ERROR",
            refused_imports=tuple((kt, rv) for kt, rv in found.imports.items()
                                  if rv != "CKR_OK"),
            imports_known=frozenset(found.imports), measured=True)

    def import_known(self, key_type: str) -> bool:
        return self.imports_known is None or key_type in self.imports_known

    def seen_by(self, client: str, java_config: Iterable[str] = ()) -> TokenFacts:
        """The token as one client sees it: SunPKCS11's disabledMechanisms
        (--java-p11-config) take mechanisms away from the Java clients."""
        if not client.startswith("java"):
            return self
        disabled = {name for line in java_config
                    if line.strip().startswith("disabledMechanisms")
                    for name in re.findall(r"\bCKM_\w+", line)}
        return replace(self, mechanisms=self.mechanisms - disabled) if disabled else self


@dataclass(frozen=True)
class Prediction:
    """One cell: what the client will ask of the token, and whether it works."""

    client: str
    key: str
    tls: str
    provisioning: str = "generate"
    sigalgs: str | None = None
    mechanism: str | None = None  # None: the token is not asked to sign
    bytes_min: int | None = None
    bytes_max: int | None = None
    outcome: str = "ok"  # ok / fail / skip / unknown (depends on what nobody measured)
    error: str | None = None  # the CKR code or reason of a predicted failure
    why: str = ""
    source: str = "rule"  # "rule" or the data file whose measured fact it is

    @property
    def bytes_text(self) -> str:
        low, high = self.bytes_min, self.bytes_max
        if low is None:
            return "-"
        if (low, high) == TLS12_TRANSCRIPT:
            return "the whole TLS 1.2 transcript, ~1.6-2.7 KB"
        if (low, high) == TLS13_MESSAGE:
            return "130/146 B (TLS 1.3)"
        return f"{low} B" if low == high else f"{low}-{high} B"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def differences(self, record: Any) -> list[str] | None:
        """How a record (a HandshakeRecord or its JSON) differs from this
        prediction; None when the case did not run (skipped, harness error)."""
        get = record.get if isinstance(record, Mapping) else (
            lambda name: getattr(record, name, None))
        outcome = get("outcome")
        if outcome not in ("ok", "fail") or self.outcome == "unknown":
            return None
        sign = get("sign") or {}
        found: list[str] = []
        if outcome != self.outcome:
            found.append(f"outcome {outcome}, predicted {self.outcome}")
        if sign.get("mechanism") != self.mechanism:
            found.append(f"mechanism {sign.get('mechanism')}, predicted {self.mechanism}")
        have = sign.get("input_bytes")
        if self.bytes_min is None:
            if have is not None and self.mechanism is None:
                found.append(f"{have} bytes signed, predicted none")
        elif not (isinstance(have, int) and self.bytes_min <= have <= (self.bytes_max or have)):
            found.append(f"{have} bytes, predicted {self.bytes_text}")
        return found

    def matches(self, record: Any) -> bool | None:
        found = self.differences(record)
        return None if found is None else not found


def _family(client: str, versions: Versions) -> str:
    """How a client reaches the token: libp11 (engine), provider (pkcs11-provider),
    java (SunPKCS11 with combined mechanisms), host (hashes on the host), or blind
    (hashes on the host and asks for raw RSA-PSS without reading the mechanism
    list: crypto11, pkcs11-helper)."""
    base = client.split("@", 1)[0]
    if base == "curl":
        return "provider" if "pkcs11-provider" in versions else "libp11"
    return {"openssl-engine": "libp11", "openssl-provider": "provider", "java": "java",
            "java-nocombined": "host", "gnutls": "host", "nss": "host",
            "eap-tls": "libp11", "python-ssl": "provider", "go": "blind", "openvpn": "blind",
            "software": "software"}.get(base, "host")


def _whole(tls: str) -> tuple[int, int]:
    return TLS12_TRANSCRIPT if tls == "1.2" else TLS13_MESSAGE


def _rule(client: str, key: str, tls: str, sigalgs: str | None, provisioning: str,
          token: TokenFacts, versions: Versions) -> Prediction:
    """The rules alone: what the client asks of a token offering `token`."""

    family = _family(client, versions)
    have = token.mechanisms
    algorithm = key_spec(key).algorithm.value
    cell = Prediction(client, key, tls, provisioning, sigalgs)

    def sign(mechanism: str, size: tuple[int, int] | int, why: str) -> Prediction:
        low, high = (size, size) if isinstance(size, int) else size
        return replace(cell, mechanism=mechanism, bytes_min=low, bytes_max=high, why=why)

    def fail(error: str, why: str, mechanism: str | None = None) -> Prediction:
        return replace(cell, mechanism=mechanism, outcome="fail", error=error, why=why)

    if family == "software":
        return replace(cell, why="the software control does not use the token")
    if provisioning == "import" and any(kt in (None, CKK[algorithm])
                                        for kt, _ in token.refused_imports):
        rv = next(rv for kt, rv in token.refused_imports if kt in (None, CKK[algorithm]))
        return fail(f"provisioning: {rv}", "the token refuses to import this private key")
    if algorithm == "eddsa":
        if "CKM_EDDSA" not in have:
            return replace(cell, outcome="skip", why="the token does not offer CKM_EDDSA")
        return sign("CKM_EDDSA", _whole(tls), "Ed25519 signs the whole message")
    if algorithm == "ecdsa":
        # TLS 1.3 and Java: the curve's own hash; OpenSSL, GnuTLS, NSS in TLS 1.2: SHA-256
        bits = CURVE_HASH[key] if tls == "1.3" or family == "java" else 256
        combined = f"CKM_ECDSA_SHA{bits}"
        if family in ("java", "provider") and combined in have:
            return sign(combined, _whole(tls),
                        f"the token advertises {combined}: hashed on the token, whole message")
        if "CKM_ECDSA" in have:
            return sign("CKM_ECDSA", DIGEST[bits], f"SHA-{bits} digest made on the host")
        return fail("no CKM_ECDSA", "the client hashes on the host and needs raw CKM_ECDSA")
    # RSA
    modulus = key_spec(key).bits // 8
    pss = "CKM_RSA_PKCS_PSS" in have
    if sigalgs is None:  # RSA-PSS first, in TLS 1.2 as in 1.3
        if family == "libp11":
            if pss:
                return sign("CKM_RSA_PKCS_PSS", 32, "PSS over a host-made SHA-256 digest")
            if "CKM_RSA_X_509" in have:
                return sign("CKM_RSA_X_509", modulus,
                            "no CKM_RSA_PKCS_PSS: libp11 pads PSS on the host, raw RSA")
            return fail("CKR_MECHANISM_INVALID", "no CKM_RSA_PKCS_PSS and no CKM_RSA_X_509 "
                        "for libp11's host-side PSS padding", "CKM_RSA_X_509")
        if family == "provider":
            if not pss:
                return fail("An invalid mechanism was specified", "pkcs11-provider refuses "
                            "RSA-PSS when CKM_RSA_PKCS_PSS is not listed")
            if "CKM_SHA256_RSA_PKCS_PSS" in have:
                return sign("CKM_SHA256_RSA_PKCS_PSS", _whole(tls),
                            "pkcs11-provider takes the combined PSS mechanism: whole message")
            return sign("CKM_RSA_PKCS_PSS", 32, "PSS over a host-made SHA-256 digest")
        if pss:
            return sign("CKM_RSA_PKCS_PSS", 32, "PSS over a host-made SHA-256 digest")
        if family == "blind":
            return fail("CKR_MECHANISM_INVALID", "asks for raw CKM_RSA_PKCS_PSS without "
                        "reading the mechanism list, and does not fall back to PKCS#1 v1.5",
                        "CKM_RSA_PKCS_PSS")
        if tls == "1.3":
            return fail("no RSA-PSS", "TLS 1.3 allows only RSA-PSS and the token lacks "
                        "CKM_RSA_PKCS_PSS: the client finds no usable scheme")
    # PKCS#1 v1.5: forced by the server, or the TLS 1.2 fallback without PSS
    why = "the server forces rsa_pkcs1_sha256" if sigalgs else "no PSS: PKCS#1 v1.5 in TLS 1.2"
    if family in ("java", "provider") and "CKM_SHA256_RSA_PKCS" in have:
        return sign("CKM_SHA256_RSA_PKCS", _whole(tls),
                    f"{why}; the token advertises CKM_SHA256_RSA_PKCS: whole message")
    if "CKM_RSA_PKCS" in have:
        return sign("CKM_RSA_PKCS", DIGEST_INFO_SHA256, f"{why}; a DigestInfo made on the host")
    return fail("no CKM_RSA_PKCS", f"{why}, but the token lacks CKM_RSA_PKCS")


def _limited(cell: Prediction, token: TokenFacts) -> Prediction:
    """The token's input cap and multi-part support applied to a predicted signature."""
    if cell.outcome != "ok" or cell.mechanism is None or cell.bytes_min is None:
        return cell
    if not token.multipart and _STREAMED.match(cell.mechanism):
        return replace(cell, outcome="fail", error="CKR_FUNCTION_NOT_SUPPORTED",
                       why=cell.why + "; the token refuses multi-part signing")
    if not token.limits_known and _STREAMED.match(cell.mechanism):
        return replace(cell, outcome="unknown", why=cell.why + (
            f"; depends on the token's input limit for {cell.mechanism}, which it does not "
            f"advertise: {MEASURE}"))
    cap = token.max_input_bytes
    if cap is None or (token.limit_mechanisms is not None
                       and cell.mechanism not in token.limit_mechanisms):
        return cell
    high = cell.bytes_max or cell.bytes_min
    usual = TYPICAL_TLS12_TRANSCRIPT if (cell.bytes_min, high) == TLS12_TRANSCRIPT else high
    if cell.bytes_min > cap or usual > cap:
        how = " (measured by p11tls token-sweep)" if token.measured else ""
        return replace(cell, outcome="fail", error=token.over_limit_rv,
                       why=cell.why + f"; past the token's {cap}-byte input limit{how}")
    return cell


def _import_unknown(cell: Prediction, token: TokenFacts) -> Prediction:
    """An import cell on a token whose private-key import nobody measured."""

    key_type = CKK[key_spec(cell.key).algorithm.value]
    if cell.provisioning != "import" or cell.outcome == "skip" or token.import_known(key_type):
        return cell
    return replace(cell, outcome="unknown", error=None, why=(cell.why + "; " if cell.why else "")
                   + f"depends on whether the token imports {key_type} private keys "
                   f"(C_CreateObject), which it does not advertise: {MEASURE}")


@lru_cache(maxsize=1)
def _stack_facts() -> tuple[FactTable, FactTable]:

    return load_table(EXPECTED_MECHANISMS), load_table(KNOWN_FAILURES)


def _fact(client: str, key: str, tls: str, sigalgs: str | None, provisioning: str,
          table: FactTable, versions: Versions) -> Expectation | None:

    prov = provisioning if provisioning != "existing" else "generate"
    case = Case(client, key_spec(key), Provisioning(prov), TLSVersion(tls), sigalgs)
    return first_match(case, table, versions)


def _measured(cell: Prediction, fact: Expectation) -> Prediction:
    """The rule's cell with what the fact measured on these versions."""
    source = fact.source.rsplit("/", 1)[-1]
    if fact.outcome == "fail":
        return replace(cell, mechanism=fact.mechanism, bytes_min=None, bytes_max=None,
                       outcome="fail", error=fact.error or fact.rv, why=fact.reason or "",
                       source=source)
    if fact.mechanism is None:
        return replace(cell, source=source)
    low: int | None
    high: int | None
    if fact.input_bytes is not None:
        low, high = fact.input_bytes, fact.input_bytes
    elif fact.input_bytes_min is not None and fact.input_bytes_max is None:
        low, high = _whole(cell.tls)  # "at least 1000": the whole transcript
    else:
        low, high = fact.input_bytes_min, fact.input_bytes_max
    return replace(cell, mechanism=fact.mechanism, bytes_min=low, bytes_max=high,
                   source=source)


def predict(client: str, key: str, tls: str, token: TokenFacts, versions: Versions, *,
            sigalgs: str | None = None, provisioning: str = "generate") -> Prediction:
    """The prediction for one cell on a token, for a client of these versions."""
    cell = _predict(client, key, tls, token, versions, sigalgs, provisioning)
    if cell.outcome == "fail" or _family(client, versions) == "software":
        return cell  # fails whatever the import does / the software control imports nothing
    return _import_unknown(cell, token)


def _predict(client: str, key: str, tls: str, token: TokenFacts, versions: Versions,
             sigalgs: str | None, provisioning: str) -> Prediction:
    rule = _limited(_rule(client, key, tls, sigalgs, provisioning, token, versions), token)
    if rule.outcome == "skip" or _family(client, versions) == "software":
        return rule
    mechanisms, known = _stack_facts()
    failure = _fact(client, key, tls, sigalgs, provisioning, known, versions)
    if failure is not None and failure.outcome == "fail":  # the client cannot, whatever the token
        return _measured(rule, failure)
    baseline = _rule(client, key, tls, sigalgs, provisioning,
                     TokenFacts(MEASURED_TOKEN), versions)
    if (rule.mechanism, rule.outcome) != (baseline.mechanism, baseline.outcome):
        return rule  # the token differs where it matters: the rules say what happens
    fact = _fact(client, key, tls, sigalgs, provisioning, mechanisms, versions)
    return _limited(_measured(rule, fact), token) if fact is not None else rule


def predict_matrix(clients: list[str], keys: list[str], token: TokenFacts,
                   versions: Mapping[str, Versions]) -> list[Prediction]:
    """Every cell of the matrix (harness.matrix.cases.cases) for these clients and keys;
    `versions`: client -> its components' versions."""

    return [predict(c.client, c.key.name, c.tls.value, token, versions.get(c.client, {}),
                    sigalgs=c.client_sigalgs, provisioning=c.provisioning.value)
            for c in cases(clients, tuple(key_spec(k) for k in keys))]


def agreement(predictions: dict[str, Prediction], records: list[Any]) -> tuple[int, int]:
    """(cells that matched, cells compared) over records keyed by case id."""
    matched = compared = 0
    for record in records:
        get = record.get if isinstance(record, Mapping) else (
            lambda name, r=record: getattr(r, name, None))
        cell = predictions.get(str(get("case_id")))
        verdict = cell.matches(record) if cell is not None else None
        if verdict is None:
            continue
        compared += 1
        matched += verdict
    return matched, compared


def prediction_summary(records: list[Any]) -> str | None:
    """How many of all the run's cells were what was predicted (HandshakeRecords
    with `predicted`), the ones not compared said apart: skipped, depending on
    what the token does not advertise, or not predicted at all."""
    if not any(r.predicted for r in records):
        return None
    wrong = sorted(r.case_id for r in records if r.prediction_matched is False)
    matched = sum(r.prediction_matched is True for r in records)
    apart = {
        "skipped": sum(r.outcome == "skip" for r in records),
        "depend on what the token does not advertise (measure with p11tls token-sweep)": sum(
            r.outcome != "skip" and (r.predicted or {}).get("outcome") == "unknown"
            for r in records)}
    apart["not compared (no prediction, or the case did not run)"] = (
        len(records) - matched - len(wrong) - sum(apart.values()))
    line = f"prediction (p11tls doctor): {matched} of {len(records)} cells as predicted"
    if wrong:
        line += (f"; {len(wrong)} not as predicted: {', '.join(wrong[:8])}"
                 + (f" and {len(wrong) - 8} more" if len(wrong) > 8 else ""))
    return line + "".join(f"; {n} {what}" for what, n in apart.items() if n)


def case_id(cell: Prediction) -> str:
    """The matrix's case id of a predicted cell (harness.matrix.cases.Case.case_id)."""
    parts = [cell.client, cell.key, cell.provisioning, "tls" + cell.tls.replace(".", "")]
    if cell.sigalgs:
        parts.append(cell.sigalgs)
    return "-".join(parts)
