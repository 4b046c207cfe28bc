#!/usr/bin/env python
"""Drop-in for optimum-intel's OpenVINO question-answering `run_qa.py`.

Every flag of that script works (model/data arguments of transformers' run_qa, all
`TrainingArguments`, `--nncf_compression_config`, `--teacher_model_name_or_path`,
`--distillation_weight`, `--distillation_temperature`), as does a single `.json` file of arguments:

    python examples/run_qa.py --model_name_or_path MODEL_DIR --train_file train.json \
        --validation_file dev.json --do_train --do_eval --max_seq_length 384 --doc_stride 128 \
        --output_dir /tmp/outputs_squad/

It is `qacompress train`; `torchrun --nproc-per-node=N examples/run_qa.py ...` trains on N processes.
"""

import sys

from qacompress.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
