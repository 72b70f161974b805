"""The public Python API works any number of times in one process.

`sparc_eval.evaluate` once shared its name with a submodule: the first call imported the submodule, which then
replaced the function, and the second call raised "'module' object is not callable". Scripts score several tasks.
"""

from __future__ import annotations

import inspect
import json

import torch

import sparc_eval


def test_evaluate_and_load_model_work_again_and_again(tiny_sparc_ckpt, synth_data_dir, tmp_path):
    out = tmp_path / "results"
    common = {"out": out, "data_dir": synth_data_dir, "limit": 8}
    first = sparc_eval.evaluate(str(tiny_sparc_ckpt), "synth-cls", **common)
    second = sparc_eval.evaluate(str(tiny_sparc_ckpt), "synth-retrieval", **common)
    again = sparc_eval.evaluate(str(tiny_sparc_ckpt), "synth-cls", **common)  # reused: nothing changed
    assert inspect.isfunction(sparc_eval.evaluate) and inspect.isfunction(sparc_eval.load_model)
    assert (first.task["name"], second.task["name"]) == ("synth-cls", "synth-retrieval")
    assert again.metric_values() == first.metric_values() and set(first.metric_values()) >= {"top1", "top5"}
    on_disk = {json.loads(p.read_text())["task"]["name"] for p in out.rglob("*.record.json")}
    assert on_disk == {"synth-cls", "synth-retrieval"}

    images = torch.rand(2, 3, 64, 64)
    embeddings = [sparc_eval.load_model(str(tiny_sparc_ckpt)).encode_image(images) for _ in range(2)]
    assert embeddings[0].shape == (2, embeddings[0].shape[1])
    assert torch.equal(embeddings[0], embeddings[1])  # the same weights, loaded twice
    assert torch.allclose(embeddings[0].norm(dim=-1), torch.ones(2), atol=1e-5)
