"""The run's tokens: brought up once per process, cleaned on every exit path.

`RunTokens` opens the token(s) a run uses (the throw-away SoftHSM2 tokens of
the embedded default, a named module's own token, or the user's token), puts
the interposer under this process when a profile or a read-only run asks for
it, guards a user's token (fixed-slot refusal, the lock, leftovers, the
journal), logs in once, finds the keys of a read-only run and provisions each
key the first time a case needs it; `clean()` removes exactly what it made.

The guard is the one the pytest plugin uses too (`refuse_fixed_slot`,
`lock_token`), and `emulated_module` is "the token as the clients see it
under a profile" for the plugin, the runner and doctor.

Environment: python-pkcs11 has no way to hand a module its configuration, and
SoftHSM2 (SOFTHSM2_CONF) and the interposer (its config variable) read theirs
from this process's environment when the module is initialised. So those
variables are set only around loading a module (`module_environment`) and
restored at once; child processes always get theirs explicitly (self.env).
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pkcs11

from harness.errors import HarnessError
from harness.interposer import build_interposer, write_interposer_config
from harness.interposer.calls import parse_calls, read_from, size_of
from harness.interposer.profile import Profile
from harness.matrix.keys import Algorithm, KeySpec, Provisioning
from harness.tls.ca import TestCA, write_pem
from harness.token.cleanup import leftovers_on
from harness.token.existing_keys import (
    ExistingKey,
    discover,
    has_private_key,
    parse_key_uri,
    writes_in,
)
from harness.token.fixed_slots import fixed_slot_reason
from harness.token.journal import CleanupError, Journal, journal_dir
from harness.token.locking import TokenLock, token_key
from harness.token.named_modules import ModuleSetup, open_named_module
from harness.token.opensc_conf import run_opensc_environment
from harness.token.probe import describe_token
from harness.token.provision import ProvisionedKey, Provisioner, ProvisioningRefused
from harness.token.session import Token, TokenInfo, calls_in_flight
from harness.token.softhsm import TemporarySoftHSM
from harness.token.warm import WarmModule, start_run_warm

EMBEDDED_LABEL = "p11tls"
# libp11 cannot enumerate a token holding an Ed25519 key, so on the embedded
# default Ed25519 lives on a token of its own.
EMBEDDED_EDDSA_LABEL = "p11tls-eddsa"


@contextmanager
def module_environment(variables: dict[str, str]) -> Iterator[None]:
    """os.environ with `variables` while a module is loaded, then as before."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def emulated_module(module: Path, profile: Profile | None, directory: Path,
                    name: str = "interposer", *, private: bool = False
                    ) -> tuple[Path, dict[str, str]]:
    """The token as the clients see it: (the module to load, the environment
    that configures it) — the interposer over `module`, with the profile's
    emulation if any, its calls kept in `directory`/calls-`name`.jsonl.

    `private`: a copy of the interposer of its own in `directory`, for loading
    in this process. python-pkcs11 keeps a module path initialised for the
    life of the process, and the interposer reads its configuration once, at
    C_Initialize: a second run in the same process (another module, another
    profile) must load another file, or it would get the first run's token."""
    directory.mkdir(parents=True, exist_ok=True)
    env = write_interposer_config(module, directory / f"calls-{name}.jsonl",
                                  directory / f"{name}.conf",
                                  profile.interposer_lines() if profile else ())
    built = build_interposer()
    if not private:
        return built, env
    copy = directory / f"{name}-{built.name}"  # a new file: glibc dedupes by inode too
    shutil.copyfile(built, copy)
    return copy, env


def unload_here(module: Path) -> None:
    """C_Finalize and unload a module this process loaded — unless one of the
    harness's own calls is still inside it (it must never see C_Finalize then)."""
    if not calls_in_flight():
        pkcs11.unload(str(module))


# -- the token guard (a user's token), shared with the pytest plugin ------------------
def refuse_fixed_slot(info: dict[str, Any], *, allow_overwrite: bool, read_only: bool) -> None:
    """A card whose keys live in fixed slots would lose one to a new key:
    refused unless the user allowed it (a read-only run writes nothing)."""
    if allow_overwrite or read_only:
        return
    reason = fixed_slot_reason(info)
    if reason is not None:
        raise HarnessError(reason)


def lock_token(identity: dict[str, Any], say: Callable[[str], None] | None) -> TokenLock:
    """One run at a time on a token (by its identity, whatever module reaches
    it): wait for (and say so once) any other run."""
    lock = TokenLock(token_key(identity), f"token {identity.get('token_label', '')!r}")
    lock.acquire(say)
    return lock


def case_lock(identity: dict[str, Any]) -> TokenLock:
    """xdist workers of one run (the controller holds the run's lock) take
    turns on the token case by case."""
    return TokenLock(token_key(identity) + ".case",
                     f"token {identity.get('token_label', '')!r}")


def real_identity(module: Path, token: Token, profile: Profile | None) -> dict[str, str]:
    """The token's identity as the module says it: a profile may make the
    emulated token say another model or manufacturer (asked in a child, which
    loads the real module)."""
    if profile is None or not (profile.token.model or profile.token.manufacturer):
        return token.identity
    info = describe_token(module, token.label, token.timeout_s)
    return {**token.identity, "manufacturer": str(info.get("manufacturer", "")),
            "model": str(info.get("model", ""))}


class RunTokens:
    """The tokens, keys and clean-up of one run in this process. Everything it
    makes goes onto `stack` (the runner's), closed in reverse order."""

    def __init__(self, settings: Any, workdir: Path, stack: ExitStack, *,
                 profile: Profile | None, run_lock_held: bool, session_id: str | None,
                 say: Callable[[str], None] | None) -> None:
        self.settings = settings
        self.workdir = workdir
        self._stack = stack
        self.profile = profile
        self.session_id = session_id  # the pytest run this belongs to (journal)
        self.run_tag = secrets.token_hex(3)
        self.softhsm: TemporarySoftHSM | None = None
        self.env: dict[str, str] = {}
        self._module_env: dict[str, str] = {}  # what loading the module here needs
        self.tokens: dict[str, Token] = {}
        self.provisioners: dict[str, Provisioner] = {}
        self.keys: dict[tuple[str, Provisioning], ProvisionedKey | ProvisioningRefused] = {}
        self._mechanisms: dict[str, tuple[str, ...]] = {}  # token label -> mechanism names
        self.journal: Journal | None = None
        self.case_lock: TokenLock | None = None  # xdist workers of one run, case by case
        # xdist on one token: an Ed25519 key there breaks the libp11 engine of
        # every worker, so it is made only when no other worker runs another case
        self.eddsa_lock: TokenLock | None = None
        self._eddsa_held = False
        # under a profile: the record of this process's own calls (provisioning)
        self.provision_record: Path | None = None
        self.provision_chunks: dict[tuple[str, Provisioning], bytes] = {}
        self.ca = TestCA(workdir / "ca")
        self.setup: ModuleSetup | None = None  # a named module's throw-away token (tpm2)
        if settings.named_module is not None:
            self.setup = stack.enter_context(open_named_module(settings.named_module, workdir))
            self.env = dict(self.setup.env)
            self._module_env = dict(self.setup.env)
            self.module, self.pin = self.setup.module, self.setup.pin
            self.token_labels = {"main": self.setup.token_label,
                                 "eddsa": self.setup.token_label}
        elif settings.module is None:
            self.softhsm = TemporarySoftHSM(workdir / "softhsm")
            stack.callback(self.softhsm.remove)
            self.env = dict(self.softhsm.env)
            self._module_env = dict(self.softhsm.env)
            self.module = self.softhsm.module
            self.pin = secrets.token_hex(4)
            self.token_labels = {"main": EMBEDDED_LABEL, "eddsa": EMBEDDED_EDDSA_LABEL}
            for label in self.token_labels.values():
                self.softhsm.init_token(label, self.pin)
        else:
            self.module = settings.module
            self.pin = settings.pin or ""
            assert settings.token_label is not None
            self.token_labels = {"main": settings.token_label, "eddsa": settings.token_label}
            self.env = self._module_env = run_opensc_environment(  # OpenSC: cache, one driver
                settings, workdir)
        self.load_path = self.module  # what clients and this process load (--p11-warm: RPC)
        self.warm: WarmModule | None = None
        if settings.warm:
            self.warm = start_run_warm(self.module, self.token_labels["main"], workdir,
                                       self._module_env, settings.keys, self.setup is not None)
            stack.callback(self.warm.stop)
            self.load_path = self.warm.client_module
            self.env, self._module_env = ({**self.env, **self.warm.env},
                                          {**self._module_env, **self.warm.env})
        # Under a profile this process, which provisions the keys, goes through
        # the emulation too: a refused import must be refused here. Its own calls
        # are recorded whenever clients' are (an import cell shows its
        # C_CreateObject), and in a read-only run: proof that it wrote nothing.
        self.token_module = self.load_path
        if profile or settings.read_only or settings.record:
            self.token_module, env = emulated_module(self.load_path, profile,
                                                     workdir / "interposer", "provision",
                                                     private=True)
            # after the tokens close (callbacks run in reverse): C_Finalize through
            # the copy, so the real module is initialised afresh by a later run here
            stack.callback(unload_here, self.token_module)
            self.provision_record = workdir / "interposer" / "calls-provision.jsonl"
            self._module_env.update(env)
        self.main_token = self.load_token("main")
        if settings.module is not None:  # a named token: one run at a time, a journal
            self._guard(run_lock_held, say)
        self.token("main")
        self.existing: dict[str, ExistingKey] = {}  # read-only mode: name -> key on the token
        # xdist workers: the login in turn too (SoftHSM reads every object
        # file at C_Login, and another worker may be writing one)
        if self.case_lock is not None:
            self.case_lock.acquire()
        try:
            _ = self.main_token.session  # fails fast on a bad PIN (after the lock: one login)
            if settings.read_only:
                self.existing = self._discover_existing()
        finally:
            if self.case_lock is not None:
                self.case_lock.release()

    @property
    def user_token(self) -> bool:
        """A user's token (not a throw-away one): exactly ours is removed."""
        return self.softhsm is None and self.setup is None

    def _guard(self, run_lock_held: bool, say: Callable[[str], None] | None) -> None:
        """Before anything is written to a user's token: refuse fixed-slot cards,
        wait for any other run on it, start this run's journal."""
        token = self.main_token
        refuse_fixed_slot(self.token_info().as_dict(),
                          allow_overwrite=self.settings.allow_slot_overwrite,
                          read_only=self.settings.read_only)
        identity = real_identity(self.module, token, self.profile)
        if run_lock_held:  # the pytest controller holds the run's lock; workers take turns
            self.case_lock = case_lock(identity)
            self.eddsa_lock = TokenLock(token_key(identity) + ".eddsa",
                                        f"token {token.label!r} (Ed25519 cases)")
        else:
            lock = lock_token(identity, say)
            self._stack.callback(lock.release)
            if say is not None:
                line = leftovers_on(token, token_key(identity), self.run_tag, self.module)
                if line:
                    say(line)
        if self.settings.read_only:  # nothing will be created: nothing to write down
            return
        self.journal = Journal(journal_dir(identity),
                               self.run_tag, {"module": str(self.module),
                                              "token_label": token.label,
                                              "serial": token.serial,
                                              "session": self.session_id})
        # a journal left open (cleanup failed) keeps its entries for `p11tls cleanup`
        self._stack.callback(self.journal.close, False)

    def load_token(self, role: str) -> Token:
        label = self.token_labels[role]
        if label not in self.tokens:
            with module_environment(self._module_env):
                token = Token(self.token_module, label, self.pin,
                              timeout_s=self.settings.timeout_s,
                              read_only=self.settings.read_only)
            self.tokens[label] = token
            self._stack.callback(token.close)
        return self.tokens[label]

    def token(self, role: str) -> Token:
        """The token of `role` ("main", "eddsa"), with its provisioner."""
        token = self.load_token(role)
        if token.label not in self.provisioners:
            self.provisioners[token.label] = Provisioner(
                token, self.ca, self.workdir, self.run_tag, self.journal)
        return token

    def token_label_for(self, key: KeySpec) -> str:
        return self.token_labels["eddsa" if key.algorithm is Algorithm.EDDSA else "main"]

    def token_info(self) -> TokenInfo:
        return self.main_token.info()

    def _discover_existing(self) -> dict[str, ExistingKey]:
        """Read-only mode: the keys to test, found in the logged-in read-only session."""
        uris = tuple(parse_key_uri(u) for u in self.settings.key_uris)
        session = self.main_token.session
        found = self.main_token.call(
            lambda: discover(session, all_pairs=self.settings.existing, uris=uris),
            "C_FindObjects")
        return {k.name: k for k in found}

    def _existing_key(self, spec: KeySpec) -> ProvisionedKey:
        """A key already on the token: its certificate from the token, or one made
        in memory (never stored) for a key that has none."""
        existing = self.existing.get(spec.name)
        if existing is None:
            raise HarnessError(f"key {spec.name!r} was not found on the token again")
        session = self.main_token.session
        if not self.main_token.call(lambda: has_private_key(session, existing.id_hex),
                                    "C_FindObjects"):
            raise ProvisioningRefused(
                f"no private key with CKA_ID {existing.id_hex} (label {existing.label!r}) is "
                "visible after the login", "no private key")
        cert = existing.certificate
        if cert is None:
            cert = self.ca.issue_client_cert(existing.public_key, existing.label)
            subject = None
        else:
            subject = cert.subject.rfc4514_string()
        path = write_pem(cert, self.workdir / f"existing-{existing.name}.pem")
        return ProvisionedKey(spec, Provisioning.EXISTING, existing.cert_label or existing.label,
                              existing.id_hex, path, subject=subject)

    def key(self, spec: KeySpec, provisioning: Provisioning) -> ProvisionedKey:
        """The provisioned key for (spec, provisioning), made on first use."""
        slot = (spec.name, provisioning)
        if provisioning is Provisioning.EXISTING and slot not in self.keys:
            try:
                self.keys[slot] = self._existing_key(spec)
            except ProvisioningRefused as refused:
                self.keys[slot] = refused
        if slot not in self.keys:
            role = "eddsa" if spec.algorithm is Algorithm.EDDSA else "main"
            self.token(role)
            start = size_of(self.provision_record)
            try:
                self.keys[slot] = self.provisioners[self.token_labels[role]].provision(
                    spec, provisioning)
            except ProvisioningRefused as refused:
                self.keys[slot] = refused
            if self.provision_record is not None:
                self.provision_chunks[slot] = read_from(self.provision_record, start)
        result = self.keys[slot]
        if isinstance(result, ProvisioningRefused):
            raise result
        return result

    def missing_mechanism(self, key: KeySpec) -> str | None:
        """The signing mechanism a key type needs that its token lacks, if any."""
        needed = {Algorithm.EDDSA: "EDDSA"}.get(key.algorithm)
        if needed is None:
            return None
        return None if needed in self.token_mechanisms(key) else f"CKM_{needed}"

    def token_mechanisms(self, key: KeySpec) -> tuple[str, ...]:
        """The mechanisms the token of `key` offers (as clients see them: under a
        profile, the emulated list), read once per token."""
        token = self.token("eddsa" if key.algorithm is Algorithm.EDDSA else "main")
        if token.label not in self._mechanisms:
            self._mechanisms[token.label] = token.info().mechanisms
        return self._mechanisms[token.label]

    def harness_writes(self) -> list[str]:
        """Write functions among this process's own recorded calls (read-only proof)."""
        if self.provision_record is None or not self.provision_record.exists():
            return []
        return writes_in(parse_calls(self.provision_record.read_bytes()))

    @contextmanager
    def turn(self, key: KeySpec) -> Iterator[None]:
        """xdist workers of one run use a named token one case at a time, and
        Ed25519 cases after every other worker's other cases: a worker holds
        the Ed25519 lock from its first Ed25519 case until its keys are gone
        (libp11 cannot enumerate a token with an Ed25519 key on it; each
        worker already runs its Ed25519 cases last)."""
        if self.case_lock is None:
            yield
            return
        with self._eddsa_turn(key):
            self.case_lock.acquire()
            try:
                yield
            finally:
                self.case_lock.release()

    @contextmanager
    def _eddsa_turn(self, key: KeySpec) -> Iterator[None]:
        assert self.eddsa_lock is not None
        if self._eddsa_held:  # this worker's Ed25519 key is on the token already
            yield
        elif key.algorithm is Algorithm.EDDSA:
            self.eddsa_lock.acquire()  # the others' cases end first
            self._eddsa_held = True
            self._stack.callback(self.eddsa_lock.release)  # after clean(): key gone
            yield
        else:
            other = TokenLock(self.eddsa_lock.path.stem, self.eddsa_lock.what,
                              self.eddsa_lock.path.parent)
            other.acquire(shared=True)
            try:
                yield
            finally:
                other.release()

    def clean(self) -> CleanupError | None:
        """Remove what this run created on a user's token (a throw-away token
        goes as a whole); the first failure, naming what was left."""
        failure: CleanupError | None = None
        busy = calls_in_flight()
        if busy and self.journal is not None:  # kept, and saying why
            self.journal.abandoned(", ".join(busy))
        if self.user_token:
            # xdist: another worker may still run a case on the token, and two
            # processes writing one SoftHSM2 token at once can crash one of them
            turn = self._cleanup_turn()
            try:
                for provisioner in self.provisioners.values():
                    try:
                        provisioner.remove_created()
                    except CleanupError as exc:
                        failure = failure or exc
            finally:
                if turn:
                    assert self.case_lock is not None
                    self.case_lock.release()
        return failure

    def _cleanup_turn(self) -> bool:
        """The case lock for the clean-up, waited for at most one case's
        timeout: a worker stuck on a hung token must not keep this one's
        objects on it. True when taken (and to be released)."""
        if self.case_lock is None or self.case_lock.held:
            return False
        return self.case_lock.acquire(poll_s=0.05, within_s=self.settings.timeout_s)
