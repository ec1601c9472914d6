"""jaxact.memory: the estimate of a run's memory and the refusal of runs that cannot fit."""

import pytest

from jaxact import memory


def test_parameters_in_closed_form():
  conv = (3 * 3 * 1 * 32 + 32) + (3 * 3 * 32 * 64 + 64) + (3 * 3 * 64 * 64 + 64)
  assert memory.parameters(10, 1) == conv + (1024 * 64 + 64) + (64 * 10 + 10)
  assert memory.parameters(1, 3) == conv + (1024 * 64 + 64) + 2 * (64 * 64 + 64) + (64 + 1)


def test_estimate_grows_with_members_and_vmap_holds_every_step():
  one, many = memory.estimate("multiclass", 1), memory.estimate("multiclass", 101)
  assert many.per_member == one.per_member and many.shared == one.shared
  assert many.total == pytest.approx(one.total + memory.SAFETY * 100 * one.per_member, abs=2)
  loop = memory.estimate("multiclass", 64, member_mode="loop")
  vmap = memory.estimate("multiclass", 64, member_mode="vmap")
  assert vmap.total > loop.total
  assert memory.estimate("multiclass", 8, optimizer="sgd").per_member < one.per_member
  # The training state alone: params, best params and AdamW's two moments.
  assert one.per_member >= 4 * 4 * memory.parameters(10, 1)


def test_absurd_run_is_refused_with_what_fits():
  avail = (8 * memory.GIB, "test memory")
  with pytest.raises(memory.DoesNotFit) as err:
    memory.check_fits({"multiclass": 7, "binary": 3}, 2_000_000_000, available=avail)
  text = str(err.value)
  assert "task multiclass trains 7 cells x 2000000000 seeds" in text
  assert "the test memory is 8.0 GiB" in text
  fit = int(text.split("At most ")[1].split(" seeds")[0].replace(",", ""))
  assert fit > 0
  memory.check_fits({"multiclass": 7}, fit, available=avail)         # what it says fits, fits
  with pytest.raises(memory.DoesNotFit):
    memory.check_fits({"multiclass": 7}, fit + 1, available=avail)


def test_nothing_fits_names_the_other_fix():
  with pytest.raises(memory.DoesNotFit, match="Not even one seed per cell fits"):
    memory.check_fits({"regression": 10}, 1, available=(10 * 2 ** 20, "tiny"))


def test_sharding_divides_the_members():
  one = memory.check_fits({"multiclass": 4}, 100, available=(2 ** 50, "x"))
  eight = memory.check_fits({"multiclass": 4}, 100, devices=8, available=(2 ** 50, "x"))
  assert eight.members == 50 and one.members == 400


def test_available_bytes_is_positive():
  n, what = memory.available_bytes()
  assert n > 0 and what
