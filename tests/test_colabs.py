"""The colabs run top to bottom on CPU (headless, nbclient + the venv's ipykernel) and compute
what they claim: each notebook's own values are read back from its kernel and its output files."""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = Path(__file__).resolve().parents[1]
COLABS = REPO / "colabs"
NOTEBOOKS = ("zero_shot_detection.ipynb", "pretraining.ipynb", "finetuning.ipynb")


def execute(name: str, out_dir: Path, probe: str) -> dict:
  """Runs colabs/<name> in a fresh kernel with outputs under `out_dir`, then a `probe` cell that
  prints a json of kernel variables -> that json. Raises (naming the cell) on any cell error."""
  nb = nbformat.read(COLABS / name, as_version=4)
  nb.cells.append(nbformat.v4.new_code_cell(f"import json as _j\nprint(_j.dumps({probe}))"))
  env = dict(os.environ, REGIONCLIP_COLAB_OUT=str(out_dir), REGIONCLIP_REPO=str(REPO),
             JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  # jupyter_client swaps a kernelspec's bare "python" for sys.executable, so the kernel is the
  # venv's interpreter that runs pytest.
  client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=900,
                                   resources={"metadata": {"path": str(REPO)}})
  old = dict(os.environ)
  os.environ.update(env)  # the kernel inherits the environment at launch
  try:
    client.execute()
  finally:
    os.environ.clear()
    os.environ.update(old)
  text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.get("name") == "stdout")
  return json.loads(text.strip().splitlines()[-1])


def test_notebooks_are_clean_and_valid():
  for name in NOTEBOOKS:
    nb = nbformat.read(COLABS / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3", name
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code), \
        f"{name}: committed notebooks carry no outputs"
    assert sum(c.cell_type == "markdown" for c in nb.cells) >= 5, f"{name}: explain each step"


def test_zero_shot_detection_notebook(tmp_path):
  v = execute("zero_shot_detection.ipynb", tmp_path,
              "dict(summary=summary, kernel=sys.executable, region=list(region_emb.shape), "
              "probs=probs.tolist(), scores=[float(s) for s in dets['scores']], "
              "boxes=np.asarray(dets['boxes']).tolist())")
  s = v["summary"]
  assert Path(v["kernel"]).resolve() == Path(sys.executable).resolve()
  k = len(s["vocabulary"])
  assert s["text_emb_shape"] == [k, 64]                         # tiny_rn: 64-d joint space
  assert v["region"] == [4, 64]                                 # one embedding per given box
  probs = np.asarray(v["probs"])
  assert probs.shape == (4, k) and np.allclose(probs.sum(-1), 1, atol=1e-5)
  assert s["box_labels"] == [s["vocabulary"][i] for i in probs.argmax(-1)]
  assert 1 <= s["num_given_box_detections"] <= 20 and 1 <= s["num_proposal_detections"] <= 20
  scores, boxes = np.asarray(v["scores"]), np.asarray(v["boxes"])
  assert np.all((scores >= 0) & (scores <= 1)) and np.all(np.diff(scores) <= 1e-6)  # sorted
  assert boxes.min() >= -1e-3 and boxes.max() <= 512 + 1e-3   # original astronaut pixels
  assert s["drawn_shape"] == [512, 512, 3]
  for f in ("zero_shot_given_boxes.png", "zero_shot_proposals.png", "zero_shot_folder/photo.png"):
    assert (tmp_path / f).stat().st_size > 1000, f
  written = json.loads((tmp_path / "zero_shot_folder" / "detections.json").read_text())
  assert len(written) == s["num_folder_detections"] == s["num_proposal_detections"]
  assert {d["category_name"] for d in written} <= set(s["vocabulary"])


def test_pretraining_notebook(tmp_path):
  v = execute("pretraining.ipynb", tmp_path,
              "dict(summary=summary, steps=config.num_steps, results=results, "
              "devices=len(jax.devices()), mesh=dict(mesh.shape))")
  s, r = v["summary"], v["results"]
  assert v["mesh"] == {"data": v["devices"]}
  assert r["num_steps"] == v["steps"] == 6 and r["preset"] == "shapes"
  # the notebook's numbers are the run's own metrics.json
  saved = json.loads((tmp_path / "pretrain" / "metrics.json").read_text())
  assert saved["zero_shot_region_top1"] == r["zero_shot_region_top1"]
  assert s["top1"] == {k: v for k, v in saved["zero_shot_region_top1"].items() if "n_all" in v}
  assert -1.0 <= saved["zero_shot_region_top1"]["student_minus_teacher"]["all"] <= 1.0
  for who in ("teacher", "student"):
    t = s["top1"][who]
    assert t["n_all"] == t["n_base"] + t["n_novel"] > 0
    for k in ("all", "base", "novel"):
      assert 0.0 <= t[k] <= 1.0
  # plotted losses: every logged step, finite, and the total is the sum of the three terms
  assert s["loss_steps"] == [2.0, 4.0, 6.0] and np.all(np.isfinite(s["loss"]))
  log = [json.loads(l) for l in (tmp_path / "pretrain" / "tensorboard" / "metrics.jsonl").read_text().splitlines()]
  for rec in log:
    parts = rec["region_distill"] + rec["region_contrastive"] + rec["image_text"]
    assert abs(rec["loss"] - parts) < 1e-3 * max(1.0, abs(parts)), rec
  assert (tmp_path / "pretrain" / "student" / "config.json").is_file()
  for f in ("pretrain_scenes.png", "pretrain_losses.png", "teacher_losses.png", "pretrain_region_top1.png"):
    assert (tmp_path / f).stat().st_size > 1000, f


def test_finetuning_notebook(tmp_path):
  v = execute("finetuning.ipynb", tmp_path,
              "dict(summary=summary, n_valid=int(out['valid'].sum()), n_images=len(records), "
              "scores=out['scores'][out['valid']].tolist(), classes=out['classes'][out['valid']].tolist())")
  s = v["summary"]
  assert (tmp_path / "rpn" / "export" / "model.json").is_file()
  assert (tmp_path / "finetune" / "export" / "class_embeddings.npy").is_file()
  assert len(s["names"]) == 12 and len(s["novel"]) == 3
  # the hand-made evaluation with the exported model reproduces train_detector's metrics.json
  saved = json.loads((tmp_path / "finetune" / "metrics.json").read_text())
  for k in ("AP50_novel", "AP50_base", "AP50_all"):
    assert 0.0 <= s["my_metrics"][k] <= 100.0
    assert s["my_metrics"][k] == pytest.approx(s["metrics"][k], abs=1e-6) == pytest.approx(saved[k], abs=1e-6)
  assert saved["num_categories_with_gt"]["novel"] > 0
  assert s["num_detections"] == v["n_valid"] > 0 and v["n_images"] == 16
  assert min(v["scores"]) >= 0.0 and max(v["scores"]) <= 1.0
  assert set(v["classes"]) <= set(range(12))
  assert "loss" in s["loss_keys"]
  for f in ("finetune_detections.png", "finetune_losses.png"):
    assert (tmp_path / f).stat().st_size > 1000, f
