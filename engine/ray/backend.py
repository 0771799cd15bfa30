"""The Ray backend: the bot's engine facade, with the model on Ray Serve replicas instead of in this process.

It offers what :class:`engine.service.Engine` offers the application (``start``, ``close``, ``ready``, ``info``,
``library``, ``submit`` → :class:`~engine.queue.jobs.JobHandle`, ``jobs``, ``cancel``, ``generate``), so the cogs
cannot tell the backends apart. Each submitted job is a local :class:`~engine.queue.jobs.Job` fed by a streaming
call to a replica (:class:`engine.ray.replica.GenerationReplica`): the same events, the same awaitable result.

Faults (see docs/ARCHITECTURE.md, "Issue 8 design"): Serve does not retry a call whose replica died mid-request,
so this backend retries such a job once (the controller routes it to a live replica; the request is resolved
here — seeds fixed — so the retry draws the same pixels), then fails it with a readable reason. Nothing is
dropped silently: every job ends with Finished, Failed or Cancelled.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.adapters.library import AdapterLibrary, Registration
from engine.model_info import ModelInfo
from engine.queue.jobs import Cancelled, Failed, Finished, Job, JobHandle, Progress, Started
from engine.queue.policy import INTERACTIVE, QueueFullError
from engine.ray.adapters import AdapterShipper, named_in
from engine.ray.training import RemoteTraining, keep_files
from engine.requests import GeneratedImage, GenerationRequest
from engine.service import EngineNotReady, EngineOptions
from engine.training.job import TERMINAL, TrainFailed, read_checkpoint_files
from engine.training.spec import TrainingSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayOptions:
    """Where the cluster is and how the model deployment is placed (the ``[ray]`` config section)."""

    address: str = ""  # "" starts a local cluster in this process; else "auto" or "host:port" of a running one
    app_name: str = "atelier"
    replicas: int = 1  # fixed count, or the minimum when max_replicas > replicas (autoscaling)
    max_replicas: int = 0
    target_ongoing_requests: float = 2.0  # autoscaling: requests per replica before adding one
    upscale_delay_s: float = 30.0  # autoscaling: how long demand stays high before a replica is added
    downscale_delay_s: float = 600.0  # and low before one is removed
    num_gpus: float = 0.0  # per replica; 1 on a GPU cluster
    num_cpus: float = 1.0  # per replica
    local_num_cpus: int = 0  # CPUs of a cluster started here (0 = every core)
    max_ongoing_requests: int = 0  # per replica; 0 = the queue's own limit (Serve's default 5 would cap batches)
    retries: int = 1  # a job whose replica died mid-run is tried this many more times
    adapters_per_replica: int = 8  # adapter keys (sets of hypernetworks) a replica keeps warm for affinity


def _replica_died(exc: BaseException) -> bool:
    """True for errors that mean "the replica (or its node) went away", which a retry elsewhere can fix."""
    try:
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
    except ImportError:  # pragma: no cover - Ray is installed whenever this backend runs
        return False
    return isinstance(exc, ActorDiedError | ActorUnavailableError | RayActorError)


def resolve_request(request: GenerationRequest, info: ModelInfo, guild_id: int | None,
                    library: AdapterLibrary) -> GenerationRequest:
    """Size, guild and seeds fixed on the bot's side, so a retry on another replica draws the same pixels; an
    unknown hypernetwork name fails at once, as with the local queue."""
    from engine.prompts.parser import strip_networks

    changes: dict[str, Any] = {}
    width, height = info.native_size
    if request.width == 0:
        changes["width"] = width
    if request.height == 0:
        changes["height"] = height
    if request.guild_id is None and guild_id is not None:
        changes["guild_id"] = guild_id
    request = (dataclasses.replace(request, **changes) if changes else request).with_seeds()
    for text in (request.prompt, request.negative_prompt):
        for tag in strip_networks(text)[1]:
            library.find("hypernetwork", tag.name, request.guild_id)
    return request


def check_room(jobs: list[Job], user_id: int, options: EngineOptions) -> None:
    """The local queue's per-member and total limits, for backends whose queue is elsewhere."""
    mine = [j for j in jobs if j.user_id == user_id and not j.done]
    if len(mine) >= options.max_jobs_per_user:
        raise QueueFullError(f"you already have {len(mine)} jobs waiting; wait for one to finish")
    if len(jobs) >= options.max_queued:
        raise QueueFullError("the queue is full; try again in a minute")


async def wait_for(handle: JobHandle, progress: Callable[[int, int], None] | None) -> list[GeneratedImage]:
    """``Engine.generate``'s wait: report steps to ``progress`` (if any), then return the images."""
    if progress is not None:
        async for event in handle.events():
            if isinstance(event, Progress):
                progress(event.step, event.total)
    return await handle


def adapter_key(request: GenerationRequest) -> str:
    """``guild:name,name`` for the hypernetworks a request uses (sorted, lower-case), "" for none: the id Serve's
    multiplexing routes by, so requests for a hypernetwork go where it is already loaded. Embeddings are small
    and read per prompt, so they do not pin requests to replicas."""
    from engine.prompts.parser import strip_networks

    names = sorted({tag.name.lower() for text in (request.prompt, request.negative_prompt)
                    for tag in strip_networks(text)[1]})
    if not names:
        return ""
    return f"{request.guild_id if request.guild_id is not None else ''}:{','.join(names)}"


class RayBackend:
    """The engine facade over a Ray Serve deployment of :class:`~engine.ray.replica.GenerationReplica`."""

    def __init__(self, options: EngineOptions, ray_options: RayOptions | None = None) -> None:
        self.options = options
        self.ray_options = ray_options or RayOptions()
        # Names and checks on the bot side (the cogs' autocomplete, /styles); replicas sync registrations.
        self.library = AdapterLibrary(options.embedding_dirs, options.hypernetwork_dirs)
        self._handle: Any = None
        self._info: ModelInfo | None = None
        self._closed = False
        self._started_ray = False
        self._jobs: dict[int, tuple[Job, asyncio.Task[None]]] = {}
        self._trainings: set[asyncio.Task[None]] = set()
        self.retried = 0  # jobs and trainings retried after a replica died (for /status and tests)
        self._shipper = AdapterShipper()  # adapter files go to replicas by content (engine.ray.adapters)
        # One thread for every blocking Ray call, alive as long as the backend: a local cluster's processes are
        # tied to the thread that started them (Linux parent-death signal), so a short-lived thread would take
        # the cluster down with it when it ends.
        self._driver = ThreadPoolExecutor(max_workers=1, thread_name_prefix="atelier-ray")

    # -- lifecycle ---------------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._handle is not None and not self._closed

    @property
    def info(self) -> ModelInfo:
        if self._info is None:
            raise EngineNotReady("the Ray backend has not started")
        return self._info

    @property
    def model(self) -> Any:
        raise EngineNotReady("the model runs on the Ray cluster, not in this process")

    def _deploy(self) -> Any:
        """Connect (or start a local cluster) and run the app; blocking, so called off the loop."""
        import ray
        from ray import serve

        from engine.ray.replica import GenerationReplica

        o = self.ray_options
        if not ray.is_initialized():
            # Workers import ``engine`` from this checkout (a remote cluster's nodes need Atelier installed).
            runtime_env = {"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}}
            if o.address:
                ray.init(address=o.address, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env)
            else:
                ray.init(num_cpus=o.local_num_cpus or None, include_dashboard=False, log_to_driver=False,
                         runtime_env=runtime_env)
                self._started_ray = True
        serve.start(proxy_location="Disabled")
        scaling: dict[str, Any] = {"num_replicas": o.replicas}
        if o.max_replicas > o.replicas:
            scaling = {"autoscaling_config": {"min_replicas": o.replicas, "max_replicas": o.max_replicas,
                                              "target_ongoing_requests": o.target_ongoing_requests,
                                              "upscale_delay_s": o.upscale_delay_s,
                                              "downscale_delay_s": o.downscale_delay_s}}
        adapters_per_replica = o.adapters_per_replica

        class ServedReplica(GenerationReplica):
            """The replica with Serve's multiplexing as its adapter affinity: requests carrying an adapter key
            go to replicas that already hold those hypernetworks (LRU, ``adapters_per_replica`` keys each)."""

            @serve.multiplexed(max_num_models_per_replica=adapters_per_replica)
            async def _hold(self, key: str) -> str:
                return await self.warm(key)

            async def _affinity(self) -> str:
                key = serve.get_multiplexed_model_id()
                if key:
                    await self._hold(key)
                return key

        deployment = serve.deployment(ServedReplica, name="GenerationReplica").options(
            ray_actor_options={"num_gpus": o.num_gpus, "num_cpus": o.num_cpus},
            max_ongoing_requests=o.max_ongoing_requests or max(8, self.options.max_queued),
            **scaling)
        return serve.run(deployment.bind(self.options), name=o.app_name, route_prefix=None)

    async def start(self) -> None:
        """Deploy the model and wait until a replica has loaded it; raises with a readable message."""
        if self._closed:
            raise EngineNotReady("the backend is closed")
        handle = await asyncio.get_running_loop().run_in_executor(self._driver, self._deploy)
        self._info = await handle.info.remote()
        self._handle = handle

    async def close(self) -> list[Job]:
        """Cancel unfinished jobs, delete the app, and stop a cluster this process started. Idempotent."""
        if self._closed:
            return []
        self._closed = True
        left = [job for job, _ in self._jobs.values() if not job.done]
        for job in left:
            self.cancel(job, "the bot is shutting down")
        for training in list(self._trainings):
            training.cancel()  # stopped, not cancelled: the bot resumes them from their checkpoints next time
        tasks = [task for _, task in self._jobs.values()] + list(self._trainings)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._handle is not None:
            await asyncio.get_running_loop().run_in_executor(self._driver, self._teardown)
        self._handle = None
        self._driver.shutdown(wait=False)
        return left

    def _teardown(self) -> None:
        import ray
        from ray import serve

        try:
            serve.delete(self.ray_options.app_name)
            if self._started_ray:
                serve.shutdown()
        finally:
            if self._started_ray:
                ray.shutdown()

    # -- jobs ----------------------------------------------------------------------------------------------------

    def submit(self, request: GenerationRequest, *, user_id: int = 0, guild_id: int | None = None,
               priority: int = INTERACTIVE, registrations: list[Registration] | None = None) -> JobHandle:
        """Send ``request`` to a replica; the handle behaves as the local queue's (events, result, cancel).

        ``registrations`` are the guild's registered adapters when the caller's library is elsewhere (the
        bridge); by default this backend's own library's."""
        if not self.ready:
            raise EngineNotReady("the engine is not running")
        request = resolve_request(request, self.info, guild_id, self.library)
        if registrations is None:
            registrations = self.library.registrations(request.guild_id)
        check_room([j for j, _ in self._jobs.values()], user_id, self.options)
        job = Job(request, user_id=user_id, guild_id=request.guild_id, priority=priority)
        job.bind(asyncio.get_running_loop())
        task = asyncio.create_task(self._run(job, registrations), name=f"atelier-ray-job-{job.id}")
        self._jobs[job.id] = (job, task)
        task.add_done_callback(lambda _: self._jobs.pop(job.id, None))
        return JobHandle(job, self)

    async def _run(self, job: Job, registrations: list[Registration]) -> None:
        """Stream the job's events from a replica into ``job``; retry once if the replica dies mid-run."""
        key = adapter_key(job.request)
        try:
            registrations = await asyncio.get_running_loop().run_in_executor(
                self._driver, self._shipper.ship, named_in(job.request, registrations))
        except Exception as exc:
            job.emit(Failed(f"the adapters this prompt names could not be sent to the GPU cluster: {exc}"))
            return
        attempts = 1 + max(0, self.ray_options.retries)
        for attempt in range(1, attempts + 1):
            stream = self._handle.options(stream=True, multiplexed_model_id=key).generate.remote(
                job.request, job.user_id, job.guild_id, job.priority, registrations)
            try:
                async for event in stream:
                    if isinstance(event, Progress):
                        job.steps_done, job.steps_total = event.step, event.total
                    job.emit(event)
                    if isinstance(event, Finished | Failed | Cancelled):
                        return
                job.emit(Failed("the GPU replica ended the stream without a result"))
                return
            except asyncio.CancelledError:
                stream.cancel()
                job.emit(Cancelled(job.cancel_reason or "cancelled"))
                return
            except Exception as exc:
                if _replica_died(exc) and attempt < attempts and job.cancel_reason is None:
                    self.retried += 1
                    log.warning("job %d: its replica stopped (%s); retrying on another", job.id,
                                type(exc).__name__)
                    job.emit(Started())
                    continue
                why = ("the GPU replica running it stopped" if _replica_died(exc)
                       else f"{type(exc).__name__}: {exc}")
                log.warning("job %d failed on the cluster: %s", job.id, why)
                job.emit(Failed(f"generation failed: {why}"))
                return

    def train(self, spec: TrainingSpec) -> RemoteTraining:
        """Run a training on a replica (its background slices); checkpoints and the result land in ``spec``'s
        folders here, so a replica that dies mid-run is replaced by a resume from the last checkpoint."""
        if not self.ready:
            raise EngineNotReady("the engine is not running")
        task: asyncio.Task[None] | None = None

        def cancel() -> bool:
            if task is not None:
                task.cancel()
            return False  # the stream is gone: the handle reports the cancel itself

        def stop() -> None:
            if task is not None:
                task.cancel()

        handle = RemoteTraining(spec, on_cancel=cancel, on_stop=stop)
        task = asyncio.create_task(self._train(handle), name=f"atelier-ray-train-{spec.request.name}")
        self._trainings.add(task)
        task.add_done_callback(self._trainings.discard)
        return handle

    async def _train(self, handle: RemoteTraining) -> None:
        spec = handle.spec
        attempts = 1 + max(0, self.ray_options.retries)
        for attempt in range(1, attempts + 1):
            checkpoint = await asyncio.to_thread(read_checkpoint_files, spec.checkpoint_dir)
            stream = self._handle.options(stream=True).train.remote(spec, checkpoint)
            try:
                async for event in stream:
                    handle.emit(await keep_files(spec, event))
                    if isinstance(event, TERMINAL):
                        return
                handle.emit(TrainFailed(RuntimeError("the GPU replica ended the training without a result")))
                return
            except asyncio.CancelledError:
                stream.cancel()
                return
            except Exception as exc:
                if _replica_died(exc) and attempt < attempts and not handle.ended:
                    self.retried += 1
                    log.warning("training %r: its replica stopped (%s); resuming from step %d on another",
                                spec.request.name, type(exc).__name__, handle.checkpointed)
                    continue
                why = ("the GPU replica running it stopped" if _replica_died(exc)
                       else f"{type(exc).__name__}: {exc}")
                log.warning("training %r failed on the cluster: %s", spec.request.name, why)
                handle.emit(TrainFailed(RuntimeError(f"training failed on the cluster: {why}")))
                return

    def cancel(self, job: Job, reason: str = "cancelled by its owner") -> bool:
        """Cancel a job; the replica drops it at its next step. False if it had already ended."""
        entry = self._jobs.get(job.id)
        if job.done or entry is None or job.cancel_reason is not None:
            return False
        job.cancel_reason = reason
        entry[1].cancel()
        return True

    def jobs(self, user_id: int | None = None) -> list[Job]:
        return [j for j, _ in self._jobs.values() if not j.done and (user_id is None or j.user_id == user_id)]

    async def generate(self, request: GenerationRequest,
                       progress: Callable[[int, int], None] | None = None) -> list[GeneratedImage]:
        """Submit and wait (the local engine's convenience, for the CLI and tests)."""
        return await wait_for(self.submit(request), progress)

    async def replica_count(self) -> int:
        """Replicas serving now (running), as Serve's controller reports them: what autoscaling changes."""
        def count() -> int:
            from ray import serve

            app = serve.status().applications.get(self.ray_options.app_name)
            deployment = app.deployments.get("GenerationReplica") if app is not None else None
            return 0 if deployment is None else int(deployment.replica_states.get("RUNNING", 0))

        return await asyncio.get_running_loop().run_in_executor(self._driver, count)

    async def replica_stats(self) -> dict[str, int]:
        """One replica's queue counters (whichever Serve routes to)."""
        return await self._handle.stats.remote()
