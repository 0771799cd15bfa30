"""The Ray driver in a child process, so losing the cluster never takes the bot down.

Why a child process: a Ray driver that loses the cluster's control store (GCS) for about a minute logs "Failed
to connect to GCS … The program will terminate" and exits the whole process, and Ray has no supported way to
reconnect in-process (docs/ARCHITECTURE.md, "Issue 8 design"). So :class:`BridgedBackend` — what the bot holds
with ``[backend] kind = "ray"`` — runs :class:`~engine.ray.backend.RayBackend` in ``python -m engine.ray.bridge``
and talks to it over the child's stdin/stdout. When the child dies, every job it carried fails with "the GPU
cluster is unreachable", ``ready`` turns false (``/status`` and replies say generation is unavailable), and the
child is started again with backoff until the cluster answers; the bot keeps its event loop, database and
Discord session throughout.

The pipe carries length-prefixed pickles. Both ends are this program (the parent spawns the child from its own
installation and nothing else writes to the pipe), so this is not untrusted data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import struct
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from engine.adapters.library import AdapterLibrary
from engine.model_info import ModelInfo
from engine.queue.jobs import Cancelled, Failed, Finished, Job, JobHandle, Progress
from engine.queue.policy import INTERACTIVE
from engine.ray.backend import RayBackend, RayOptions, check_room, resolve_request, wait_for
from engine.ray.training import RemoteTraining
from engine.requests import GeneratedImage, GenerationRequest
from engine.service import EngineNotReady, EngineOptions
from engine.training.job import TERMINAL, TrainFailed, TrainPaused
from engine.training.spec import TrainingSpec

log = logging.getLogger(__name__)

_HEADER = struct.Struct("!I")
UNREACHABLE = "the GPU cluster is unreachable"


async def _read(reader: asyncio.StreamReader) -> Any:
    size = _HEADER.unpack(await reader.readexactly(_HEADER.size))[0]
    return pickle.loads(await reader.readexactly(size))


def _frame(message: Any) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


# -- the child ------------------------------------------------------------------------------------------------


async def _child() -> None:
    """Run a RayBackend and relay: commands from stdin, events to stdout (fd 1, kept for frames only)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # anything else printed (Ray, libraries) goes to stderr, never into the frames

    def send(message: Any) -> None:
        out.write(_frame(message))

    options, ray_options = await _read(reader)
    backend = RayBackend(options, ray_options)
    try:
        await backend.start()
    except Exception as exc:
        send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    send(("ready", backend.info))
    handles: dict[int, JobHandle] = {}
    trainings: dict[int, RemoteTraining] = {}

    async def relay(tag: str, key: int, events: AsyncIterator[Any], registry: dict[int, Any]) -> None:
        """Send a job's (``event``) or a training's (``tevent``) events to the parent until it ends."""
        try:
            async for event in events:
                send((tag, key, event))
        finally:
            registry.pop(key, None)

    tasks: set[asyncio.Task[None]] = set()

    def spawn(coro: Any) -> None:
        task = asyncio.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    try:
        while True:
            try:
                message = await _read(reader)
            except (asyncio.IncompleteReadError, EOFError):
                break  # the parent closed the pipe (or died): shut down
            kind = message[0]
            if kind == "submit":
                _, jid, request, user_id, guild_id, priority, registrations = message
                try:
                    handle = backend.submit(request, user_id=user_id, guild_id=guild_id, priority=priority,
                                            registrations=registrations)
                except Exception as exc:
                    send(("event", jid, Failed(f"{type(exc).__name__}: {exc}")))
                    continue
                handles[jid] = handle
                spawn(relay("event", jid, handle.events(), handles))
            elif kind == "train":
                _, tid, spec = message
                try:
                    training = backend.train(spec)
                except Exception as exc:
                    send(("tevent", tid, TrainFailed(RuntimeError(f"{type(exc).__name__}: {exc}"))))
                    continue
                trainings[tid] = training
                spawn(relay("tevent", tid, training.events(), trainings))
            elif kind in ("tcancel", "tstop"):
                training = trainings.get(message[1])
                if training is not None:
                    training.cancel() if kind == "tcancel" else training.stop()
            elif kind == "cancel":
                handle = handles.get(message[1])
                if handle is not None:
                    handle.cancel(message[2])
            elif kind == "stats":
                try:
                    send(("stats", message[1], await backend.replica_stats()))
                except Exception as exc:
                    send(("stats", message[1], {"error": str(exc)}))
    finally:
        await backend.close()
        out.close()


def main() -> None:
    logging.basicConfig(level=os.environ.get("ATELIER_BRIDGE_LOG", "WARNING"), stream=sys.stderr)
    asyncio.run(_child())


# -- the parent (the bot's side) ------------------------------------------------------------------------------


def _kill_group(process: asyncio.subprocess.Process) -> None:
    """Kill what the child left behind: it leads its own process group, so a local cluster it started (GCS,
    raylet, agents, workers) goes with it even when the child itself was killed before it could stop them."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


class BridgedBackend:
    """The engine facade the bot holds for ``[backend] kind = "ray"``; see the module docstring."""

    def __init__(self, options: EngineOptions, ray_options: RayOptions | None = None, *,
                 start_timeout_s: float = 300.0, backoff_s: tuple[float, ...] = (2.0, 5.0, 15.0, 30.0, 60.0),
                 env: dict[str, str] | None = None) -> None:
        self.options = options
        self.ray_options = ray_options or RayOptions()
        self.library = AdapterLibrary(options.embedding_dirs, options.hypernetwork_dirs)
        self.start_timeout_s = start_timeout_s
        self.backoff_s = backoff_s
        self.env = env or {}
        self.error: str | None = None  # why generation is unavailable, while it is
        self.restarts = 0
        self._info: ModelInfo | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._jobs: dict[int, Job] = {}
        # Trainings outlive a lost cluster: paused, then sent again (resuming from the checkpoint kept here).
        self._trainings: dict[int, RemoteTraining] = {}
        self._next_training = 0
        self._stats: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._restarter: asyncio.Task[None] | None = None
        self._up = False
        self._closed = False
        self.on_change: Callable[[bool], None] | None = None  # called with ``ready`` when it changes
        # Wraps every wait on the child's pipe; a Discord simulator declares them as external input with it.
        self.await_io: Callable[[Awaitable[Any]], Awaitable[Any]] = lambda awaitable: awaitable

    # -- lifecycle ---------------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._up and not self._closed

    @property
    def info(self) -> ModelInfo:
        if self._info is None:
            raise EngineNotReady("the Ray backend has not started")
        return self._info

    @property
    def model(self) -> Any:
        raise EngineNotReady("the model runs on the Ray cluster, not in this process")

    async def start(self) -> None:
        """Start the bridge and wait until the cluster serves the model; raises with a readable message."""
        await self._spawn()

    async def _spawn(self) -> None:
        env = {**os.environ, **self.env}
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH", "")]))
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "engine.ray.bridge", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, env=env, limit=2**30, start_new_session=True)
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(_frame((self.options, self.ray_options)))
        await process.stdin.drain()
        try:
            reply = await asyncio.wait_for(_read(process.stdout), self.start_timeout_s)
        except (TimeoutError, asyncio.IncompleteReadError, EOFError) as exc:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            _kill_group(process)
            why = "timed out" if isinstance(exc, TimeoutError) else "the bridge process exited"
            raise EngineNotReady(f"{UNREACHABLE} ({why} while starting)") from None
        if reply[0] != "ready":
            await process.wait()
            raise EngineNotReady(f"{UNREACHABLE}: {reply[1]}")
        self._process, self._info, self._up, self.error = process, reply[1], True, None
        self._reader = asyncio.create_task(self._read_events(process), name="atelier-ray-bridge")
        if self.on_change is not None:
            self.on_change(True)

    async def _read_events(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        try:
            while True:
                message = await self.await_io(_read(process.stdout))
                if message[0] == "event":
                    _, jid, event = message
                    job = self._jobs.get(jid)
                    if job is None:
                        continue
                    if isinstance(event, Progress):
                        job.steps_done, job.steps_total = event.step, event.total
                    job.emit(event)
                    if isinstance(event, Finished | Failed | Cancelled):
                        self._jobs.pop(jid, None)
                elif message[0] == "tevent":
                    _, tid, event = message
                    training = self._trainings.get(tid)
                    if training is None:
                        continue
                    training.emit(event)
                    if isinstance(event, TERMINAL):
                        self._trainings.pop(tid, None)
                elif message[0] == "stats":
                    future = self._stats.pop(message[1], None)
                    if future is not None and not future.done():
                        future.set_result(message[2])
        except (asyncio.IncompleteReadError, EOFError, ConnectionError):
            pass
        await process.wait()
        _kill_group(process)
        if not self._closed:
            self._lost(f"the bridge process exited with code {process.returncode}")

    def _lost(self, why: str) -> None:
        """The child died: fail what it carried, go unavailable, and bring it back with backoff."""
        log.error("%s: %s; generation is unavailable until it answers again", UNREACHABLE, why)
        self._up, self.error = False, UNREACHABLE
        for job in list(self._jobs.values()):
            job.emit(Failed(f"{UNREACHABLE}; try again in a minute"))
        self._jobs.clear()
        for training in self._trainings.values():
            training.emit(TrainPaused(training.checkpointed, UNREACHABLE))
        for future in self._stats.values():
            if not future.done():
                future.set_exception(EngineNotReady(UNREACHABLE))
        self._stats.clear()
        if self.on_change is not None:
            self.on_change(False)
        self._restarter = asyncio.create_task(self._restart(), name="atelier-ray-bridge-restart")

    async def _restart(self) -> None:
        attempt = 0
        while not self._closed:
            await asyncio.sleep(self.backoff_s[min(attempt, len(self.backoff_s) - 1)])
            attempt += 1
            try:
                await self._spawn()
            except Exception as exc:
                log.warning("the GPU cluster is still unreachable (attempt %d): %s", attempt, exc)
                continue
            self.restarts += 1
            log.info("the GPU cluster answers again; generation is available")
            for tid, training in list(self._trainings.items()):  # paused ones go on from their checkpoints
                if training.ended:  # cancelled while the cluster was away (the handle said so)
                    self._trainings.pop(tid, None)
                    continue
                try:
                    self._send(("train", tid, training.spec))
                except EngineNotReady:
                    break
            return

    async def close(self) -> list[Job]:
        """Fail nothing silently: unfinished jobs are cancelled; the child shuts its backend down. Idempotent."""
        if self._closed:
            return []
        self._closed = True
        left = [job for job in self._jobs.values() if not job.done]
        for job in left:
            job.emit(Cancelled("the bot is shutting down"))
        self._jobs.clear()
        for training in self._trainings.values():
            training.stop()  # not cancelled: the bot resumes it from its checkpoint at its next start
        self._trainings.clear()
        if self._restarter is not None:
            self._restarter.cancel()
        process = self._process
        if process is not None and process.returncode is None:
            assert process.stdin is not None
            process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), 60)
            except TimeoutError:
                process.kill()
                await process.wait()
            _kill_group(process)
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        self._up = False
        return left

    # -- jobs --------------------------------------------------------------------------------------------------

    def _send(self, message: Any) -> None:
        if self._process is None or self._process.stdin is None or not self._up:
            raise EngineNotReady(self.error or "the engine is not running")
        self._process.stdin.write(_frame(message))

    def submit(self, request: GenerationRequest, *, user_id: int = 0, guild_id: int | None = None,
               priority: int = INTERACTIVE) -> JobHandle:
        """As :meth:`engine.service.Engine.submit`; the job runs on the cluster through the bridge."""
        if not self.ready:
            raise EngineNotReady(self.error or "the engine is not running")
        request = resolve_request(request, self.info, guild_id, self.library)
        check_room(list(self._jobs.values()), user_id, self.options)
        job = Job(request, user_id=user_id, guild_id=request.guild_id, priority=priority)
        job.bind(asyncio.get_running_loop())
        self._send(("submit", job.id, request, user_id, request.guild_id, priority,
                    self.library.registrations(request.guild_id)))
        self._jobs[job.id] = job
        return JobHandle(job, self)

    def train(self, spec: TrainingSpec) -> RemoteTraining:
        """As :meth:`engine.ray.backend.RayBackend.train`, through the bridge: the child writes checkpoints and
        the result into ``spec``'s folders (this machine's). When the cluster is lost the run pauses
        (``TrainPaused``) and continues from its last checkpoint when the cluster answers again."""
        if not self.ready:
            raise EngineNotReady(self.error or "the engine is not running")
        self._next_training += 1
        tid = self._next_training

        def cancel() -> bool:
            try:
                self._send(("tcancel", tid))
            except EngineNotReady:
                return False  # paused: reported here (and not sent again when the cluster is back)
            return True

        def stop() -> None:
            self._trainings.pop(tid, None)
            with contextlib.suppress(EngineNotReady):
                self._send(("tstop", tid))

        training = RemoteTraining(spec, on_cancel=cancel, on_stop=stop)
        self._send(("train", tid, spec))
        self._trainings[tid] = training
        return training

    def cancel(self, job: Job, reason: str = "cancelled by its owner") -> bool:
        if job.done or job.id not in self._jobs or job.cancel_reason is not None:
            return False
        job.cancel_reason = reason
        try:
            self._send(("cancel", job.id, reason))
        except EngineNotReady:
            job.emit(Cancelled(reason))
        return True

    def jobs(self, user_id: int | None = None) -> list[Job]:
        return [j for j in self._jobs.values() if not j.done and (user_id is None or j.user_id == user_id)]

    async def generate(self, request: GenerationRequest,
                       progress: Callable[[int, int], None] | None = None) -> list[GeneratedImage]:
        return await wait_for(self.submit(request), progress)

    async def replica_stats(self) -> dict[str, Any]:
        """One replica's counters (see :meth:`engine.ray.replica.GenerationReplica.stats`)."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        token = id(future)
        self._stats[token] = future
        self._send(("stats", token))
        return await future


if __name__ == "__main__":
    main()
