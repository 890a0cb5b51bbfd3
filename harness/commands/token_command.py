"""How every command that touches a token ends: like the matrix.

SIGINT, SIGTERM and SIGHUP end the command the way Ctrl-C does (the token is
cleaned on the way out, further signals held until then); the end is one
line and a non-zero status; and a command whose own call never returned
exits without C_Finalize (harness.token.session.exit_if_in_flight).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from pkcs11.exceptions import PKCS11Error

from harness.errors import HarnessError
from harness.pkcs11 import exception_return_code
from harness.process import install_signal_handlers
from harness.token.session import exit_if_in_flight

INTERRUPTED = 130  # as a shell reports a command ended by SIGINT


def token_command(prog: str, body: Callable[[], int]) -> int:
    """body()'s exit status; a signal or a HarnessError is one line on stderr."""
    install_signal_handlers()
    try:
        code = body()
    except KeyboardInterrupt as exc:
        print(f"{prog}: stopped by {exc or 'SIGINT'}; the token was cleaned up first",
              file=sys.stderr)
        code = INTERRUPTED
    except HarnessError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        code = 2
    except PKCS11Error as exc:  # a call outside the harness's wrappers: its CKR name
        print(f"{prog}: the token returned {exception_return_code(exc) or 'an error'}",
              file=sys.stderr)
        code = 2
    exit_if_in_flight(code)
    return code
