"""jaxact.engine.memory: the estimate of a run's memory from its compiled program, and the refusal
of runs that cannot fit.

The compiled estimate compiles the multiclass epoch program twice (4 and 8 members); the
module fixture does it once, with the configuration `train.plan` uses, so the refusals
through `plan` below find it in `program_need`'s cache.
"""

import dataclasses

import pytest

from jaxact.engine import engine
from jaxact.engine import memory
from jaxact.model import cells as studies
from jaxact.study import train

CELL = studies.recommended_cell("multiclass")
CONFIG = train.RunConfig(task="multiclass", head=CELL.head, loss=CELL.loss)


@pytest.fixture(scope="module")
def compiled():
  return memory.estimate("multiclass", [CELL], 100, CONFIG.engine, CONFIG.execution)


def test_parameters_in_closed_form():
  conv = (3 * 3 * 1 * 32 + 32) + (3 * 3 * 32 * 64 + 64) + (3 * 3 * 64 * 64 + 64)
  assert memory.parameters(10, 1) == conv + (1024 * 64 + 64) + (64 * 10 + 10)
  assert memory.parameters(1, 3) == conv + (1024 * 64 + 64) + 2 * (64 * 64 + 64) + (64 + 1)


def test_byte_count_grows_with_members_and_vmap_holds_every_step():
  one, many = memory.byte_count("multiclass", 1), memory.byte_count("multiclass", 101)
  assert many.per_member == one.per_member > 0
  assert many.total == one.total + 100 * one.per_member
  assert (memory.byte_count("multiclass", 64, member_mode="vmap").total
          > memory.byte_count("multiclass", 64, member_mode="loop").total)
  assert memory.byte_count("multiclass", 8, optimizer="sgd").per_member < one.per_member


def test_compiled_estimate_is_positive_and_grows_with_members(compiled):
  assert compiled.source == "compiled program"
  state = 4 * 4 * memory.parameters(10, 1)    # params, best params, AdamW's two moments
  assert compiled.device.per_member >= state       # the program holds every member's state
  assert compiled.host.per_member >= 2 * state     # a snapshot and the checkpointer's copy
  assert compiled.device.shared > 0 and compiled.host.shared > 0
  bigger = dataclasses.replace(compiled, members=1000)
  assert bigger.total == compiled.total + 900 * compiled.per_member > compiled.total
  assert compiled.shared_memory                    # a CPU: device and host add up


def test_extrapolation_meets_the_compiled_peak_of_more_members(compiled):
  """The line through 4 and 8 members predicts the compiled program of 16 members."""
  members = [(CELL, s) for s in range(16)]
  eng = engine.Engine("multiclass", members, CONFIG.engine, CONFIG.execution,
                      progress=lambda _: None, splits=memory._shape_splits)
  data = memory.abstract_task_data("multiclass")
  peak = memory.compiled_peak(eng, data)
  pool_again = memory._nbytes((data.x_valid, data.t_valid))   # one buffer, counted once
  assert compiled.device.at(16) == pytest.approx(peak - pool_again, rel=0.02)


def test_representative_cells_carry_the_deepest_network_and_batch_norm():
  cells = [r.cell for r in studies.hidden_grid()["multiclass"]]
  reps = memory.representative_cells(cells)
  assert len(reps) <= 2
  assert max(c.depth for c in reps) == max(c.depth for c in cells)
  assert any(c.batch_norm for c in reps)
  assert memory.representative_cells([CELL]) == (CELL,)


def test_run_too_big_is_refused_naming_what_fits(compiled, monkeypatch):
  # Room for about 300 members of the compiled estimate, and below byte_count's screen.
  avail = compiled.first.at(300)
  monkeypatch.setattr(memory, "available_bytes", lambda: (avail, "test memory"))
  with pytest.raises(train.UserError) as err:
    train.plan(dataclasses.replace(CONFIG, seeds=2_000_000_000))
  text = str(err.value)
  assert text.startswith("this run does not fit in memory: task multiclass trains 1 cells x "
                         "2000000000 seeds")
  assert "the test memory is" in text and "estimated from the compiled program" in text
  fit = int(text.split("use --seeds=")[1].split(" ")[0])
  assert fit == compiled.first.most(avail) and 250 < fit <= 300
  assert f"At most {fit:,} members fit" in text
  train.plan(dataclasses.replace(CONFIG, seeds=fit))            # what it says fits, fits
  with pytest.raises(train.UserError):
    train.plan(dataclasses.replace(CONFIG, seeds=fit + 1))


def test_nothing_fits_names_the_other_fix(compiled):
  with pytest.raises(memory.DoesNotFit, match="Not even one seed per cell fits"):
    memory.check_fits({"multiclass": [CELL]}, 1, CONFIG.engine, CONFIG.execution,
                      member_mode="loop", available=(2 ** 20, "tiny"))


def test_an_accelerator_is_told_how_to_give_jax_more_of_it():
  e = memory.Estimate(members=4096, device=memory.Need(2 ** 30, 18 * 2 ** 20),
                      host=memory.Need(0, 4 * 2 ** 20), shared_memory=False,
                      source="compiled program")
  text = str(memory._refusal("multiclass", 1, 4096, 1, e, e.device, 60 * memory.GIB,
                             "free memory JAX may use on one H100"))
  assert "At most 3,356 members fit: use --seeds=3356" in text
  assert "XLA_PYTHON_CLIENT_MEM_FRACTION=.95" in text and "docs/devices.md" in text


def test_sharding_divides_the_members():
  cells = {"multiclass": [CELL] * 4}
  one = memory.check_fits(cells, 100, CONFIG.engine, CONFIG.execution, member_mode="vmap",
                          available=(2 ** 50, "x"))
  eight = memory.check_fits(cells, 100, CONFIG.engine, CONFIG.execution, member_mode="vmap",
                            devices=8, available=(2 ** 50, "x"))
  assert eight.members == 50 and one.members == 400 and eight.source == "byte count"


def test_available_bytes_is_positive():
  n, what = memory.available_bytes()
  assert n > 0 and what
