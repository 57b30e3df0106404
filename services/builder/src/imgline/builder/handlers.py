"""``build.requested`` → a liveimg in the artefact store → ``image.built`` (or ``build.failed``).

Thin over the pure modules and the adapters. A build that fails because of its input (kickstart,
source, packages) is a normal outcome: it is reported as ``build.failed`` with the stage, the
kickstart line when one is to blame, and the build log, and the request is acknowledged. Only
what may pass (a git server or mirror that did not answer) is retried.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from fedora_messaging import message as fm_message
from prometheus_client import CollectorRegistry, Counter, Histogram

from imgline.builder.adapters import lorax, sources
from imgline.builder.domain.plan import BuildPlan
from imgline.builder.domain.version import next_version, release_name
from imgline.builder.errors import BackendUnavailableError, KickstartError
from imgline.builder.kickstart import parse_kickstart
from imgline.builder.ports import Backend, BuildOutput
from imgline.builder.settings import BuilderConfig
from imgline.core import liveimg, nsimage
from imgline.core.artifacts import LocalArtifactStore
from imgline.core.bus.stage import LOCKS, StageHandler, exclusive
from imgline.core.errors import (
    ImglineError,
    PermanentError,
    RetriesExhaustedError,
    TransientError,
)
from imgline.schemas import payloads as p
from imgline.schemas.messages import BuildFailedV1, ImageBuiltV1

log = logging.getLogger(__name__)

BUILDS = "builds"  # records: build_id -> the image.built payload (idempotency)
LOGS = "logs"  # records: <build_id>.log
BUILD_LOG = "build.log"  # in the work directory while the build runs


@dataclass
class _Progress:
    """Which stage a build is in, for the ``build.failed`` it may end with, and how long each
    stage took, for the per-stage histogram (``timed`` gets the stage and its seconds)."""

    timed: Callable[[str, float], None]
    stage: str = "fetch"
    since: float = field(default_factory=time.monotonic)

    def enter(self, stage: str) -> None:
        self.end()
        self.stage = stage

    def end(self) -> None:
        """The current stage is over (also when it failed)."""
        now = time.monotonic()
        self.timed(self.stage, now - self.since)
        self.since = now


class BuildFailure(PermanentError):
    """A permanent error and the build stage it happened in (``build.failed`` says both)."""

    def __init__(self, stage: str, cause: PermanentError) -> None:
        super().__init__(str(cause))
        self.stage = stage
        self.cause = cause


class BuildInterrupted(TransientError):
    """A transient error and the build stage it happened in: retried, and on the last try
    ``build.failed`` names the stage."""

    def __init__(self, stage: str, cause: TransientError) -> None:
        super().__init__(str(cause))
        self.stage = stage
        self.cause = cause


class BuildMetrics:
    """What a dashboard shows about builds: how many, how they ended, how long they took."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.builds = Counter(
            "imgline_builds", "Builds by result", ["backend", "result"], registry=registry
        )
        self.seconds = Histogram(
            "imgline_build_seconds",
            "Build duration, request to stored image",
            ["backend"],
            buckets=(30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
            registry=registry,
        )
        self.stage_seconds = Histogram(
            "imgline_build_stage_seconds",
            "Time in each build stage (fetch, parse, build, assemble, store), failed ones too",
            ["backend", "stage"],
            buckets=(0.1, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600),
            registry=registry,
        )

    def stage_timer(self, backend: str) -> Callable[[str, float], None]:
        """What a build calls when a stage ends: the stage's name and its seconds."""

        def observe(stage: str, seconds: float) -> None:
            self.stage_seconds.labels(backend, stage).observe(seconds)

        return observe


class BuildStage:
    """One ``build.requested`` → a stored liveimg and ``image.built``, or ``build.failed``.
    Builds one at a time (the queue's prefetch is 1)."""

    def __init__(
        self,
        config: BuilderConfig,
        store: LocalArtifactStore,
        backends: dict[str, Backend],
        *,
        topic_prefix: str,
        metrics: BuildMetrics,
        clock: Callable[[], datetime] = lambda: datetime.now(tz=UTC),
    ) -> None:
        self.config = config
        self.store = store
        self.backends = backends
        self.prefix = topic_prefix
        self.metrics = metrics
        self.clock = clock

    def resolve(self, payload: p.BuildRequested) -> p.BuildRequested:
        """A git source without a pinned commit gets the commit its ref names now, and with it
        a build_id of its own: the same commit twice is one build, a new commit a new build
        (a push is never answered with the image of an older commit). Requesters match the
        answer by ``request_id``."""
        src = payload.source
        if not isinstance(src, p.GitSource) or src.commit is not None:
            return payload
        sources.check_git_source(src, self.config.git_schemes)
        said = io.StringIO()
        try:
            commit = sources.resolve_ref(src.url, src.ref, said, self.config.git_schemes)
        except ImglineError:
            log.warning(
                "request_id=%s: resolving %s: %s",
                payload.request_id,
                src.ref,
                said.getvalue()[-2000:],
            )
            raise
        data = payload.model_dump(mode="json")
        data["source"]["commit"] = commit
        data["build_id"] = ""
        resolved = p.BuildRequested.model_validate(data)
        log.info(
            "request_id=%s: %s of %s is commit %s: build_id=%s",
            payload.request_id,
            src.ref,
            src.url,
            commit[:12],
            resolved.build_id,
        )
        return resolved

    def key(self, payload: p.BuildRequested) -> str:
        return payload.build_id

    def replay(self, payload: p.BuildRequested) -> fm_message.Message | None:
        previous = self.store.read_record(BUILDS, payload.build_id)
        if previous is None:
            return None
        # the answer names the request in hand: another push of the same commit is told too
        built = p.ImageBuilt.model_validate_json(previous).model_copy(
            update={"request_id": payload.request_id}
        )
        log.info(
            "build_id=%s already built as %s",
            payload.build_id,
            release_name(built.name, built.version),
        )
        return ImageBuiltV1.from_payload(built, self.prefix)

    def run(self, payload: p.BuildRequested, workdir: Path) -> fm_message.Message:
        req = payload
        log_path = workdir / BUILD_LOG
        started = time.monotonic()
        progress = _Progress(self.metrics.stage_timer(req.backend))
        try:
            with log_path.open("w", encoding="utf-8") as build_log:
                build_log.write(
                    f"# imgline build {req.build_id} of {req.name} ({req.stream}), "
                    f"request {req.request_id}, backend {req.backend}\n"
                )
                try:
                    built = self._build(req, workdir, build_log, started, progress)
                except ImglineError as exc:
                    build_log.write(f"# FAILED in {progress.stage}: {exc}\n")
                    raise
                finally:
                    progress.end()
        except TransientError as exc:
            self._store_log(req.build_id, log_path)
            self.metrics.builds.labels(req.backend, "retried").inc()
            raise BuildInterrupted(progress.stage, exc) from exc
        except PermanentError as exc:
            raise BuildFailure(progress.stage, exc) from exc
        built = built.model_copy(update={"log_url": self._store_log(req.build_id, log_path)})
        self.store.write_record(BUILDS, req.build_id, built.model_dump_json().encode())
        self.metrics.builds.labels(req.backend, "built").inc()
        self.metrics.seconds.labels(req.backend).observe(time.monotonic() - started)
        log.info(
            "build_id=%s built %s in %.0fs",
            req.build_id,
            release_name(built.name, built.version),
            built.duration_seconds,
        )
        return ImageBuiltV1.from_payload(built, self.prefix)

    def failed(
        self, payload: p.BuildRequested, error: PermanentError, workdir: Path
    ) -> fm_message.Message:
        """``build.failed`` with the stage, the kickstart line when one is to blame, and the
        build log so far."""
        origin = error.cause if isinstance(error, RetriesExhaustedError) else error
        stage, cause = (
            (origin.stage, origin.cause)
            if isinstance(origin, BuildFailure | BuildInterrupted)
            else ("fetch", origin)
        )
        # on the last try: "gave up after N attempts: <cause>"
        text = str(error) if isinstance(error, RetriesExhaustedError) else str(cause)
        req = payload
        line = getattr(cause, "line", None)
        log.error("build_id=%s failed in %s: %s", req.build_id, stage, text)
        failed = p.BuildFailed(
            request_id=req.request_id,
            build_id=req.build_id,
            name=req.name,
            stage=stage,  # type: ignore[arg-type]
            error=text[:8000] or type(cause).__name__,
            kickstart_line=line if isinstance(line, int) and line > 0 else None,
            log_url=self._store_log(req.build_id, workdir / BUILD_LOG),
        )
        self.metrics.builds.labels(req.backend, "failed").inc()
        return BuildFailedV1.from_payload(failed, self.prefix)

    def _build(
        self,
        req: p.BuildRequested,
        workdir: Path,
        build_log: IO[str],
        started: float,
        progress: _Progress,
    ) -> p.ImageBuilt:
        src = sources.fetch(req.source, workdir, build_log, self.config.git_schemes)
        progress.enter("parse")
        parsed = parse_kickstart(
            src.text,
            path=src.path,
            include_root=src.include_root,
            syntax=self.config.syntax,
            variables=self.config.variables,
        )
        for warning in parsed.warnings:
            build_log.write(f"# kickstart warning: {warning}\n")
        if not self.config.allow_host_scripts:
            refuse_host_scripts(parsed.plan)
        progress.enter("build")
        backend = self.backends.get(req.backend)
        if backend is None:
            raise BackendUnavailableError(
                f"this builder has no backend {req.backend!r} (it has {', '.join(self.backends)})"
            )
        backend.check_available()
        if req.version is not None:
            self._next_version(req)  # a pinned version another build has: say so before building
        # Backends that read the kickstart themselves (lorax) get the expanded text, so they
        # cannot resolve an %include differently from the parser that validated it.
        flat = workdir / "kickstart.flat.ks"
        flat.write_text(parsed.flat_text, encoding="utf-8")
        output = backend.build(parsed.plan, flat, workdir, build_log)
        with _released(output, build_log, keep=self.config.keep_workdir):
            progress.enter("assemble")
            # The version is decided, the image made with it and stored, and only then claimed,
            # all under one lock per image name: a failure or crash on the way claims nothing
            # (no gap), and builders sharing the store take turns (never the same version).
            with exclusive(
                self.store.root / LOCKS,
                f"versions.{req.name}",
                wait_seconds=float(self.config.build_timeout_seconds),
            ):
                version = self._next_version(req)
                meta = self._image_meta(req, version, parsed.plan, output, src.commit)
                out = workdir / f"{release_name(req.name, version)}.squashfs.img"
                self._assemble(
                    output, out, parsed.plan, meta=meta, workdir=workdir, build_log=build_log
                )
                progress.enter("store")
                stored = self.store.put_file(out, move=True)
                self._claim_version(req, version)
            build_log.write(f"# stored {stored.uri} sha256 {stored.sha256} ({stored.size} bytes)\n")
            built = p.ImageBuilt(
                build_id=req.build_id,
                request_id=req.request_id,
                name=req.name,
                version=version,
                stream=req.stream,
                artifact=p.Artifact(
                    uri=stored.uri,
                    sha256=stored.sha256,
                    size=stored.size,
                    compression=self.config.compression,
                ),
                source_commit=src.commit,
                kickstart_sha256=parsed.sha256,
                backend=req.backend,
                duration_seconds=round(time.monotonic() - started, 3),
            )
            return built

    def _assemble(
        self,
        output: BuildOutput,
        out: Path,
        plan: BuildPlan,
        *,
        meta: dict[str, Any],
        workdir: Path,
        build_log: IO[str],
    ) -> None:
        if output.tree is not None and output.owner is not None:
            _describe_boot(output.tree, meta)
            nsimage.assemble(
                output.tree,
                out,
                user=output.owner,
                size_mib=plan.rootfs.size_mib,
                headroom_mib=self.config.rootfs_headroom_mib,
                meta=meta,
                compression=self.config.compression,
                compression_level=self.config.compression_level,
                log_file=build_log,
            )
        elif output.tree is not None:
            _describe_boot(output.tree, meta)
            liveimg.assemble(
                output.tree,
                out,
                size_mib=plan.rootfs.size_mib,
                headroom_mib=self.config.rootfs_headroom_mib,
                meta=meta,
                compression=self.config.compression,
                compression_level=self.config.compression_level,
                workdir=workdir,
                log_file=build_log,
            )
        elif output.fsimage is not None:
            lorax.prepare_fsimage(output.fsimage, meta, workdir, build_log)
            liveimg.make_squashfs(
                output.fsimage,
                out,
                self.config.compression,
                build_log,
                self.config.compression_level,
            )
        else:
            raise PermanentError("the backend produced neither a root tree nor an image")

    def _next_version(self, req: p.BuildRequested) -> str:
        """The version this build gets (under the name's lock): the one it claimed before a
        crash cut it short, the pinned one, or the next free one of today."""
        namespace = f"versions.{req.name}"
        taken = self.store.list_records(namespace)
        own = req.build_id.encode()
        for version in reversed(taken):
            if self.store.read_record(namespace, version) == own:
                return version  # claimed, then stopped before announcing it
        if req.version is not None:
            owner = self.store.read_record(namespace, req.version)
            if owner is not None:
                raise PermanentError(
                    f"version {req.version} of {req.name} was already built by build "
                    f"{owner.decode(errors='replace')}: pin another version or leave it out"
                )
            return req.version
        return next_version(self.clock().date(), taken)

    def _claim_version(self, req: p.BuildRequested, version: str) -> None:
        namespace = f"versions.{req.name}"
        if self.store.claim_record(namespace, version, req.build_id.encode()):
            return
        if self.store.read_record(namespace, version) != req.build_id.encode():
            # only a builder that does not take the lock (an older release) gets here
            raise TransientError(
                f"version {version} of {req.name} was claimed by another builder while this "
                "one held the lock: building again"
            )

    def _image_meta(
        self,
        req: p.BuildRequested,
        version: str,
        plan: BuildPlan,
        output: BuildOutput,
        commit: str | None,
    ) -> dict[str, Any]:
        return {
            "name": req.name,
            "version": version,
            "stream": req.stream,
            "build_id": req.build_id,
            "backend": req.backend,
            "source_commit": commit,
            "selinux": plan.selinux,
            # the updater appends these to each boot entry of this image
            "kernel_args": " ".join(plan.kernel_args),
            "built_at": self.clock().isoformat(),
        }

    def _store_log(self, build_id: str, log_path: Path) -> str | None:
        try:
            data = log_path.read_bytes()
        except OSError:
            return None
        self.store.write_record(LOGS, f"{build_id}.log", data)
        return self.store.record_uri(LOGS, f"{build_id}.log")


def refuse_host_scripts(plan: BuildPlan) -> None:
    """``%pre`` and ``%post --nochroot`` run on the build host, outside the image: whoever can
    push a kickstart would run commands on the builder. Refused unless the operator allowed it
    (``allow_host_scripts``), naming the first such section."""
    hosted = plan.pre or tuple(s for s in plan.post if not s.chroot)
    if not hosted:
        return
    first = hosted[0]
    kind = "%pre" if plan.pre else "%post --nochroot"
    raise KickstartError(
        f"{kind} runs on the build host, which this builder does not allow "
        "(allow_host_scripts = false): do the work in a %post inside the image, or send the "
        "build to a builder whose operator allows host scripts",
        line=first.lineno,
        path=first.where.rpartition(":")[0] or None,
    )


@contextmanager
def _released(output: BuildOutput, build_log: IO[str], *, keep: bool) -> Iterator[None]:
    """Empty the tree's directory from the namespace that owns it once assembly is over (the
    builder itself may not be allowed to remove what the build user's namespace made)."""
    try:
        yield
    finally:
        if output.owner is not None and output.tree is not None and not keep:
            output.owner.release(output.tree.parent, build_log)


def _describe_boot(tree: Path, meta: dict[str, Any]) -> None:
    """Record the kernel and initramfs paths in image.json: the tester boots with them."""
    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise PermanentError("the image has no kernel in /boot: add a kernel package to %packages")
    kernel = kernels[-1]
    kver = kernel.name.removeprefix("vmlinuz-")
    initrd = tree / "boot" / f"initrd.img-{kver}"
    if not initrd.is_file():
        raise PermanentError(f"the image has no initramfs for kernel {kver} ({initrd.name})")
    meta["kernel"] = f"/boot/{kernel.name}"
    meta["initrd"] = f"/boot/{initrd.name}"
    meta["kernel_version"] = kver
    meta["boot_args"] = "root=live:/dev/vda rd.live.image"
    json.dumps(meta)  # must stay serialisable


def build_handler(
    config: BuilderConfig,
    store: LocalArtifactStore,
    backends: dict[str, Backend],
    *,
    publish: Callable[[fm_message.Message], None],
    topic_prefix: str,
    metrics: BuildMetrics,
    clock: Callable[[], datetime] = lambda: datetime.now(tz=UTC),
) -> StageHandler[p.BuildRequested]:
    """The builder's consumer handler: ``BuildStage`` in the shared skeleton, locked per
    build_id in the store, so two builders sharing it never build the same build at once."""
    stage = BuildStage(
        config, store, backends, topic_prefix=topic_prefix, metrics=metrics, clock=clock
    )
    return StageHandler(
        stage,
        work_dir=config.work_dir,
        lock_dir=store.root / LOCKS,
        publish=publish,
        keep_workdir=config.keep_workdir,
    )
