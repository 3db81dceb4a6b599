"""Results written before a schema change still load and render; results from a newer trilemma are refused
with one line naming the version."""

import json
import shutil

import pyarrow.parquet as pq

from bench.results import RUN_SCHEMA_VERSION
from bench.summary import RunDoc
from tests.integration.conftest import ROOT, trilemma

V1 = ROOT / "tests" / "fixtures" / "results-v1" / "v1-sweep"  # a sim sweep written by the harness at run.json schema 1


def test_schema_1_results_render_with_their_free_text_warnings_read_as_data(tmp_path):
    res = tmp_path / "v1-sweep"
    shutil.copytree(V1, res)
    docs = [json.loads(p.read_text()) for p in res.glob("points/*/run.json")]
    assert {d["schema_version"] for d in docs} == {1} and RUN_SCHEMA_VERSION == 2
    texts = [w for d in docs for w in d["summary"]["warnings"]]
    assert texts and all(isinstance(w, str) for w in texts)
    for d in docs:  # strings read as warnings of code `text`, their text kept whole
        ws = RunDoc.model_validate(d).summary.warnings
        assert [w.text for w in ws] == d["summary"]["warnings"] and all(w.code == "text" for w in ws)
    p = trilemma("report", res, "--out", tmp_path / "rep", "--name", "old")
    md = (tmp_path / "rep" / "old" / "summary.md").read_text()
    assert p.returncode == 0 and "v1-sweep" in md and "20.00 req/s" in md, md  # every load passed: the knee is the top one
    k = trilemma("knee", res, "--no-plots")
    assert "v1-sweep" in k.stdout and "every tested load passed" in k.stdout.replace("\n", " "), k.stdout


def test_results_of_a_newer_schema_are_refused_in_one_line(tmp_path):
    res = tmp_path / "v1-sweep"
    shutil.copytree(V1, res)
    pt = next(res.glob("points/*/run.json"))
    doc = json.loads(pt.read_text())
    pt.write_text(json.dumps({**doc, "schema_version": RUN_SCHEMA_VERSION + 1}))
    p = trilemma("knee", res, "--no-plots", check=False)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert f"run.json schema {RUN_SCHEMA_VERSION + 1} is newer than this trilemma reads ({RUN_SCHEMA_VERSION}); upgrade trilemma" in p.stderr
    pt.write_text(json.dumps(doc))
    sj = res / "sweep.json"
    sj.write_text(json.dumps({**json.loads(sj.read_text()), "schema_version": 99}))
    p = trilemma("report", res, "--out", tmp_path / "rep", check=False)
    assert p.returncode != 0 and "Traceback" not in p.stderr and "sweep.json schema 99 is newer" in p.stderr, p.stderr
    sj.write_text((V1 / "sweep.json").read_text())
    rq = pt.parent / "requests.parquet"
    t = pq.read_table(rq)
    pq.write_table(t.replace_schema_metadata({"trilemma.record_schema": "9"}), rq)
    p = trilemma("compare", res, res, check=False)  # compare reads the requests themselves
    assert p.returncode != 0 and "Traceback" not in p.stderr and "request record schema 9 is newer" in p.stderr, p.stdout + p.stderr
