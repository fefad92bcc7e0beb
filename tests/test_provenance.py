"""Every number says where it comes from: results.json records the hashes of the weights, the evaluated item list,
the prompt file and the report section rule; `reclf report` lists them and shows the published numbers of the real
protocols beside ours, each with its source."""

import argparse
import hashlib
import json

import torch

from helpers.eval_stub import StubModel, make_folder
from reclf.data.prompts import load_prompts
from reclf.data.studies import read_studies
from reclf.evaluate import report as report_cli
from reclf.evaluate.common import section_rule_sha256
from reclf.evaluate.loading import wrap_model
from reclf.evaluate.provenance import PROTOCOLS, PUBLISHED
from reclf.evaluate.results import write_results
from reclf.evaluate.stats import Estimate
from reclf.evaluate.tasks.zeroshot import ZeroShotConfig, run_zeroshot
from reclf.utils.io import file_sha256


def test_results_record_the_provenance_hashes(tmp_path):
    torch.manual_seed(0)
    data = make_folder(tmp_path / "data", n=10)
    (data / "images" / "s4.png").write_bytes(b"corrupt")  # not evaluated: not in the item list
    loaded = wrap_model(StubModel())
    loaded.sha256 = "ab" * 32
    run_zeroshot(loaded, data, tmp_path / "zs", ZeroShotConfig(prompts="chexpert", prompts_per_class=2, n_boot=10))
    saved = json.loads((tmp_path / "zs" / "results.json").read_text())
    prov = saved["provenance"]
    ids = [s for s in read_studies(data)["study_id"] if s != "s4"]
    assert prov["model_weights"] == "ab" * 32
    assert prov["split_list"] == hashlib.sha256("\n".join(ids).encode()).hexdigest()
    assert prov["prompt_file"] == file_sha256(load_prompts("chexpert").path)
    assert prov["section_rule"] == section_rule_sha256(["findings", "impression"])
    assert section_rule_sha256(["impression"]) != prov["section_rule"]  # another rule, another hash


def test_report_lists_provenance_and_the_published_numbers(tmp_path, capsys):
    def result(task, sources, metrics, label):
        from reclf.evaluate.results import TaskResult

        r = TaskResult(task, {k: Estimate(v, v - 0.01, v + 0.01, 100) for k, v in metrics.items()}, {},
                       {"label": label, "sha256": "cd" * 32, "section_rule_sha256": "ef" * 32},
                       {"path": "x", "sources": sources, "split_list_sha256": "12" * 32}, [0])
        write_results(r, tmp_path / "runs" / label / task)

    result("linear", ["chexpert"], {"1%/auroc": 0.8, "10%/auroc": 0.85, "100%/auroc": 0.9}, "reclf:chx")
    result("linear", ["covidx:cohen", "covidx:rsna"], {"1%/accuracy": 0.7}, "reclf:covidx")
    result("linear", ["synthcxr"], {"1%/auroc": 0.99}, "reclf:synth")  # not a real protocol: not compared
    parser = argparse.ArgumentParser()
    report_cli.add_arguments(parser)
    report_cli.run(parser.parse_args([str(tmp_path / "runs"), "--out", str(tmp_path / "rep"), "--samples", "0"]))
    assert "cdcdcdcdcdcd" in capsys.readouterr().out
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "## provenance" in text and "| 121212121212 |" in text and "efefefefefef" in text
    section = text.split("## published numbers on the same protocols")[1].split("\n## ")[0]
    row = ("| Linear probe CheXpert (5 labels), macro AUROC, 1% labels | reclf:chx: 80.0 [79.0, 81.0] "
           "| 86.6 [1] | — | — |")
    assert row in section
    assert "Linear probe COVIDx, accuracy, 1% labels | reclf:covidx: 70.0" in section
    assert "reclf:synth" not in section and "[1] 'Enhancing representation" in section


def test_every_published_number_names_its_protocol_and_source():
    names = {p.name for p in PROTOCOLS}
    for pub in PUBLISHED:
        assert pub.protocol in names and "Table" in pub.source
