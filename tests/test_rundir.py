"""The run directory: staged, renamed on success, kept for --resume only with training progress."""

from __future__ import annotations

import logging

import pytest

from specialize.errors import SpecializeError
from specialize.rundir import TRAIN_DONE, RunDir


def opened(tmp_path, resume: bool = False) -> RunDir:
    rd = RunDir(tmp_path / "runs" / "r")
    rd.open(resume=resume, reuse_adapter=resume and rd.adapter_done("fp"))
    return rd


def test_success_renames_staging_into_place_and_logs(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="specialize")
    rd = opened(tmp_path)
    with rd.session() as stage:
        assert stage == tmp_path / "runs" / ".r.partial"
        logging.getLogger("specialize").info("hello from a stage")
        (stage / "x.txt").write_text("x")
    assert (rd.final / "x.txt").is_file() and not rd.shared.exists()
    assert "hello from a stage" in (rd.final / "run.log").read_text()
    with pytest.raises(SpecializeError, match="already exists"):
        rd.check_free(force=False)
    rd.check_free(force=True)


def test_failure_without_training_progress_removes_staging(tmp_path):
    rd = opened(tmp_path)
    with pytest.raises(RuntimeError), rd.session():
        raise RuntimeError("stage failed")
    assert not rd.shared.exists() and not rd.final.exists()


@pytest.mark.parametrize("progress", ["checkpoint", "done"])
def test_failure_after_training_progress_keeps_staging_for_resume(tmp_path, progress):
    rd = opened(tmp_path)
    with pytest.raises(RuntimeError), rd.session() as stage:
        if progress == "done":
            rd.mark_trained("fp")
        else:
            step = stage / "checkpoints" / "step-000001"
            step.mkdir(parents=True)
            (step / "state.json").write_text("{}")
        raise RuntimeError("stage failed")
    assert rd.shared.is_dir() and not rd.final.exists()
    assert rd.adapter_done("fp") == (progress == "done")
    assert not rd.adapter_done("another fingerprint")
    again = opened(tmp_path, resume=True)  # kept: there is something to resume from
    assert (again.stage / ("checkpoints" if progress == "checkpoint" else TRAIN_DONE)).exists()
    opened(tmp_path, resume=False)  # a fresh run empties it
    assert list(rd.shared.iterdir()) == []


def test_write_errors_are_one_line(tmp_path):
    rd = opened(tmp_path)
    with pytest.raises(SpecializeError, match="could not write the run"), rd.session():
        raise PermissionError(13, "Permission denied")


def test_helper_rank_writes_a_private_folder_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    rd = RunDir(tmp_path / "runs" / "r")
    rd.open(resume=False, reuse_adapter=False)
    assert not rd.main and rd.stage != rd.shared
    assert rd.checkpoints == rd.shared / "checkpoints"  # checkpoints are shared
    with rd.session() as stage:
        rd.mark_trained("fp")  # only rank 0 marks training done
        assert not (stage / TRAIN_DONE).exists()
    assert not rd.stage.exists() and not rd.final.exists() and not rd.shared.exists()
