"""The analysis never merges, splits, drops or mislabels runs silently (issue 22, item 2):
one seed in two folders, results from before an upgrade, rows that share a label, and the
paper's numbers only beside the paper's configuration. Job folders fabricated as in
test_report.py."""

from __future__ import annotations

import json
import logging

import pytest

from posinfo.report import figures
from posinfo.report.cells import aggregate
from posinfo.report.collect import collect
from posinfo.report.tables import make_tables, to_markdown
from test_report import base_config, make_job, table_rows  # noqa: F401  (base_config: a fixture)


def _report(root):
    df = collect([root])
    cells = aggregate(df)
    return cells, to_markdown(make_tables(cells, df))


def test_one_seed_in_two_folders_is_counted_once_with_a_warning_naming_both(tmp_path, base_config, caplog):
    a = make_job(tmp_path / "s", base_config, seed=0, spc=0.5, folder="a")
    b = make_job(tmp_path / "s", base_config, seed=0, spc=0.5, folder="b,cache.memory=host")
    make_job(tmp_path / "s", base_config, seed=1, spc=0.7, folder="c")
    with caplog.at_level(logging.WARNING, logger="posinfo.report.cells"):
        cells, md = _report(tmp_path / "s")
    assert len(cells) == 1 and cells.n_ok.iloc[0] == 2 and cells.seeds.iloc[0] == [0, 1]  # seeds 0 and 1, not 0, 0, 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(a) in warnings[0] and str(b) in warnings[0] and "train.seed=0" in warnings[0]
    assert "Counted once: 1 job folder(s) repeat the run of another folder" in md and str(b) in md


def test_results_from_before_a_group_existed_share_the_cell_of_its_defaults(tmp_path, base_config):
    """Seed 1 written before the ``analysis`` group existed used its defaults: one cell, two runs."""
    old = make_job(tmp_path / "s", base_config, seed=1, spc=0.6, experiment="x")
    make_job(tmp_path / "s", base_config, seed=0, spc=0.5, experiment="x")
    res = json.loads((old / "result.json").read_text())
    del res["config"]["analysis"]
    (old / "result.json").write_text(json.dumps(res))
    cells, md = _report(tmp_path / "s")
    assert len(cells) == 1 and cells.n_ok.iloc[0] == 2 and cells.ci.iloc[0] == "seeds"
    assert [r[1] for r in table_rows(md, "x:")[2:]] == ["ours", "*paper T1*", "*floor*"]  # one row of ours


def test_no_table_row_hides_another_cell_with_the_same_label(tmp_path, base_config):
    """Two cells that differ only in a key one of them lacks (a preset's own key, say) both show,
    told apart by that key."""
    make_job(tmp_path / "s", base_config, spc=0.5, experiment="x", folder="plain")
    make_job(tmp_path / "s", base_config, spc=0.7, experiment="x", folder="knob", extra={"knob": 2})
    cells, md = _report(tmp_path / "s")
    rows = table_rows(md, "x:")
    ours = [r for r in rows[2:] if r[rows[0].index("source")] == "ours"]
    assert len(cells) == 2 and "knob" in rows[0]
    assert sorted(r[rows[0].index("hor SPC")].split(" ")[0] for r in ours) == [".500", ".700"]
    assert sorted(r[rows[0].index("knob")] for r in ours) == ["2.0", "–"]


@pytest.mark.parametrize("weights, extra, paper", [
    ("imagenet", {}, True),
    ("random", {}, False),  # a control: the paper never ran it
    ("/w/vgg16_imagenet.pth", {}, False),  # a file is just a file ...
    ("/w/vgg16_imagenet.pth", {"pretraining": "imagenet"}, True),  # ... unless the user says it is ImageNet's
])
def test_the_papers_numbers_stand_only_beside_the_papers_weights_in_tables_and_figures(
        tmp_path, base_config, monkeypatch, weights, extra, paper):
    import matplotlib.axes

    markers = []
    plot = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", lambda self, *a, **k: (markers.append(k.get("marker")), plot(self, *a, **k))[1])
    make_job(tmp_path / "s", base_config, predictions=False, backbone__weights=weights, extra=extra)
    make_job(tmp_path / "s", base_config, predictions=False, backbone__weights=weights, extra=extra,
             readout__standardize="channel")  # beyond the paper: never a paper row
    cells, md = _report(tmp_path / "s")
    assert ("*paper T1*" in md) is paper and md.count("*paper T") == int(paper)
    assert [f.path.name for f in figures.draw_all(cells, tmp_path / "figs")] == ["table1_spc_bars.png"]
    assert ("_" in markers) is paper
