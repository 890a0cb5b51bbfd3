"""Explain a PKCS#11 call log: which call failed first, and why.

Readers, one per format, live in `formats/` (this harness's interposer
records, OpenSC pkcs11-spy, p11-kit log-calls, Pkcs11Interop pkcs11-logger,
OpenSC debug logs, tpm2-pkcs11's log, NSS's module debug log, Java traces);
`model` is the one call model they produce, `rules` (with `card`,
`general`, `tpm2_rules`, `no_sign`) the ranked diagnosis, `explanation` the
API (`parse_log`, `explain`, `explain_file`), `cli` the `p11tls explain`
command, and `masking` keeps PINs and key values out of anything echoed.
"""
