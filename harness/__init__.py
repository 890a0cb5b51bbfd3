"""Find out which PKCS#11 mechanism each TLS stack asks a token for, and why
TLS client authentication with a key on a token fails."""

__version__ = "0.1.0"
