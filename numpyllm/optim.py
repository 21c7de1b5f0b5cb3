"""AdamW with decoupled weight decay, and global gradient-norm clipping.

The update is the one ``torch.optim.AdamW`` performs, step t = 1, 2, ... for each
parameter p with gradient g (all element-wise):

    p ← p · (1 - lr · wd)                      only for tensors with ndim >= 2
    m ← β₁ m + (1 - β₁) g
    v ← β₂ v + (1 - β₂) g²
    p ← p - (lr / (1 - β₁ᵗ)) · m / (√v / √(1 - β₂ᵗ) + ε)

Weight decay touches the 2-D weight matrices (and the embeddings) only, never
biases or layernorm gains: decaying those pulls them towards zero for no benefit.

The moments m and v are kept per parameter, in the parameter's dtype. The state
(step count, hyperparameters, moments) round-trips through ``state_dict`` /
``load_state_dict`` and through ``save`` / ``load`` (an .npz file written
atomically), so that a resumed run continues bit for bit. Needs only NumPy. The
element-wise update and the sum of squares also run as compiled kernels
(``numpyllm._layers``) when ``numpyllm.backend`` selects them (by default, when built).
"""

import math
import os
import tokenize
import zipfile

import numpy as np

from . import backend
from ._checks import check_int, check_real
from .fileio import atomic_write

__all__ = ["AdamW", "clip_grad_norm"]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# The entries of a state_dict: scalars, then one {name: array} dict per moment.
_SCALARS = ("step", "lr", "betas", "eps", "weight_decay")
_MOMENTS = ("exp_avg", "exp_avg_sq")


def _check_tensor_dict(tensors, name):
    """Check ``tensors`` is a non-empty dict of str -> float32/float64 ndarray."""
    if not isinstance(tensors, dict):
        raise TypeError(f"{name} must be a dict of name -> numpy.ndarray, got {type(tensors).__name__}")
    if not tensors:
        raise ValueError(f"{name} must hold at least one tensor, got an empty dict")
    for key, array in tensors.items():
        if not isinstance(array, np.ndarray):
            raise TypeError(f"{name}[{key!r}] must be a numpy.ndarray, got {type(array).__name__}")
        if array.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{name}[{key!r}] must have dtype float32 or float64, got {array.dtype}")


def _check_same_tensors(tensors, reference, name, reference_name):
    """Check ``tensors`` has exactly the names, shapes and dtypes of ``reference``."""
    missing = sorted(set(reference) - set(tensors))
    extra = sorted(set(tensors) - set(reference))
    if missing or extra:
        raise ValueError(
            f"{name} must have the same names as {reference_name}; missing {missing}, unexpected {extra}"
        )
    for key, ref in reference.items():
        array = tensors[key]
        if array.shape != ref.shape:
            raise ValueError(f"{name}[{key!r}] must have shape {ref.shape} like {reference_name}, got {array.shape}")
        if array.dtype != ref.dtype:
            raise TypeError(f"{name}[{key!r}] must have dtype {ref.dtype} like {reference_name}, got {array.dtype}")


class AdamW:
    """AdamW over a dict of parameter arrays, updated in place.

    Parameters
    ----------
    params : dict[str, np.ndarray]
        The tensors to optimise (e.g. ``model.params``); float32 or float64, any shapes.
        ``step`` writes into these very arrays.
    lr : float, >= 0
        Learning rate; ``step(grads, lr=...)`` overrides it for one step (schedules).
    betas : (float, float), each in [0, 1)
        Decay rates of the first and second moment averages.
    eps : float, > 0
        Added to the bias-corrected √v to keep the division finite.
    weight_decay : float, >= 0
        Decoupled decay rate, applied to tensors with ndim >= 2 only.
    """

    def __init__(self, params, lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1):
        _check_tensor_dict(params, "params")
        self.params = params
        self._set_hyperparameters(lr, betas, eps, weight_decay)
        self.step_count = 0
        self.exp_avg = {name: np.zeros_like(p) for name, p in params.items()}
        self.exp_avg_sq = {name: np.zeros_like(p) for name, p in params.items()}
        # One scratch buffer per dtype, as large as the largest tensor: the step allocates nothing.
        self._scratch = {}
        for p in params.values():
            if self._scratch.get(p.dtype, np.empty(0)).size < p.size:
                self._scratch[p.dtype] = np.empty(p.size, dtype=p.dtype)

    def _set_hyperparameters(self, lr, betas, eps, weight_decay):
        self.lr = check_real(lr, "lr", 0.0)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = (
            check_real(betas[0], "betas[0]", 0.0, 1.0),
            check_real(betas[1], "betas[1]", 0.0, 1.0),
        )
        self.eps = check_real(eps, "eps", 0.0, low_inclusive=False)
        self.weight_decay = check_real(weight_decay, "weight_decay", 0.0)

    def step(self, grads, lr=None):
        """Apply one AdamW update to every parameter, in place.

        grads : dict[str, np.ndarray], the same names, shapes and dtypes as ``params``.
        lr : float or None; None uses ``self.lr``, a number overrides it for this step only.
        Non-finite gradients are not filtered: they propagate into the parameters
        (clip_grad_norm returns a non-finite norm so the caller can skip the step).
        """
        _check_tensor_dict(grads, "grads")
        _check_same_tensors(grads, self.params, "grads", "params")
        lr = self.lr if lr is None else check_real(lr, "lr", 0.0)
        beta1, beta2 = self.betas
        self.step_count += 1
        step_size = lr / (1.0 - beta1**self.step_count)
        sqrt_bias_correction2 = math.sqrt(1.0 - beta2**self.step_count)
        decay_factor = 1.0 - lr * self.weight_decay
        for name, p in self.params.items():
            g, m, v = grads[name], self.exp_avg[name], self.exp_avg_sq[name]
            kernel = backend.kernel(p, g, m, v)
            if kernel is not None and all(a.flags.c_contiguous for a in (p, m, v)):  # written in place
                kernel.adamw_update(p, g, m, v, decay_factor if p.ndim >= 2 else 1.0, beta1, beta2,
                                    step_size, sqrt_bias_correction2, self.eps)
                continue
            tmp = self._scratch[p.dtype][: p.size].reshape(p.shape)
            if p.ndim >= 2:
                p *= decay_factor
            m *= beta1  # m = β₁ m + (1 - β₁) g
            m += np.multiply(g, 1.0 - beta1, out=tmp)
            v *= beta2  # v = β₂ v + (1 - β₂) g²
            np.multiply(g, g, out=tmp)
            tmp *= 1.0 - beta2
            v += tmp
            np.sqrt(v, out=tmp)  # denominator √v / √(1 - β₂ᵗ) + ε
            tmp /= sqrt_bias_correction2
            tmp += self.eps
            np.divide(m, tmp, out=tmp)
            tmp *= step_size
            p -= tmp

    # ------------------------------------------------------------------ state

    def state_dict(self):
        """The full optimizer state as plain Python values and copies of the moment arrays."""
        return {
            "step": self.step_count,
            "lr": self.lr,
            "betas": self.betas,
            "eps": self.eps,
            "weight_decay": self.weight_decay,
            "exp_avg": {name: m.copy() for name, m in self.exp_avg.items()},
            "exp_avg_sq": {name: v.copy() for name, v in self.exp_avg_sq.items()},
        }

    def load_state_dict(self, state):
        """Restore a ``state_dict()``; moments are copied into this optimizer's own arrays.

        The moments must have this optimizer's parameter names, shapes and dtypes.
        """
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict from AdamW.state_dict(), got {type(state).__name__}")
        missing = [key for key in _SCALARS + _MOMENTS if key not in state]
        if missing:
            raise ValueError(f"state is missing the entries {missing}")
        step = check_int(state["step"], "state['step']", 0)
        for key in _MOMENTS:
            _check_tensor_dict(state[key], f"state[{key!r}]")
            _check_same_tensors(state[key], self.params, f"state[{key!r}]", "params")
        self._set_hyperparameters(state["lr"], tuple(state["betas"]), state["eps"], state["weight_decay"])
        self.step_count = step
        for name in self.params:
            np.copyto(self.exp_avg[name], state["exp_avg"][name])
            np.copyto(self.exp_avg_sq[name], state["exp_avg_sq"][name])

    def save(self, path):
        """Write the state to an .npz file at ``path``, atomically (temp file, then rename).

        Layout: scalars "step", "lr", "betas", "eps", "weight_decay", and one array per
        moment, "exp_avg/<name>" and "exp_avg_sq/<name>".
        """
        state = self.state_dict()
        arrays = {key: np.asarray(state[key]) for key in _SCALARS}
        for key in _MOMENTS:
            arrays.update({f"{key}/{name}": array for name, array in state[key].items()})
        with atomic_write(path) as f:
            np.savez(f, **arrays)

    def load(self, path):
        """Restore the state written by ``save(path)`` into this optimizer.

        Every array's .npy header is checked (shape and dtype against this optimizer's
        parameters) before its data is read, so a damaged or hostile file cannot make
        NumPy allocate more than the moments themselves; pickled objects are refused.
        Any problem raises ValueError naming ``path``.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"optimizer state {path!r} does not exist")
        try:
            _check_npz_headers(path, self._expected_arrays())
            with np.load(path, allow_pickle=False) as npz:
                state = {
                    "step": int(npz["step"]),
                    "lr": float(npz["lr"]),
                    "betas": tuple(float(b) for b in npz["betas"]),
                    "eps": float(npz["eps"]),
                    "weight_decay": float(npz["weight_decay"]),
                    "exp_avg": {},
                    "exp_avg_sq": {},
                }
                for key in npz.files:
                    group, _, name = key.partition("/")
                    if name:
                        state[group][name] = npz[key]
            self.load_state_dict(state)
        except (ValueError, TypeError, KeyError, OSError, EOFError, zipfile.BadZipFile, SyntaxError,
                tokenize.TokenError) as error:  # SyntaxError, TokenError: a damaged .npy header
            raise ValueError(f"{path} is not this optimizer's saved state ({type(error).__name__}: {error})") from None

    def _expected_arrays(self):
        """{npz entry name: (shape, dtype kind)} of every array ``save`` writes."""
        expected = {"step": ((), "iu"), "lr": ((), "f"), "betas": ((2,), "f"), "eps": ((), "f"),
                    "weight_decay": ((), "f")}
        for key in _MOMENTS:
            expected.update({f"{key}/{name}": (p.shape, "f") for name, p in self.params.items()})
        return expected


def _check_npz_headers(path, expected):
    """Check each member of the .npz at ``path`` against ``expected`` {name: (shape, kinds)}
    by its .npy header alone (no data read): the same names, shapes and dtype kinds."""
    with zipfile.ZipFile(path) as archive:
        names = {info.filename[:-4]: info for info in archive.infolist() if info.filename.endswith(".npy")}
        if set(names) != set(expected) or len(names) != len(archive.infolist()):
            raise ValueError(f"entries {sorted(archive.namelist())[:6]}... are not those of this optimizer "
                             f"(missing {sorted(set(expected) - set(names))[:3]}, "
                             f"unexpected {sorted(set(names) - set(expected))[:3]})")
        for name, info in names.items():
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                if version not in ((1, 0), (2, 0)):
                    raise ValueError(f"entry {name!r} is a .npy of version {version}, expected 1.0 or 2.0")
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, _, dtype = read_header(member)
            want_shape, kinds = expected[name]
            if tuple(shape) != tuple(want_shape) or dtype.kind not in kinds:
                raise ValueError(f"entry {name!r} has shape {tuple(shape)} and dtype {dtype}, expected shape "
                                 f"{tuple(want_shape)} of kind {kinds!r}")


def clip_grad_norm(grads, max_norm):
    """Scale all gradients in place so their global L2 norm is at most ``max_norm``.

        total_norm = √(Σ over tensors Σ g²)
        if total_norm > max_norm:  g ← g · max_norm / (total_norm + 1e-6)   for every tensor

    This is ``torch.nn.utils.clip_grad_norm_`` (same 1e-6 guard): one norm over all
    tensors, never per tensor. ``max_norm`` > 0 (inf: never clips). Returns ``total_norm``
    (a float, before clipping). Each tensor's sum of squares is a dot product in its own
    dtype (in double by the kernel); those sums add in float64.

    A non-finite norm (a NaN or inf gradient) leaves the gradients untouched and is
    returned as is, so the caller can detect it and skip the step.
    """
    _check_tensor_dict(grads, "grads")
    max_norm = check_real(max_norm, "max_norm", 0.0, math.inf, low_inclusive=False, high_inclusive=True)
    total_norm = math.sqrt(sum(_sum_of_squares(g) for g in grads.values()))
    if math.isfinite(total_norm) and total_norm > max_norm:
        scale = max_norm / (total_norm + 1e-6)
        for g in grads.values():
            g *= scale
    return total_norm


def _sum_of_squares(g):
    """Σ g² of one tensor as a float: a dot product in g's dtype (the kernel sums in double)."""
    kernel = backend.kernel(g)
    return kernel.sum_of_squares(g) if kernel is not None else float(np.vdot(g, g))
