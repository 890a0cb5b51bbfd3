"""Write the held-out logs of this directory with real tools (run from the repo root:
`.venv/bin/python tests/data/explain/heldout/make_heldout.py`).

Each log comes from configurations the other explain tests do not use; the
expectation files (NAME.expect.toml) are written by hand after reading the
logs, never from explain's own output. PINs are fresh per run and masked with
the project's masker, temporary paths replaced by WORK.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[3]))

from harness.explain.masking import mask_lines  # noqa: E402
from harness.explain.model import LogFormat  # noqa: E402
from harness.installed import P11_KIT_PROXY, PKCS11_SPY, find_library  # noqa: E402
from harness.interposer import build_interposer, write_interposer_config  # noqa: E402
from harness.interposer.profile import load_profile  # noqa: E402
from harness.token.softhsm import TemporarySoftHSM  # noqa: E402

LABEL = "heldout"


def keep(name: str, text: str, fmt: LogFormat, work: Path, cut: float | None = None) -> None:
    text = text.replace(str(work), "WORK")
    text = text.replace(str(Path.home()), "HOME")
    if cut is not None:
        text = text[: int(len(text) * cut)]
    lines = mask_lines(text.split("\n"), fmt)
    (HERE / name).write_text("\n".join(lines))
    print(f"{name}: {len(lines)} lines")


def main() -> None:
    tool = shutil.which("pkcs11-tool")
    assert tool, "pkcs11-tool (opensc) needed"
    work = Path(tempfile.mkdtemp(prefix="heldout-"))
    pin = secrets.token_hex(4)
    store = TemporarySoftHSM(work / "softhsm")
    store.init_token(LABEL, pin)
    interposer = build_interposer()
    spy = find_library(*PKCS11_SPY)
    base = {"PATH": os.environ["PATH"], **store.env, "P11PIN": pin}
    login = ["--login", "--pin", "env:P11PIN"]

    def tool_run(module: Path, args: list[str], env: dict[str, str],
                 prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*prefix, tool, "--module", str(module), "--token-label", LABEL,
                               *args], env=env, capture_output=True, text=True, timeout=60,
                              check=False)

    for args in (["--keypairgen", "--key-type", "rsa:3072", "--id", "31", "--label", "rsa3072"],
                 ["--keypairgen", "--key-type", "EC:secp384r1", "--id", "38", "--label", "p384"]):
        assert tool_run(store.module, [*login, *args], base).returncode == 0
    data = work / "data"
    data.mkdir()
    for size in (48, 3000):
        (data / str(size)).write_bytes(bytes(i % 251 for i in range(size)))

    def emulated(name: str, profile: str) -> dict[str, str]:
        lines = load_profile(profile).interposer_lines()
        return write_interposer_config(store.module, work / f"{name}.jsonl",
                                       work / f"{name}.conf", lines)

    # 1. pkcs11-spy above the interposer emulating an OpenPGP card (no PSS): RSA-3072
    #    PSS with SHA-384 and a 48-byte salt, refused at C_SignInit.
    log = work / "spy.log"
    env = {**base, "PKCS11SPY": str(interposer), "PKCS11SPY_OUTPUT": str(log),
           **emulated("spy-openpgp", "openpgp-card")}
    tool_run(spy, [*login, "--sign", "--id", "31", "-m", "RSA-PKCS-PSS", "--hash-algorithm",
                   "SHA384", "--mgf", "MGF1-SHA384", "--salt-len", "48", "-i", str(data / "48"),
                   "-o", os.devnull], env)
    keep("spy-openpgp-rsa3072-pss.log", log.read_text(), LogFormat.PKCS11_SPY, work)

    # 2. the interposer's own records under the Nitrokey HSM profile: P-384 key,
    #    CKM_ECDSA_SHA256 over 3000 bytes (pkcs11-tool signs in parts) -> CKR_DATA_INVALID.
    env = {**base, **emulated("records-nitrokey", "nitrokey-hsm-opensc")}
    tool_run(interposer, [*login, "--sign", "--id", "38", "-m", "ECDSA-SHA256",
                          "-i", str(data / "3000"), "-o", os.devnull], env)
    keep("records-nitrokey-p384-3000.jsonl", (work / "records-nitrokey.jsonl").read_text(),
         LogFormat.HARNESS, work)

    # 3. p11-kit log-calls through the `p11-kit` command itself (as root only in a
    #    user namespace: p11-kit ignores a user's configuration for uid 0).
    home = work / "home"
    (home / ".config" / "pkcs11" / "modules").mkdir(parents=True)
    (home / ".config" / "pkcs11" / "pkcs11.conf").write_text("user-config: only\n")
    (home / ".config" / "pkcs11" / "modules" / "heldout.module").write_text(
        f"module: {interposer}\nlog-calls: yes\n")
    prefix = ("unshare", "--user") if os.geteuid() == 0 else ()
    env = {**base, "HOME": str(home), **emulated("p11kit", "openpgp-card")}
    proc = subprocess.run([*prefix, "p11-kit", "list-modules"], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    proxy = find_library(*P11_KIT_PROXY)
    assert proxy is not None, "p11-kit-proxy.so (p11-kit-modules) needed"
    proc2 = tool_run(proxy, ["--login", "--pin", "00000000", "-O"], env, prefix)
    keep("p11kit-list-modules-wrong-pin.log", proc.stderr + proc2.stderr, LogFormat.P11_KIT,
         work)

    # 4. a pkcs11-spy log cut mid-stream (inside the C_SignUpdate that goes past the cap).
    log = work / "spy-cut.log"
    env = {**base, "PKCS11SPY": str(interposer), "PKCS11SPY_OUTPUT": str(log),
           **emulated("spy-cut", "picohsm-opensc")}
    tool_run(spy, [*login, "--sign", "--id", "38", "-m", "ECDSA-SHA256",
                   "-i", str(data / "3000"), "-o", os.devnull], env)
    text = log.read_text()
    # cut inside the failing C_SignUpdate, before its return value
    end = text.index("Returned:", text.rindex("C_SignUpdate"))
    keep("spy-picohsm-cut-in-signupdate.log", text[:end], LogFormat.PKCS11_SPY, work)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
