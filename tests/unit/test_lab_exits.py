"""A lab daemon that exits while the lab comes up is reported with its log's last line."""

from __future__ import annotations

from pathlib import Path

from cluster.lab.base import last_line


def test_last_line_is_the_logs_last_line(tmp_path: Path) -> None:
    log = tmp_path / "keyd-1.log"
    log.write_text("starting\n" + "x" * 5000 + "\nkeyd: cannot bind 192.0.2.1:500: in use\n\n")
    assert last_line(log) == "keyd: cannot bind 192.0.2.1:500: in use"


def test_last_line_of_a_missing_or_empty_log_is_empty(tmp_path: Path) -> None:
    assert last_line(tmp_path / "none.log") == ""
    (tmp_path / "empty.log").write_text("")
    assert last_line(tmp_path / "empty.log") == ""


def test_last_line_is_bounded(tmp_path: Path) -> None:
    log = tmp_path / "long.log"
    log.write_text("y" * 3000 + "\n")
    assert len(last_line(log)) == 300
