"""After `p11tls token-sweep`: probe private-key import and keep what was
measured on a named token (harness.token.measurements) for doctor and the
matrix's predictions."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness.matrix.keys import Provisioning, key_spec
from harness.token.measurements import Measurement, load_measurement, save_measurement
from harness.token.provision import ProvisioningRefused

IMPORT_PROBES = (("p256", "CKK_EC"), ("rsa2048", "CKK_RSA"))


def probe_imports(runner: Any) -> dict[str, str]:
    """Per key type, what importing a private key returned (CKR_OK or the CKR).
    The runner makes the key as the matrix does (journal, cleanup)."""
    found: dict[str, str] = {}
    for key, key_type in IMPORT_PROBES:
        try:
            runner.key(key_spec(key), Provisioning.IMPORT)
            found[key_type] = "CKR_OK"
        except ProvisioningRefused as refused:
            found[key_type] = refused.ckr
    return found


def keep_measurement(runner: Any, limits: Iterable[Any]) -> Path | None:
    """Probe imports and keep the limits (token_sweep.MechanismLimit) with them;
    merged with an earlier measurement of the same token. None: the harness's
    own throw-away token, whose measurement no later run could use."""
    if runner.softhsm is not None:
        return None
    info = runner.token_info().as_dict()
    earlier = load_measurement(info)
    measured = {found.mechanism: {k: v for k, v in asdict(found).items()
                                  if k in ("largest_ok", "smallest_refused", "refused_rv",
                                           "max_bytes")}
                for found in limits}
    return save_measurement(Measurement(
        serial=str(info.get("serial") or ""), firmware=str(info.get("firmware") or ""),
        model=str(info.get("model") or ""), manufacturer=str(info.get("manufacturer") or ""),
        limits={**(earlier.limits if earlier else {}), **measured},
        imports=probe_imports(runner)))
