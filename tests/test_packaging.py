"""The installed package: one top-level name, `export` and `serving` inside it."""

import os
import subprocess
import sys


def _probe(code, tmp_path):
    # Run from an empty directory so the source tree is not on sys.path.
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


def test_export_and_serving_are_not_top_level_modules(tmp_path):
    for name in ("export", "serving"):
        result = _probe(f"import {name}", tmp_path)
        assert result.returncode != 0
        assert f"No module named '{name}'" in result.stderr


def test_exporter_is_importable_under_the_package(tmp_path):
    result = _probe("import tf_softprompt.export as e; print(e.__name__)", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "tf_softprompt.export"
