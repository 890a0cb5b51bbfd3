"""Opening a PKCS#11 module and one token in it, with the token-safety rules.

Safety: the harness never initialises a token it did not create, logs in at
most once per process (a wrong PIN is never retried: cards lock), does not
log in at all when the token says the PIN is locked or the next wrong try
locks it, and only ever destroys objects it created itself (see provision.py).
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pkcs11
from pkcs11 import exceptions as p11exc
from pkcs11.constants import TokenFlag

from harness.errors import ConfigError, TokenError
from harness.pkcs11 import exception_return_code
from harness.process import signals_held

T = TypeVar("T")
DEFAULT_CALL_TIMEOUT_S = 20.0


class TokenTimeout(TokenError):
    """The token did not answer one of the harness's own calls in time."""


_workers: weakref.WeakSet[TokenWorker] = weakref.WeakSet()


def calls_in_flight() -> list[str]:
    """The harness's own calls that were abandoned and are still inside a module."""
    return [w.busy_with for w in list(_workers) if w.busy_with is not None]


def exit_if_in_flight(code: int, say: bool = True) -> None:
    """A module with a call still in flight must not see C_Finalize (python-pkcs11
    sends it at interpreter exit: it hangs on the call's lock or the call
    returns into an unloaded library). So, after what must be written is
    flushed, the process ends here without it."""
    busy = calls_in_flight()
    if not busy:
        return
    if say:
        print(f"p11tls: the token never returned {', '.join(busy)}: the process exits without "
              "C_Finalize", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class TokenWorker:
    """One daemon thread that makes every call this process sends a token, so
    the caller can stop waiting after a timeout while the token keeps the
    thread. A signal during a call waits for it (bounded by the timeout) so
    the clean-up can use the token; calls stay in order; once one was
    abandoned, later calls fail at once until it has returned."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.Queue[tuple[Callable[[], Any], queue.Queue[Any]] | None] = (
            queue.Queue())
        self._busy_with: str | None = None  # the abandoned call still running
        self._thread = threading.Thread(target=self._serve, name=f"p11tls-token-{name}",
                                        daemon=True)
        self._thread.start()
        _workers.add(self)

    @property
    def busy_with(self) -> str | None:
        """The abandoned call still running, if any."""
        return self._busy_with

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, answer = job
            try:
                result: tuple[bool, Any] = (True, fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                result = (False, exc)
            self._busy_with = None  # before the answer: the caller may look at once
            answer.put(result)

    def call(self, fn: Callable[[], T], what: str, timeout_s: float) -> T:
        if self._busy_with is not None:
            raise TokenTimeout(f"the token is still busy with an abandoned {self._busy_with}; "
                               f"{what} was not sent")
        answer: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._busy_with = what
        self._jobs.put((fn, answer))
        start = time.monotonic()
        try:
            ok, value = answer.get(timeout=timeout_s)
        except queue.Empty:
            raise TokenTimeout(f"the token did not answer {what} within {timeout_s:g} s"
                               ) from None
        except BaseException:
            # a signal (KeyboardInterrupt) while the module works: let the call
            # end, within its timeout, so the clean-up finds the token free
            with signals_held():
                try:
                    answer.get(timeout=max(0.0, timeout_s - (time.monotonic() - start)))
                except queue.Empty:
                    pass  # still inside the module: busy_with says so
            raise
        if not ok:
            raise value
        return value

    def stop(self) -> None:
        self._jobs.put(None)


# Set after the first refused login in this process; every later attempt
# raises at once instead of sending the PIN to the token again.
_refused_login: str | None = None


@dataclass(frozen=True)
class TokenInfo:
    module: str
    library: str  # description and version of the module
    label: str
    model: str
    manufacturer: str
    firmware: str  # the token's (CK_TOKEN_INFO), what the device runs
    mechanisms: tuple[str, ...]
    serial: str = ""
    slot_firmware: str = ""  # the slot's (CK_SLOT_INFO): the reader's, e.g. 0.0 via OpenSC

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.module, "library": self.library, "token_label": self.label,
            "model": self.model, "manufacturer": self.manufacturer, "firmware": self.firmware,
            "slot_firmware": self.slot_firmware, "serial": self.serial,
        }


def load_module(path: Path) -> Any:
    """python-pkcs11 lib for `path`; ConfigError when it is not a PKCS#11 module."""
    if not path.is_file():
        raise ConfigError(f"PKCS#11 module {path} does not exist: check --p11-module")
    try:
        return pkcs11.lib(str(path))
    except p11exc.PKCS11Error as exc:
        detail = str(exc).split(": ")[-1]
        raise ConfigError(
            f"{path} is not a loadable PKCS#11 module ({detail}): pass the module's .so "
            "(for example /usr/lib/softhsm/libsofthsm2.so)"
        ) from None


def text_of(value: Any) -> str:
    """A CK_INFO/CK_TOKEN_INFO text field, decoded and stripped of its padding."""
    if isinstance(value, bytes):
        return value.decode(errors="replace").strip()
    return str(value).strip()


def version_of(value: Any) -> str:
    """A CK_VERSION as `major.minor`."""
    if isinstance(value, tuple):
        return ".".join(str(v) for v in value)
    return text_of(value)


def pin_state(label: str, flags: int) -> tuple[str | None, str | None]:
    """(refusal, warning) for a login on a token with these CK_TOKEN_INFO flags:
    a refusal when the user PIN is locked or the next wrong try locks it (the
    login is then not sent at all), a warning when wrong tries were counted."""
    if flags & TokenFlag.USER_PIN_LOCKED:
        return (f"token {label!r} says its user PIN is locked (CKF_USER_PIN_LOCKED): "
                "unblock it first; the harness sent no login"), None
    if flags & TokenFlag.USER_PIN_FINAL_TRY:
        return (f"token {label!r} says the next wrong PIN locks it (CKF_USER_PIN_FINAL_TRY): "
                "the harness sent no login; log in once with the right PIN with the "
                "token's own tool to reset the counter, then run again"), None
    if flags & TokenFlag.USER_PIN_COUNT_LOW:
        return None, (f"token {label!r} has counted wrong user PINs "
                      "(CKF_USER_PIN_COUNT_LOW): the harness tries its PIN once")
    return None, None


class Token:
    """A token found by label in a loaded module, with one logged-in session."""

    def __init__(self, module: Path, label: str, pin: str,
                 timeout_s: float = DEFAULT_CALL_TIMEOUT_S, read_only: bool = False) -> None:
        self.module_path = module
        self.read_only = read_only  # --p11-existing / --p11-key: a read-only session
        self.timeout_s = timeout_s
        self.worker = TokenWorker(label)
        self.lib = load_module(module)
        try:
            self.token = self.lib.get_token(token_label=label)
        except p11exc.NoSuchToken:
            present = [text_of(s.get_token().label) for s in self.lib.get_slots(token_present=True)]
            labels = [name for name in present if name]  # free slots have no label
            raise TokenError(
                f"no token labelled {label!r} in {module}; tokens present: "
                f"{', '.join(map(repr, labels)) or 'none'} (check --p11-token-label)"
            ) from None
        except p11exc.MultipleTokensReturned:
            raise TokenError(
                f"more than one token labelled {label!r} in {module}: the harness needs a "
                "unique label"
            ) from None
        self.label = label
        self._pin = pin
        self._session: Any = None
        self.pin_warning: str | None = None  # CKF_USER_PIN_COUNT_LOW seen before the login

    def __repr__(self) -> str:
        return f"Token({str(self.module_path)!r}, {self.label!r}, pin=<masked>)"

    def info(self) -> TokenInfo:
        slot = self.token.slot
        return TokenInfo(
            module=str(self.module_path),
            library=(f"{text_of(self.lib.library_description)} "
                     f"{version_of(self.lib.library_version)}"),
            label=self.label,
            model=text_of(self.token.model),
            manufacturer=text_of(self.token.manufacturer_id),
            # not the slot's: through OpenSC that is the reader (0.0 for a
            # Pico HSM whose token says 6.6)
            firmware=version_of(getattr(self.token, "firmware_version", "")),
            slot_firmware=version_of(getattr(slot, "firmware_version", "")),
            mechanisms=tuple(sorted(str(m.name) for m in slot.get_mechanisms())),
            serial=self.serial,
        )

    @property
    def serial(self) -> str:
        return text_of(getattr(self.token, "serial", b""))

    @property
    def identity(self) -> dict[str, str]:
        """What identifies the token whatever module reaches it (locks, journals)."""
        return {"manufacturer": text_of(self.token.manufacturer_id),
                "model": text_of(self.token.model), "serial": self.serial,
                "token_label": self.label}

    def call(self, fn: Callable[[], T], what: str) -> T:
        """fn() on the token's worker thread, abandoned after the timeout."""
        return self.worker.call(fn, what, self.timeout_s)

    @property
    def session(self) -> Any:
        """The logged-in session (opened on first use): read-write, or
        read-only for a read-only run."""
        global _refused_login
        if self._session is None:
            if _refused_login is not None:
                raise TokenError(_refused_login)
            # the flags as they are now (C_GetTokenInfo), not at enumeration
            try:
                flags = self.call(lambda: int(self.token.slot.get_token().flags),
                                  "C_GetTokenInfo")
            except p11exc.PKCS11Error as exc:  # no login was sent: the run may be tried again
                raise TokenError(f"token {self.label!r} did not describe itself "
                                 f"(C_GetTokenInfo -> {exception_return_code(exc)})") from None
            refusal, self.pin_warning = pin_state(self.label, flags)
            if refusal is not None:
                _refused_login = refusal
                raise TokenError(refusal)
            try:
                self._session = self.call(
                    lambda: self.token.open(rw=not self.read_only, user_pin=self._pin),
                    "C_Login")
            except (p11exc.PinIncorrect, p11exc.PinLenRange, p11exc.PinInvalid) as exc:
                _refused_login = (
                    f"token {self.label!r} refused the PIN ({exception_return_code(exc)}); it was "
                    "tried once and will not be retried: check --p11-pin / PKCS11_TOKEN_PIN"
                )
                raise TokenError(_refused_login) from None
            except p11exc.PinLocked:
                _refused_login = (f"token {self.label!r} is locked (CKR_PIN_LOCKED): "
                                  "unblock it first")
                raise TokenError(_refused_login) from None
            except p11exc.PKCS11Error as exc:  # not the PIN: never retried all the same
                _refused_login = (f"token {self.label!r} refused the login "
                                  f"(C_Login -> {exception_return_code(exc)}); it is not "
                                  "retried")
                raise TokenError(_refused_login) from None
        return self._session

    def release_session(self) -> None:
        """Close the session (a later use logs in again, with the same refusal
        rules): tpm2-pkcs11 frees what a session loaded into the TPM only then."""
        if self._session is not None:
            session, self._session = self._session, None
            self.call(session.close, "C_CloseSession")

    def close(self) -> None:
        try:
            if self._session is not None:
                session, self._session = self._session, None
                self.call(session.close, "C_CloseSession")
        except TokenTimeout:
            pass  # the session goes with the process
        finally:
            self.worker.stop()
