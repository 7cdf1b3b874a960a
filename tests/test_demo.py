"""`shortcut demo` end to end at a tiny budget: both runs, the table, the checks, the files."""
import json

from shortcut.cli import main
from shortcut.demo import demo_configs


def test_demo_configs_differ_only_in_the_objective(tmp_path):
    runs = demo_configs(str(tmp_path))
    sc, fm = runs["shortcut"].to_dict(), runs["flow"].to_dict()
    assert sc["objective"]["objective"] == "shortcut" and fm["objective"]["objective"] == "flow"
    assert sc["objective"]["bootstrap_fraction"] == 0.25
    same = {k for k in sc if sc[k] == fm[k]}
    assert set(sc) - same == {"objective", "out_dir", "targets"}   # flow items never use the target network


def test_demo_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SHORTCUT_CACHE", str(tmp_path / "cache"))
    main(["demo", "--out-dir", str(tmp_path), "--steps", "3", "--per-class", "2"])
    out = capsys.readouterr().out
    assert "| steps | shortcut accuracy | shortcut fd | flow accuracy | flow fd |" in out
    assert "| 128 |" in out and "1-step FD <= 2x 128-step FD" in out
    result = json.load(open(tmp_path / "demo_results.json"))
    assert [r["steps"] for r in result["results"]["flow"]] == [1, 2, 4, 8, 16, 32, 64, 128]
    assert (tmp_path / "demo_samples.png").exists()
    assert (tmp_path / "shortcut" / "checkpoint.pt").exists() and (tmp_path / "flow" / "checkpoint.pt").exists()
