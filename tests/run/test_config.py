"""Settings resolution: command line > ini > environment > default, and bad values."""

from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.run.config import resolve

MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")


def test_defaults_give_the_embedded_softhsm():
    settings = resolve({}, {}, {})
    assert settings.module is None
    assert [k.name for k in settings.keys] == ["rsa2048", "p256", "p384"]
    assert settings.timeout_s == 20


def test_precedence_cli_over_ini_over_env(tmp_path):
    env = {"P11TLS_TIMEOUT": "7", "P11TLS_KEYS": "p521"}
    assert resolve({}, {}, env).timeout_s == 7
    assert resolve({}, {"p11_timeout": "8"}, env).timeout_s == 8
    assert resolve({"p11_timeout": "9"}, {"p11_timeout": "8"}, env).timeout_s == 9
    # empty values do not override a lower source
    assert resolve({"p11_timeout": None}, {"p11_timeout": ""}, env).timeout_s == 7
    assert [k.name for k in resolve({"p11_keys": "all"}, {}, env).keys][-1] == "ed25519"
    assert [k.name for k in resolve({}, {}, env).keys] == ["p521"]


def test_module_from_environment_with_label_and_pin(tmp_path):
    module = tmp_path / "mod.so"
    module.write_bytes(b"")
    env = {"PKCS11_MODULE": str(module), "PKCS11_TOKEN_LABEL": "lab", "PKCS11_TOKEN_PIN": "1"}
    settings = resolve({}, {}, env)
    assert settings.module == module and settings.token_label == "lab" and settings.pin == "1"



@pytest.mark.parametrize(
    "cli, message",
    [
        ({"p11_module": "/nonexistent/lib.so"}, "does not exist"),
        ({"p11_module": str(MODULE)}, "needs --p11-token-label"),
        ({"p11_module": str(MODULE), "p11_token_label": "x"}, "needs the user PIN"),
        ({"p11_timeout": "soon"}, "must be a number"),
        ({"p11_timeout": "-1"}, "positive"),
        ({"p11_keys": "p999"}, "unknown key type 'p999'"),
        ({"p11_keys": ","}, "--p11-keys is empty"),
        ({"p11_clients": "wolfssl"}, "unknown client wolfssl"),
        ({"p11_no_record": "yes", "p11_spy": "yes"}, "--p11-spy is chained below the interposer"),
        ({"p11_no_record": "yes", "p11_profile": "slow-card"}, "--p11-profile works inside"),
        ({"p11_spy": "maybe"}, "--p11-spy takes yes or no"),
        ({"p11_module": "/usr/lib", "p11_token_label": "x", "p11_pin": "1"}, "is a directory"),
    ],
    ids=["missing-module", "no-label", "no-pin", "timeout-text", "timeout-negative",
         "unknown-key", "no-keys", "unknown-client", "spy-without-interposer",
         "profile-without-interposer", "flag-value", "module-is-a-directory"],
)
def test_bad_values_are_one_clear_error(cli, message):
    if "p11_module" in cli and cli["p11_module"] == str(MODULE) and not MODULE.exists():
        pytest.skip("Requires SoftHSM2 at its Debian path")
    with pytest.raises(ConfigError, match=message) as info:
        resolve(cli, {}, {})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "0", "-0.5", "86401", "1e9"])
def test_timeouts_that_are_not_a_handshake_time_are_refused(text):
    with pytest.raises(ConfigError, match="--p11-timeout must be a positive number") as info:
        resolve({"p11_timeout": text}, {}, {})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text, seconds", [("0.5", 0.5), ("86400", 86400.0), ("20", 20.0)])
def test_timeouts_within_a_day_are_kept(text, seconds):
    assert resolve({"p11_timeout": text}, {}, {}).timeout_s == seconds


def test_reports_path_must_be_a_writable_directory(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    for bad, message in [(afile, "is not a directory"),
                         (afile / "sub", "its ancestor .*afile. is not a directory"),
                         (Path("/proc/1/p11tls"), "is not writable")]:
        with pytest.raises(ConfigError, match=message):
            resolve({"p11_reports": str(bad)}, {}, {})
    # controls: an existing directory, a new one below it, a relative one under `base`
    assert resolve({"p11_reports": str(tmp_path)}, {}, {}).reports == tmp_path
    assert resolve({"p11_reports": str(tmp_path / "new" / "dir")}, {}, {}).reports.parent.name \
        == "new"
    assert resolve({"p11_reports": "rel"}, {}, {}, base=tmp_path).reports == tmp_path / "rel"
    assert not (tmp_path / "new").exists()  # checked, not created


def test_empty_module_on_the_command_line_is_an_error_not_the_default():
    with pytest.raises(ConfigError, match="--p11-module is empty"):
        resolve({"p11_module": ""}, {}, {})
    assert resolve({"p11_module": None}, {}, {}).module is None  # control: not given


def test_settings_repr_never_shows_the_pin(tmp_path):
    module = tmp_path / "mod.so"
    module.write_bytes(b"")
    settings = resolve({"p11_module": str(module), "p11_token_label": "lab",
                        "p11_pin": "Zx9-secret"}, {}, {})
    assert settings.pin == "Zx9-secret"  # control: it is there
    assert "Zx9-secret" not in repr(settings) and "pin" not in repr(settings)


@pytest.mark.parametrize("option", ["p11_keys", "p11_clients"])
@pytest.mark.parametrize("value", ["", ","])
def test_an_empty_list_is_an_error_not_the_default(option, value):
    """Issue 23 row 14: `--p11-keys ""` ran the default keys."""
    from harness.errors import ConfigError
    from harness.run.config import resolve

    with pytest.raises(ConfigError, match="empty|none given"):
        resolve({option: value}, {}, {})
    assert resolve({}, {}, {}).keys  # control: left out, the default
