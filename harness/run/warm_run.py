"""--p11-warm in a run: the warm process (harness.token.warm) loads the
recording interposer above the module, so its record (warm/calls-warm.jsonl)
shows the one C_Initialize of the whole run; clients and the harness's own
process load p11-kit-client.so (with the interposer directly above it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from harness.errors import ConfigError
from harness.interposer import build_interposer, write_interposer_config
from harness.matrix.keys import KeySpec
from harness.token.warm import WarmModule, start_warm

WARM_RECORD = "calls-warm.jsonl"


def start_run_warm(module: Path, label: str, workdir: Path, env: Mapping[str, str],
                   keys: Sequence[KeySpec], named: bool) -> WarmModule:
    if named:
        raise ConfigError("--p11-warm serves a PKCS#11 module file; a named module (tpm2) "
                          "brings up its own token: drop --p11-warm")
    directory = workdir / "warm"
    directory.mkdir(parents=True, exist_ok=True)
    algorithms = {k.algorithm.value for k in keys}
    if module.resolve() == build_interposer().resolve():
        # the module is the interposer already (its configuration in `env`, e.g.
        # bench_warm's latency profile): it records itself, served as it is
        return start_warm(module, label, directory, env, algorithms)
    conf = write_interposer_config(module, directory / WARM_RECORD,
                                   directory / "interposer-warm.conf")
    return start_warm(build_interposer(), label, directory, {**env, **conf},
                      algorithms, direct=(module, env))
