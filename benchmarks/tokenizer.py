"""Tokenizer speed: train vocabularies and encode held-out text, numpyllm beside HF `tokenizers`.

    python -m benchmarks.tokenizer            # ~10 MB of the standard library's source
    python -m benchmarks.tokenizer --quick    # ~2 MB, for a fast look

Byte-level BPE first (the table below), then WordPiece (the last paragraph).

Both implementations train on the same files (in the same run) with the same vocabulary
size, special token and minimum pair frequency; both encode the same held-out files
with the vocabulary numpyllm learned (loaded into `tokenizers` from the saved
vocab.json/merges.txt, which also checks that the ids agree), one file at a time for
numpyllm and with ``encode_batch`` (multi-threaded) for `tokenizers`. "Cold" encodes with
an empty pre-token cache (the load from disk is included), "warm" encodes the same
text again with the same object. "Long pre-token" encodes one word of 100,000 random
letters (a single pre-token, merged as one piece) with a freshly loaded tokenizer, load
not timed. Each number is the median of --repeats runs; the table is markdown.

WordPiece: numpyllm's WordPieceTokenizer and `tokenizers`' BertWordPieceTokenizer train
an --wordpiece-vocab-size vocabulary on the same files; both encode the held-out files
with the vocabulary numpyllm learned, loaded into `transformers.BertTokenizerFast` from
the directory numpyllm saved (the ids must agree): numpyllm one file at a time,
`tokenizers` with ``encode_batch``, [CLS]/[SEP] included, no truncation. `tokenizers` runs
on one thread (TOKENIZERS_PARALLELISM=false, which its encode_batch and trainer obey) and
again on all cores for reference. The implementations are timed interleaved, round by
round (median of --repeats rounds after a warm-up round).
"""

import argparse
import contextlib
import os
import random
import string
import tempfile

from numpyllm import BPETokenizer, WordPieceTokenizer
from numpyllm.bpe_files import MERGES_FILE, VOCAB_FILE
from numpyllm.corpus import read_texts, stdlib_corpus_files

from ._timing import format_machine, interleaved_medians, machine_info, measure

EOT = "<|endoftext|>"
LONG_WORD_LETTERS = 100_000


def median_seconds(function, repeats):
    """Median wall time of ``repeats`` calls after one warm-up, and the last call's result."""
    timing, result = measure(lambda _: function(), repeats=repeats)
    return timing.median, result


def held_out_texts(files, n_bytes):
    """Texts of the last files in ``files`` until they hold at least ``n_bytes`` bytes."""
    texts = []
    for text in read_texts(reversed(files)):
        texts.append(text)
        n_bytes -= len(text.encode("utf-8"))
        if n_bytes <= 0:
            break
    return texts


def long_word(n_letters):
    """One pre-token of ``n_letters`` random lowercase letters (fixed seed)."""
    return "".join(random.Random(0).choices(string.ascii_lowercase, k=n_letters))


def encode_each(tokenizer, texts):
    """numpyllm: one document after another -> list of id lists."""
    return [tokenizer.encode(text) for text in texts]


@contextlib.contextmanager
def tokenizers_parallelism(enabled):
    """TOKENIZERS_PARALLELISM set to "true"/"false" inside the block (tokenizers reads it on each call)."""
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if enabled else "false"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


def on_threads(parallel, function):
    """``function`` wrapped to run with tokenizers' parallelism on (all cores) or off (one thread)."""
    def run():
        with tokenizers_parallelism(parallel):
            return function()
    return run


def wordpiece_rows(train_files, held_out, vocab_size, rounds):
    """Rows (name, train s, cold MB/s, warm MB/s, bytes per token) for numpyllm and BertTokenizerFast.

    Each phase (train, cold encode, warm encode) times the implementations interleaved,
    round by round (``interleaved_medians``), so a change in the machine's load hits all alike.
    """
    held_out_bytes = sum(len(text.encode("utf-8")) for text in held_out)
    held_out_mb = held_out_bytes / 1e6
    try:
        import tokenizers
        import transformers
    except ImportError:
        print("(transformers / tokenizers are not installed: their WordPiece rows are left out)")
        tokenizers = None
    names = {"ours": "numpyllm WordPieceTokenizer (pure Python, 1 thread)"}
    train = {"ours": lambda: WordPieceTokenizer.train(read_texts(train_files), vocab_size, progress=False)}
    if tokenizers:
        def train_hf():
            hf = tokenizers.BertWordPieceTokenizer()
            hf.train_from_iterator(read_texts(train_files), vocab_size=vocab_size, show_progress=False)
            return hf

        for key, parallel, threads in (("hf_1", False, "1 thread"), ("hf_all", True, "all cores")):
            names[key] = f"HF BertTokenizerFast, tokenizers {tokenizers.__version__} (Rust, {threads})"
            train[key] = on_threads(parallel, train_hf)
    train_timing = interleaved_medians(train, rounds)

    with tempfile.TemporaryDirectory() as directory:
        ours = train_timing["ours"].last_result
        ours.save(directory)
        cold = {"ours": lambda: encode_each(WordPieceTokenizer.from_pretrained(directory), held_out)}
        warm = {"ours": lambda: encode_each(ours, held_out)}
        if tokenizers:
            def load_hf():
                return transformers.BertTokenizerFast.from_pretrained(directory).backend_tokenizer

            hf = load_hf()
            for key, parallel in (("hf_1", False), ("hf_all", True)):
                cold[key] = on_threads(parallel, lambda: load_hf().encode_batch(held_out))
                warm[key] = on_threads(parallel, lambda: hf.encode_batch(held_out))
        cold_timing, warm_timing = interleaved_medians(cold, rounds), interleaved_medians(warm, rounds)

    ids = cold_timing["ours"].last_result
    for key in names:
        if key != "ours" and [encoding.ids for encoding in warm_timing[key].last_result] != ids:
            raise SystemExit(f"{names[key]} and numpyllm disagree on the held-out text's WordPiece ids")
    bytes_per_token = held_out_bytes / sum(map(len, ids))
    return [(names[key], train_timing[key].median, held_out_mb / cold_timing[key].median,
             held_out_mb / warm_timing[key].median, bytes_per_token) for key in names]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~2 MB of training text instead of ~10 MB")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--wordpiece-vocab-size", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    train_bytes = 2_000_000 if args.quick else 10_000_000
    all_files = stdlib_corpus_files()
    train_files = stdlib_corpus_files(max_bytes=train_bytes)
    held_out = held_out_texts(all_files[len(train_files) :], train_bytes // 5)
    held_out_bytes = sum(len(text.encode("utf-8")) for text in held_out)
    held_out_mb = held_out_bytes / 1e6
    train_mb = sum(path.stat().st_size for path in train_files) / 1e6
    print(f"training corpus: {len(train_files)} stdlib files, {train_mb:.1f} MB; held-out text: {held_out_mb:.1f} MB; "
          f"vocab_size={args.vocab_size}; median of {args.repeats}")

    word = long_word(LONG_WORD_LETTERS)
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        train_seconds, ours = median_seconds(
            lambda: BPETokenizer.train(read_texts(train_files), args.vocab_size, (EOT,), progress=False), args.repeats
        )
        ours.save(directory)
        cold_seconds, ids = median_seconds(
            lambda: encode_each(BPETokenizer.from_pretrained(directory), held_out), args.repeats
        )
        warm_seconds, _ = median_seconds(lambda: encode_each(ours, held_out), args.repeats)
        long_timing, word_ids = measure(lambda tokenizer: tokenizer.encode(word), repeats=args.repeats,
                                        setup=lambda: BPETokenizer.from_pretrained(directory))
        n_tokens = sum(map(len, ids))
        rows.append(("numpyllm (pure Python, 1 thread)", train_seconds, held_out_mb / cold_seconds,
                     held_out_mb / warm_seconds, long_timing.median, held_out_bytes / n_tokens))

        try:
            import tokenizers
        except ImportError:
            print("(Hugging Face tokenizers is not installed: its row is left out)")
        else:
            def train_hf():
                hf = tokenizers.ByteLevelBPETokenizer()
                hf.train_from_iterator(read_texts(train_files), vocab_size=args.vocab_size, min_frequency=2,
                                       special_tokens=[EOT], show_progress=False)
                return hf

            hf_train_seconds, _ = median_seconds(train_hf, args.repeats)
            def load_hf():
                return tokenizers.ByteLevelBPETokenizer.from_file(f"{directory}/{VOCAB_FILE}",
                                                                  f"{directory}/{MERGES_FILE}")

            hf_cold_seconds, hf_encodings = median_seconds(lambda: load_hf().encode_batch(held_out), args.repeats)
            if [encoding.ids for encoding in hf_encodings] != ids:
                raise SystemExit("tokenizers and numpyllm disagree on the held-out text's ids")
            hf = load_hf()
            hf_warm_seconds, _ = median_seconds(lambda: hf.encode_batch(held_out), args.repeats)
            hf_long_timing, hf_word_encoding = measure(lambda fresh: fresh.encode(word), repeats=args.repeats,
                                                       setup=load_hf)
            if hf_word_encoding.ids != word_ids:
                raise SystemExit("tokenizers and numpyllm disagree on the long pre-token's ids")
            rows.append((f"HF tokenizers {tokenizers.__version__} (Rust, all cores)", hf_train_seconds,
                         held_out_mb / hf_cold_seconds, held_out_mb / hf_warm_seconds, hf_long_timing.median,
                         held_out_bytes / n_tokens))

    print()
    print(f"| tokenizer | train {args.vocab_size} vocab on {train_mb:.0f} MB (s) | encode, cold cache (MB/s) "
          f"| encode, warm cache (MB/s) | long pre-token, {LONG_WORD_LETTERS:,} letters (ms) | bytes per token |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, train_s, cold, warm, long_seconds, bytes_per_token in rows:
        print(f"| {name} | {train_s:.1f} | {cold:.1f} | {warm:.1f} | {long_seconds * 1e3:.0f} | {bytes_per_token:.2f} |")
    print()
    print(format_machine(machine_info(("numpy", "tokenizers"))))

    rows = wordpiece_rows(train_files, held_out, args.wordpiece_vocab_size, args.repeats)
    print()
    print(f"| WordPiece tokenizer | train {args.wordpiece_vocab_size} vocab on {train_mb:.0f} MB (s) "
          "| encode, cold cache (MB/s) | encode, warm cache (MB/s) | bytes per token |")
    print("|---|---:|---:|---:|---:|")
    for name, train_s, cold, warm, bytes_per_token in rows:
        print(f"| {name} | {train_s:.1f} | {cold:.1f} | {warm:.1f} | {bytes_per_token:.2f} |")


if __name__ == "__main__":
    main()
