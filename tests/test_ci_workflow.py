"""The GitHub Actions job the README shows ships as a file, identical to the README's copy."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "release-gate.yml"


def _readme_yaml_blocks() -> list[str]:
    return re.findall(r"^```yaml\n(.*?)^```$", (ROOT / "README.md").read_text(), re.M | re.S)


def test_readme_shows_the_shipped_workflow_verbatim():
    assert WORKFLOW.read_text() in _readme_yaml_blocks(), (
        f"README.md's ```yaml block and {WORKFLOW.relative_to(ROOT)} differ: change both")


def _structure(text: str) -> dict:
    """Keys by indentation, for the block-style YAML subset a workflow uses; raises on what a
    YAML parser would reject (tabs, odd indentation, a line that is neither key nor list item)."""
    top, block_indent = {}, None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip(" "))
        if block_indent is not None and indent >= block_indent:
            continue  # inside a `|` block scalar
        block_indent = None
        assert "\t" not in line and indent % 2 == 0, f"line {number}: bad indentation"
        body = line.strip()
        item = body.startswith("- ")
        m = re.fullmatch(r"([A-Za-z_][\w-]*):(?: (.*))?", body[2:] if item else body)
        assert m or item, f"line {number}: neither 'key: value' nor '- item': {body!r}"
        if m and (m.group(2) or "").strip() in ("|", ">"):
            block_indent = indent + 2 + (2 if item else 0)
        if indent == 0 and m:
            top[m.group(1)] = m.group(2)
    return top


def test_workflow_is_well_formed_and_runs_the_makefile_targets():
    text = WORKFLOW.read_text()
    try:
        import yaml
    except ImportError:
        yaml = None
    if yaml is not None:
        data = yaml.safe_load(text)
        steps = data["jobs"]["compress-and-gate"]["steps"]
        assert all("run" in s or "uses" in s for s in steps)
    top = _structure(text)
    assert set(top) == {"name", "on", "jobs"}
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, re.M))
    used = set(re.findall(r"run: make (\w+)", text))
    assert used and used <= targets, f"the workflow runs make targets the Makefile lacks: {used - targets}"
    for var in re.findall(r"\b([A-Z_]+)=", " ".join(re.findall(r"run: make \w+ (.*)", text))):
        assert re.search(rf"^{var} \?=", makefile, re.M), f"Makefile has no variable {var}"


@pytest.mark.parametrize("bad", ["a:\n\tb: 1\n", "a:\n   b: 1\n", "a:\n  just words\n"])
def test_structure_check_rejects_malformed_yaml(bad):
    with pytest.raises(AssertionError):
        _structure(bad)
