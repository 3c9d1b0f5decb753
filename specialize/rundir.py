"""The run directory of ``specialize run``: built in staging, logged, rank-aware, resumable.

A run is built in a hidden staging folder (``runs/.<name>.partial``) that is renamed into place
only when every stage succeeded, so a failed run never leaves a run directory that looks
complete. :class:`RunDir` owns the rules around that folder:

- **ranks**: under torchrun / accelerate launch every process runs the pipeline; rank 0 alone
  writes the staging folder, evaluates and exports. The other ranks train (the loop keeps them
  in step) and write their scratch files to a private folder that is removed at the end;
- **the log**: while the stages run, the ``specialize`` logger also writes ``run.log``;
- **keep for resume**: a failed run whose staging holds training progress (a complete
  checkpoint, or a finished adapter: ``train/done.json``) keeps it for
  ``specialize run --resume``; without either the folder is removed;
- **reuse**: ``--resume`` reuses the adapter of an interrupted run when ``train/done.json``
  holds the same training fingerprint (written after the adapter, its metadata and the
  history, so its presence means all three are complete).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from specialize.errors import SpecializeError
from specialize.io import read_json, write_json
from specialize.train.checkpoint import complete_checkpoints

log = logging.getLogger("specialize")

TRAIN_DONE = "train/done.json"


def is_main_process() -> bool:
    """Rank 0 (or no distributed launch at all)."""
    return int(os.environ.get("RANK", "0")) == 0


class RunDir:
    """Where one run is built (``stage``) and where it ends up (``final``)."""

    def __init__(self, final: Path) -> None:
        self.final = final
        self.shared = final.parent / f".{final.name}.partial"
        self.main = is_main_process()
        self.stage = (
            self.shared if self.main else Path(tempfile.mkdtemp(prefix=f".{final.name}.rank"))
        )

    @property
    def checkpoints(self) -> Path:
        """Training checkpoints: in the shared staging folder, whichever rank asks."""
        return self.shared / "checkpoints"

    def check_free(self, force: bool) -> None:
        """A finished run of the same name is replaced only with ``--force``."""
        if self.final.exists() and not force:
            raise SpecializeError(
                "run directory already exists; use --force to replace it", path=self.final
            )

    def adapter_done(self, fingerprint: str) -> bool:
        """Did an interrupted run finish training an adapter with this fingerprint?"""
        done = self.shared / TRAIN_DONE
        try:
            return done.is_file() and read_json(done).get("fingerprint") == fingerprint
        except (OSError, ValueError):
            return False

    def mark_trained(self, fingerprint: str) -> None:
        """Written last by the training stage: the adapter can be reused by ``--resume``."""
        if self.main:
            write_json(self.stage / TRAIN_DONE, {"fingerprint": fingerprint})

    def open(self, resume: bool, reuse_adapter: bool) -> None:
        """Make the staging folder ready: kept for a resume with something to resume from,
        else emptied."""
        if not self.main:
            return
        if resume and (reuse_adapter or complete_checkpoints(self.checkpoints)):
            log.info("resuming in %s", self.stage)
            return
        if resume:
            log.info("no checkpoint to resume from in %s; starting fresh", self.stage)
        if self.stage.exists():
            shutil.rmtree(self.stage)
        self.stage.mkdir(parents=True)

    @contextmanager
    def session(self) -> Iterator[Path]:
        """Run the stages inside: ``run.log`` is written meanwhile; on success the staging
        folder becomes the run directory, on failure it is kept for ``--resume`` or removed."""
        handler = logging.FileHandler(self.stage / "run.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        try:
            yield self.stage
        except BaseException as e:
            _detach(handler)
            self._failed()
            if isinstance(e, OSError) and not isinstance(e, FileNotFoundError):
                raise SpecializeError(
                    f"could not write the run: {e.strerror or e}", path=self.stage
                ) from None
            raise
        _detach(handler)
        self._finished()

    def _failed(self) -> None:
        if not self.main:
            shutil.rmtree(self.stage, ignore_errors=True)
        elif complete_checkpoints(self.checkpoints) or (self.stage / TRAIN_DONE).is_file():
            # Training progress is worth keeping: the hidden staging folder stays for --resume.
            log.error("kept %s for `specialize run --resume`", self.stage)
        else:
            shutil.rmtree(self.stage, ignore_errors=True)

    def _finished(self) -> None:
        if not self.main:  # a helper rank's scratch files
            shutil.rmtree(self.stage, ignore_errors=True)
            return
        if self.final.exists():
            shutil.rmtree(self.final)
        os.replace(self.stage, self.final)
        log.info("run directory: %s", self.final)


def _detach(handler: logging.Handler) -> None:
    log.removeHandler(handler)
    handler.close()
