"""What the matrix knows of its token for the prediction of each cell: the
mechanisms the clients see, the profile's rules, and what p11tls token-sweep
measured on this token (harness.token.measurements)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from harness.interposer.profile import Profile
from harness.token.measurements import load_measurement
from harness.verdict.predict import TokenFacts


def token_facts(mechanisms: Iterable[str], profile: Profile | None,
                info: Mapping[str, Any], embedded: bool) -> TokenFacts:
    """`info`: the token as the clients see it (TokenInfo.as_dict()); `embedded`:
    the harness's own SoftHSM2 token, whose limits and imports are known."""
    return TokenFacts.of(mechanisms, profile, measurement=load_measurement(info),
                         manufacturer=None if embedded else str(info.get("manufacturer") or ""))
