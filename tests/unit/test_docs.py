"""Every command and path that README.md and docs/*.md name exists: relative links (and their
#anchors), repository paths in code, `grpokit <command>` sub-commands (read from the CLI's own
--help at test time) and `make <target>` targets; every grpokit key docs/from-trl.md names is a
config key."""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
IDS = [str(p.relative_to(ROOT)) for p in DOCS]

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
INLINE = re.compile(r"(`+)(.+?)\1", re.S)
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
REPO_PATH = re.compile(r"(?<![\w./$~-])((?:configs|docs|bench|scripts|examples|tests)/[^\s`'\"()\[\],;]*)")
GRPOKIT_CMD = re.compile(r"(?<![\w.-])grpokit[ \t]+([a-z][\w-]*)(?:[ \t]+([a-z][a-z_-]*)(?=[\s`]|$))?")
MAKE_TARGET = re.compile(r"(?<![\w.-])make[ \t]+([a-z][\w-]*)")

FILE_SUFFIXES = {"json", "jsonl", "yaml", "md", "py", "html", "png", "pt"}

# Paths that name a family of files, not one file; each is skipped for the reason given.
PLACEHOLDERS = {
    "tests/unit/test_<module>.py": "the test file of each module, by the module's name",
}


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _code(text: str) -> list[str]:
    """The fenced blocks and the inline code spans outside them."""
    blocks = [m.group(0) for m in FENCE.finditer(text)]
    prose = FENCE.sub("", text)
    return blocks + [m.group(2) for m in INLINE.finditer(prose)]


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


@functools.cache
def _anchors(path: Path) -> frozenset[str]:
    anchors, counts = set(), {}
    for line in FENCE.sub("", _text(path)).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = _slug(m.group(1))
            counts[slug] = counts.get(slug, 0) + 1
            anchors.add(slug if counts[slug] == 1 else f"{slug}-{counts[slug] - 1}")
    return frozenset(anchors)


@pytest.mark.parametrize("doc", DOCS, ids=IDS)
def test_relative_links_exist(doc: Path) -> None:
    bad = []
    for target in LINK.findall(FENCE.sub("", _text(doc))):
        if re.match(r"[a-z][a-z+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not bad, f"{doc.relative_to(ROOT)}: " + "; ".join(bad)


@pytest.mark.parametrize("doc", DOCS, ids=IDS)
def test_repository_paths_exist(doc: Path) -> None:
    bad = []
    for code in _code(_text(doc)):
        for path in REPO_PATH.findall(code):
            path = path.rstrip(".:")
            if path in PLACEHOLDERS or "*" in path:  # a glob names no one file
                continue
            if not (ROOT / path).exists():
                bad.append(path)
    assert not bad, f"{doc.relative_to(ROOT)} names paths that do not exist: {sorted(set(bad))}"


@functools.cache
def _subcommands(*command: str) -> frozenset[str]:
    """The sub-commands the CLI's argparse help lists after `grpokit *command`."""
    out = subprocess.run([sys.executable, "-m", "grpokit.cli", *command, "--help"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    m = re.search(r"\{([\w,-]+)\}", out.stdout)
    return frozenset(m.group(1).split(",")) if m else frozenset()


@pytest.mark.parametrize("doc", DOCS, ids=IDS)
def test_grpokit_commands_exist(doc: Path) -> None:
    commands = _subcommands()
    assert {"train", "eval"} <= commands, f"could not read the sub-commands: {commands}"
    bad = []
    for code in _code(_text(doc)):
        for command, sub in GRPOKIT_CMD.findall(code):
            if command not in commands:
                bad.append(command)
            elif sub and _subcommands(command) and sub not in _subcommands(command):
                bad.append(f"{command} {sub}")
    assert not bad, f"{doc.relative_to(ROOT)} names no such grpokit command: {sorted(set(bad))}"


def _make_targets() -> set[str]:
    targets = set()
    for line in (ROOT / "Makefile").read_text().splitlines():
        m = re.match(r"^([\w. -]+?)\s*::?(?!=)", line)
        if m and not line.startswith("\t"):
            targets.update(m.group(1).split())
    return targets


@pytest.mark.parametrize("doc", DOCS, ids=IDS)
def test_make_targets_exist(doc: Path) -> None:
    targets = _make_targets()
    bad = [t for code in _code(_text(doc)) for t in MAKE_TARGET.findall(code) if t not in targets]
    assert not bad, f"{doc.relative_to(ROOT)} names no such make target: {sorted(set(bad))}"


def _config_keys(cls: type, prefix: str = "") -> set[str]:
    """Every dotted key of the config tree, sections included."""
    keys = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        keys.add(key)
        if dataclasses.is_dataclass(hints[f.name]):
            keys |= _config_keys(hints[f.name], key + ".")
    return keys


@pytest.mark.parametrize("name", ["README.md", "docs/from-trl.md"])
def test_config_keys_in_code_exist(name: str) -> None:
    from grpokit.config import Config

    keys = _config_keys(Config)
    sections = "|".join(f.name for f in dataclasses.fields(Config))
    key = re.compile(rf"(?<![\w./-])((?:{sections})\.[a-z_]+(?:\.[a-z_]+)*)")
    named = {k for code in _code(_text(ROOT / name)) for k in key.findall(code)
             if k.rsplit(".", 1)[1] not in FILE_SUFFIXES}  # eval.json is a file of the run folder
    assert len(named) > 5, f"no config keys read from {name}: {sorted(named)}"
    bad = sorted(named - keys)
    assert not bad, f"{name} names keys the config does not have: {bad}"


def test_from_trl_config_loads(tmp_path: Path) -> None:
    from grpokit.config import load_config

    text = _text(ROOT / "docs" / "from-trl.md")
    yaml_block = re.search(r"```yaml\n# len\.yaml\n(.*?)```", text, re.S)
    assert yaml_block, "docs/from-trl.md lost its len.yaml block"
    (tmp_path / "len.yaml").write_text(yaml_block.group(1))
    cfg = load_config(tmp_path / "len.yaml")
    assert (cfg.rollout.prompts_per_step, cfg.rollout.group_size) == (8, 8)
    assert cfg.algo.aggregation == "seq_mean_token_mean" and cfg.algo.beta == 0.04


def test_from_trl_grpokit_side_runs(tiny_model_dir, tmp_path, monkeypatch):
    """The grpokit side of docs/from-trl.md, as printed, on a tiny model for one step: the
    function passed from Python scores every completion."""
    import yaml

    import grpokit

    if not hasattr(grpokit, "train"):
        pytest.skip("grpokit.train is not in this checkout")
    text = _text(ROOT / "docs" / "from-trl.md")
    config = yaml.safe_load(re.search(r"```yaml\n# len\.yaml\n(.*?)```", text, re.S).group(1))
    script = re.search(r"```python\n(import grpokit\n.*?)```", text, re.S).group(1)
    small = {"model": {"path": str(tiny_model_dir), "autocast": "off"},
             "rollout": {"prompts_per_step": 2, "group_size": 2, "max_new_tokens": 8},
             "train": {"steps": 1, "micro_batch_size": 4}, "eval": {"before_and_after": False},
             "log": {"report_to": [], "report": False}, "checkpoint": {"keep_last": 0}}
    for section, values in small.items():
        config.setdefault(section, {}).update(values)
    monkeypatch.chdir(tmp_path)
    Path("len.yaml").write_text(yaml.safe_dump(config))
    Path("problems.jsonl").write_text("".join(f'{{"prompt": "What is {a} + {a}?"}}\n'
                                              for a in range(1, 21)))
    namespace: dict = {}
    exec(compile(script, "from-trl.md", "exec"), namespace)  # noqa: S102 - the doc's own code
    result = namespace["result"]
    rows = [json.loads(line) for line in (Path(result.run_dir) / "metrics.jsonl").open()]
    assert len(rows) == 1 and rows[0]["reward/mean"] <= 0


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_the_docs_point_at_loads(path: Path) -> None:
    """configs/*.yaml, named throughout the docs, load with their task's arguments and rewards."""
    from grpokit.config import load_config
    from grpokit.data.base import load_task

    cfg = load_config(path)
    assert path.read_text().startswith("#"), f"{path.name} does not say at its top what it is"
    task = load_task(cfg.data.task, **cfg.data.task_args)
    assert task.train_rows and cfg.log.output_dir.startswith("runs/")
