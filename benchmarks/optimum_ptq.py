"""The path a user would take today instead of qacompress: optimum-intel 2.2's own OpenVINO export and
static INT8 post-training quantization (`OVModelForQuestionAnswering` + `OVQuantizer`) of a fine-tuned
QA model, on the same calibration features as qacompress's PTQ row.

    python benchmarks/optimum_ptq.py all --model_dir M --train_file train-12k.json --output_dir OUT

`all` (in qacompress's venv) writes the calibration features to `OUT/calibration.npz`, makes
optimum-intel's own venv (`benchmarks/work/optimum-venv`: optimum-intel pins transformers < 5.6, so it is
not a dependency of qacompress; torch, NNCF and OpenVINO pinned to qacompress's versions, PyPI's
torchvision removed as it does not match the local torch build) and runs `quantize` there. `quantize`
imports nothing of qacompress. The calls are those of optimum-intel 2.2.0's source: an `nncf.Dataset`
goes to `nncf.quantize` as it is (a list would be batched once more), `num_samples` set to the whole
set (its default is 128), and the tokenizer saved beside the IR (`quantize` does not).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / "benchmarks" / "work" / "optimum-venv"
#: optimum-intel and what it runs on; the last three as in qacompress's constraints.txt.
PACKAGES = ["optimum-intel[openvino]==2.2.0", "torch==2.13.0", "nncf==3.4.0", "openvino==2026.4.1"]
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def prepare(model_dir: str, train_file: str, out: Path, samples: int, max_seq_length: int) -> Path:
    """The first `samples` features of the training file, as qacompress's PTQ calibrates on them."""
    import numpy as np

    from qacompress.data.features import input_columns, prepare_eval_features
    from qacompress.data.squad import load_examples
    from qacompress.model.loading import load_tokenizer

    examples = load_examples(train_file, split="train", require_answers=False, version_2_with_negative=True,
                             max_samples=samples)  # fmt: skip
    features = prepare_eval_features(examples, load_tokenizer(model_dir), max_seq_length=max_seq_length,
                                     doc_stride=128, pad_to_max_length=False)  # fmt: skip
    rows = features.select(range(min(samples, len(features))))
    arrays = {f"{i}:{c}": np.asarray([row[c]], dtype=np.int64) for i, row in enumerate(rows) for c in input_columns(features)}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "calibration.npz"
    np.savez(path, **arrays)
    return path


def ensure_venv() -> Path:
    """optimum-intel's venv; a stamp marks it complete, so an interrupted install is redone, not trusted."""
    python, stamp = VENV / "bin" / "python", VENV / "installed.txt"
    if stamp.is_file() and stamp.read_text().split() == PACKAGES:
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *PACKAGES], check=True)
    subprocess.run([str(python), "-m", "pip", "uninstall", "-y", "-q", "torchvision"], check=False)
    stamp.write_text("\n".join(PACKAGES) + "\n")
    return python


def quantize(model_dir: str, calibration: Path, out: Path) -> None:
    """optimum-intel's export and static INT8 quantization (run in its own venv)."""
    import nncf
    import numpy as np
    from optimum.intel import OVConfig, OVModelForQuestionAnswering, OVQuantizationConfig, OVQuantizer
    from transformers import AutoTokenizer

    stored = np.load(calibration)
    count = 1 + max(int(key.split(":")[0]) for key in stored.files)
    model = OVModelForQuestionAnswering.from_pretrained(model_dir, export=True, compile=False)
    samples = [{name: stored[f"{i}:{name}"] for name in INPUTS if f"{i}:{name}" in stored.files and name in model.input_names}
               for i in range(count)]  # fmt: skip
    OVQuantizer.from_pretrained(model).quantize(
        calibration_dataset=nncf.Dataset(samples),
        ov_config=OVConfig(quantization_config=OVQuantizationConfig(num_samples=len(samples))),
        save_directory=out,
    )
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    print(f"optimum-intel INT8 IR of {model_dir} ({len(samples)} calibration samples) in {out}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("all", "quantize"))
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--output_dir", required=True, type=Path)
    parser.add_argument("--train_file", help="with all: the calibration data")
    parser.add_argument("--samples", type=int, default=300, help="calibration features (qacompress's PTQ default)")
    parser.add_argument("--max_seq_length", type=int, default=256)
    args = parser.parse_args(argv)
    calibration = args.output_dir / "calibration.npz"
    if args.step == "quantize":
        quantize(args.model_dir, calibration, args.output_dir)
        return 0
    prepare(args.model_dir, args.train_file, args.output_dir, args.samples, args.max_seq_length)
    command = [str(ensure_venv()), __file__, "quantize", "--model_dir", args.model_dir, "--output_dir", str(args.output_dir)]
    return subprocess.run(command, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
