"""The cover pipeline: preprocess -> separate -> infer -> mix -> finalize over a work folder."""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .config import PipelineConfig
from .context import STAGES, CancelCheck, EventCallback, PipelineEvent, StageContext, overall_fraction
from .device import default_device
from .errors import Canceled, PipelineError

log = logging.getLogger("inference")

ARTIFACTS = ("song", "reference", "vocals", "instrumental", "converted_vocals", "cover", "report")


@dataclass
class PipelineResult:
    workdir: Path
    artifacts: dict[str, Path]          # name -> path, e.g. "cover" -> workdir/cover.wav
    report: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    quality: dict[str, Any] | None = None   # inference.quality.QualityReport.as_dict() (report["quality"])

    @property
    def cover(self) -> Path:
        return self.artifacts["cover"]


class Pipeline:
    """Runs the five stages in order.

    ``on_event`` receives :class:`PipelineEvent` for each stage start/end and progress;
    ``should_cancel`` is polled between chunks of work (raises :class:`Canceled`).
    ``stem_cache`` (an :class:`inference.stem_cache.StemCache`) lets ``separate`` reuse the stems
    of a song separated before with the same separator settings (reported ``cached``).
    Failures raise :class:`PipelineError` naming the stage.
    """

    def __init__(self, config: PipelineConfig | None = None, *, on_event: EventCallback | None = None,
                 should_cancel: CancelCheck | None = None, stem_cache=None):
        self.config = config or PipelineConfig()
        self.on_event = on_event
        self.should_cancel = should_cancel
        self.stem_cache = stem_cache
        self.device = self.config.device or default_device()

    # -- helpers -----------------------------------------------------------------------------
    def _emit(self, ev: PipelineEvent) -> None:
        if self.on_event is not None:
            self.on_event(ev)

    def _ctx(self, stage: str, workdir: Path, warnings: list[str]) -> StageContext:
        return StageContext(stage=stage, workdir=workdir, device=self.device, on_event=self.on_event,
                            should_cancel=self.should_cancel, warnings=warnings)

    # -- run ---------------------------------------------------------------------------------
    def run(self, song_path: Path | str | None, reference_path: Path | str, workdir: Path | str, *,
            vocals_path: Path | str | None = None, instrumental_path: Path | str | None = None) -> PipelineResult:
        """Run the stages. With ``vocals_path`` (+ optional ``instrumental_path``; silence when
        absent) the client's stems replace separation: ``song_path`` may be None (the song is
        then their sum) and ``separate`` is reported as skipped/cached."""
        from .stages import finalize, infer, mix, preprocess, separate

        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        if song_path is None and vocals_path is None:
            raise ValueError("a song or a vocals stem is needed")
        cfg = self.config
        warnings: list[str] = []
        timings: dict[str, float] = {}
        engines: dict[str, Any] = {}
        stage_info: dict[str, Any] = {}
        report: dict[str, Any] = {"inference_version": __version__, "device": self.device,
                                  "parameters": cfg.as_dict(), "timings": timings, "engines": engines,
                                  "stages": stage_info}
        t_start = time.perf_counter()
        state: dict[str, Any] = {}

        def stage(name: str, fn) -> Any:
            ctx = self._ctx(name, workdir, warnings)
            ctx.check_cancel()
            self._emit(PipelineEvent("stage_started", name, 0.0, overall_fraction(name, 0.0)))
            t0 = time.perf_counter()
            try:
                out = fn(ctx)
            except (Canceled, PipelineError):
                raise
            except MemoryError:
                raise PipelineError(name, "ran out of memory; try a shorter song", code="out_of_memory",
                                    transient=True) from None
            except OSError as exc:
                if getattr(exc, "errno", None) == 28:
                    raise PipelineError(name, "no space left on the device", code="no_space") from None
                log.exception("stage %s failed", name)
                raise PipelineError(name, f"file error: {exc.strerror or exc}", code="io_error") from None
            except Exception as exc:
                if _is_cuda_oom(exc):
                    raise PipelineError(name, "the GPU ran out of memory", code="out_of_memory",
                                        transient=True) from None
                if _disk_full(workdir):  # e.g. libsndfile's "System error" on a full disk
                    raise PipelineError(name, "no space left on the device", code="no_space") from None
                log.exception("stage %s failed", name)
                raise PipelineError(name, f"internal error ({exc.__class__.__name__}: {str(exc)[:200]})",
                                    code="internal_error") from None
            dt = time.perf_counter() - t0
            timings[name] = round(dt, 4)
            if ctx.info:
                stage_info[name] = ctx.info
                if name in ("separate", "infer") and "name" in ctx.info:
                    engines["separator" if name == "separate" else "converter"] = {
                        k: ctx.info[k] for k in ("name", "version", "skipped", "cached") if k in ctx.info}
            self._emit(PipelineEvent("stage_finished", name, 1.0, overall_fraction(name, 1.0), seconds=dt,
                                     cached=bool(ctx.info.get("cached"))))
            return out

        try:
            def pre_run(ctx):
                song = song_path
                if song is None:
                    song = separate.song_from_stems(vocals_path, instrumental_path, ctx.tmpdir / "stems_sum.wav",
                                                    cfg.limits.max_song_seconds)
                return preprocess.run(song, reference_path, cfg, ctx)

            state["pre"] = stage("preprocess", pre_run)
            state["sep"] = stage("separate", lambda ctx: separate.run(
                state["pre"], cfg, ctx, vocals_path=vocals_path, instrumental_path=instrumental_path,
                cache=self.stem_cache))
            # later stages read the song back from song.wav when they need it (10-minute songs), and
            # mix reads the instrumental back from instrumental.wav: infer needs neither in memory
            state["pre"].song = None
            state["sep"].instrumental = None
            state["conv"] = stage("infer", lambda ctx: infer.run(state["pre"], state["sep"], cfg, ctx))
            # mix reads the stems back from the work folder (the instrumental becomes the master)
            state["sep"].vocals = None
            if state["conv"].quality is not None:
                report["quality"] = state["conv"].quality
            state["mix"] = stage("mix", lambda ctx: mix.run(state["pre"], state["sep"], state["conv"], cfg, ctx))
            # finalize needs only the master and the input facts: let the stems go (10-minute songs)
            state["sep"] = state["conv"] = None
            result: PipelineResult = stage(
                "finalize", lambda ctx: finalize.run(state["pre"], state["mix"], cfg, report, ctx))
        finally:
            shutil.rmtree(workdir / "tmp", ignore_errors=True)
        result.warnings = warnings
        result.quality = report.get("quality")
        total = time.perf_counter() - t_start
        report["total_seconds"] = round(total, 4)
        dur = (report.get("input") or {}).get("duration") or 0
        report["real_time_factor"] = round(total / dur, 4) if dur else None
        report["warnings"] = warnings
        if "report" in result.artifacts:
            write_report(result.artifacts["report"], report)
        return result


def _disk_full(path: Path, margin: int = 1 << 20) -> bool:
    """Whether the file system holding ``path`` has less than ``margin`` bytes free."""
    import shutil
    try:
        return shutil.disk_usage(path).free < margin
    except OSError:
        return False


def _is_cuda_oom(exc: Exception) -> bool:
    try:
        import torch
        return isinstance(exc, torch.cuda.OutOfMemoryError)
    except Exception:
        return False


def write_report(path: Path, report: dict[str, Any]) -> Path:
    path.write_text(json.dumps(report, indent=2, default=str))
    return path
