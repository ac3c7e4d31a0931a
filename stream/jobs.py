"""Closed windows become reconstruction jobs on a Dask distributed cluster.

By default btomo starts a :class:`distributed.LocalCluster` of its own (worker processes, so a
job that crashes takes nothing else with it) when the first window of a run opens, and stops it
at the end of the run; with ``jobs.scheduler`` (``--scheduler ADDRESS``) it uses an existing
cluster instead: that is how a user grows past one machine (the workers must see the run
directory at the same path).

A job is :func:`btomo.reconstruct.job.run_window_job` on one window, submitted once the window
is durable (its ``complete`` attribute is set). Its state goes ``queued`` -> ``running`` (the
job posts it to the Dask event log when it starts) -> ``done`` or ``failed`` (with the reason);
a window closed while ``max_pending`` jobs are queued or running is ``skipped`` (counted; it can
be reconstructed later with ``btomo reconstruct``). Nothing here ever raises into the live
pipeline: a cluster that cannot start or a job that fails is logged and recorded.

A worker that dies while it holds a job (killed, out of memory) is seen in the scheduler's event
log: the job goes back to ``queued`` with ``worker_deaths`` counted and ``worker_lost`` saying
which worker, Dask runs it again on another worker (the LocalCluster's nanny restarts the dead
one; ``attempts`` counts the starts), and after ``jobs.worker_deaths_allowed`` deaths it fails
with a reason that says so.

With ``jobs.seed_from_previous`` (off by default: a seed biases the result toward itself), a
window's job is given the output directories of the same particle's last three windows
submitted before it: it starts from the first of them that is done and good when it starts
(:func:`btomo.reconstruct.job.choose_seed`), and the job record says which (``initial_model``).

Queues and policies: windows waiting to be submitted and jobs pending together at most
``max_pending`` (beyond: ``skipped``). At the end of the run the jobs still pending get
``wait_seconds``; then a LocalCluster's are cancelled (``failed``, reason said), an external
cluster's are left to run (``left_running``).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["ReconstructionJobs", "JOB_STATES"]

#: every state a job can be in
JOB_STATES = ("queued", "running", "done", "failed", "skipped", "left_running")
_PENDING = ("queued", "running")


class ReconstructionJobs:
    """Reconstruction jobs of one run (see the module).

    Parameters
    ----------
    cfg : JobsConfig
    store : path
        The run's ``windows.zarr``.
    out_root : path
        Where each job writes: ``out_root/<window>/`` (the run's ``recon/``).
    reconstruct : ReconstructConfig, optional
        The reconstruction's settings (default: its defaults).
    """

    def __init__(self, cfg: Any, store: Path, out_root: Path, reconstruct: Any = None):
        import dataclasses  # noqa: PLC0415

        self.cfg = cfg
        self.settings = dataclasses.asdict(reconstruct) if reconstruct is not None else {}
        self.store = Path(store).resolve()
        self.out_root = Path(out_root).resolve()
        self.jobs: dict[str, dict[str, Any]] = {}
        self._futures: dict[str, Any] = {}
        self._windows: dict[str, str] = {}  # Dask key -> window
        self._by_particle: dict[Any, list[str]] = {}  # the windows submitted per particle, latest 3
        self._lock = threading.Lock()
        self._done_lock = threading.Lock()  # one settling of a finished future at a time
        self._todo: queue.Queue = queue.Queue()  # bounded by max_pending through submit()
        self._thread: threading.Thread | None = None
        self._client = None
        self._cluster = None
        self.scheduler = cfg.scheduler or None
        self.error: str | None = None
        self._token = uuid.uuid4().hex[:8]

    # -- any thread -------------------------------------------------------------------------
    def start(self) -> None:
        """Start (or reach) the cluster in the background; returns at once."""
        with self._lock:
            if self._thread is None and self.cfg.enabled:
                self._thread = threading.Thread(target=self._run, name="btomo-jobs", daemon=True)
                self._thread.start()

    def submit(self, window: str, info: dict[str, Any] | None = None) -> None:
        """Queue window ``window`` (durable) for reconstruction; never blocks, never raises."""
        if not self.cfg.enabled:
            return
        self.start()
        with self._lock:
            pending = sum(j["state"] in _PENDING for j in self.jobs.values())
            job = {"window": window, "state": "queued", "queued_at": time.time(), **(info or {})}
            self.jobs[window] = job
            if pending >= self.cfg.max_pending:
                job.update(state="skipped", reason=f"{pending} jobs already pending (jobs.max_pending)")
                log.warning("window %s: not submitted for reconstruction (%s)", window, job["reason"])
                return
            particle = job.get("particle")
            if particle is not None and self.cfg.seed_from_previous:
                earlier = self._by_particle.setdefault(particle, [])
                if earlier:
                    job["seed_windows"] = earlier[::-1]  # most recent first
                earlier.append(window)
                del earlier[:-3]
        self._todo.put(window)

    def counts(self) -> dict[str, int]:
        """Jobs per state."""
        with self._lock:
            out = dict.fromkeys(JOB_STATES, 0)
            for j in self.jobs.values():
                out[j["state"]] += 1
            return out

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            jobs = [dict(j) for j in self.jobs.values()]
        return {"scheduler": self.scheduler, "error": self.error, "states": self.counts(), "jobs": jobs,
                "reconstructions_done": sum(1 for j in jobs if j["state"] == "done" and j.get("map"))}

    # -- the jobs thread --------------------------------------------------------------------
    def _connect(self) -> None:
        from distributed import Client, LocalCluster  # noqa: PLC0415

        from btomo.reconstruct.job import EVENT_TOPIC  # noqa: PLC0415

        logging.getLogger("distributed").setLevel(max(logging.WARNING, logging.getLogger("distributed").level))
        if self.cfg.scheduler:
            self._client = Client(self.cfg.scheduler, timeout=self.cfg.connect_timeout_s, set_as_default=False)
        else:
            memory = None if self.cfg.memory_limit == "auto" else self.cfg.memory_limit
            self._cluster = LocalCluster(
                n_workers=self.cfg.local_workers, threads_per_worker=self.cfg.threads_per_worker, processes=True,
                memory_limit=memory or "auto", host="127.0.0.1", dashboard_address=None,
                silence_logs=logging.WARNING,
                scheduler_kwargs={"allowed_failures": self.cfg.worker_deaths_allowed})
            self._client = Client(self._cluster, timeout=self.cfg.connect_timeout_s, set_as_default=False)
        self.scheduler = self._client.scheduler.address
        self._client.subscribe_topic(EVENT_TOPIC, self._on_event)
        self._client.subscribe_topic("all", self._on_cluster_event)  # workers lost (the scheduler's own log)
        log.info("reconstruction jobs go to %s (%s)", self.scheduler,
                 "an existing cluster" if self.cfg.scheduler else
                 f"a LocalCluster of {self.cfg.local_workers} worker(s) started by btomo")

    def _run(self) -> None:
        try:
            self._connect()
        except Exception as exc:  # noqa: BLE001 - no cluster: every job fails with the reason, the run goes on
            self.error = f"{type(exc).__name__}: {exc}"
            where = self.cfg.scheduler or "a LocalCluster"
            log.error("reconstruction jobs: could not start or reach %s (%s); windows are kept, not reconstructed",
                      where, self.error)
        while True:
            window = self._todo.get()
            if window is None:
                return
            if self._client is None:
                self._settle(window, "failed", reason=f"no cluster: {self.error}")
                continue
            if self._client.status in ("closing", "closed"):  # it lost its scheduler and gave up reconnecting
                self._settle(window, "failed", reason=f"no cluster: the connection to the scheduler {self.scheduler} "
                             "was lost and could not be made again")
                continue
            try:
                self._submit(window)
            except Exception as exc:  # noqa: BLE001
                self._settle(window, "failed", reason=f"could not submit: {type(exc).__name__}: {exc}")

    def _submit(self, window: str) -> None:
        from btomo.reconstruct.job import run_window_job  # noqa: PLC0415

        key = f"btomo-reconstruct-{window}-{self._token}"
        with self._lock:
            self._windows[key] = window
            seeds = [str(self.out_root / w) for w in self.jobs[window].get("seed_windows", [])]
        nice = 0 if self.cfg.scheduler else self.cfg.worker_nice  # an existing cluster is left as it is
        # the seed arguments only when there are seeds: workers of an older btomo still run the rest
        seeding = {} if not seeds else {"seed_dirs": seeds, "seed_max_resolution_A": self.cfg.seed_max_resolution_A,
                                        "seed_min_in_map": self.cfg.seed_min_in_map}
        fut = self._client.submit(run_window_job, str(self.store), window, str(self.out_root / window), self.settings,
                                  nice=nice, key=key, pure=False, retries=0, **seeding)
        with self._lock:
            self._futures[window] = fut
            self.jobs[window]["submitted_at"] = time.time()
        fut.add_done_callback(lambda f, w=window: self._on_done(w, f))
        log.info("window %s: reconstruction job queued on %s", window, self.scheduler)

    def _on_event(self, event: tuple) -> None:
        """A job's own report (topic ``EVENT_TOPIC``): it started, on worker process ``pid``."""
        _, msg = event
        if not isinstance(msg, dict) or msg.get("state") != "running":
            return
        attempt = 0
        with self._lock:
            job = self.jobs.get(str(msg.get("window")))
            if job is not None and job["state"] in _PENDING:
                attempt = job.get("attempts", 0) + 1
                job.update(state="running", started_at=time.time(), attempts=attempt, worker_pid=msg.get("pid"))
        if attempt > 1:
            log.warning("window %s: reconstruction job started again (attempt %d)", msg.get("window"), attempt)

    def _on_cluster_event(self, event: tuple) -> None:
        """The scheduler's own log (topic ``all``): a worker removed while it held jobs of ours."""
        _, msg = event
        if not isinstance(msg, dict) or msg.get("action") != "remove-worker":
            return
        worker = msg.get("worker", "a worker")
        for key in msg.get("processing-tasks") or ():
            with self._lock:
                window = self._windows.get(str(key))
                job = self.jobs.get(window) if window is not None else None
                if job is None or job["state"] not in _PENDING:
                    continue
                deaths = job.get("worker_deaths", 0) + 1
                how = "closed" if msg.get("expected") else "died"
                last = (self._cluster is not None and not msg.get("expected")
                        and deaths > self.cfg.worker_deaths_allowed)
                job.update(worker_deaths=deaths, worker_lost=f"{worker} {how} while it held the job (loss {deaths})")
                if not last:  # Dask runs it again; the last death's KilledWorker settles it (failed)
                    job["state"] = "queued"
            then = (f"more than jobs.worker_deaths_allowed = {self.cfg.worker_deaths_allowed}: the job fails" if last
                    else "the job is queued again")
            log.warning("window %s: the worker holding its reconstruction job (%s) %s; %s (worker losses so far: %d)",
                        window, worker, how, then, deaths)

    def _on_done(self, window: str, fut: Any) -> None:
        """Settle a finished job from its future (the callback thread, or :meth:`finish`: once)."""
        with self._done_lock:
            with self._lock:
                settled = self.jobs[window]["state"] not in _PENDING
            try:
                if settled:
                    pass
                elif fut.status == "finished":
                    result = fut.result()
                    keep = ("reconstruction", "map", "atoms", "resolution_A", "seconds", "initial_model")
                    self._settle(window, "done", **{k: result.get(k) for k in keep})
                elif fut.status == "cancelled":
                    self._settle(window, "failed", reason=self._cancelled(fut))
                else:
                    self._settle(window, "failed", reason=self._reason(fut.exception()))
            except Exception as exc:  # noqa: BLE001 - e.g. the cluster went away
                self._settle(window, "failed", reason=f"{type(exc).__name__}: {exc}")
            self._release(window)

    def _release(self, window: str) -> None:
        """Let go of a settled job's future: its result or error no longer stays on a worker (where a
        later worker death would make Dask run the finished job again)."""
        with self._lock:
            fut = self._futures.pop(window, None)
        if fut is not None:
            try:
                fut.release()
            except Exception as exc:  # noqa: BLE001 - the client is closing
                log.debug("window %s: releasing the job's future: %s", window, exc)

    def _cancelled(self, fut: Any) -> str:
        """Why Dask cancelled a job's future (the client lost its scheduler, say)."""
        cause = getattr(getattr(fut, "_state", None), "exception", None)  # FutureCancelledError, with its reason
        why = getattr(cause, "reason", None)
        lost = self._client is not None and self._client.status in ("connecting", "closing", "closed")
        if why == "scheduler-connection-lost" or (lost and why in (None, "unknown")):
            return (f"cancelled: the connection to the scheduler {self.scheduler} was lost (it stopped or cannot be "
                    "reached); the window is kept, reconstruct it later")
        return f"cancelled ({why})" if why and why != "unknown" else "cancelled"

    def _reason(self, exc: BaseException) -> str:
        """One line on why a job failed; a job whose workers kept dying says so plainly."""
        if type(exc).__name__ == "KilledWorker":
            allowed = getattr(exc, "allowed_failures", None)
            last = getattr(getattr(exc, "last_worker", None), "address", "?")
            limit = (f"jobs.worker_deaths_allowed = {allowed}" if self._cluster is not None
                     else f"the cluster's distributed.scheduler.allowed-failures = {allowed}")
            deaths = "" if allowed is None else f" {allowed + 1} times"
            memory = f": jobs.memory_limit = {self.cfg.memory_limit}" if self._cluster is not None else ""
            return (f"KilledWorker: the worker running the job died{deaths} (killed, or out of memory{memory}); "
                    f"the last was {last}; {limit}")
        return " ".join(f"{type(exc).__name__}: {exc}".split())

    def _settle(self, window: str, state: str, **info: Any) -> None:
        with self._lock:
            job = self.jobs[window]
            if job["state"] not in _PENDING:
                return  # settled already
            job.update(state=state, ended_at=time.time(), **info)
        if state == "failed":
            log.error("window %s: reconstruction job failed (%s)", window, info.get("reason"))
        else:
            log.info("window %s: reconstruction job %s (%s)", window, state, info.get("reconstruction") or "")

    # -- end of run -------------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """Wait ``wait_seconds`` at most for pending jobs, then cancel (LocalCluster) or leave them
        (external cluster); stop what btomo started. Returns :meth:`snapshot`."""
        if self._thread is None:
            return self.snapshot()
        self._todo.put(None)
        self._thread.join()
        if self._client is not None:
            with self._lock:  # the settled ones leave it from the callback thread
                pending = dict(self._futures)
            futures = list(pending.values())
            deadline = time.monotonic() + self.cfg.wait_seconds
            if not all(f.done() for f in futures):
                log.info("waiting up to %g s for %d reconstruction job(s)", self.cfg.wait_seconds,
                         sum(not f.done() for f in futures))
            while not all(f.done() for f in futures) and time.monotonic() < deadline:
                time.sleep(0.05)  # (distributed.wait needs a default client; btomo sets none)
            for window, fut in pending.items():
                if fut.done():
                    self._on_done(window, fut)  # idempotent: the callback may not have run yet
                elif self._cluster is not None:
                    self._settle(window, "failed", reason=f"not finished within jobs.wait_seconds = "
                                 f"{self.cfg.wait_seconds:g} s; cancelled at the end of the run")
                    fut.cancel()  # after: its callback then finds the job settled
                else:
                    from distributed import fire_and_forget  # noqa: PLC0415

                    fire_and_forget(fut)
                    self._settle(window, "left_running", reason="the run ended; the job goes on on the cluster")
            self._close()
        return self.snapshot()

    def _close(self) -> None:
        from btomo.reconstruct.job import EVENT_TOPIC  # noqa: PLC0415

        try:
            if self._client.status == "running":  # else the scheduler reports our leaving to a closed comm
                for topic in ("all", EVENT_TOPIC):
                    self._client.unsubscribe_topic(topic)
            self._client.close()
            if self._cluster is not None:
                self._cluster.close()
        except Exception as exc:  # noqa: BLE001
            log.warning("reconstruction jobs: closing the cluster: %s", exc)
