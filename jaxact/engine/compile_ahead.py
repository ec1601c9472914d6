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

import threading
import time
from typing import Any, Callable

from absl import logging

from jaxact.engine import engine as engine_lib
from jaxact.engine import program as program_lib


class BackgroundCompile:
  """Runs `compile_fn` (lowerings and compilations) in a thread; a failure is logged, not raised.

  jax keeps what it compiles in its in-memory cache, so the first call of the
  same jitted function on the same shapes finds it there; if compiling here
  failed, that call compiles it, and only time is lost. The thread is not a
  daemon: a process that ends while it compiles waits for it.
  """

  def __init__(self, compile_fn: Callable[[], Any], what: str, name: str = "jaxact-compile"):
    def work():
      t0 = time.perf_counter()
      try:
        compile_fn()
      except Exception as err:  # pylint: disable=broad-except
        logging.warning("%s: compiling in the background failed (%s: %s); it compiles when "
                        "first needed instead", what, type(err).__name__, err)
      else:
        logging.info("%s: compiled in the background in %.1f s", what, time.perf_counter() - t0)

    self._thread = threading.Thread(target=work, name=name)
    self._thread.start()

  def done(self) -> bool:
    return not self._thread.is_alive()

  def wait(self) -> None:
    self._thread.join()


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
