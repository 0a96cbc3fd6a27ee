"""The boundary every command runs in: exit codes, one-line errors, crash logs, and the process tuning that only the
command line may do (runtime.process: the heap, the garbage collector, the thread policy).

Exit codes: 0 done; 1 a problem the message says how to fix; 130 / 143 stopped by Ctrl-C / SIGTERM (the run
can be resumed); 70 an unexpected error, a bug: one line here, the traceback in a log file (FINETUNE_DEBUG=1
prints it here too).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import typer

from ..errors import FinetuneError, RunInterrupted

BUG_EXIT = 70  # EX_SOFTWARE (sysexits.h): an internal error


def _print_error(label: str, message, exc: BaseException | None = None) -> None:
    """One line on stderr. In a data-parallel run the other ranks stay quiet where rank 0 says the same (a stop,
    an error all ranks share) and say which rank they are otherwise."""
    from ..console import literal, stderr_console

    rank = int(os.environ.get("RANK", "0") or 0)
    if rank and (isinstance(exc, RunInterrupted) or getattr(exc, "finetune_shared", False)):
        return
    where = f"rank {rank}: " if rank else ""
    stderr_console().print(f"{label} {where}{literal(message)}", highlight=False, soft_wrap=True)


def command(fn):
    """The boundary every command runs in: a problem the user can fix is one line and exit 1; Ctrl-C/SIGTERM
    after a save is exit 130/143 with the resume command; anything unforeseen is a bug: one line saying where,
    the full traceback in a log file (the run folder's, or the cache folder's)."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except RunInterrupted as exc:  # exit 130 / 143, as the shell reports a process stopped by SIGINT / SIGTERM
            _print_error("[bold yellow]stopped:[/]", exc, exc)
            raise typer.Exit(exc.exit_code) from None
        except FinetuneError as exc:
            _print_error("[bold red]error:[/]", exc, exc)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            _print_error("[bold yellow]stopped:[/]", "interrupted; nothing was saved by this command")
            raise typer.Exit(130) from None
        except Exception as exc:
            log = _crash_log(exc)
            where = _where(exc)
            _print_error("[bold red]unexpected error:[/]", f"{type(exc).__name__}: {str(exc)[:300]} (at {where}). "
                         f"This is a bug in finetune; please report it with {log or 'the traceback'}")
            if os.environ.get("FINETUNE_DEBUG") == "1" or log is None:
                import traceback

                traceback.print_exception(exc)
            raise typer.Exit(BUG_EXIT) from None
    return run


def _where(exc: BaseException) -> str:
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    return f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"


def _crash_log(exc: BaseException) -> Path | None:
    """The traceback in RUN_DIR/crash.log when the error happened in a run, else in the cache folder."""
    import time
    import traceback

    from ..cache import cache_dir

    folder = getattr(exc, "finetune_run_dir", None) or cache_dir("logs")
    path = Path(folder) / ("crash.log" if getattr(exc, "finetune_run_dir", None) else
                           f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} finetune {version()}\n")
            f.write("".join(traceback.format_exception(exc)))
        return path
    except OSError:
        return None


def version() -> str:
    from .. import __version__

    return __version__


def tune(imports: tuple[str, ...] = ("torch", "torchvision", "timm")) -> None:
    from ..runtime.process import tune_process

    tune_process(imports)


def write_run_report(run_dir: Path, eval_dir: Path | None = None) -> Path:
    """RUN_DIR/report.html, rewritten after a run or an evaluation of its checkpoint."""
    from ..deploy.report import write_report

    return write_report(run_dir, eval_dir)
