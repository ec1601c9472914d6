"""Every result quoted in the written reading occurs in the committed output it cites.

Checked: README.md's "## Results" section, experiments/READING.md and docs/results.md. Each `##`
section of these is checked on its own against the *generated files it cites*: every relative
link of the section to a file or folder under experiments/ (not to the hand-written READING.md or
README.md) cites the folder the target lies in, with every generated file below it: its
Markdown reports and comparisons (report.md, vs_torch.md, first_steps_trace*.md, an arm's
report.md), its text outputs (*.txt, *.log) and its results.csv files. A section that quotes a
result must therefore link the run it comes from, and a number that a rerun changed fails here.

A quoted number is a token with a decimal point ("97.18", "-85.79", "0.0059", "+0.06"). It is
found when some number of the cited files, written with at least as many decimals, rounds to it
(sign ignored: prose says "0.0059 lower" of a table's -0.005878); results.csv holds accuracies
as fractions, so each of its values also counts times 100. Not results, hence not checked:

- text in code spans, fenced blocks and link targets (commands, flags such as --lr=0.1, paths);
- dotted versions (0.10.2) and numbers glued to letters (lr0.1, 1.5x);
- scientific notation (1e-3, 3.5e-10): quoted as orders of magnitude, not to a table's digits;
- the equivalence margins, written "±" and the margin (±0.50, ±0.01: `jaxact.analysis.stats`);
- a number followed by a unit of time or memory (26.4 min, 0.5 s, 24 GiB): run metadata;
- a number right after a training option's name (lr 0.1, learning rate 0.1, eps 1e-3,
  momentum 0.9, weight decay 0.01): a setting, not a measurement;
- the constants of `_NOT_RESULTS` below, each with its reason.
"""

import decimal
import glob
import os
import re

import pytest

from jaxact.analysis import stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Constants that read like results but are definitions, each with the reason it is not checked.
_NOT_RESULTS = {
    "0.01": "the saturation threshold: a unit is saturated when its derivative is below 0.01",
    "0.05": "the family-wise alpha of every verdict (Holm-adjusted p < 0.05)",
}

_DOCS = ("README.md", "experiments/READING.md", "docs/results.md")
_HAND_WRITTEN = {"READING.md", "README.md"}

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
_LINK = re.compile(r"(!?\[(?:[^\[\]]|\[[^\]]*\])*\])\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# A decimal number: not glued to a letter, digit or dot on either side, not in e-notation.
_NUMBER = re.compile(r"(?<![\w.])([+\-−]?)(\d+\.\d+)(?![\w.%]?[\w]|\.\d)")
_NUMBER_ANY = re.compile(r"[+\-−]?\d+(?:\.\d+)?(?:[eE][+\-−]?\d+)?")
_UNIT_AFTER = re.compile(r"\s*(s|min|h|hours?|core-hours|GiB|MiB|GB|MB)\b")
_OPTION_BEFORE = re.compile(
    r"(?:\blr|learning rate|\beps|momentum|weight decay)\s*(?:=|of)?\s*$", re.I)


def _read(rel: str) -> str:
  with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
    return f.read()


def _sections(rel: str) -> list[tuple[str, str]]:
  """(heading, body) of each `##` section of `rel` (README: its "## Results" section only)."""
  text = _FENCE.sub("", _read(rel))
  parts = re.split(r"^(## .*)$", text, flags=re.M)
  sections = [("(top)", parts[0])] + list(zip(parts[1::2], parts[2::2]))
  if rel == "README.md":
    sections = [s for s in sections if s[0].strip() == "## Results"]
    assert sections, "README.md has no '## Results' section"
  return sections


def _cited_folders(rel: str, body: str) -> set[str]:
  """Repository-relative folders under experiments/ that the section's links cite."""
  base = os.path.dirname(rel)
  out = set()
  for _, target in _LINK.findall(_CODE_SPAN.sub("", body)):
    if re.match(r"^[a-z]+:", target) or target.startswith("#"):
      continue
    path = os.path.normpath(os.path.join(base, target.split("#")[0]))
    if not path.startswith("experiments" + os.sep) and path != "experiments":
      continue
    if os.path.basename(path) in _HAND_WRITTEN:
      continue
    full = os.path.join(ROOT, path)
    out.add(path if os.path.isdir(full) else os.path.dirname(path))
  return out


def _generated_files(folder: str) -> list[str]:
  found = []
  for pattern in ("**/*.md", "**/*.txt", "**/*.log", "**/results.csv"):
    found += glob.glob(os.path.join(ROOT, folder, pattern), recursive=True)
  return sorted(p for p in set(found) if os.path.basename(p) not in _HAND_WRITTEN)


def _roundings(token: str, scale: int = 1) -> set[str]:
  """`token` (a number as written) rounded half-up and half-even to each of 0..its decimals."""
  try:
    value = abs(decimal.Decimal(token.replace("−", "-"))) * scale
  except decimal.InvalidOperation:
    return set()
  if not value.is_finite():
    return set()
  places = max(0, -value.as_tuple().exponent) if "e" not in token.lower() else 8
  out = set()
  for d in range(0, min(places, 8) + 1):
    q = decimal.Decimal(1).scaleb(-d)
    for mode in (decimal.ROUND_HALF_UP, decimal.ROUND_HALF_EVEN):
      out.add(f"{value.quantize(q, rounding=mode):f}")
  return out


_POOL_CACHE: dict[str, frozenset[str]] = {}


def _pool(folder: str) -> frozenset[str]:
  """Every number of the folder's generated files, at every precision it can be quoted with."""
  if folder not in _POOL_CACHE:
    pool: set[str] = set()
    for path in _generated_files(folder):
      text = open(path, encoding="utf-8").read()
      csv_file = path.endswith(".csv")
      for token in _NUMBER_ANY.findall(text):
        pool |= _roundings(token)
        if csv_file:
          pool |= _roundings(token, scale=100)
    _POOL_CACHE[folder] = frozenset(pool)
  return _POOL_CACHE[folder]


def _quoted_numbers(body: str) -> list[tuple[str, str]]:
  """(number, context) for each result-like number of the section's prose."""
  prose = _CODE_SPAN.sub(" ", re.sub(r"<!--.*?-->", "", body, flags=re.S))
  prose = _LINK.sub(lambda m: m.group(1) + "()", prose)
  margins = {f"{100 * stats.EQUIVALENCE_MARGIN_ACCURACY:.2f}", f"{stats.EQUIVALENCE_MARGIN_MSE:.2f}"}
  out = []
  for m in _NUMBER.finditer(prose):
    number = m.group(2)
    before, after = prose[:m.start()], prose[m.end():]
    if before.endswith("±") and number in margins:
      continue
    if _UNIT_AFTER.match(after) or _OPTION_BEFORE.search(before[-20:]):
      continue
    if number in _NOT_RESULTS:
      continue
    context = prose[max(0, m.start() - 50):m.end() + 20].replace("\n", " ")
    out.append((number, context))
  return out


def _cases():
  for rel in _DOCS:
    for heading, body in _sections(rel):
      yield pytest.param(rel, heading, body, id=f"{rel}:{heading[:50]}")


@pytest.mark.parametrize("rel,heading,body", list(_cases()))
def test_quoted_numbers_occur_in_the_cited_outputs(rel, heading, body):
  quoted = _quoted_numbers(heading + "\n" + body)
  if not quoted:
    return
  folders = _cited_folders(rel, heading + "\n" + body)
  assert folders, (
      f"{rel}, section {heading!r}, quotes {len(quoted)} results (e.g. {quoted[0][1]!r}) but "
      "links no generated report under experiments/: link the report the numbers come from.")
  pool = frozenset().union(*(_pool(f) for f in folders))
  missing = [f"{n}  in  ...{ctx}..." for n, ctx in quoted if n not in pool]
  assert not missing, (
      f"{rel}, section {heading!r}: these numbers are in none of the generated files it cites "
      f"({', '.join(sorted(folders))}); quote the number the report has, cite the report that "
      "has it, or drop the number:\n  " + "\n  ".join(missing))


def test_the_rule_finds_stale_numbers():
  """A number a report does not have fails; the same number rounded from the report passes."""
  body = ("[report](experiments/all_torch_10seeds/report.md): test MSE 0.0654 and 97.18%, "
          "lr 0.1, ±0.50 points, 12.5 min, `--lr=0.33`; stale: 97.99999.")
  quoted = [n for n, _ in _quoted_numbers(body)]
  assert quoted == ["0.0654", "97.18", "97.99999"]
  pool = _pool("experiments/all_torch_10seeds")
  assert "0.0654" in pool and "97.18" in pool and "97.99999" not in pool
  assert _cited_folders("README.md", body) == {"experiments/all_torch_10seeds"}
