"""pytest fixtures and hooks for engine-backed tests (registered from tests/conftest.py via pytest_plugins).

Fixtures (all start real programs; teardown stops them and checks nothing is left behind):

- ``dockerd``: a fresh private engine for one test.
- ``dockerd_factory(name=..., data_root=..., bin_dir=..., extra_args=...)``: several engines in one test.
- ``loaded_dockerd``: module-scoped engine pre-loaded with ``scenario_basic()``, a ``LoadedScenario``
  (``.engine``, ``.ids[key]``, ``.spec(key)``, ``.containers``). Read-only: tests that change images use
  ``dockerd`` + ``load_scenario``.
- ``registry``: a private registry on loopback (a Podman engine of the same test lists it as insecure).
- ``loop_fs_factory(size_mb)``: a mounted ext4 loop filesystem (``.mountpoint``) for disk pressure.
- ``exporter_factory(engine, config)``: the exporter subprocess, started and healthy (a PrivateContainerd
  as `engine`: over the CRI, `--runtime.endpoint`).
- ``containerd``: a fresh private containerd with its CRI plugin (tests/harness/containerd.py); tests using it
  get the `cri` marker (root, containerd and ctr needed: skip locally, fail under CI=true).

Which engine: ``DIE_ENGINE`` (see tests/harness/engines.py; default ``bookworm`` = the system's dockerd).
``DIE_KEEP_WORKDIR=1`` keeps engine workdirs under /tmp for post-mortems.
When a test fails, the tails of its engines' and exporters' logs are attached to the report.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import pytest

from tests.harness import engines
from tests.harness.containerd import PrivateContainerd
from tests.harness.dockerd import LoopFilesystem, PrivateDockerd, remove_workdir, short_workdir
from tests.harness.engines import EngineSpec
from tests.harness.exporter import ExporterProcess
from tests.harness.images import LoadedScenario, load_scenario, scenario_basic
from tests.harness.registry import PrivateRegistry
from tests.harness.requires import (
    E2E_PROGRAMS,
    in_ci,
    require_engine,
    require_programs,
    require_root,
    skip_or_fail,
)

#: The address every docker client in the test process falls back to: nothing listens there.
NOWHERE = "unix:///nonexistent/tests-never-use-the-default-engine.sock"
_UNSAFE_VARS = ("DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")

#: Fixtures that start an engine: tests using them get the `engine` marker automatically.
ENGINE_FIXTURES = frozenset({"dockerd", "dockerd_factory", "loaded_dockerd"})
#: Fixtures that start a CRI runtime: the `cri` marker (not `engine`: the Docker matrix does not repeat them).
CRI_FIXTURES = frozenset({"containerd"})

_DIAGNOSTICS = pytest.StashKey[list[Callable[[], tuple[str, str]]]]()


# --------------------------------------------------------------------------------------------- hooks


def _isolate_environ() -> None:
    os.environ["DOCKER_HOST"] = NOWHERE
    for var in _UNSAFE_VARS:
        os.environ.pop(var, None)


def pytest_configure(config: pytest.Config) -> None:
    # before collection, so even import-time code in a test module cannot reach a real engine
    _isolate_environ()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if ENGINE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.engine)
        if CRI_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cri)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("engine") is not None:
        require_engine()
    if item.get_closest_marker("cri") is not None:
        require_root("a private containerd")
        require_programs("containerd", "ctr")
    e2e = item.get_closest_marker("e2e")
    if e2e is not None:
        require_programs(*(e2e.args or E2E_PROGRAMS))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    if report.skipped and in_ci() and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which counts as a failure: {reason}"
    if report.failed:
        for diag in item.stash.get(_DIAGNOSTICS, []):
            try:
                title, text = diag()
            except Exception as exc:
                title, text = "diagnostics", repr(exc)
            report.sections.append((title, text))
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report: pytest.CollectReport = yield
    if report.skipped and in_ci():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"module skipped under CI=true, which counts as a failure: {reason}"
    return report


def add_diagnostics(node: pytest.Item, title: str, text: Callable[[], str]) -> None:
    """Attach `text()` under `title` to the node's report if it fails (log tails of what it started)."""
    node.stash.setdefault(_DIAGNOSTICS, []).append(lambda: (title, text()))


# --------------------------------------------------------------------------------------------- engines


@pytest.fixture(scope="session", autouse=True)
def _no_default_engine() -> Iterator[None]:
    """Point DOCKER_HOST nowhere for the session: a mis-wired test fails instead of using a real engine."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DOCKER_HOST", NOWHERE)
        for var in _UNSAFE_VARS:
            mp.delenv(var, raising=False)
        yield


class EngineFactory(Protocol):
    def __call__(
        self,
        name: str | None = None,
        *,
        data_root: Path | None = None,
        bin_dir: Path | None = None,
        extra_args: Sequence[str] = (),
        start: bool = True,
    ) -> PrivateDockerd: ...


def engine_spec() -> EngineSpec:
    """The engine kind `DIE_ENGINE` selects (default bookworm), prepared; skip (fail under CI) if it cannot be."""
    try:
        return engines.prepare_engine(engines.engine_name_from_env())
    except engines.EngineUnavailable as exc:
        skip_or_fail(str(exc))


def new_engine(
    workdir: Path,
    name: str | None = None,
    *,
    data_root: Path | None = None,
    bin_dir: Path | None = None,
    extra_args: Sequence[str] = (),
) -> PrivateDockerd:
    """An engine (not started) of the kind `DIE_ENGINE` selects, unless bin_dir/extra_args say otherwise.

    `name` only labels the engine (logs, reprs). Start it with `start_engine_checked` so a column of the
    matrix never silently runs another store than it promises.
    """
    if bin_dir is not None or extra_args:
        return PrivateDockerd(
            workdir, data_root=data_root, bin_dir=bin_dir, extra_args=extra_args, name=name or "custom"
        )
    return engines.make_engine(engine_spec(), workdir, data_root=data_root, name=name)


def start_engine_checked(engine: PrivateDockerd, timeout: float = 60) -> None:
    """Start `engine` and, when it is of the `DIE_ENGINE` kind, confirm its store via `check_engine`."""
    engine.start(timeout=timeout)
    spec = engine_spec()
    if engine.bin_dir == spec.bin_dir and engine.extra_args == spec.extra_args:
        engines.check_engine(spec, engine)


def _teardown_engine(engine: PrivateDockerd) -> None:
    engine.stop()
    mounts, procs = engine.leftovers()
    if os.environ.get("DIE_KEEP_WORKDIR") != "1":
        remove_workdir(engine.workdir)
    assert not mounts and not procs, f"{engine.name} left mounts {mounts} / processes {procs}"


@pytest.fixture
def dockerd_factory(request: pytest.FixtureRequest, loop_fs_factory: Any) -> Iterator[EngineFactory]:
    """Start private engines on demand (the fleet tests need two); all are stopped after the test.

    Depends on loop_fs_factory so that loop filesystems used as data roots outlive the engines on them.
    """
    require_engine()
    started: list[PrivateDockerd] = []

    def factory(
        name: str | None = None,
        *,
        data_root: Path | None = None,
        bin_dir: Path | None = None,
        extra_args: Sequence[str] = (),
        start: bool = True,
    ) -> PrivateDockerd:
        engine = new_engine(short_workdir(), name, data_root=data_root, bin_dir=bin_dir, extra_args=extra_args)
        if isinstance(engine, engines.PodmanService) and "registry" in request.fixturenames:
            # dockerd trusts plain HTTP to 127.0.0.0/8; Podman pushes only where registries.conf says insecure,
            # and it reads that file once: the test's registry is listed before the service starts
            engine.add_insecure_registry(request.getfixturevalue("registry").address)
        started.append(engine)
        label = f"{engine.name}#{len(started)}"
        add_diagnostics(request.node, f"{label} dockerd.log ({engine.workdir})", lambda: engine.log_tail(60))
        if start:
            start_engine_checked(engine, timeout=60)
        return engine

    yield factory
    errors = []
    for engine in reversed(started):
        try:
            _teardown_engine(engine)
        except Exception as exc:  # stop every engine even if one fails, then report
            errors.append(f"{engine!r}: {exc}")
    if errors:
        pytest.fail("engine teardown failed:\n" + "\n".join(errors), pytrace=False)


@pytest.fixture
def dockerd(dockerd_factory: EngineFactory) -> PrivateDockerd:
    """A fresh private engine for this test only."""
    return dockerd_factory()


@pytest.fixture(scope="module")
def loaded_dockerd() -> Iterator[LoadedScenario]:
    """One engine per module with `scenario_basic()` loaded. Treat as read-only."""
    require_engine()
    engine = new_engine(short_workdir(), "loaded")
    try:
        start_engine_checked(engine, timeout=60)
        yield load_scenario(engine, scenario_basic())
    finally:
        _teardown_engine(engine)


# --------------------------------------------------------------------------------------------- others


@pytest.fixture
def containerd(request: pytest.FixtureRequest) -> Iterator[PrivateContainerd]:
    """A fresh private containerd (CRI plugin, native snapshotter, no CNI) on its own socket."""
    ctd = PrivateContainerd()
    add_diagnostics(request.node, "containerd.log", ctd.log_tail)
    try:
        ctd.start()
        yield ctd
    finally:
        if os.environ.get("DIE_KEEP_WORKDIR") == "1":
            ctd.stop()
        else:
            ctd.remove()


@pytest.fixture
def registry(request: pytest.FixtureRequest) -> Iterator[PrivateRegistry]:
    """A private `docker-registry` on 127.0.0.1:<free port> (engines push to it without TLS)."""
    require_programs("docker-registry")
    workdir = short_workdir("die-reg-")
    reg = PrivateRegistry(workdir)
    add_diagnostics(request.node, "registry.log", lambda: reg._log_tail(40))
    try:
        reg.start()
        yield reg
    finally:
        reg.stop()
        remove_workdir(workdir)


class LoopFactory(Protocol):
    def __call__(self, size_mb: int) -> LoopFilesystem: ...


@pytest.fixture
def loop_fs_factory() -> Iterator[LoopFactory]:
    """Mounted ext4 loop filesystems (`.mountpoint`); unmounted and detached after the test."""
    made: list[LoopFilesystem] = []
    dirs: list[Path] = []

    def factory(size_mb: int) -> LoopFilesystem:
        require_root("a loop filesystem")
        require_programs("mkfs.ext4", "losetup", "mount")
        workdir = short_workdir("die-fs-")
        dirs.append(workdir)
        fs = LoopFilesystem(workdir, size_mb).__enter__()
        made.append(fs)
        return fs

    yield factory
    for fs in reversed(made):
        fs.cleanup()
    for d in dirs:
        remove_workdir(d)


class ExporterFactory(Protocol):
    def __call__(
        self,
        engine: PrivateDockerd | PrivateContainerd | str,
        config: dict[str, Any] | None = None,
        *,
        extra_args: Sequence[str] = (),
        start: bool = True,
        ready: bool = True,
        client_tls: ssl.SSLContext | None = None,
    ) -> ExporterProcess: ...


@pytest.fixture
def exporter_factory(request: pytest.FixtureRequest) -> Iterator[ExporterFactory]:
    """Exporter subprocesses on free ports (started, healthy and by default ready); stopped after the test.

    `engine` may be a PrivateDockerd or a host string (e.g. a dead socket for outage tests).
    """
    made: list[ExporterProcess] = []
    workdir = short_workdir("die-exp-")

    def factory(
        engine: PrivateDockerd | PrivateContainerd | str,
        config: dict[str, Any] | None = None,
        *,
        extra_args: Sequence[str] = (),
        start: bool = True,
        ready: bool = True,
        client_tls: ssl.SSLContext | None = None,
    ) -> ExporterProcess:
        host = (
            engine
            if isinstance(engine, str)
            else engine.endpoint
            if isinstance(engine, PrivateContainerd)
            else engine.host
        )
        exp = ExporterProcess(
            workdir, host, config, extra_args=extra_args, name=f"exporter{len(made)}", client_tls=client_tls
        )
        if isinstance(engine, PrivateContainerd):
            exp.engine_flag = "--runtime.endpoint"
        made.append(exp)
        add_diagnostics(request.node, f"{exp.name} stderr", lambda: exp.logs(60))
        if start:
            exp.start()
            if ready:
                exp.wait_ready()
        return exp

    yield factory
    for exp in reversed(made):
        exp.stop()
    if os.environ.get("DIE_KEEP_WORKDIR") != "1":
        remove_workdir(workdir)
