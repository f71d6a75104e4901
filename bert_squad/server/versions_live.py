"""The served model version, and the switch to another one without downtime.

Each version runs in a master of its own (supervisor.py, master.py) on an internal socket of its own. The version the
--version-policy names (the newest folder, or one number) is looked for when asked: every --poll-seconds, on SIGHUP,
and on the Open Inference Protocol's repository load. A version found that is not served is checked (its metadata and
every model file's sha256, versions.verify: a folder still being copied fails it), and the free memory for a second
copy of the model (the running version's resident memory, plus --switch-headroom-mb); then it is started beside the
running one, answers its warm-up question and, with --smoke-file, the smoke questions (smoke.py). Only then does the
front door's upstream (upstream.py) become the new version's: every new request of every protocol goes there, those
in flight finish on the old version, which is then stopped and its memory returned.

A version that fails a step is refused: the reason is logged and counted (bert_squad_version_refusals_total), the
running version keeps serving, and the folder is not read or started again until its files change (only a refusal
for memory is looked at again as it is). A folder still being copied changes at every look and a server short of
memory stays short for a while: those are said and counted once while the reason stays the same.
"""
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

from bert_squad import settings, versions
from bert_squad.metadata import Metadata
from bert_squad.contract import MASTER_ADDRESS_ENV, VERSION_ENV, processes
from bert_squad.contract.logs import say
from bert_squad.front import metrics
from bert_squad.server import smoke
from bert_squad.server.serving_python import master_command
from bert_squad.server.supervisor import StartFailed, Supervisor
from bert_squad.front.upstream import Upstream

# Refusals counted once while the reason stays, however often the folder changes (a copy in progress changes at every
# look) or, for memory, is looked at again without changing (the memory may be free next time).
COUNTED_ONCE = ("files", "memory")


class Refused(Exception):
    """A version cannot take the traffic; `reason` is one of metrics.REFUSAL_REASONS, the message says why."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def fingerprint(folder: Path) -> Tuple:
    """The names, sizes and modification times of a folder's files: a refused folder is tried again once it changes."""
    found = []
    for path in sorted(folder.rglob("*")):
        try:
            stat = path.stat()
        except OSError:  # removed meanwhile
            continue
        if path.is_file():
            found.append((str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns))
    return tuple(found)


def memory_refusal(version: int, running: int, rss: int, available: int, headroom: int) -> Optional[str]:
    """Why starting `version` beside `running` (whose master and workers hold `rss` bytes) would risk the OOM killer
    with `available` bytes free, or None when it fits with `headroom` to spare."""
    need = rss + headroom
    if available >= need:
        return None
    mib = 1 << 20
    return (f"version {version} needs about {need // mib} MiB to start beside version {running} (version {running}'s "
            f"master and workers hold {rss // mib} MiB, plus --switch-headroom-mb {headroom // mib}), and only "
            f"{available // mib} MiB are available: raise the memory limit (Kubernetes: the container's "
            f"resources.limits.memory to twice the model's), or restart the server on version {version}")


class Running:
    """One version's master (its Supervisor) and the front door's way to it (its Upstream)."""

    def __init__(self, version: int, meta: Metadata, supervisor: Supervisor, upstream: Upstream):
        self.version, self.meta, self.supervisor, self.upstream = version, meta, supervisor, upstream

    def facts(self) -> dict:
        """What the page and the metrics show of the served model."""
        return {"version": self.version, "runtime": self.meta.runtime, "precision": self.meta.precision,
                "model_sha256": versions.model_identity(self.meta)}


class Versions:
    """The running version (`current`) and the switches to the one the policy names. `on_ready(warm-up)` and
    `on_down(reason)` report the current version's master coming back and dying (health, the log)."""

    def __init__(self, args, env: dict, policy: versions.Policy, smoke_test: Optional[smoke.Smoke],
                 on_ready: Callable[[str], None], on_down: Callable[[str], None], package_version: str):
        self._args, self._env, self.policy, self._smoke = args, env, policy, smoke_test
        self._package_version = package_version
        self._on_ready, self._on_down = on_ready, on_down
        self.root = Path(args.servable_dir) / args.name
        self.current: Optional[Running] = None
        self._candidate: Optional[Running] = None
        self._lock: Optional[asyncio.Lock] = None  # made on the serving event loop
        self._refused: Dict[int, Tuple[Tuple, str, str]] = {}  # version -> (fingerprint, reason, message)
        self._generation = 0
        self._stopping = False
        self.switched: Callable[[Running], None] = lambda running: None  # points the front door at a new version
        for reason in metrics.REFUSAL_REASONS:  # every reason in /metrics from the start, at 0
            metrics.REFUSALS.labels(reason)

    def launch(self, version: int, meta: Metadata) -> Running:
        """A (not yet started) master for `version` on an internal socket of its own."""
        self._generation += 1
        address = master_address(self._generation)
        env = {**self._env, VERSION_ENV: str(version), MASTER_ADDRESS_ENV: address}
        args = self._args
        upstream = Upstream(address, args.name, version, args.max_message_mb << 20, settings.REST_TIMEOUT_S)
        supervisor = Supervisor(master_command(args, version), env,
                                lambda warm: self._on_ready(warm) if running is self.current else None,
                                lambda reason: self._on_down(reason) if running is self.current else None)
        running = Running(version, meta, supervisor, upstream)
        return running

    def serve(self, running: Running) -> None:
        """`running` is the served version: counted in bert_squad_build_info."""
        self.current = running
        self._build_info(running, 1)

    async def check(self, trigger: str) -> Optional[str]:
        """Look for the version the policy names and switch to it; None when it is served, else why not (the
        repository load's answer). One check at a time: a trigger arriving during a switch waits for it."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.current is None:
                return "the server is not serving yet"
            try:
                outcome, logged = await self._check(trigger)
            except Exception as e:  # a check must not take the server down; the running version keeps serving
                say(f"bert-squad-serve: error: the version check failed: {type(e).__name__}: {e}; version "
                    f"{self.current.version} keeps serving", error=True)
                return f"the version check failed: {type(e).__name__}: {e}"
            if trigger == "SIGHUP" and not logged:  # a signal has no reply: the log answers it
                nothing = f"version {self.current.version} is the one --version-policy {self.policy} names"
                say(f"bert-squad-serve: SIGHUP: {outcome or nothing + '; nothing to switch'}")
            return outcome

    async def _check(self, trigger: str) -> Tuple[Optional[str], bool]:
        """check()'s outcome, and whether it was logged already."""
        found = await asyncio.get_running_loop().run_in_executor(None, versions.numbers, self.root)
        wanted = self.policy.choose(found)
        served = self.current.version
        if wanted is None:
            return (f"--version-policy {self.policy} names no version folder in {self.root} (found: "
                    f"{found or 'none'}); version {served} keeps serving"), False
        if wanted == served:
            return None, False
        folder = self.root / str(wanted)
        print_ = fingerprint(folder)
        known = self._refused.get(wanted)
        if known and known[0] == print_ and known[1] != "memory":
            return known[2], False  # the same files were refused before: not read or started again until they change
        t0 = time.perf_counter()
        try:
            said = await self._start(wanted, folder)
        except Refused as refusal:
            if self._stopping:  # the server stopped the candidate: not the version's fault
                return "the server is stopping", False
            message = f"version {wanted} refused ({refusal.reason}): {refusal}; version {served} keeps serving"
            logged = not (known and known[1] == refusal.reason and refusal.reason in COUNTED_ONCE)
            if logged:
                metrics.REFUSALS.labels(refusal.reason).inc()
                say(f"bert-squad-serve: {message}", error=True)
            self._refused[wanted] = (print_, refusal.reason, message)
            return message, logged
        self._refused.pop(wanted, None)
        await self._switch(trigger, t0, said)
        return None, True

    async def _start(self, version: int, folder: Path) -> str:
        """Check, start and test `version` beside the running one; what its warm-up and smoke test said. Refused when
        any step fails (its master stopped again)."""
        loop = asyncio.get_running_loop()
        try:
            meta = await loop.run_in_executor(None, versions.verify, folder, self._args.device)
        except versions.VersionError as e:
            raise Refused("files", str(e)) from None
        running = self.current
        refusal = memory_refusal(version, running.version, processes.tree_rss_bytes(running.supervisor.process.pid),
                                 processes.available_memory_bytes(), self._args.switch_headroom_mb << 20)
        if refusal:
            raise Refused("memory", refusal)
        say(f"bert-squad-serve: starting version {version} ({meta.precision}, {meta.runtime}) beside version "
            f"{running.version}")
        candidate = self._candidate = self.launch(version, meta)
        try:
            try:
                return await self.bring_up(candidate)
            except StartFailed as e:
                raise Refused(e.stage, str(e)) from None
            except smoke.SmokeError as e:
                raise Refused("smoke", str(e)) from None
        except BaseException:  # refused, or the server stops: the candidate's master goes
            self._candidate = None
            await stop(candidate)
            raise

    async def bring_up(self, running: Running) -> str:
        """Start `running`'s master and wait for its warm-up answer, then --smoke-file's questions (smoke.py); what
        they said. Raises StartFailed or SmokeError. The first version and every new one go through here."""
        running.supervisor.start()
        warm = await asyncio.get_running_loop().run_in_executor(None, running.supervisor.wait_first_start)
        said = f"warm-up {warm}"
        if self._smoke is not None:
            said += "; smoke test " + await smoke.run(self._smoke, running.upstream.call(), self._args.name,
                                                      running.version, settings.REST_TIMEOUT_S)
        return said

    async def _switch(self, trigger: str, t0: float, said: str) -> None:
        """The candidate takes every new request; the old version finishes what it holds and stops."""
        old, new = self.current, self._candidate
        self.serve(new)
        self._candidate = None
        self.switched(new)
        self._on_ready(new.supervisor.warm_up)  # readiness follows the version serving now
        self._build_info(old, 0)
        metrics.SWITCHES.inc()
        say(f"bert-squad-serve: version {new.version} serves every new request; version {old.version} finishes the "
            f"{old.upstream.in_flight} in flight ({trigger}; {said}; switched {time.perf_counter() - t0:.1f} s after "
            f"the version was found)")
        t1 = time.perf_counter()
        drained = await old.upstream.drain(settings.DRAIN_S)
        left = "" if drained else (f"; {old.upstream.in_flight} request(s) still in flight after "
                                   f"{settings.DRAIN_S:g} s were cut")
        await stop(old)
        say(f"bert-squad-serve: version {old.version} stopped, its memory returned ({time.perf_counter() - t1:.1f} s "
            f"after the switch{left})")

    async def stop(self) -> None:
        """Stop every version's master (the serve command is stopping)."""
        self._stopping = True
        for running in (self._candidate, self.current):
            if running is not None:
                await stop(running)

    def _build_info(self, running: Running, value: int) -> None:
        """bert_squad_build_info of `running`: 1 while it serves, 0 once switched away from."""
        facts = running.facts()
        metrics.INFO.labels(version=self._package_version, servable_version=str(running.version),
                            runtime=facts["runtime"], precision=facts["precision"],
                            model_sha256=facts["model_sha256"]).set(value)

    async def wait_fatal(self) -> None:
        """Return when the current version's supervisor gives up (a crash loop): the serve command stops."""
        loop = asyncio.get_running_loop()
        while True:
            running = self.current
            await loop.run_in_executor(None, running.supervisor.finished.wait)
            if running is self.current:
                return


async def stop(running: Running) -> None:
    """Close the channel to a version and stop its master (Serving stops its workers)."""
    await running.upstream.close()
    if running.supervisor.process is not None:
        await asyncio.get_running_loop().run_in_executor(None, running.supervisor.stop)


def master_address(generation: int) -> str:
    """A master's internal gRPC address: a unix socket in a folder only this user may enter, relative to the workdir
    that is the current directory of the serve process and the masters (a socket path may have at most 107 bytes).
    Each master started gets a socket of its own: two run side by side during a switch."""
    folder = Path("internal")
    folder.mkdir(mode=0o700, exist_ok=True)
    folder.chmod(0o700)
    return f"unix:{folder}/serving-master-{os.getpid()}-{generation}.sock"
