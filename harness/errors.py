"""One base class for every error the harness raises on purpose.

A HarnessError's message is a single line that says what failed, with what,
and what to do; the CLI and the pytest plugin print it without a traceback.
"""


class HarnessError(Exception):
    """The harness cannot go on: bad input or a missing part (not a test failure)."""


class ConfigError(HarnessError):
    """An option, path or value given by the user is wrong."""


class TokenError(HarnessError):
    """The PKCS#11 module or token refused something (wrong PIN, missing token)."""


class ToolMissing(HarnessError):
    """An external program (openssl, gnutls-cli, java, cc) is not installed."""
