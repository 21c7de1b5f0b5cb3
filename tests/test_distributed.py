"""Data-parallel training under mpiexec equals one process; faults end the whole job.

The MPI runs need mpi4py and an mpiexec (pip install mpi4py mpich; CI has them) and skip
with the reason otherwise. Each is a tiny model for a dozen steps: a few seconds.
"""

import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from benchmarks._timing import usable_cores
from numpyllm import GPT, AdamW
from numpyllm.checkpoint import OPTIMIZER_FILE, find_checkpoint, read_trainer_state
from numpyllm.distributed import World, _flat_buffer, launched_size, world
from numpyllm.params import flat_views
from numpyllm.runlog import read_log
from numpyllm.train import flag, train

from tiny_run import tiny_overrides, write_corpus

ROOT = pathlib.Path(__file__).resolve().parent.parent
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None
MPIEXEC = shutil.which("mpiexec", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
needs_mpi4py = pytest.mark.skipif(not HAVE_MPI4PY, reason="needs mpi4py (pip install mpi4py mpich)")
needs_mpiexec = pytest.mark.skipif(not (HAVE_MPI4PY and MPIEXEC),
                                   reason="needs mpi4py and an mpiexec (pip install mpi4py mpich)")
TIMEOUT = 120  # seconds; a hung job fails the test instead of the suite
FAULT_TIMEOUT = 60  # a job with a fault must end well within this


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


def _settings(corpus, **changes):
    return tiny_overrides(corpus, **{"max_steps": 12, "eval_interval": 6, "checkpoint_interval": 6,
                                     "dtype": "float64", **changes})


def _flags(settings):
    args = []
    for name, value in settings.items():
        args += [flag(name), *map(str, value if isinstance(value, tuple) else [value])]
    return args


def _run(command, env=None, timeout=TIMEOUT):
    """Run ``command`` from the repository root (so it imports this numpyllm); the CompletedProcess."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=timeout)


def _mpi_train(k, out, *train_args, fault=None):
    """``mpiexec -n k python -m numpyllm train --out out --no-progress train_args...``;
    with ``fault`` = (what, rank, step), tests/mpi_job.py runs it with that fault injected."""
    program = ["-m", "numpyllm"] if fault is None else [str(ROOT / "tests" / "mpi_job.py"), *map(str, fault)]
    return _run([MPIEXEC, "-n", str(k), sys.executable, *program, *([] if fault else ["train"]),
                 "--out", str(out), "--no-progress", *train_args], timeout=TIMEOUT if fault is None else FAULT_TIMEOUT)


def _weights(run):
    return GPT.from_pretrained(find_checkpoint(run)).flat_params


def _column(run, name):
    return np.array([row[name] for row in read_log(pathlib.Path(run) / "log.csv") if row[name] is not None])


def _assert_same_run(run, reference, rtol):
    """Weights and every logged loss of ``run`` equal ``reference``'s to ``rtol`` of their scale.

    Except the key biases in float32: their exact gradient is zero (adding b to every key
    adds q·b to a whole row of scores, which the softmax ignores), so they are AdamW's
    lr-sized steps on rounding noise and differ by ~1e-5 (float64: ~1e-14, checked).
    """
    model, expected = GPT.from_pretrained(find_checkpoint(run)), GPT.from_pretrained(find_checkpoint(reference))
    assert model.flat_params.dtype == expected.flat_params.dtype
    if model.flat_params.dtype == np.float32:
        n_embd = model.config.n_embd
        for i in range(model.config.n_layer):
            for params in (model.params, expected.params):
                params[f"h.{i}.attn.c_attn.bias"][n_embd:2 * n_embd] = 0
    scale = np.abs(expected.flat_params).max()
    np.testing.assert_allclose(model.flat_params, expected.flat_params, rtol=0, atol=rtol * scale)
    for name in ("train_loss", "val_loss", "grad_norm"):
        np.testing.assert_allclose(_column(run, name), _column(reference, name), rtol=rtol)


@pytest.fixture(scope="module")
def one_process(corpus, tmp_path_factory):
    """The reference runs: one process, in float64 and float32."""
    runs = {}
    for dtype in ("float64", "float32"):
        runs[dtype] = tmp_path_factory.mktemp(f"one-{dtype}")
        assert train(runs[dtype], overrides=_settings(corpus, dtype=dtype)) == 0
    return runs


@pytest.fixture(scope="module")
def two_processes(corpus, tmp_path_factory):
    """An uninterrupted K = 2 run in float64, and its output."""
    out = tmp_path_factory.mktemp("two") / "run"
    job = _mpi_train(2, out, *_flags(_settings(corpus)))
    assert job.returncode == 0, job.stderr
    return out, job.stdout


# --------------------------------------------------------------------------- equal to one process


@needs_mpiexec
def test_two_processes_train_the_one_process_model_in_float64(two_processes, one_process):
    out, stdout = two_processes
    _assert_same_run(out, one_process["float64"], rtol=1e-12)
    assert "data-parallel on 2 MPI processes" in stdout and "2 of the 4 examples" in stdout
    assert stdout.count("done: 12 steps") == 1  # rank 0 alone prints
    assert sorted(os.listdir(out)) == ["checkpoint", "log.csv", "loss.png", "tokens.npy"] or \
        sorted(os.listdir(out)) == ["checkpoint", "log.csv", "tokens.npy"]  # loss.png needs matplotlib


@needs_mpiexec
@pytest.mark.parametrize("k, dtype, rtol", [(4, "float64", 1e-12), (2, "float32", 1e-6)])
def test_k_processes_train_the_one_process_model(tmp_path, corpus, one_process, k, dtype, rtol):
    job = _mpi_train(k, tmp_path, *_flags(_settings(corpus, dtype=dtype)))
    assert job.returncode == 0, job.stderr
    _assert_same_run(tmp_path, one_process[dtype], rtol)


@needs_mpiexec
def test_each_rank_gets_its_share_of_the_cores_for_blas_and_openmp():
    code = ("from numpyllm.distributed import world; from threadpoolctl import threadpool_info; w = world(); "
            "import os; os.write(1, f\"{sorted({pool['num_threads'] for pool in threadpool_info()})}\\n\".encode())")
    fixed = [name for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS") if name in os.environ]
    if fixed:
        pytest.skip(f"{', '.join(fixed)} fixes the thread count here")
    job = _run([MPIEXEC, "-n", "2", sys.executable, "-c", code])
    assert job.returncode == 0, job.stderr
    assert job.stdout.splitlines() == [f"[{max(1, usable_cores() // 2)}]"] * 2


@needs_mpiexec
def test_the_mean_weights_each_rank_by_its_scored_targets():
    # Rank 0 scores 3 targets (mean 7/3), rank 1 one (8): the global mean is 15/4, not (7/3 + 8) / 2.
    code = ("import numpy as np; from numpyllm.distributed import world; from numpyllm.params import flat_views; "
            "w = world(); values = [np.array([1.0, 2.0, 4.0]), np.array([8.0])][w.rank]; "
            "grads = flat_views(np.array([values.mean(), -values.mean()]), [('g', (2,))]); "
            "loss = w.mean(float(values.mean()), values.size, grads); "
            "import os; os.write(1, f\"{w.rank} {loss} {grads['g'].tolist()}\\n\".encode())")  # one write a rank
    job = _run([MPIEXEC, "-n", "2", sys.executable, "-c", code])
    assert job.returncode == 0, job.stderr
    assert sorted(job.stdout.splitlines()) == ["0 3.75 [3.75, -3.75]", "1 3.75 [3.75, -3.75]"]


@needs_mpiexec
def test_masked_lm_on_two_processes_trains_the_one_process_model(tmp_path, corpus):
    # Each rank's windows hold a different number of masked positions: the global count decides.
    bert = pytest.importorskip("numpyllm.bert", reason="needs numpyllm.bert (the BERT family)")
    if not hasattr(bert, "BertForMaskedLM"):
        pytest.skip("needs numpyllm.bert's BertForMaskedLM")
    from numpyllm.mlm import TASK
    from numpyllm.loop import run_training

    settings = dict(data=(str(corpus),), vocab_size=200, hidden_size=16, num_hidden_layers=1,
                    num_attention_heads=2, intermediate_size=32, max_position_embeddings=32, block_size=16,
                    batch_size=4, max_steps=12, warmup_steps=2, lr=1e-2, eval_interval=6, eval_steps=2,
                    checkpoint_interval=6, dtype="float64")
    assert run_training(TASK, tmp_path / "one", overrides=settings) == 0
    job = _run([MPIEXEC, "-n", "2", sys.executable, "-m", "numpyllm", "train-mlm", "--out", str(tmp_path / "two"),
                "--no-progress", *_flags(settings)])
    assert job.returncode == 0, job.stderr
    one = bert.BertForMaskedLM.from_pretrained(find_checkpoint(tmp_path / "one")).flat_params
    two = bert.BertForMaskedLM.from_pretrained(find_checkpoint(tmp_path / "two")).flat_params
    np.testing.assert_allclose(two, one, rtol=0, atol=1e-12 * np.abs(one).max())
    for name in ("train_loss", "val_loss", "grad_norm"):
        np.testing.assert_allclose(_column(tmp_path / "two", name), _column(tmp_path / "one", name), rtol=1e-12)


def _write_labelled(path, n):
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa"]
    rows = [f"{' '.join(words[(i + j) % 7] for j in range(3 + i % 4))},{'long' if i % 4 > 1 else 'short'}"
            for i in range(n)]
    path.write_text("text,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return str(path)


@needs_mpiexec
def test_a_classifier_on_two_processes_trains_the_one_process_model(tmp_path):
    # 13 training examples in batches of 4: each epoch ends with one example, which rank 1
    # takes alone while rank 0 adds a zero gradient.
    from numpyllm.bert import BertForSequenceClassification
    from numpyllm.classification import TASK
    from numpyllm.loop import run_training

    settings = dict(data=_write_labelled(tmp_path / "train.csv", 13), val=_write_labelled(tmp_path / "val.csv", 4),
                    vocab_size=120, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=32, max_length=16, epochs=2, batch_size=4, warmup_steps=2, lr=1e-2,
                    dtype="float64")
    assert run_training(TASK, tmp_path / "one", overrides=settings) == 0
    job = _run([MPIEXEC, "-n", "2", sys.executable, "-m", "numpyllm", "train-classifier", "--out",
                str(tmp_path / "two"), "--no-progress", *_flags(settings)])
    assert job.returncode == 0, job.stderr
    for directory in ("checkpoint", "best"):
        one = BertForSequenceClassification.from_pretrained(tmp_path / "one" / directory).flat_params
        two = BertForSequenceClassification.from_pretrained(tmp_path / "two" / directory).flat_params
        np.testing.assert_allclose(two, one, rtol=0, atol=1e-12 * np.abs(one).max())
    for name in ("train_loss", "val_loss", "grad_norm"):
        np.testing.assert_allclose(_column(tmp_path / "two", name), _column(tmp_path / "one", name), rtol=1e-12)


@needs_mpiexec
def test_a_batch_that_does_not_split_evenly_is_refused(tmp_path, corpus):
    job = _mpi_train(2, tmp_path, *_flags(_settings(corpus, batch_size=3)))
    assert job.returncode != 0
    assert "--batch-size (3) must be a multiple of the 2 MPI processes" in job.stderr
    assert not os.path.exists(tmp_path / "tokens.npy")  # refused before any work


# --------------------------------------------------------------------------- resume and Ctrl-C


@needs_mpiexec
def test_ctrl_c_on_one_rank_saves_once_and_resumes_bit_identically(tmp_path, corpus, two_processes):
    straight, _ = two_processes
    settings = _flags(_settings(corpus, checkpoint_interval=100))
    # Ctrl-C on rank 1 alone during step 5: every rank stops after it, rank 0 saves.
    job = _mpi_train(2, tmp_path / "resumed", *settings, fault=("interrupt", 1, 5))
    assert job.returncode == 130, job.stderr
    assert read_trainer_state(find_checkpoint(tmp_path / "resumed"))["step"] == 5
    assert job.stdout.count("stopped at step 5") == 1
    shutil.copytree(tmp_path / "resumed", tmp_path / "resumed-alone")

    job = _mpi_train(2, tmp_path / "resumed", "--resume")
    assert job.returncode == 0, job.stderr
    np.testing.assert_array_equal(_weights(tmp_path / "resumed"), _weights(straight))
    for name in ("train_loss", "val_loss", "grad_norm"):
        np.testing.assert_array_equal(_column(tmp_path / "resumed", name), _column(straight, name))
    moments = []
    for run in (tmp_path / "resumed", straight):
        optimizer = AdamW(GPT.from_pretrained(find_checkpoint(run)).params)
        optimizer.load(os.path.join(find_checkpoint(run), OPTIMIZER_FILE))
        moments.append(optimizer.state_dict())
    for name in ("exp_avg", "exp_avg_sq"):
        for tensor, moment in moments[1][name].items():
            np.testing.assert_array_equal(moments[0][name][tensor], moment)

    # Another K: one process continues the K = 2 checkpoint to the same model.
    assert train(tmp_path / "resumed-alone", resume=True) == 0
    _assert_same_run(tmp_path / "resumed-alone", straight, rtol=1e-12)


# --------------------------------------------------------------------------- faults


@needs_mpiexec
def test_an_exception_on_one_rank_ends_the_job(tmp_path, corpus):
    job = _mpi_train(2, tmp_path, *_flags(_settings(corpus)), fault=("raise", 1, 3))
    assert job.returncode != 0
    assert "RuntimeError on rank 1 of 2" in job.stderr and "injected fault on rank 1" in job.stderr


@needs_mpiexec
def test_ranks_whose_weights_drift_apart_stop_at_the_next_checkpoint(tmp_path, corpus):
    job = _mpi_train(2, tmp_path, *_flags(_settings(corpus)), fault=("diverge", 1, 2))
    assert job.returncode != 0
    assert "the parameters on rank(s) [1] differ from rank 0's" in job.stderr
    assert find_checkpoint(tmp_path) is None  # nothing was saved from disagreeing ranks


@needs_mpi4py
def test_a_launcher_of_another_mpi_is_an_error(tmp_path, corpus):
    # Open MPI's mpiexec announces the size in OMPI_COMM_WORLD_SIZE; MPICH ignores it and
    # starts a world of one, which would train K separate models.
    job = _run([sys.executable, "-m", "numpyllm", "train", "--out", str(tmp_path), *_flags(_settings(corpus))],
               env={"OMPI_COMM_WORLD_SIZE": "2"})
    if "OMPI_COMM_WORLD_SIZE=2" not in job.stderr:
        pytest.skip("mpi4py here is built with Open MPI, which reads OMPI_COMM_WORLD_SIZE itself")
    assert job.returncode == 2
    assert "the launcher started 2 processes (OMPI_COMM_WORLD_SIZE=2)" in job.stderr and "sees a world of 1" in job.stderr
    assert not os.listdir(tmp_path)


def test_a_launcher_without_mpi4py_is_an_error(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "3")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now raises ImportError
    with pytest.raises(ImportError, match=r"on 3 processes, but mpi4py cannot be imported .*numpyllm\[mpi\]"):
        world()


# --------------------------------------------------------------------------- one process


def test_one_process_is_a_world_that_changes_nothing():
    assert launched_size({}) == 1 and launched_size({"PMI_SIZE": "1", "MPI_LOCALNRANKS": "1"}) == 1
    assert launched_size({"PMI_SIZE": "4"}) == 4 and launched_size({"OMPI_COMM_WORLD_SIZE": "2"}) == 2
    alone = World()
    x = np.arange(6.0).reshape(3, 2)
    grads = x.ravel().copy()
    assert alone.shard(x) is x and alone.mean(0.25, 3, {"g": grads}) == 0.25 and alone.share("v") == "v"
    np.testing.assert_array_equal(grads, x.ravel())
    alone.check_divisible(3, "--batch-size")


def test_flat_buffer_is_the_buffer_behind_flat_views():
    buffer = np.zeros(10)
    views = flat_views(buffer, [("a", (2, 3)), ("b", (4,))])
    assert _flat_buffer(views) is buffer
    with pytest.raises(ValueError, match="views of one flat 1-D buffer"):
        _flat_buffer({"a": np.zeros(3)})
    with pytest.raises(ValueError, match="views of one flat 1-D buffer"):
        _flat_buffer({"a": views["a"]})  # part of the buffer only


def test_one_process_training_imports_nothing_of_mpi(tmp_path, corpus):
    code = ("import sys; from numpyllm.train import train; "
            f"status = train({str(tmp_path)!r}, overrides={_settings(corpus, max_steps=2)!r}); "
            "print(status, sorted(name for name in sys.modules if name.split('.')[0] == 'mpi4py'))")
    job = _run([sys.executable, "-c", code])
    assert job.returncode == 0, job.stderr
    assert job.stdout.splitlines()[-1] == "0 []"


@needs_mpiexec
def test_benchmark_prints_the_scaling_table(corpus, capsys):
    from benchmarks import distributed as bench

    result = bench.main(["--quick", "--steps", "5", "--data", str(corpus)])
    out = capsys.readouterr().out
    assert "| processes K | threads each |" in out and "communication per step at K=2" in out
    assert set(result["rates"]) == {f"1x{usable_cores()}", f"2x{max(1, usable_cores() // 2)}"}
    assert all(rate > 0 for rates in result["rates"].values() for rate in rates)
