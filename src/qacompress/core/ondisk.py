"""Names qacompress writes to disk, in one place: a renamed key would silently orphan every model
directory and checkpoint saved before it, so writers and readers share these constants."""

from __future__ import annotations

#: The OpenVINO IR of a model folder (its weights in the `.bin` of the same name), where optimum-intel
#: looks for it.
IR_FILE = "openvino_model.xml"
#: Beside `model.safetensors`: compression tensors and state (`qacompress.compression.checkpoint`).
STATE_FILE = "compression_state.pt"
#: Keys of that state.
QUANTIZER_LAYOUT = "quantizer_layout"  # NNCF's hook layout, to rebuild quantizers before loading values
MOVEMENT_SCHEDULE = "movement_schedule"  # threshold schedule position of a movement-pruning checkpoint
FROZEN_MASKS = "frozen_masks"  # parameter masks kept at zero while a pruned model trains on
KEPT = "kept"  # heads and neurons each layer kept
REPORT = "report"  # extra compression-report entries (how the structure was chosen)
INT8_EMBEDDINGS = "int8_embeddings"  # whether the INT8 IR stores its embedding tables as INT8
#: The word table sits on its INT8 grid and is not trained (`qacompress.compression.wordtable`).
WORD_TABLE_HELD = "word_table_held"

#: `config.json` attribute with the per-layer sizes of a physically pruned model.
PRUNING_CONFIG_ATTR = "qacompress_pruning"
#: Its key listing, per layer, the layer's index in the unpruned architecture (once layers were removed).
SOURCE_LAYERS = "source_layers"
#: Submodule of a model under movement pruning that holds its schedule (`movement.MovementPruner`).
MOVEMENT_ATTR = "qacompress_movement"
#: Parameter names of the importance scores inside each `movement.MaskedLinear`.
WEIGHT_SCORE, BIAS_SCORE = "weight_score", "bias_score"
#: State-dict key prefix of NNCF's quantizer hooks.
NNCF_HOOKS = "__nncf_hooks."

#: Phase folders of a pruning run's output directory.
PRUNED_DIR = "pruned"  # the pruned float model, before its last training phase
FINETUNE_DIR = "finetune"  # checkpoints of that phase
WARMUP_RESULTS = "warmup_results.json"  # phase-1 metrics, kept for a run resumed in phase 2

#: Files of a `compress` run's output directory, beside the model folder that `train` writes there.
COMPRESS_PLAN = "compress_plan.json"  # the precision that pays here and the latency budget, measured once
COMPRESS_CONFIG = "compress_config.json"  # the compression config its training runs
COMPRESS_REPORT = "compress_report.json"  # and compress_report.png
COMPRESS_WALL = "compress_wall.json"  # wall time per phase, summed over the invocations of a resumed run
COMPRESS_LOCK = ".qacompress-lock"  # held while a run writes the folder

#: Files a model folder may hold that a new export must replace or remove.
MODEL_FILES = (STATE_FILE, IR_FILE, IR_FILE.replace(".xml", ".bin"), "model.safetensors", "config.json")
