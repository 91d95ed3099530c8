"""What a run measures and how big it is. Defaults are the issue's sizes; `--quick` is a
smoke run of a minute or two."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

PHASES = (
    "generator",
    "noop",
    "naive",
    "apply",
    "history",
    "bare_noop",
    "reference_apply",
    "reference_history",
    "db_ceiling",
    "soak",
    "replay",
    "import",
)
"""`replay` is verify and rebuild (they share one imported ledger). `bare_noop`,
`reference_apply` and `reference_history` are the tutorial references (issue 12), each
measured right after the product's phase it divides; `apply` also measures the sequencer's
lag."""


@dataclass(frozen=True)
class BenchConfig:
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    clients: int = 32
    warmup: float = 3.0
    duration: float = 20.0
    rounds: int = 3
    soak_seconds: float = 600.0
    history_applicants: int = 10_000
    applications_per_history_applicant: int = 3
    events: int = 1_000_000  # verify and rebuild
    import_applications: int = 1_000_000
    import_batch_size: int = 10_000
    rebuild_batch_size: int = 2_000
    client_processes: int = 1
    pool_size: int = 10
    scoring_model: str = "ratio-v1"
    database_url: str | None = None
    output: Path | None = None
    access_log: bool = False
    pg_settings: tuple[str, ...] = ()
    phases: tuple[str, ...] = PHASES
    seed: int = 20_261_125
    quick: bool = False

    def with_quick_sizes(self) -> BenchConfig:
        return replace(
            self,
            warmup=1.0,
            duration=3.0,
            rounds=1,
            soak_seconds=8.0,
            history_applicants=500,
            events=15_000,
            import_applications=5_000,
            quick=True,
        )

    def runs(self, phase: str) -> bool:
        return phase in self.phases

    def validate(self) -> None:
        checks = {
            "--workers": self.workers >= 1,
            "--clients": self.clients >= 1,
            "--duration": self.duration > 0,
            "--warmup": self.warmup >= 0,
            "--rounds": self.rounds >= 1,
            "--soak-seconds": self.soak_seconds > 0,
            "--history-applicants": self.history_applicants >= 1,
            "--events": self.events >= 3,
            "--import-applications": self.import_applications >= 1,
            "--client-processes": self.client_processes >= 1,
            "--pool-size": self.pool_size >= 1,
        }
        wrong = [name for name, ok in checks.items() if not ok]
        if wrong:
            raise ValueError(f"out of range: {', '.join(wrong)}")
        unknown = [phase for phase in self.phases if phase not in PHASES]
        if unknown:
            raise ValueError(f"unknown phase(s): {', '.join(unknown)}")
