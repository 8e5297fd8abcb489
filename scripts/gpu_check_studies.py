"""Write (and validate) the study files that scripts/gpu_check.sh runs, derived from the shipped ones.

    python scripts/gpu_check_studies.py OUT_DIR --mode gpu|cpu --model DIR --text-model DIR [--attn NAME]
    python scripts/gpu_check_studies.py --smoke              # both modes into a scratch folder, validated

Two studies, each from a shipped file with the sizes of the mode:

- ``study.yaml``: configs/gpu_check.yaml (a random Qwen2-0.5B-shaped model, ``--model``, on testbed pairs;
  DPO and γ-DPO at 0 and 40 % flips: 4 runs) as shipped on the GPU; 2 steps on a small testbed on the CPU.
- ``text.yaml``: configs/smollm2_hh.yaml on the HH-RLHF slice of scripts/device_data.py
  (device_data/, carried with the device call) with the random SmolLM2-135M-shaped model of
  scripts/random_text_model.py (``--text-model``) and attention ``--attn``; DPO and γ-DPO at 20 % flips,
  one seed: 2 runs (12 steps of 32 pairs on the GPU, 2 steps of 4 on the CPU).

Each file is loaded and planned as ``noisypref run`` would; the last line printed is JSON: each file and
its number of runs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import yaml
from device_data import hh_slice  # scripts/device_data.py (scripts/ is this script's path)

from noisypref.benchmark.study import load_study, plan_runs

REPO = Path(__file__).resolve().parent.parent
GPU_CHECK_STUDY = REPO / "configs" / "gpu_check.yaml"
TEXT_STUDY = REPO / "configs" / "smollm2_hh.yaml"
# The CPU dry run's testbed: the default words and topics (the models' tokenizer), little else.
SMALL_TESTBED = {"sft_steps": 20, "num_train_pairs": 128, "num_heldout_pairs": 32, "num_eval_prompts": 8}


def read(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def testbed_study(mode: str, model_dir: Path) -> dict[str, Any]:
    study = read(GPU_CHECK_STUDY)
    study["models"][0]["name"] = str(model_dir)
    if mode == "cpu":
        study["datasets"][0]["testbed"] = dict(SMALL_TESTBED)
        study["training"].update(steps=2)
        study["evaluation"].update(num_eval_prompts=8)
    return study


def text_study(mode: str, model_dir: Path, attention: str, pairs_file: Path) -> dict[str, Any]:
    study = read(TEXT_STUDY)
    study["name"] = "gpu_check_text"
    study["description"] = f"random SmolLM2-135M-shaped model on {pairs_file.name} ({mode})"
    dataset = study["datasets"][0]
    for key in ("source", "split", "hub_options"):
        dataset.pop(key, None)
    dataset.update(kind="file", source=str(pairs_file.resolve()))
    if mode == "gpu":
        dataset.update(max_pairs=512, heldout_fraction=0.1)
        training = {"steps": 12, "batch_size": 32, "log_every": 4}
    else:
        dataset.update(max_pairs=16, heldout_fraction=0.25)
        training = {"steps": 2, "batch_size": 4, "max_length": 64, "max_prompt_length": 32, "log_every": 1}
    study["noise"][0]["rates"] = [0.2]
    study["methods"] = [method for method in study["methods"] if method["name"] in ("dpo", "gamma_dpo")]
    study["seeds"] = [0]
    study["models"][0].update(name=str(model_dir), attn_implementation=attention)
    study["training"].update(training)
    return study


def write_studies(out_dir: Path, mode: str, model_dir: Path, text_model_dir: Path, attention: str,
                  pairs_file: Path | None = None) -> dict[str, int]:  # fmt: skip
    """Write the two study files; returns each file's number of runs (after loading and planning it).
    ``pairs_file``: the text study's data (default: the HH-RLHF slice of scripts/device_data.py)."""
    pairs_file = pairs_file or hh_slice()
    out_dir.mkdir(parents=True, exist_ok=True)
    studies = {
        "study.yaml": testbed_study(mode, model_dir),
        "text.yaml": text_study(mode, text_model_dir, attention, pairs_file),
    }
    runs = {}
    for name, study in studies.items():
        path = out_dir / name
        path.write_text(yaml.safe_dump(study, sort_keys=False), encoding="utf-8")
        runs[str(path)] = len(plan_runs(load_study(path)))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, nargs="?")
    parser.add_argument("--mode", choices=["gpu", "cpu"], default="gpu")
    parser.add_argument("--model", type=Path, help="the random Qwen2-0.5B-shaped model folder")
    parser.add_argument("--text-model", type=Path, help="the random SmolLM2-135M-shaped model folder")
    parser.add_argument("--attn", default="sdpa", help="attention of the text model (e.g. flash_attention_2)")
    parser.add_argument("--smoke", action="store_true", help="both modes into a scratch folder, validated")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        if args.smoke:
            runs = {}
            for mode in ("gpu", "cpu"):
                runs |= write_studies(Path(scratch) / mode, mode, Path("model"), Path("text-model"), "sdpa")
        else:
            if args.out_dir is None or args.model is None or args.text_model is None:
                parser.error("OUT_DIR, --model and --text-model are required (or --smoke)")
            runs = write_studies(args.out_dir, args.mode, args.model, args.text_model, args.attn)
    for path, count in runs.items():
        print(f"{path}: {count} runs")
    print(json.dumps({"runs": runs, "total_runs": sum(runs.values())}))


if __name__ == "__main__":
    main()
