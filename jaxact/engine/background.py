"""Compiling in a thread: XLA compiles with the GIL released, so a compilation can run on
another core while the main thread traces, compiles or trains.

Used by `Engine.run` (the test pass compiles while the epochs run) and by
`--compile_ahead` (compile_ahead.py: the next task's programs while a task trains).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from absl import logging


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
