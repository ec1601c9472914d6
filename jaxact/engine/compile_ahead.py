"""`--compile_ahead`: the next task's programs compiled in a thread while a task trains.

Run-level, not part of an engine: `train_and_evaluate(..., compile_ahead=True)`
builds the next task's `Engine` and data between tasks and hands them to
`CompileAhead.start`, which compiles their programs (`Engine.compile_ahead`) in
a `BackgroundCompile` thread while the current task trains; the next task
takes them with `CompileAhead.take`. Same results: jax keeps what it compiles
in its in-memory cache, where the task's first calls find it. The training
loop itself (runner.py) starts no thread.
"""

from __future__ import annotations

from jaxact.engine import engine as engine_lib
from jaxact.engine import program as program_lib
from jaxact.engine.background import BackgroundCompile


class CompileAhead:
  """The next task's engine and data, its programs compiling in the background.

  On an accelerator the host mostly waits while the device runs an epoch, so
  the next task's tracing and XLA compilation (11-28 s per task on the H100 of
  BUILD_NOTES) can overlap the current task's training instead of following
  it. One task ahead at most: `start` first waits for the previous compilation.
  """

  def __init__(self):
    self._task = self._engine = self._data = self._compile = None

  def start(self, task: str, engine: engine_lib.Engine, data: program_lib.TaskData) -> None:
    """Compiles `engine`'s programs for `data` in a thread, keeping both for `take(task)`."""
    self.wait()
    self._task, self._engine, self._data = task, engine, data
    self._compile = BackgroundCompile(
        lambda: engine.compile_ahead(data), f"task {task}", f"jaxact-compile-{task}")

  def take(self, task: str) -> tuple[engine_lib.Engine, program_lib.TaskData] | None:
    """The engine and data prepared for `task` (after its compilation ended), or None."""
    if self._task != task:
      return None
    self.wait()
    out = (self._engine, self._data)
    self._task = self._engine = self._data = None
    return out

  def wait(self) -> None:
    """Blocks until the compilation started last, if any, has ended."""
    if self._compile is not None:
      self._compile.wait()
      self._compile = None
