"""Stand-ins for numpyllm.bert and numpyllm.wordpiece while those modules are missing from this branch.

They implement the DESIGN.md API (BertConfig, the four BERT classes, WordPieceTokenizer)
on top of transformers and tokenizers, so the training code can be tested before the real
modules land; ``install()`` registers them only when ``import numpyllm.bert`` /
``numpyllm.wordpiece`` fails, so the real modules win as soon as they exist.
"""

import dataclasses
import importlib
import json
import os
import sys
import types

import numpy as np


def install():
    for name, factory in (("numpyllm.bert", _bert_module), ("numpyllm.wordpiece", _wordpiece_module)):
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = factory()


def _bert_module():
    import torch
    import transformers

    torch.set_num_threads(1)  # tiny models: threads only contend
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    @dataclasses.dataclass(frozen=True)
    class BertConfig:
        vocab_size: int = 30522
        hidden_size: int = 768
        num_hidden_layers: int = 12
        num_attention_heads: int = 12
        intermediate_size: int = 3072
        max_position_embeddings: int = 512
        type_vocab_size: int = 2
        layer_norm_eps: float = 1e-12
        hidden_act: str = "gelu"
        num_labels: int = 2
        problem_type: str = None
        dtype: str = "float32"
        id2label: dict = None
        label2id: dict = None

    def hf_config(config):
        fields = {k: v for k, v in dataclasses.asdict(config).items() if v is not None}
        fields.pop("dtype")
        return transformers.BertConfig(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **fields)

    class _Bert:
        hf_class = None

        def __init__(self, config, seed=0, attention_backend="auto", _hf=None):
            self.config = config
            self.attention_backend = attention_backend
            if _hf is None:
                torch.manual_seed(seed)
                _hf = self.hf_class(hf_config(config))
            self.hf = _hf.eval()
            named = list(self.hf.named_parameters())
            self.flat_params = np.concatenate([p.detach().numpy().ravel() for _, p in named]).astype(np.float32)
            self.params, offset = {}, 0
            for name, p in named:
                view = self.flat_params[offset:offset + p.numel()].reshape(p.shape)
                offset += p.numel()
                self.params[name] = view
                p.data = torch.from_numpy(view)  # shares memory with flat_params

        def _inputs(self, input_ids, token_type_ids, attention_mask):
            inputs = dict(input_ids=torch.as_tensor(np.asarray(input_ids, dtype=np.int64)))
            if token_type_ids is not None:
                inputs["token_type_ids"] = torch.as_tensor(np.asarray(token_type_ids, dtype=np.int64))
            if attention_mask is not None:
                inputs["attention_mask"] = torch.as_tensor(np.asarray(attention_mask, dtype=np.int64))
            return inputs

        def __call__(self, input_ids, token_type_ids=None, attention_mask=None):
            with torch.no_grad():
                out = self.hf(**self._inputs(input_ids, token_type_ids, attention_mask))
            return self._outputs(out)

        def _outputs(self, out):
            return out.logits.numpy()

        def _labels(self, labels):
            labels = torch.as_tensor(np.asarray(labels))
            return torch.where(labels < 0, -100, labels) if not labels.is_floating_point() else labels.float()

        def loss_and_grads(self, input_ids, labels, token_type_ids=None, attention_mask=None):
            self.hf.zero_grad(set_to_none=True)
            out = self.hf(**self._inputs(input_ids, token_type_ids, attention_mask), **self._label_kwargs(labels))
            out.loss.backward()
            grads = {name: (p.grad.numpy().copy() if p.grad is not None else np.zeros_like(self.params[name]))
                     for name, p in self.hf.named_parameters()}
            return float(out.loss.detach()), grads

        def _label_kwargs(self, labels):
            return {"labels": self._labels(labels)}

        @classmethod
        def from_pretrained(cls, directory, attention_backend="auto", dtype=None, seed=0, **config_changes):
            with open(os.path.join(directory, "config.json")) as f:
                raw = json.load(f)
            if raw.get("model_type") != "bert":
                raise ValueError(f"{directory}/config.json: model_type must be 'bert', got {raw.get('model_type')!r}")
            torch.manual_seed(seed)
            hf = cls.hf_class.from_pretrained(directory, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                              **config_changes)
            names = {f.name for f in dataclasses.fields(BertConfig)} - {"dtype"}
            config = BertConfig(**{k: getattr(hf.config, k) for k in names})
            return cls(config, attention_backend=attention_backend, _hf=hf)

        def save_pretrained(self, directory):
            self.hf.save_pretrained(directory, safe_serialization=True)

    class BertForMaskedLM(_Bert):
        hf_class = transformers.BertForMaskedLM

    class BertForSequenceClassification(_Bert):
        hf_class = transformers.BertForSequenceClassification

    class BertForPreTraining(_Bert):
        hf_class = transformers.BertForPreTraining

        def _outputs(self, out):
            return out.prediction_logits.numpy(), out.seq_relationship_logits.numpy()

        def _label_kwargs(self, labels):
            mlm, nsp = labels
            return {"labels": self._labels(mlm), "next_sentence_label": self._labels(nsp)}

    module = types.ModuleType("numpyllm.bert", "stand-in (tests/encoder_standins.py)")
    module.BertConfig = BertConfig
    module.BertForMaskedLM = BertForMaskedLM
    module.BertForSequenceClassification = BertForSequenceClassification
    module.BertForPreTraining = BertForPreTraining
    return module


def _wordpiece_module():
    import tokenizers
    import transformers

    class WordPieceTokenizer:
        def __init__(self, fast):
            self.fast = fast
            for name in ("pad", "unk", "cls", "sep", "mask"):
                setattr(self, f"{name}_token_id", getattr(fast, f"{name}_token_id"))
            self.vocab_size = len(fast)

        @classmethod
        def train(cls, texts, vocab_size=8000, lowercase=True, progress=None):
            trainer = tokenizers.BertWordPieceTokenizer(lowercase=lowercase)
            trainer.train_from_iterator(list(texts) if not isinstance(texts, str) else [texts],
                                        vocab_size=vocab_size, show_progress=False)
            import tempfile
            with tempfile.TemporaryDirectory() as tmp:
                trainer.save_model(tmp)
                return cls(transformers.BertTokenizerFast(os.path.join(tmp, "vocab.txt"), do_lower_case=lowercase))

        @classmethod
        def from_pretrained(cls, directory):
            if not os.path.isfile(os.path.join(directory, "vocab.txt")):
                raise FileNotFoundError(f"tokenizer directory {directory!r} has no vocab.txt")
            return cls(transformers.BertTokenizerFast.from_pretrained(directory))

        def save(self, directory):
            self.fast.save_pretrained(directory)

        def convert_ids_to_tokens(self, ids):
            return self.fast.convert_ids_to_tokens(list(ids))

        def tokenize(self, text):
            return self.fast.tokenize(text)

        def encode(self, text, text_pair=None):
            return self.fast.encode(text, text_pair, add_special_tokens=True)

        def __call__(self, texts, text_pairs=None, max_length=128, padding="longest", truncation=True):
            out = self.fast(list(texts), list(text_pairs) if text_pairs is not None else None,
                            max_length=max_length, padding=padding, truncation=truncation)
            return {key: np.asarray(out[key], dtype=np.int64)
                    for key in ("input_ids", "token_type_ids", "attention_mask")}

        def decode(self, ids, skip_special_tokens=True):
            return self.fast.decode(list(ids), skip_special_tokens=skip_special_tokens)

    module = types.ModuleType("numpyllm.wordpiece", "stand-in (tests/encoder_standins.py)")
    module.WordPieceTokenizer = WordPieceTokenizer
    return module
