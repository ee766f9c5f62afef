"""--json prints one JSON document on stdout and nothing else; --quiet drops progress bars and messages, never errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cxrkit.cli import main


def _json(capsys, argv: list[str], status: int = 0) -> dict:
    assert main(argv) == status
    out = capsys.readouterr().out
    return json.loads(out)  # the whole of stdout is one document


def test_models_json(capsys):
    doc = _json(capsys, ["models", "--json"])
    by_name = {m["name"]: m for m in doc["models"]}
    assert by_name["cnn"]["parameters"] > 100_000 and isinstance(by_name["cnn"]["parameters"], int)
    assert "description" in by_name["pasa"]


def test_predict_json_one_file_and_a_folder(tiny_run, binary_data, tmp_path, capsys):
    one = next((binary_data / "test" / "tb").glob("*.png"))
    doc = _json(capsys, ["predict", str(tiny_run), str(one), "--json"])
    assert doc["model"]["id"] == tiny_run.name and len(doc["model"]["version"]) == 12
    # one id for the model in one document: the rows' and the header's differed (weights alone against weights + decision rule)
    assert {r["model"] for r in doc["results"]} == {doc["model"]["version"]}, doc["model"]
    (r,) = doc["results"]
    assert r["path"] == str(one) and r["error"] is None
    assert r["prob_healthy"] + r["prob_tb"] == pytest.approx(1, abs=1e-5) and r["prediction"] in ("healthy", "tb")

    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in list((binary_data / "test" / "healthy").glob("*.png"))[:3]:
        shutil.copy(p, folder)
    (folder / "broken.png").write_bytes(b"not a png")
    doc = _json(capsys, ["predict", str(tiny_run), str(folder), "--json"])
    rows = {Path(r["path"]).name: r for r in doc["results"]}
    assert len(rows) == 4 and rows["broken.png"]["error"] and rows["broken.png"]["prob_tb"] is None
    assert sum(r["error"] is None for r in rows.values()) == 3


def test_predict_json_unreadable_single_file_still_json(tiny_run, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    doc = _json(capsys, ["predict", str(tiny_run), str(bad), "--json"], status=1)
    assert doc["results"][0]["error"]


def test_evaluate_and_audit_json(tiny_run, binary_data, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    doc = _json(capsys, ["evaluate", str(run), str(binary_data), "--split", "test", "--explain", "none", "--json"])
    m = doc["metrics"]
    assert doc["split"] == "test" and m["n"] == 30
    assert 0 <= m["metrics"]["roc_auc"]["value"] <= 1 and len(m["metrics"]["sensitivity"]["ci"]) == 2
    assert m["confusion"] == json.loads((run / "metrics.json").read_text())["test"]["confusion"]
    bins = m["calibration"]["model"]["bins"]  # empty bins: NaN in metrics.json, null here (strict JSON has no NaN)
    assert all(o is None for o, c in zip(bins["observed"], bins["count"]) if c == 0)

    doc = _json(capsys, ["audit", str(binary_data), "--out", str(tmp_path / "audit"), "--json"])
    assert doc["audit"]["n_files"] == 120 and "leakage" in doc["audit"]["verdict"] and doc["messages"]
    assert Path(doc["out"], "audit.json").is_file()


def test_quiet_keeps_results_and_errors_only(tiny_run, binary_data, capsys):
    assert main(["predict", str(tiny_run), str(binary_data / "test"), "--quiet"]) == 0
    cap = capsys.readouterr()
    lines = cap.out.strip().splitlines()
    assert lines[0].startswith("path,") and len(lines) == 31  # the CSV and nothing else
    assert "predicting" not in cap.err and "%|" not in cap.err  # no progress bar

    assert main(["audit", str(binary_data), "--quiet", "--out", str(binary_data.parent / "audit-quiet")]) == 0
    cap = capsys.readouterr()
    audit = json.loads((binary_data.parent / "audit-quiet" / "audit.json").read_text())
    # The findings are the result: --quiet printed nothing at all ("only results", the help said).
    assert [line[2:] for line in cap.out.splitlines()] == audit["messages"] and "%|" not in cap.err and "written to" not in cap.out

    run = binary_data.parent / "quiet-run"
    shutil.copytree(tiny_run, run, dirs_exist_ok=True)
    assert main(["evaluate", str(run), "--split", "val", "--explain", "none", "--quiet"]) == 0
    cap = capsys.readouterr()
    assert cap.out.lstrip().startswith("validation split (") and "ROC-AUC" in cap.out and "updated in" not in cap.out

    assert main(["predict", str(tiny_run), str(binary_data / "nowhere"), "--quiet", "--json"]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err.startswith("error: ") and len(cap.err.strip().splitlines()) == 1


def test_every_help_text_reads_cleanly():
    import argparse

    from cxrkit.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert len(subparsers.choices) >= 15
    for name, sub in subparsers.choices.items():
        text = sub.format_help()
        assert "%%" not in text and "%(" not in text, f"cxrkit {name} --help prints a raw format sequence"
