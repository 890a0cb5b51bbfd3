"""Every installed JDK is a client of its own: discovery (the default JDK,
further JDKs under /usr/lib/jvm or given with --java several times, one home
once), names (java@N beside the default's java), a real handshake on each
JDK found, and bad input (a --java that is no JDK, an unknown java@N)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.clients import client_names, make_client
from harness.clients.java import (
    MIN_JAVA,
    JavaClient,
    build_classes,
    discover_jdks,
    find_java_sources,
    find_jdk,
    jdk_variants,
)
from harness.errors import ConfigError
from harness.matrix.cases import Case
from harness.matrix.keys import KEYS, Provisioning
from harness.run.config import resolve
from harness.tls.version import TLSVersion

JDKS = discover_jdks()
needs_jdk = pytest.mark.skipif(not JDKS, reason="Requires a JDK >= 11")
needs_two = pytest.mark.skipif(len(JDKS) < 2, reason="Requires two JDKs (e.g. /usr/lib/jvm)")


def settings(tmp_path: Path, **cli: object):
    return resolve({"p11_reports": str(tmp_path / "reports"), **cli}, {}, {})


@needs_jdk
def test_default_jdk_comes_first_and_each_home_once():
    assert JDKS[0].home.resolve() == find_jdk().home.resolve()
    homes = [jdk.home.resolve() for jdk in JDKS]
    assert len(homes) == len(set(homes))
    assert all(jdk.feature >= MIN_JAVA for jdk in JDKS)


@needs_jdk
def test_one_jdk_under_two_paths_is_one_jdk(tmp_path):
    alias = tmp_path / "same-jdk"
    alias.symlink_to(JDKS[0].home)
    found = discover_jdks([str(JDKS[0].home), str(alias)])
    assert len(found) == 1
    assert jdk_variants([str(JDKS[0].home), str(alias)]) == {}


@needs_two
def test_every_further_jdk_is_a_client_pair_named_by_its_version(tmp_path):
    names = client_names()
    for jdk in JDKS[1:]:
        suffix = next(s for s, j in jdk_variants().items() if j.home == jdk.home)
        assert f"java@{suffix}" in names and f"java-nocombined@{suffix}" in names
        assert suffix.split(".")[0] == str(jdk.feature)
    # the default JDK keeps the plain names and gets no java@N of its own
    assert "java" in names and "java-nocombined" in names
    assert f"java@{JDKS[0].feature}" not in names or JDKS[0].feature in [j.feature
                                                                         for j in JDKS[1:]]
    assert settings(tmp_path).clients == names  # 'all' is every one of them


@needs_two
def test_java_given_several_times_names_exactly_those_jdks(tmp_path):
    first, second = JDKS[1], JDKS[0]  # the other JDK as the default this time
    s = settings(tmp_path, java=[str(first.home), str(second.home)])
    assert s.java_home == str(first.home) and s.java_homes == (str(first.home),
                                                               str(second.home))
    java = [n for n in s.clients if n.startswith("java")]
    assert java == ["java", f"java@{second.feature}", "java-nocombined",
                    f"java-nocombined@{second.feature}"]
    default = make_client("java", s.client_options())
    other = make_client(f"java@{second.feature}", s.client_options())
    assert isinstance(default, JavaClient) and isinstance(other, JavaClient)
    assert default.jdk().home == first.home and other.jdk().home == second.home
    only = settings(tmp_path, java=[str(first.home)])  # negative control: one JDK, no pair
    assert not [n for n in only.clients if "@" in n]


@needs_jdk
def test_java_that_is_no_jdk_is_one_clear_error(tmp_path):
    # a further --java: refused at once
    with pytest.raises(ConfigError, match="--java: javac not found in"):
        settings(tmp_path, java=[str(JDKS[0].home), str(tmp_path)])
    # the first --java: the java client's reason (an error when it is asked for)
    s = settings(tmp_path, java=[str(tmp_path)])
    reason = make_client("java", s.client_options()).unavailable_reason() or ""
    assert "javac not found in" in reason and str(tmp_path) in reason
    assert not [n for n in s.clients if "@" in n]


def test_unknown_jdk_client_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown client java@99"):
        settings(tmp_path, p11_clients="java@99")
    with pytest.raises(ConfigError, match="unknown client 'gnutls@99'"):
        make_client("gnutls@99")


@needs_jdk
def test_client_compiles_for_java_11(tmp_path):
    classes = build_classes(JDKS[0], find_java_sources(), tmp_path / "cache")
    header = (classes / "P11TlsClient.class").read_bytes()[:8]
    assert int.from_bytes(header[6:8], "big") == 44 + MIN_JAVA  # class file major: 55 = 11


@needs_two
@pytest.mark.parametrize("tls", list(TLSVersion), ids=lambda t: t.marker)
def test_handshake_on_every_jdk(p11tls_runner, tls):
    versions = set()
    for jdk in JDKS:
        name = "java" if jdk is JDKS[0] else next(
            f"java@{s}" for s, j in jdk_variants().items() if j.home == jdk.home)
        case = Case(name, KEYS["p256"], Provisioning.GENERATE, tls)
        assert "java" in case.markers  # -m java selects every JDK
        record = p11tls_runner.run(case)
        assert record.outcome == "ok", (name, record.error)
        assert record.sign["mechanism"] == "CKM_ECDSA" and record.sign["input_bytes"] == 32
        assert jdk.version in record.client_version
        versions.add(p11tls_runner.versions(name)["java"])
    assert len(versions) == len(JDKS)  # each case ran on its own JDK


def test_discovery_follows_java_home(tmp_path, monkeypatch):
    if not JDKS:
        pytest.skip("Requires a JDK >= 11")
    monkeypatch.setenv("JAVA_HOME", str(JDKS[-1].home))
    assert discover_jdks()[0].home == JDKS[-1].home
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))  # negative control: not a JDK
    assert all(j.home != tmp_path for j in discover_jdks())
    assert os.environ["JAVA_HOME"] == str(tmp_path)
