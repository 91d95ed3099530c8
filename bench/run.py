"""One benchmark run: every phase, in an order that keeps the references next to the
figures they divide (interleaved in rounds, so a machine that gets busier or quieter
mid-run moves both alike)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import offline, sql
from bench.config import BenchConfig
from bench.dbceiling import run_db_ceiling
from bench.lag import DEFAULT_INTERVAL, SequencerLagProbe
from bench.loadgen import LoadOutcome, RequestPlan, http_request, run_load
from bench.procfs import CpuMeter, process_tree, rss_bytes
from bench.service import (
    LOOPBACK,
    RunningService,
    database_server,
    reference_database,
    reference_process,
    scratch_database,
    service_process,
    trivial_responder,
    wait_until_sequenced,
)
from bench.stats import (
    Figures,
    LoadFigure,
    MemoryTrend,
    lag_figure,
    load_figure,
    memory_trend,
    result_document,
)
from bench.workload import HISTORY_PREFIX, apply_bodies, history_paths
from ledger.db import connect

logger = logging.getLogger("bench")

DISTINCT_BODIES = 2_000
SEQUENCER_TIMEOUT = 600.0

# Each round runs these in this order: every product phase is followed by the tutorial
# reference it is divided by, so drift over a run hits both alike.
ROUND_ORDER = (
    "noop",
    "bare_noop",
    "naive",
    "apply",
    "reference_apply",
    "history",
    "reference_history",
)
SAME_REQUESTS_AS = {"bare_noop": "noop", "reference_apply": "apply", "reference_history": "history"}
"""A reference gets exactly the requests (bytes) of the product phase it is compared with."""


@dataclass
class Accumulated:
    """One figure's measurements over the rounds."""

    clients: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    cpu_core_seconds: dict[str, float] = field(default_factory=dict)

    def add(
        self, name: str, outcome: LoadOutcome, seconds: float, cpu: dict[str, float | None]
    ) -> None:
        plan = outcome.plans[name]
        self.seconds += seconds
        self.latencies.extend(plan.latencies)
        self.errors += plan.errors
        self.statuses.update(plan.statuses)
        for component, cores in {**cpu, "generator": outcome.cpu_seconds / seconds}.items():
            if cores is not None:
                self.cpu_core_seconds[component] = (
                    self.cpu_core_seconds.get(component, 0.0) + cores * seconds
                )

    def figure(self, name: str) -> LoadFigure:
        cpu: dict[str, float | None] = {
            component: total / self.seconds for component, total in self.cpu_core_seconds.items()
        }
        return load_figure(
            name, self.clients, self.seconds, self.latencies, self.errors, self.statuses, cpu
        )


def _environment(config: BenchConfig) -> dict[str, Any]:
    loop, http = "asyncio", "h11"
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        pass
    try:
        import httptools  # noqa: F401

        http = "httptools"
    except ImportError:
        pass
    return {
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "uvicorn_loop": loop,
        "uvicorn_http": http,
        "database": "given by URL" if config.database_url else "embedded, fresh data directory",
    }


class Run:
    def __init__(self, config: BenchConfig) -> None:
        self.config = config
        self.notes: list[str] = []
        self.results: dict[str, Accumulated] = {}
        self.references: dict[str, Any] = {}
        self.generator: dict[str, Any] = {}
        self.rates: dict[str, Any] = {}
        self.memory: MemoryTrend | None = None
        self.sequencer_lags: list[float] = []
        self.bodies = apply_bodies(DISTINCT_BODIES, config.seed)

    # --- load phases ---

    async def _load(
        self,
        port: int,
        plans: list[tuple[RequestPlan, int]],
        meter: CpuMeter | None,
        duration: float,
        lag_probe: SequencerLagProbe | None = None,
    ) -> tuple[LoadOutcome, dict[str, float | None]]:
        config = self.config
        start_at = time.time() + 1.0 + 0.5 * config.client_processes
        loading = asyncio.create_task(
            asyncio.to_thread(
                run_load,
                LOOPBACK,
                port,
                plans,
                warmup=config.warmup,
                duration=duration,
                processes=config.client_processes,
                start_at=start_at,
            )
        )
        cpu: dict[str, float | None] = {}
        if meter is not None:
            await asyncio.sleep(max(0.0, start_at + config.warmup - time.time()))
            if lag_probe is not None:
                await lag_probe.start()
            meter.start()
            await asyncio.sleep(duration)
            cpu = meter.stop(duration)
            if lag_probe is not None:
                self.sequencer_lags.extend(await lag_probe.stop())
        return await loading, cpu

    def _accumulate(
        self, name: str, outcome: LoadOutcome, cpu: dict[str, float | None], clients: int
    ) -> None:
        self.results.setdefault(name, Accumulated(clients)).add(
            name, outcome, self.config.duration, cpu
        )
        for failure in outcome.failures[:3]:
            self.notes.append(f"{name}: {failure}")

    def _plans(self, name: str, history_count: int) -> list[tuple[RequestPlan, int]]:
        clients = self.config.clients
        kind = SAME_REQUESTS_AS.get(name, name)
        if kind == "noop":
            return [(RequestPlan(name, (http_request("GET", "/bench/noop"),)), clients)]
        if kind in ("naive", "apply"):
            path = "/bench/naive" if kind == "naive" else "/lending/apply"
            requests = tuple(http_request("POST", path, body) for body in self.bodies)
            return [(RequestPlan(name, requests), clients)]
        paths = history_paths(history_count, self.config.seed)
        return [(RequestPlan(name, tuple(http_request("GET", p) for p in paths)), clients)]

    async def calibrate_generator(self) -> None:
        """The generator alone against a responder that does nothing: what it can drive."""
        config = self.config
        with trivial_responder(lifetime=config.warmup + config.duration + 120) as (port, pid):
            meter = CpuMeter({"responder": pid})
            plans = [
                (RequestPlan("calibration", (http_request("GET", "/bench/noop"),)), config.clients)
            ]
            outcome, cpu = await self._load(port, plans, meter, config.duration)
        accumulated = Accumulated(config.clients)
        accumulated.add("calibration", outcome, config.duration, cpu)
        self.generator["calibration"] = asdict(accumulated.figure("calibration"))
        self.generator["client_processes"] = config.client_processes

    async def service_phases(self, admin_url: str, pg_pid: int | None, work: Path) -> None:
        config = self.config
        async with scratch_database(admin_url, "service") as url:
            history_count = config.history_applicants
            if config.runs("history") or config.runs("soak"):
                seeded = await offline.import_applications(
                    url,
                    work,
                    history_count * config.applications_per_history_applicant,
                    applicants=history_count,
                    applicant_prefix=HISTORY_PREFIX,
                    scoring_model=config.scoring_model,
                    seed=config.seed,
                    batch_size=config.import_batch_size,
                )
                self.references["history_seed"] = {
                    "applicants": history_count,
                    "applications": seeded.applications,
                    "seconds": seeded.seconds,
                }
            async with contextlib.AsyncExitStack() as stack:
                service = await stack.enter_async_context(
                    service_process(
                        url,
                        workers=config.workers,
                        pool_size=config.pool_size,
                        access_log=config.access_log,
                        log_dir=work,
                    )
                )
                references = await self._start_references(stack, admin_url, history_count, work)
                await self._settle(url)
                meters = {
                    name: CpuMeter({"service": server.pid, "postgres": pg_pid})
                    for name, server in references.items()
                }
                meter = CpuMeter({"service": service.pid, "postgres": pg_pid})
                for round_number in range(config.rounds):
                    logger.info("round %d of %d", round_number + 1, config.rounds)
                    for name in ROUND_ORDER:
                        if not config.runs(name):
                            continue
                        logger.info("  %s", name)
                        target = references.get(name, service)
                        probe = (
                            SequencerLagProbe(url, DEFAULT_INTERVAL) if name == "apply" else None
                        )
                        outcome, cpu = await self._load(
                            target.port,
                            self._plans(name, history_count),
                            meters.get(name, meter),
                            config.duration,
                            probe,
                        )
                        self._accumulate(name, outcome, cpu, config.clients)
                        if name in ("naive", "apply"):
                            await self._settle(url)
                    if config.runs("db_ceiling"):
                        logger.info("  db_ceiling")
                        await self._db_ceiling(url, meter)
                        await self._settle(url)
                if config.runs("soak"):
                    await self._soak(service, history_count)
                self._service_log_note(service)
                for name, server in references.items():
                    self._service_log_note(server, name)

    async def _start_references(
        self, stack: contextlib.AsyncExitStack, admin_url: str, history_count: int, work: Path
    ) -> dict[str, RunningService]:
        """The tutorial references the run needs (bench/reference_app.py), by the phase
        that loads them. The lending reference gets a database of its own on the same
        server, seeded with the same history applicants as the product."""
        config = self.config
        started: dict[str, RunningService] = {}
        options: dict[str, Any] = {
            "workers": config.workers,
            "pool_size": config.pool_size,
            "access_log": config.access_log,
            "log_dir": work,
        }
        if config.runs("bare_noop"):
            started["bare_noop"] = await stack.enter_async_context(
                reference_process("bare", None, **options)
            )
        if config.runs("reference_apply") or config.runs("reference_history"):
            url = await stack.enter_async_context(
                reference_database(
                    admin_url,
                    history_prefix=HISTORY_PREFIX,
                    applicants=history_count if config.runs("reference_history") else 0,
                    applications_each=config.applications_per_history_applicant,
                )
            )
            reference = await stack.enter_async_context(
                reference_process("reference", url, **options)
            )
            started["reference_apply"] = started["reference_history"] = reference
        return started

    async def _settle(self, url: str) -> None:
        """Let the sequencer number what the last phase wrote, so it works off the clock."""
        if not await wait_until_sequenced(url, SEQUENCER_TIMEOUT):
            self.notes.append(f"the sequencer had not caught up after {SEQUENCER_TIMEOUT:.0f} s")

    async def _db_ceiling(self, url: str, meter: CpuMeter) -> None:
        config = self.config
        meter_start = time.time() + 2.0 + 0.5 * config.workers + config.warmup
        running = asyncio.create_task(
            asyncio.to_thread(
                run_db_ceiling,
                url,
                self.bodies,
                clients=config.clients,
                processes=config.workers,
                pool_size=config.pool_size,
                scoring_model=config.scoring_model,
                warmup=config.warmup,
                duration=config.duration,
                start_at=meter_start - config.warmup,
            )
        )
        db_meter = CpuMeter(
            {"postgres": meter.roots.get("postgres"), "service": meter.roots["service"]}
        )
        await asyncio.sleep(max(0.0, meter_start - time.time()))
        db_meter.start()
        await asyncio.sleep(config.duration)
        cpu = db_meter.stop(config.duration)
        outcome = await running
        # The clients' processes are the "generator" here: they run the command handler.
        cpu["clients (handler)"] = outcome.cpu_seconds / config.duration
        outcome.cpu_seconds = 0.0
        self._accumulate("db_ceiling", outcome, cpu, config.clients)

    async def _soak(self, service: RunningService, history_count: int) -> None:
        """Half the clients apply, half read histories; RSS of every service process."""
        config = self.config
        logger.info("soak: %.0f s", config.soak_seconds)
        half = config.clients // 2
        apply_plan = self._plans("apply", history_count)[0][0]
        history_plan = self._plans("history", history_count)[0][0]
        start_at = time.time() + 1.0 + 0.5 * config.client_processes
        loading = asyncio.create_task(
            asyncio.to_thread(
                run_load,
                LOOPBACK,
                service.port,
                [(apply_plan, config.clients - half), (history_plan, half)],
                warmup=0.0,
                duration=config.soak_seconds,
                processes=config.client_processes,
                start_at=start_at,
            )
        )
        interval = max(1.0, config.soak_seconds / 300)
        samples: list[tuple[float, int]] = []
        await asyncio.sleep(max(0.0, start_at - time.time()))
        began = time.monotonic()
        while (elapsed := time.monotonic() - began) <= config.soak_seconds:
            samples.append((elapsed, sum(rss_bytes(pid) for pid in process_tree(service.pid))))
            await asyncio.sleep(interval)
        outcome = await loading
        errors = sum(plan.errors for plan in outcome.plans.values())
        self.memory = memory_trend(samples)
        self.references["soak"] = {
            "seconds": config.soak_seconds,
            "requests": {name: len(plan.latencies) for name, plan in outcome.plans.items()},
            "errors": errors,
            "processes": len(process_tree(service.pid)),
        }
        if errors:
            self.notes.append(f"soak: {errors} failed requests")

    def _service_log_note(self, service: RunningService, which: str = "the service") -> None:
        text = service.log_path.read_text(errors="replace")
        problems = [line for line in text.splitlines() if "ERROR" in line or "Traceback" in line]
        if problems:
            self.notes.append(
                f"{which} logged {len(problems)} error line(s), first: {problems[0][:200]}"
            )

    # --- offline phases ---

    async def replay_phases(self, admin_url: str, work: Path) -> None:
        """Verify and rebuild over `events` events imported into a scratch database."""
        config = self.config
        applications = -(-config.events // 3)
        async with scratch_database(admin_url, "replay") as url:
            logger.info("replay: importing %d applications", applications)
            seeded = await offline.import_applications(
                url,
                work,
                applications,
                applicants=max(1, applications // 3),
                applicant_prefix="bench-replay-",
                scoring_model=config.scoring_model,
                seed=config.seed + 1,
                batch_size=config.import_batch_size,
            )
            self.references["replay_import"] = asdict(
                offline.import_figure(seeded, config.import_batch_size, "replay_seed_import")
            )
            self.references["sequence"] = asdict(await offline.sequence_everything(url))
            events = await offline.count_events(url)
            key = await offline.bench_seal(url)
            logger.info("replay: verify (%d events)", events)
            self.rates["verify"] = await offline.verify_command(
                url, events, read_models=True, key=key
            )
            self.references["verify_skip_read_models"] = asdict(
                await offline.verify_command(url, events, read_models=False)
            )
            chains = await offline.verify_chains(url)
            self.references["verify_chains"] = asdict(chains)
            logger.info("replay: rebuild")
            self.rates["rebuild"] = await offline.rebuild_all(
                url, events, config.rebuild_batch_size
            )

    async def import_phase(self, admin_url: str, work: Path) -> None:
        config = self.config
        async with scratch_database(admin_url, "import") as url:
            logger.info("import: %d applications", config.import_applications)
            result = await offline.import_applications(
                url,
                work,
                config.import_applications,
                applicants=max(1, config.import_applications // 3),
                applicant_prefix="bench-import-",
                scoring_model=config.scoring_model,
                seed=config.seed + 2,
                batch_size=config.import_batch_size,
            )
            self.rates["bulk_import"] = offline.import_figure(result, config.import_batch_size)

    # --- the whole run ---

    async def run(self) -> dict[str, Any]:
        config = self.config
        started_at = datetime.now(UTC).isoformat(timespec="seconds")
        environment = _environment(config)
        with (
            tempfile.TemporaryDirectory(prefix="lending-ledger-bench-work-") as work_dir,
            database_server(config.database_url, list(config.pg_settings)) as server,
        ):
            work = Path(work_dir)
            environment["postgres"] = await _server_version(server.admin_url)
            if config.runs("generator"):
                logger.info("load generator check")
                await self.calibrate_generator()
            if any(config.runs(p) for p in (*ROUND_ORDER, "db_ceiling", "soak")):
                await self.service_phases(server.admin_url, server.postmaster_pid, work)
            if config.runs("replay"):
                await self.replay_phases(server.admin_url, work)
            if config.runs("import"):
                await self.import_phase(server.admin_url, work)
        self._generator_notes()
        figures = Figures(
            noop=self._figure("noop"),
            naive=self._figure("naive"),
            apply=self._figure("apply"),
            history=self._figure("history"),
            db_ceiling=self._figure("db_ceiling"),
            rebuild=self.rates.get("rebuild"),
            verify=self.rates.get("verify"),
            bulk_import=self.rates.get("bulk_import"),
            memory=self.memory,
            bare_noop=self._figure("bare_noop"),
            reference_apply=self._figure("reference_apply"),
            reference_history=self._figure("reference_history"),
            sequencer_lag=lag_figure(self.sequencer_lags, DEFAULT_INTERVAL)
            if config.runs("apply")
            else None,
        )
        return result_document(
            started_at=started_at,
            finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
            environment=environment,
            config=_config_json(config),
            figures=figures,
            references=self.references,
            generator=self.generator,
            notes=self.notes,
        )

    def _figure(self, name: str) -> LoadFigure | None:
        accumulated = self.results.get(name)
        return accumulated.figure(name) if accumulated else None

    def _generator_notes(self) -> None:
        """Say where the generator came close to its own limit (docs/benchmarks.md)."""
        calibration = self.generator.get("calibration")
        processes = self.config.client_processes
        for name in ROUND_ORDER:
            figure = self._figure(name)
            if figure is None:
                continue
            share = (figure.cpu.get("generator") or 0.0) / processes
            headroom = (
                calibration["per_second"] / figure.per_second
                if calibration and figure.per_second
                else None
            )
            self.generator[name] = {"cpu_per_process": share, "calibration_over_figure": headroom}
            if share > 0.85 or (headroom is not None and headroom < 1.5):
                self.notes.append(
                    f"{name}: the load generator may limit this figure (its CPU "
                    f"{share:.0%} of a core per process; calibration / figure "
                    f"{headroom or 0:.1f}); try --client-processes 2"
                )


async def _server_version(admin_url: str) -> str:
    connection = await connect(admin_url)
    try:
        version: str = await connection.fetchval(sql.SERVER_VERSION)
        return version
    finally:
        await connection.close()


def _config_json(config: BenchConfig) -> dict[str, Any]:
    document = asdict(config)
    document["output"] = str(config.output) if config.output else None
    if config.database_url:
        document["database_url"] = "(given)"  # never write credentials into results
    return document
