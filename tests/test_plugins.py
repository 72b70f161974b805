"""Plugins: CONTRIBUTING.md's worked package, installed for real, runs each of its four kinds through the CLI.

The package's files are the code blocks of CONTRIBUTING.md that start with `# file: PATH`, so the page
cannot rot. It is installed the way pip installs a wheel: the package folder and a `*.dist-info` folder
(METADATA, entry_points.txt made from the page's pyproject.toml) on a folder put on the subprocess's
PYTHONPATH, where importlib.metadata finds it. A slow test also builds and installs it with pip.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, run_cli
from PIL import Image

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: import-linter brings tomli
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "CONTRIBUTING.md"
DIST = "sparc-eval-choice"
BLOCK = re.compile(r"^```(\w+)\n# file: (\S+)\n(.*?)^```", re.M | re.S)
GROUPS = {"sparc_eval.runners", "sparc_eval.readers", "sparc_eval.loaders", "sparc_eval.objectives"}

# The choice dataset the test writes: solid-colour images, the true caption names the colour, the foil another.
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
ROWS = [("red", "blue"), ("green", "red"), ("blue", "yellow"), ("yellow", "green"), ("red", "green"), ("blue", "red")]
SEED = 3  # --ckpt seeded:tiny@3


def guide_files() -> dict[str, str]:
    return {path: code for _, path, code in BLOCK.findall(GUIDE.read_text(encoding="utf-8"))}


def write_dist_info(site: Path, name: str, version: str, entry_points: dict[str, dict[str, str]]) -> Path:
    """What pip writes for an installed distribution, as far as importlib.metadata reads it."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = [f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) for group, eps in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines))
    return info


def plugin_cli(site: Path, *args, env: dict | None = None):
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return run_cli(*args, env={"PYTHONPATH": path, **(env or {})})


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> dict[str, Path]:
    """The guide's package as source tree (`src`) and installed (`site`), plus a data folder for its card."""
    root = tmp_path_factory.mktemp("plugin")
    src, site, data = root / "src", root / "site", root / "data"
    for rel, code in guide_files().items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(code)
    (src / "sparc_eval_choice" / "__init__.py").write_text("")
    project = tomllib.loads((src / "pyproject.toml").read_text())["project"]
    site.mkdir()
    (site / "sparc_eval_choice").symlink_to(src / "sparc_eval_choice", target_is_directory=True)
    write_dist_info(site, project["name"], project["version"], project["entry-points"])

    folder = data / "colour-choice"
    (folder / "images").mkdir(parents=True)
    lines = []
    for i, (colour, foil) in enumerate(ROWS):
        Image.new("RGB", (24, 24), COLOURS[colour]).save(folder / "images" / f"{i}.png")
        lines.append(json.dumps({"image": f"images/{i}.png", "caption": f"a {colour} square", "foil": f"a {foil} square"}))
    (folder / "test.jsonl").write_text("\n".join(lines) + "\n")
    return {"src": src, "site": site, "data": data, "card": src / "cards" / "colour-choice.yaml"}


def test_the_guide_holds_the_whole_package():
    files = guide_files()
    assert {
        "pyproject.toml",
        "sparc_eval_choice/readers.py",
        "sparc_eval_choice/runner.py",
        "sparc_eval_choice/loaders.py",
        "sparc_eval_choice/objectives.py",
        "cards/colour-choice.yaml",
        "cards/my-flowers.yaml",
    } <= set(files)
    project = tomllib.loads(files["pyproject.toml"])["project"]
    assert project["name"] == DIST and set(project["entry-points"]) == GROUPS
    # The registries the guide names, where it says they are.
    from sparc_eval.data.registry import READERS
    from sparc_eval.models.loaders import LOADERS
    from sparc_eval.models.objectives import OBJECTIVES
    from sparc_eval.registry import ENTRY_POINT_GROUPS
    from sparc_eval.tasks.runner import RUNNERS

    assert set(ENTRY_POINT_GROUPS.values()) == GROUPS
    assert {r.group for r in (RUNNERS, READERS, LOADERS, OBJECTIVES)} == GROUPS


def test_plugins_lists_every_entry_with_its_distribution(plugin):
    result = plugin_cli(plugin["site"], "plugins", "--json", "--check")
    assert result.code == 0, result.stderr
    rows = {(r["kind"], r["name"]): r for r in json.loads(result.stdout)}
    ours = {k: r for k, r in rows.items() if r["source"] == DIST}
    assert set(ours) == {("runner", "caption-choice"), ("reader", "choice-jsonl"), ("loader", "seeded"), ("objective", "sigmoid")}
    assert all(r["version"] == "0.1.0" and not r["builtin"] for r in ours.values())
    assert rows[("runner", "classification")]["source"] == "sparc-eval" and rows[("runner", "classification")]["builtin"]
    assert rows[("loader", "seeded")]["target"] == "sparc_eval_choice.loaders:load_seeded"


def _hand_scores(data: Path) -> tuple[list[float], dict[str, float]]:
    """Margins and metrics of the choice task, from the same model built here, one image at a time."""
    from sparc_eval.models.sparc import create_model

    torch.manual_seed(SEED)
    model = create_model("tiny").eval()
    margins = []
    with torch.inference_mode():
        for i, (colour, foil) in enumerate(ROWS):
            image = model.preprocess(Image.open(data / "colour-choice" / "images" / f"{i}.png").convert("RGB"))
            img = model.encode_image(image[None])[0].double().numpy()
            texts = model.encode_text(model.tokenize([f"a photo of a {colour} square.", f"a photo of a {foil} square."]))
            true, wrong = texts.double().numpy()
            margins.append(float(img @ true - img @ wrong))
    accuracy = sum(m > 0 for m in margins) / len(margins)
    return margins, {"accuracy": accuracy, "margin": float(np.mean(margins)), "sha256": model.describe()["sha256"]}


def test_run_a_plugin_task_on_a_plugin_model(plugin, tmp_path):
    out = tmp_path / "results"
    args = ("run", "--task", plugin["card"], "--ckpt", f"seeded:tiny@{SEED}", "--data-dir", plugin["data"], "--out", out)
    result = plugin_cli(plugin["site"], *args, "--batch-size", "4", "--json")
    assert result.code == 0, result.stderr
    (record,) = json.loads(result.stdout)
    assert record["task"]["name"] == "colour-choice" and record["task"]["runner"] == "caption-choice"
    assert record["task"]["family"] == "compositionality"
    assert record["checkpoint"]["ref"] == f"seeded:tiny@{SEED}"
    assert {name: m["higher_is_better"] for name, m in record["metrics"].items()} == {"accuracy": True, "margin": True}
    margins, expected = _hand_scores(plugin["data"])
    assert record["checkpoint"]["sha256"] == expected["sha256"]  # the loader built the model built here
    assert record["n_samples"] == len(ROWS)
    assert record["metrics"]["accuracy"]["value"] == expected["accuracy"]
    assert record["metrics"]["margin"]["value"] == pytest.approx(expected["margin"], rel=1e-4, abs=1e-6)
    samples = [json.loads(line) for line in next(out.rglob("*.samples.jsonl")).read_text().splitlines()]
    assert [s["margin"] for s in samples] == pytest.approx(margins, rel=1e-4, abs=1e-6)
    # The table reads the plugin's record like any other: its family groups the columns.
    table = plugin_cli(plugin["site"], "table", out, "--format", "csv")
    assert table.code == 0 and "colour-choice/accuracy" in table.stdout, table.stdout + table.stderr


def test_tasks_lists_the_plugin_card(plugin):
    result = plugin_cli(plugin["site"], "tasks", "--cards", plugin["card"].parent, "--json")  # as CONTRIBUTING.md says
    assert result.code == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["colour-choice"]["runner"] == "caption-choice"
    assert rows["colour-choice"]["metrics"] == ["accuracy", "margin"]
    assert "synth-cls" in rows  # the built-in cards are still there


def test_bad_plugin_data_is_one_line(plugin, tmp_path):
    data = tmp_path / "data" / "colour-choice"
    data.mkdir(parents=True)
    (data / "test.jsonl").write_text(json.dumps({"image": "../../outside.png", "caption": "a", "foil": "b"}) + "\n")
    args = ("run", "--task", plugin["card"], "--ckpt", "seeded:tiny@0", "--data-dir", tmp_path / "data", "--out", tmp_path / "r")
    assert_one_line_error(plugin_cli(plugin["site"], *args), "test.jsonl:1", "leads outside")
    bad_ckpt = ("run", "--task", plugin["card"], "--ckpt", "seeded:tiny", "--data-dir", plugin["data"], "--out", tmp_path / "r")
    assert_one_line_error(plugin_cli(plugin["site"], *bad_ckpt), "seeded:tiny", "seed")
    assert not (tmp_path / "r").exists()


def test_sigmoid_objective_is_the_papers_loss(plugin, monkeypatch):
    """SigLIP Eq. 1: -1/|B| sum_i sum_j log sigmoid(z_ij (t x_i.y_j + b)), z_ij = 1 if i == j else -1; a plain loop."""
    monkeypatch.syspath_prepend(str(plugin["site"]))
    from sparc_eval_choice.objectives import SigmoidObjective

    gen = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(5, 8, generator=gen, dtype=torch.float64), dim=-1)
    y = torch.nn.functional.normalize(torch.randn(5, 8, generator=gen, dtype=torch.float64), dim=-1)
    t, b = 7.5, -3.0
    total = 0.0
    for i in range(5):
        for j in range(5):
            z = 1.0 if i == j else -1.0
            total += math.log(1.0 / (1.0 + math.exp(-z * (t * float(x[i] @ y[j]) + b))))
    out = SigmoidObjective(bias=b)({"image_emb": x, "text_emb": y, "logit_scale": torch.tensor(t, dtype=torch.float64)})
    assert float(out["total"]) == pytest.approx(-total / 5, rel=1e-12)


@pytest.mark.slow
def test_train_with_a_plugin_objective(plugin, synth_root, tmp_path):
    out = tmp_path / "ckpt"
    args = ("train", "--data", synth_root, "--arch", "tiny", "--objective", "sigmoid", "--steps", "3", "--batch-size", "8")
    # Progress on (the default), so that the live status line must cope with an objective's own loss parts.
    result = plugin_cli(
        plugin["site"], *args, "--warmup", "1", "--log-every", "1", "--out", out, env={"SPARC_EVAL_NO_PROGRESS": ""}
    )
    assert result.code == 0, result.stdout[-2000:] + result.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["objective"] == {"name": "sigmoid", "bias": -10.0}
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) and r["sigmoid"] == r["loss"] and "fine" not in r for r in rows)
    # The trained checkpoint is an ordinary sparc-eval folder: the plugin task scores it.
    scored = plugin_cli(
        plugin["site"], "run", "--task", plugin["card"], "--ckpt", out, "--data-dir", plugin["data"], "--out", tmp_path / "r"
    )
    assert scored.code == 0, scored.stderr


def test_in_package_card_example_is_a_valid_card(plugin):
    from sparc_eval.tasks.card import load_card

    card = load_card(plugin["src"] / "cards" / "my-flowers.yaml")
    assert (card.runner, card.dataset.format, card.dataset.options) == (
        "classification",
        "imagefolder",
        {"classnames": "classnames.txt"},
    )


# ------------------------------------------------------------------------------------------- broken plugins


def _card(tmp_path: Path, runner: str) -> Path:
    path = tmp_path / "card.yaml"
    path.write_text(f"name: uses-{runner}\nversion: 1\nrunner: {runner}\ndataset: {{format: pairs, root: x, split: test}}\n")
    return path


def test_a_plugin_that_fails_to_import_is_one_line_naming_it(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "broken_kind.py").write_text("import a_module_that_is_not_installed\n")
    write_dist_info(site, "sparc-eval-broken", "1.0", {"sparc_eval.runners": {"broken-kind": "broken_kind:Runner"}})
    run = plugin_cli(
        site, "run", "--task", _card(tmp_path, "broken-kind"), "--ckpt", "openclip:ViT-B-32", "--out", tmp_path / "r"
    )
    assert_one_line_error(run, "plugin sparc-eval-broken", "'broken-kind'", "a_module_that_is_not_installed")
    assert_one_line_error(plugin_cli(site, "plugins", "--check"), "plugin sparc-eval-broken", "failed to import")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "group, name, command",
    [("sparc_eval.readers", "voc", "tasks"), ("sparc_eval.runners", "classification", "plugins")],
)
def test_a_plugin_that_takes_a_builtin_name_is_one_line_naming_it(tmp_path, group, name, command):
    site = tmp_path / "site"
    site.mkdir()
    write_dist_info(site, "sparc-eval-squatter", "1.0", {group: {name: "squatter:thing"}})
    assert_one_line_error(plugin_cli(site, command), "plugin sparc-eval-squatter", repr(name), "built-in")


@pytest.mark.slow
def test_pip_installs_the_guide_package(plugin, tmp_path):
    """The same package built and installed by pip (no network: --no-deps, the installed setuptools)."""
    target = tmp_path / "target"
    pip = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(plugin["src"]),
        ],
        capture_output=True,
        text=True,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    result = plugin_cli(target, "plugins", "--json", "--check")
    assert result.code == 0, result.stderr
    ours = {r["name"]: r["target"] for r in json.loads(result.stdout) if r["source"] == DIST}
    assert ours == {
        e: t
        for eps in tomllib.loads((plugin["src"] / "pyproject.toml").read_text())["project"]["entry-points"].values()
        for e, t in eps.items()
    }
