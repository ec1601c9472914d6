"""The documents: the generated flag reference is current, links resolve, commands exist.

docs/flags.md must equal `python -m jaxact.flagdoc`'s output (generated from
the option declarations, jaxact/study/options.py). Every relative link of the project's
documents must point to an existing file (and, for a `#fragment` into a
Markdown file, to one of its headings), and every `python -m jaxact.<module>`
command they show may use only flags that module defines.
"""

import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS_MD = os.path.join(ROOT, "docs", "flags.md")


def _documents() -> list[str]:
  """The Markdown documents whose links and commands are checked, repository-relative."""
  paths = ["README.md", "BUILD_NOTES.md", "experiments/README.md"]
  paths += sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
  paths += sorted(os.path.relpath(p, ROOT)
                  for p in glob.glob(os.path.join(ROOT, "benchmarks", "*.md")))
  return [p for p in paths if os.path.exists(os.path.join(ROOT, p))]


def _read(rel: str) -> str:
  with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
    return f.read()


_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HTML_LINK = re.compile(r"""(?:href|src)\s*=\s*["']([^"']+)["']""")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def _prose(text: str) -> str:
  """`text` without fenced code blocks and inline code spans (links there are not links)."""
  text = _FENCE.sub("", text)
  text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
  return _CODE_SPAN.sub("", text)


def _slug(heading: str) -> str:
  """GitHub's anchor of a heading: markup dropped, lower case, punctuation removed, spaces to -."""
  text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)   # links keep their text
  text = text.replace("`", "").replace("*", "")
  text = re.sub(r"[^\w\- ]", "", text.lower())
  return text.replace(" ", "-")


def _anchors(rel: str) -> set[str]:
  seen: dict[str, int] = {}
  out = set()
  for heading in _HEADING.findall(_FENCE.sub("", _read(rel))):
    slug = _slug(heading)
    n = seen.get(slug, 0)
    seen[slug] = n + 1
    out.add(slug if n == 0 else f"{slug}-{n}")
  return out


def _links(rel: str) -> list[str]:
  prose = _prose(_read(rel))
  return _LINK.findall(prose) + _HTML_LINK.findall(prose)


def test_flags_md_is_generated_from_the_flags():
  proc = subprocess.run([sys.executable, "-m", "jaxact.cli.flagdoc"], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr
  current = _read(os.path.relpath(FLAGS_MD, ROOT)) if os.path.exists(FLAGS_MD) else ""
  assert current == proc.stdout, (
      "docs/flags.md is not what the option declarations give (an option was added, removed "
      "or changed): regenerate it from the repository root with "
      "`python -m jaxact.flagdoc > docs/flags.md` and commit the result.")


def test_flagdoc_groups_every_flag_once():
  from jaxact.cli import flagdoc
  from jaxact.study import options
  from jaxact.study import presets  # pylint: disable=g-import-not-at-top
  text = flagdoc.render()
  study_part, place_part = text.split("## Options that change only speed")
  for option in presets.command_line():
    row = f"| `--{option.name}` |"
    assert text.count(row) == 1, option.name
    assert (row in study_part) == (option.group in flagdoc.STUDY_GROUPS), option.name
  assert "`--seeds`" in study_part and "`--workdir`" in place_part
  assert "`--b1`" not in text and not options.get("b1").flag   # the Python API's only
  toy = options.Option("toy", "run", "x | y\n z", options.BOOL, default=False)
  assert "| `--toy` | `false` | x \\| y z |" in flagdoc.render([toy])


@pytest.mark.parametrize("rel", _documents())
def test_relative_links_resolve(rel):
  base = os.path.dirname(os.path.join(ROOT, rel))
  broken = []
  for target in _links(rel):
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):   # http:, https:, mailto: ...
      continue
    path, _, fragment = target.partition("#")
    full = os.path.normpath(os.path.join(base, path)) if path else os.path.join(ROOT, rel)
    if not os.path.exists(full):
      broken.append(f"{target} (no file {os.path.relpath(full, ROOT)})")
    elif fragment and full.endswith(".md") and fragment not in _anchors(
        os.path.relpath(full, ROOT)):
      broken.append(f"{target} (no heading #{fragment} in {os.path.relpath(full, ROOT)})")
  assert not broken, f"{rel}: broken links: " + "; ".join(broken)


def _defined_flags(module: str) -> set[str]:
  """The flags `python -m module` takes: its DEFINE_* calls, or for a command module
  (jaxact/report.py, ...) those of the module it runs; jaxact.main's are generated from the
  option declarations."""
  with open(os.path.join(ROOT, *module.split(".")) + ".py", encoding="utf-8") as f:
    text = f.read()
  names = set(re.findall(r"DEFINE_\w+\(\s*[\"'](\w+)[\"']", text))
  if "the command of" in text:
    for implementation in re.findall(r"^from (jaxact\.[\w.]+) import run$", text, flags=re.M):
      names |= _defined_flags(implementation)
  if module == "jaxact.cli.main":
    from jaxact.study import presets  # pylint: disable=g-import-not-at-top
    names |= {o.name for o in presets.command_line() if o.flag}
  return names


def _commands(rel: str) -> list[tuple[str, str]]:
  """(module, the rest of the command line) of every `python -m jaxact.X` / `benchmarks.X`."""
  text = _read(rel)
  pieces = [m.group(0) for m in _FENCE.finditer(text)]
  pieces += [m.group(2) for m in _CODE_SPAN.finditer(_FENCE.sub("", text))]
  out = []
  for piece in pieces:
    piece = piece.replace("\\\n", " ")
    for m in re.finditer(r"-m\s+((?:jaxact|benchmarks)(?:\.\w+)+)([^\n`]*)", piece):
      rest = re.split(r"&&|;|\||#", m.group(2))[0]
      out.append((m.group(1), rest))
  return out


@pytest.mark.parametrize("rel", _documents())
def test_commands_use_existing_modules_and_flags(rel):
  problems = []
  for module, rest in _commands(rel):
    if not os.path.exists(os.path.join(ROOT, *module.split(".")) + ".py"):
      problems.append(f"no module {module}")
      continue
    if not module.startswith("jaxact."):
      continue
    known = _defined_flags(module)
    for name in re.findall(r"(?<![\w-])--([a-z][a-z0-9_]*)", rest):
      if name not in known and not (name.startswith("no") and name[2:] in known):
        problems.append(f"python -m {module} has no flag --{name}")
  assert not problems, f"{rel}: " + "; ".join(sorted(set(problems)))
