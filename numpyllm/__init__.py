"""numpyllm: GPT and BERT in plain NumPy, every backward pass by hand.

Importing numpyllm needs only NumPy. The compiled attention kernel, safetensors,
regex, tqdm and matplotlib are used when present (see the README).

Importing numpyllm before NumPy sets OPENBLAS_THREAD_TIMEOUT (unless it is set already): see
``_blas_threads``.
"""

from . import _blas_threads  # noqa: F401  (first: before anything imports NumPy)
from . import attention, metrics
from .bert import BertConfig, BertForMaskedLM, BertForPreTraining, BertForSequenceClassification, BertModel
from .gpt import GPT, GPTConfig
from .optim import AdamW, clip_grad_norm
from .pipelines import pipeline
from .tokenizer import BPETokenizer
from .wordpiece import WordPieceTokenizer

__version__ = "0.1.0"

__all__ = ["attention", "metrics", "pipeline", "GPT", "GPTConfig", "BertConfig", "BertModel", "BertForMaskedLM", "BertForPreTraining",
           "BertForSequenceClassification", "AdamW", "clip_grad_norm", "BPETokenizer", "WordPieceTokenizer"]
