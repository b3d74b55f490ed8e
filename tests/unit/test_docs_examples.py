"""The exporter configs shown in the docs are valid: every YAML block tagged `<!-- config-check -->` in
docs/remediation.md passes `--config.check`, with its host paths mapped into a temporary folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from exporter.cli import main

DOCS = Path(__file__).resolve().parents[2] / "docs"
TAGGED = re.compile(r"<!-- config-check -->\n```yaml\n(.*?)\n```", re.S)
#: host paths the examples use, mapped so the check can read token files and create the audit log's folder
HOST_DIRS = ("/etc/docker-image-exporter/", "/var/lib/docker-image-exporter/")


def tagged_blocks(page: str) -> list[str]:
    return TAGGED.findall((DOCS / page).read_text())


def test_remediation_page_tags_its_config_examples() -> None:
    assert len(tagged_blocks("remediation.md")) >= 2


@pytest.mark.parametrize("index", range(len(tagged_blocks("remediation.md"))))
def test_remediation_examples_pass_config_check(index: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    block = tagged_blocks("remediation.md")[index]
    for host_dir in HOST_DIRS:
        block = block.replace(host_dir, f"{tmp_path}/")
    (tmp_path / "token").write_text("s3cret-token\n")
    (tmp_path / "registry-auth.json").write_text('{"auths": {}}\n')
    config = tmp_path / "config.yml"
    config.write_text(block)
    assert main(["--config.file", str(config), "--config.check"]) == 0, capsys.readouterr().err
