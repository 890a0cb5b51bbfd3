"""TLS protocol versions the matrix covers."""

from __future__ import annotations

import enum


class TLSVersion(enum.Enum):
    TLS12 = "1.2"
    TLS13 = "1.3"

    @property
    def marker(self) -> str:
        return "tls" + self.value.replace(".", "")

    @property
    def openssl_flag(self) -> str:
        return "-tls" + self.value.replace(".", "_")
