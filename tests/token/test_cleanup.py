"""`p11tls cleanup` counts only objects that exist (issue 20 item 4: OpenSC's
sc-hsm drops a key's public half with its private key, and the public key was
then reported as left over with exit 2). In a child process on the spare
SoftHSM2 token: this pytest process may hold SoftHSM2 already."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import os
import sys
from pathlib import Path
from pkcs11 import Attribute, KeyType
from harness.token.cleanup import delete
from harness.token.journal import CleanupError, describe_object
from harness.token.session import Token

token = Token(Path(sys.argv[1]), "spare", os.environ["SPARE_PIN"])
session = token.session
public, private = session.generate_keypair(KeyType.EC, 0, store=True,
    public_template={Attribute.LABEL: "p11tls-abcdef-x", Attribute.EC_PARAMS:
                     bytes.fromhex("06082a8648ce3d030107")},
    private_template={Attribute.LABEL: "p11tls-abcdef-x"})
item = describe_object(public)
private.destroy()
public.destroy()  # gone before the clean-up gets to it, as with sc-hsm
print(len(delete(token, [item])), "gone")
try:
    delete(token, [describe_object(session.get_key(label="p11tls-abcdef-x"))])
except Exception as exc:
    print(type(exc).__name__)
token.close()
"""


def test_an_object_already_gone_is_not_left_over(softhsm_store):
    store, spare = softhsm_store
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(store.module)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **store.env, "SPARE_PIN": spare.pin})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "1 gone"  # counted, not a CleanupError
    assert lines[1] == "NoSuchKey"  # control: the key really is gone from the token
