"""qacompress: small, fast extractive question answering on CPUs.

Quantization-aware training (NNCF), block movement pruning with distillation, SQuAD evaluation and
OpenVINO export, behind the interface of optimum-intel's former `run_qa.py` example.
"""

from qacompress.errors import ConfigError, DataError, ModelError, QACompressError

__version__ = "0.1.0"

__all__ = ["ConfigError", "DataError", "ModelError", "QACompressError", "__version__"]
