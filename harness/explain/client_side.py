"""When no PKCS#11 call failed: the TLS stack or engine refused or never
found the key itself. Say so, rather than blame a call, and what it means."""

from __future__ import annotations

import re
from collections.abc import Sequence

from harness.explain.model import ClientError

RULE = "no-failing-call"

# What the stacks' own messages mean (first match wins).
MEANINGS = (
    (re.compile(r"operation not supported for this keytype", re.I),
     "OpenSSL found no implementation of this operation for the key: the key was loaded by a "
     "provider (or p11-kit module) that does not offer it, or another provider took the key",
     "Load the key from one module only (pkcs11-module-path to the module, not p11-kit-proxy) "
     "and check `openssl storeutl -keys URI` shows it with the right type."),
    (re.compile(r"no client cert method", re.I),
     "the engine cannot choose a client certificate by itself (libp11 has no client-cert "
     "method)",
     "Name the key and certificate yourself: `-keyform engine -key URI` and `-cert FILE`."),
    (re.compile(r"unable to set private key|failed to load private key|failed loading private "
                r"key|cannot load Private Key|get_private_key returned NULL|Specified object not "
                r"found|object is not available|Unable to enumerate", re.I),
     "the client did not get the key from the token: the URI or label/id matches no object "
     "(token= and object= must match exactly), the login did not happen, or the client read "
     "the URI as a file",
     "List what the token shows with `pkcs11-tool -O` (and `p11tool --list-all URI`), copy "
     "the URI from there; with curl and the engine pass --key-type ENG."),
    (re.compile(r"passed a null parameter|:Not supported:", re.I),
     "the engine does not implement this operation for this key type (libp11 and OpenSSL "
     "versions that do not fit each other)",
     "Use the libp11 matching your OpenSSL, or pkcs11-provider with OpenSSL 3."),
    (re.compile(r"Esys_|tpm2|TPM error", re.I),
     "the TPM software stack failed (tpm2-tss), not a PKCS#11 module: this text comes from a "
     "TPM engine or provider",
     "Look at the TPM error code (tpm2_rc_decode) and the engine's/provider's own log."),
    (re.compile(r"handshake failure|Certificate is required|certificate required|"
                r"no certificate", re.I),
     "the client sent no certificate, so the token's key was never used",
     "Check the client was told to use the certificate and key (for example ghostunnel "
     "without --disable-authentication, curl with --cert and --key)."),
)
DEFAULT = ("the TLS stack failed by itself",
           "Capture the PKCS#11 calls to see whether the token was ever asked.")


def finding(errors: Sequence[ClientError]) -> tuple[str, str]:
    """(summary, hint) for text whose only failures are the stack's own."""
    first = errors[0]
    meaning, hint = DEFAULT
    for error in errors:
        for pattern, text, advice in MEANINGS:
            if pattern.search(error.text):
                meaning, hint, first = text, advice, error
                break
        else:
            continue
        break
    summary = (f"No failing PKCS#11 call in this text: {first.stack} failed itself "
               f"(line {first.line}: {first.text}). That means {meaning}.")
    return summary, hint
