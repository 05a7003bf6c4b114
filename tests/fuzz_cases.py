"""Bad inputs for every ``landscape`` command, as data: one :class:`Case` per command line.

Every case must end with exit status 2 and exactly one stderr line ``error: ...`` (see
``tests/test_fuzz.py``, which runs them and checks the rest: no traceback, no result file
left, no input changed, no code run from a file).

``argv`` holds placeholders filled in by the test, each naming a copy made for the case in
its own fresh folder ``{tmp}`` (so no case can damage the shared originals):

==================  =========================================================================
``{tmp}``           the case's folder (also the working directory while the case runs)
``{ckpt}``          ``{tmp}/global.pt``: the final global checkpoint of a tiny run
                    (MLP hidden [4] on synthetic 1x4x4 data, 3 classes, 4 clients x 20)
``{client0..2}``    ``{tmp}/client0.pt`` ...: three client checkpoints of its last round
``{surface}``       ``{tmp}/s.npz``: a complete 3x3 ``landscape surface`` result of ``{ckpt}``
``{plane}``         ``{tmp}/p.npz``: a complete 3x3 ``landscape plane`` result
``{hessian_json}``  ``{tmp}/h.json``: ``landscape hessian --top-k 5 --out`` of ``{ckpt}``
``{dirs}``          ``{tmp}/dirs.pt``: the directions of ``{surface}`` (``--save-directions``)
``{eig}``           ``{tmp}/eig.pt``: ``landscape hessian --save-eigenvectors`` of ``{ckpt}``
``{data}``          ``{tmp}/d.npz``: 20 valid samples (x 1x4x4, y in 0..2)
``{run}``           ``{tmp}/run``: the finished run folder (2 rounds) of ``landscape train``
==================  =========================================================================

``setup`` names a function of this module called as ``setup(tmp: Path)`` after the copies are
made; it builds the bad file (usually ``{tmp}/bad.pt``, ``{tmp}/bad.npz``, ...). A case with
``fault`` runs with its writes under ``{tmp}/fault`` failing: ``enospc`` (a full disk),
``erofs`` (a read-only file system) or ``eacces`` (permission denied); the setup runs before the
fault is armed, so it may put input files there. ``outputs`` are the files the command would
write: afterwards none may exist (or, if one existed before, it must be unchanged).
``may_change`` lists inputs allowed to change, ``secret`` a file whose content must not be
printed, ``expect`` a substring the one error line must contain.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shlex
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

#: Written by any code that a malicious input manages to run (the tests assert it never appears).
MARKER = "PWNED"
#: The folder whose writes fail in a case with ``fault``.
FAULT_DIR = "fault"
FAULTS = ("enospc", "erofs", "eacces")


@dataclass(frozen=True)
class Case:
    """One bad command line and what it may touch."""

    id: str
    argv: tuple[str, ...]
    outputs: tuple[str, ...] = ()
    setup: str | None = None
    note: str = ""
    fault: str | None = None
    may_change: tuple[str, ...] = ()
    secret: str | None = None
    expect: str | None = None


# ---------------------------------------------------------------------------------------------
# Setup functions: each builds one bad input into the case's folder.
# ---------------------------------------------------------------------------------------------

SETUPS: dict[str, object] = {}


def setup(fn):
    """Register a setup function under its name."""
    SETUPS[fn.__name__] = fn
    return fn


class Evil:
    """A pickle that runs ``touch MARKER`` when it is unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


def _marker(tmp: Path) -> str:
    return str(tmp / MARKER)


def _ckpt_dict(tmp: Path) -> dict:
    """The global checkpoint as the dict on disk (a copy to modify)."""
    return torch.load(tmp / "global.pt", map_location="cpu", weights_only=True)


def _save_ckpt(tmp: Path, obj: object, name: str = "bad.pt") -> None:
    torch.save(obj, tmp / name)


# --- checkpoints ({tmp}/bad.pt) ----------------------------------------------------------------

@setup
def ckpt_garbage(tmp: Path) -> None:
    (tmp / "bad.pt").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())


@setup
def ckpt_truncated(tmp: Path) -> None:
    (tmp / "bad.pt").write_bytes((tmp / "global.pt").read_bytes()[:300])


@setup
def ckpt_dir(tmp: Path) -> None:
    (tmp / "bad.pt").mkdir()
    (tmp / "bad.pt" / "keep.txt").write_text("a folder where a checkpoint is expected\n")


@setup
def ckpt_fifo(tmp: Path) -> None:
    os.mkfifo(tmp / "bad.pt")


@setup
def ckpt_pickle_code(tmp: Path) -> None:
    _save_ckpt(tmp, {"format": "landscape-checkpoint", "x": Evil(_marker(tmp))})


@setup
def ckpt_legacy_pickle_code(tmp: Path) -> None:
    with open(tmp / "bad.pt", "wb") as f:
        pickle.dump({"state_dict": Evil(_marker(tmp))}, f)


@setup
def ckpt_plain_state_dict(tmp: Path) -> None:
    _save_ckpt(tmp, _ckpt_dict(tmp)["state_dict"])


@setup
def ckpt_zip_not_torch(tmp: Path) -> None:
    with zipfile.ZipFile(tmp / "bad.pt", "w") as z:
        z.writestr("notes.txt", "a zip file, but not a torch checkpoint")


@setup
def ckpt_format_version_str(tmp: Path) -> None:
    obj = _ckpt_dict(tmp)
    obj["format_version"] = "one"
    _save_ckpt(tmp, obj)


@setup
def ckpt_no_state_dict(tmp: Path) -> None:
    obj = _ckpt_dict(tmp)
    del obj["state_dict"]
    _save_ckpt(tmp, obj)


@setup
def ckpt_no_model(tmp: Path) -> None:
    obj = _ckpt_dict(tmp)
    del obj["model"]
    _save_ckpt(tmp, obj)


@setup
def ckpt_model_string(tmp: Path) -> None:
    obj = _ckpt_dict(tmp)
    obj["model"] = "mlp"
    _save_ckpt(tmp, obj)


def _ckpt_with_model(tmp: Path, name: str, kwargs: object, file: str = "bad.pt") -> None:
    obj = _ckpt_dict(tmp)
    obj["model"] = {"name": name, "kwargs": kwargs}
    _save_ckpt(tmp, obj, file)


@setup
def ckpt_model_os_system(tmp: Path) -> None:
    _ckpt_with_model(tmp, "os:system", {"command": f"touch {shlex.quote(_marker(tmp))}"})


@setup
def ckpt_model_subprocess_run(tmp: Path) -> None:
    _ckpt_with_model(tmp, "subprocess:run", {"args": ["touch", _marker(tmp)]})


@setup
def ckpt_model_builtins_eval(tmp: Path) -> None:
    _ckpt_with_model(tmp, "builtins:eval",
                     {"source": f"open({_marker(tmp)!r}, 'w')", "globals": {}})


@setup
def ckpt_model_builtins_open(tmp: Path) -> None:
    _ckpt_with_model(tmp, "builtins:open", {"file": _marker(tmp), "mode": "w"})


@setup
def ckpt_model_os_mkdir(tmp: Path) -> None:
    _ckpt_with_model(tmp, "os:mkdir", {"path": _marker(tmp)})


@setup
def ckpt_kwargs_hidden_abc(tmp: Path) -> None:
    _ckpt_with_model(tmp, "mlp", {"hidden": "abc", "in_features": 16, "num_classes": 3})


@setup
def ckpt_kwargs_list(tmp: Path) -> None:
    _ckpt_with_model(tmp, "mlp", [1, 2])


@setup
def ckpt_kwargs_negative(tmp: Path) -> None:
    _ckpt_with_model(tmp, "mlp", {"hidden": [-1], "in_features": 16, "num_classes": 3})


@setup
def ckpt_kwargs_huge(tmp: Path) -> None:
    _ckpt_with_model(tmp, "mlp", {"hidden": [10**12], "in_features": 16, "num_classes": 3})


@setup
def ckpt_state_non_tensor(tmp: Path) -> None:
    obj = _ckpt_dict(tmp)
    obj["state_dict"] = {k: "weights" for k in obj["state_dict"]}
    _save_ckpt(tmp, obj)


def _poison(tmp: Path, value: float, file: str = "bad.pt") -> None:
    obj = _ckpt_dict(tmp)
    key = next(k for k in obj["state_dict"] if k.endswith("weight"))
    obj["state_dict"][key] = obj["state_dict"][key].clone()
    obj["state_dict"][key][0, 0] = value
    _save_ckpt(tmp, obj, file)


@setup
def ckpt_nan_weight(tmp: Path) -> None:
    _poison(tmp, float("nan"))


@setup
def client_nan_weight(tmp: Path) -> None:
    obj = torch.load(tmp / "client0.pt", map_location="cpu", weights_only=True)
    key = next(k for k in obj["state_dict"] if k.endswith("weight"))
    obj["state_dict"][key] = obj["state_dict"][key].clone()
    obj["state_dict"][key][0, 0] = float("nan")
    torch.save(obj, tmp / "bad.pt")


def _with_data(tmp: Path, data: object, file: str = "bad.pt", src: str = "global.pt", **fields: object) -> None:
    obj = torch.load(tmp / src, map_location="cpu", weights_only=True)
    obj["data"] = data
    obj.update(fields)
    torch.save(obj, tmp / file)


@setup
def ckpt_data_etc_hostname(tmp: Path) -> None:
    _with_data(tmp, {"dataset": "file", "split": "train", "path": "/etc/hostname"})


@setup
def ckpt_data_etc_passwd_pt(tmp: Path) -> None:
    """A data spec naming an arbitrary local file, with a suffix that gets it read."""
    (tmp / "outside").mkdir()
    os.symlink("/etc/passwd", tmp / "outside" / "passwd.pt")
    _with_data(tmp, {"dataset": "file", "split": "train", "path": str(tmp / "outside" / "passwd.pt")})


@setup
def ckpt_split_file_passwd(tmp: Path) -> None:
    data = dict(_ckpt_dict(tmp)["data"])
    data["partition"] = {"num_clients": 4, "samples_per_client": None, "alpha": None, "seed": 0,
                         "split_file": "/etc/passwd"}
    _with_data(tmp, data, src="client0.pt")


SECRET_TEXT = "root:x:0:0:TOPSECRET-7f3a9c:/root:/bin/bash\nuser,image,class\nTOPSECRET-e21b,TOPSECRET-0042,7\n"


@setup
def ckpt_split_file_secret(tmp: Path) -> None:
    """A split file outside the checkpoint's folder whose rows must never be printed."""
    (tmp / "elsewhere").mkdir()
    (tmp / "elsewhere" / "secret.csv").write_text(SECRET_TEXT)
    data = dict(_ckpt_dict(tmp)["data"])
    data["partition"] = {"num_clients": 4, "samples_per_client": None, "alpha": None, "seed": 0,
                         "split_file": str(tmp / "elsewhere" / "secret.csv")}
    _with_data(tmp, data, src="client0.pt")


@setup
def ckpt_data_list(tmp: Path) -> None:
    _with_data(tmp, [1, 2])


@setup
def ckpt_partition_bad(tmp: Path) -> None:
    data = dict(_ckpt_dict(tmp)["data"])
    data["partition"] = {"num_clients": "x", "samples_per_client": 20, "alpha": 0.0, "seed": 0}
    _with_data(tmp, data, src="client0.pt")


@setup
def ckpt_client_id_99(tmp: Path) -> None:
    _with_data(tmp, _ckpt_dict(tmp)["data"], src="client0.pt", client_id=99)


@setup
def ckpt_other_arch(tmp: Path) -> None:
    """A valid checkpoint of another architecture (mlp hidden [5])."""
    from landscape import checkpoint, models

    torch.manual_seed(0)
    model = models.build("mlp", hidden=[5], in_features=16, num_classes=3)
    obj = _ckpt_dict(tmp)
    ck = checkpoint.from_model(model, "mlp", {"hidden": [5], "in_features": 16, "num_classes": 3},
                               role="client", client_id=0, data=obj["data"])
    checkpoint.save(ck, tmp / "bad.pt")


@setup
def ckpt_collinear(tmp: Path) -> None:
    """C = 2 B - A: the three models of a plane lie on one line."""
    a, b = _ckpt_dict(tmp), torch.load(tmp / "client0.pt", map_location="cpu", weights_only=True)
    a["state_dict"] = {k: 2 * b["state_dict"][k] - v for k, v in a["state_dict"].items()}
    _save_ckpt(tmp, a)


@setup
def ckpt_symlink(tmp: Path) -> None:
    os.symlink("global.pt", tmp / "link.pt")


@setup
def ckpt_hardlink(tmp: Path) -> None:
    os.link(tmp / "global.pt", tmp / "hard.pt")


@setup
def dirs_symlink(tmp: Path) -> None:
    os.symlink("dirs.pt", tmp / "dirs_link.pt")


# --- data files ({tmp}/bad.npz) -----------------------------------------------------------------

def _npz(tmp: Path, name: str = "bad.npz", **arrays: object) -> None:
    with open(tmp / name, "wb") as f:
        np.savez(f, **arrays)


def _x(n: int = 12) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 1, 4, 4)).astype(np.float32)


@setup
def data_str_labels(tmp: Path) -> None:
    _npz(tmp, x=_x(), y=np.array(["cat", "dog", "cow"] * 4))


@setup
def data_len_mismatch(tmp: Path) -> None:
    _npz(tmp, x=_x(12), y=np.arange(7) % 3)


@setup
def data_empty(tmp: Path) -> None:
    _npz(tmp, x=np.zeros((0, 1, 4, 4), np.float32), y=np.zeros(0, np.int64))


@setup
def data_float_labels(tmp: Path) -> None:
    _npz(tmp, x=_x(), y=np.linspace(0, 2, 12))


@setup
def data_labels_too_big(tmp: Path) -> None:
    _npz(tmp, x=_x(), y=np.arange(12) % 3 + 5)


@setup
def data_nan_x(tmp: Path) -> None:
    x = _x()
    x[0, 0, 0, 0] = np.nan
    _npz(tmp, x=x, y=np.arange(12) % 3)


@setup
def data_wrong_shape(tmp: Path) -> None:
    _npz(tmp, x=np.zeros((12, 5), np.float32), y=np.arange(12) % 3)


@setup
def data_scalar_x(tmp: Path) -> None:
    _npz(tmp, x=np.float32(1.0), y=np.int64(0))


@setup
def data_garbage(tmp: Path) -> None:
    (tmp / "bad.npz").write_bytes(b"PK\x03\x04" + os.urandom(200))


@setup
def data_object_array(tmp: Path) -> None:
    np.save(tmp / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(tmp / "bad.npz", "w") as z:
        z.write(tmp / "obj.npy", "x.npy")
        z.write(tmp / "obj.npy", "y.npy")
    (tmp / "obj.npy").unlink()


@setup
def data_pt_code(tmp: Path) -> None:
    torch.save({"x": Evil(_marker(tmp)), "y": torch.zeros(3)}, tmp / "bad_data.pt")


@setup
def data_num_classes_str(tmp: Path) -> None:
    _npz(tmp, x=_x(), y=np.arange(12) % 3, num_classes=np.array("three"))


@setup
def data_complex_x(tmp: Path) -> None:
    _npz(tmp, x=_x().astype(np.complex64), y=np.arange(12) % 3)


# --- surface result files ({tmp}/bad_s.npz) ----------------------------------------------------

def _result_arrays(tmp: Path) -> dict[str, np.ndarray]:
    with np.load(tmp / "s.npz", allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _result_with(tmp: Path, meta: object = None, drop: tuple[str, ...] = (), **arrays: object) -> None:
    raw = _result_arrays(tmp)
    if meta is not None:
        raw["metadata"] = np.array(meta if isinstance(meta, str) else json.dumps(meta))
    for key in drop:
        raw.pop(key)
    raw.update(arrays)
    _npz(tmp, "bad_s.npz", **raw)


def _surface_meta(tmp: Path) -> dict:
    return json.loads(str(_result_arrays(tmp)["metadata"]))


@setup
def result_broken_json(tmp: Path) -> None:
    _result_with(tmp, meta='{"format": "landscape-surface", "kind": ')


@setup
def result_meta_list(tmp: Path) -> None:
    _result_with(tmp, meta="[1, 2]")


@setup
def result_no_kind(tmp: Path) -> None:
    meta = _surface_meta(tmp)
    del meta["kind"]
    _result_with(tmp, meta=meta)


@setup
def result_no_axis(tmp: Path) -> None:
    _result_with(tmp, drop=("axis0",))


@setup
def result_no_done(tmp: Path) -> None:
    _result_with(tmp, drop=("done",))


@setup
def result_wrong_shape(tmp: Path) -> None:
    raw = _result_arrays(tmp)
    _result_with(tmp, **{k: np.zeros(5) for k in raw if k.startswith("values/")})


@setup
def result_object_meta(tmp: Path) -> None:
    raw = _result_arrays(tmp)
    raw["metadata"] = np.array([Evil(_marker(tmp))], dtype=object)
    with open(tmp / "bad_s.npz", "wb") as f:
        np.savez(f, **raw)


@setup
def result_markers_bad(tmp: Path) -> None:
    meta = _surface_meta(tmp)
    meta["markers"] = [{"label": "x", "coords": "abc"}]
    _result_with(tmp, meta=meta)


# --- Hessian JSON ({tmp}/bad.json) -------------------------------------------------------------

@setup
def hjson_garbage(tmp: Path) -> None:
    (tmp / "bad.json").write_text("{not json")


@setup
def hjson_two_eigenvalues(tmp: Path) -> None:
    h = json.loads((tmp / "h.json").read_text())
    h["eigenvalues"], h["lambda_max_over_lambda_5"] = h["eigenvalues"][:2], None
    (tmp / "bad.json").write_text(json.dumps(h))


@setup
def hjson_strings(tmp: Path) -> None:
    h = json.loads((tmp / "h.json").read_text())
    h["lambda_max"], h["lambda_max_over_lambda_5"] = "big", "huge"
    h["metadata"] = "none"
    (tmp / "bad.json").write_text(json.dumps(h))


# --- run folders ({tmp}/run, modified in place) ------------------------------------------------

@setup
def run_metrics_cut(tmp: Path) -> None:
    path = tmp / "run" / "metrics.jsonl"
    text = path.read_text()
    path.write_text(text[: len(text) - 15])


@setup
def run_no_state(tmp: Path) -> None:
    (tmp / "run" / "state.pt").unlink()


def _run_config(tmp: Path) -> dict:
    return json.loads((tmp / "run" / "config.json").read_text())


def _write_run_config(tmp: Path, obj: object) -> None:
    (tmp / "run" / "config.json").write_text(obj if isinstance(obj, str) else json.dumps(obj))


@setup
def run_config_os_system(tmp: Path) -> None:
    cfg = _run_config(tmp)
    cfg["config"]["model"] = "os:system"
    cfg["config"]["model_kwargs"] = {"command": f"touch {shlex.quote(_marker(tmp))}"}
    _write_run_config(tmp, cfg)


@setup
def run_config_garbage(tmp: Path) -> None:
    _write_run_config(tmp, '{"config": {"algorithm": ')


@setup
def run_config_list(tmp: Path) -> None:
    _write_run_config(tmp, "[1, 2]")


@setup
def run_config_no_config(tmp: Path) -> None:
    _write_run_config(tmp, {"data": {}})


@setup
def run_config_unknown_key(tmp: Path) -> None:
    cfg = _run_config(tmp)
    cfg["config"]["warp_speed"] = 9
    _write_run_config(tmp, cfg)


@setup
def run_config_split_passwd(tmp: Path) -> None:
    cfg = _run_config(tmp)
    cfg["config"]["split_file"] = "/etc/passwd"
    _write_run_config(tmp, cfg)


@setup
def run_state_garbage(tmp: Path) -> None:
    (tmp / "run" / "state.pt").write_bytes(os.urandom(500))


@setup
def run_state_code(tmp: Path) -> None:
    torch.save({"format": "x", "y": Evil(_marker(tmp))}, tmp / "run" / "state.pt")


@setup
def run_state_no_server(tmp: Path) -> None:
    state = torch.load(tmp / "run" / "state.pt", map_location="cpu", weights_only=True)
    del state["server"]
    torch.save(state, tmp / "run" / "state.pt")


@setup
def run_state_round_ahead(tmp: Path) -> None:
    state = torch.load(tmp / "run" / "state.pt", map_location="cpu", weights_only=True)
    state["round"] = 99
    torch.save(state, tmp / "run" / "state.pt")


# --- CIFAR folders ({tmp}/cifar/cifar-10-batches-py) -------------------------------------------

CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _cifar(tmp: Path, content) -> None:
    folder = tmp / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in CIFAR10_FILES:
        (folder / name).write_bytes(content(name))


def _pickled(obj: object) -> bytes:
    return pickle.dumps(obj)


@setup
def cifar_garbage(tmp: Path) -> None:
    _cifar(tmp, lambda name: os.urandom(256))


@setup
def cifar_code(tmp: Path) -> None:
    _cifar(tmp, lambda name: _pickled({b"data": Evil(_marker(tmp)), b"labels": [0]}))


@setup
def cifar_wrong_size(tmp: Path) -> None:
    _cifar(tmp, lambda name: _pickled({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))


@setup
def cifar_label_mismatch(tmp: Path) -> None:
    _cifar(tmp, lambda name: _pickled({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1]}))


@setup
def cifar_labels_out_of_range(tmp: Path) -> None:
    _cifar(tmp, lambda name: _pickled({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 77, -3]}))


@setup
def cifar_dirs(tmp: Path) -> None:
    folder = tmp / "cifar" / "cifar-10-batches-py"
    for name in CIFAR10_FILES:
        (folder / name).mkdir(parents=True)


# --- CIFAR archives for `landscape download` ---------------------------------------------------

def _tiny_cifar_members() -> list[tuple[str, bytes]]:
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}
    return [(f"cifar-10-batches-py/{n}", _pickled(batch)) for n in CIFAR10_FILES]


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for info, payload in members:
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)


def _file_member(name: str, payload: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    return info, payload


ARCHIVE = "cifar-10-python.tar.gz"


def _archive_with(tmp: Path, extra: list[tuple[tarfile.TarInfo, bytes | None]], folder: str = "dl") -> None:
    members = [_file_member(n, p) for n, p in _tiny_cifar_members()]
    _tar(tmp / folder / ARCHIVE, extra + members)


@setup
def archive_traversal(tmp: Path) -> None:
    _archive_with(tmp, [_file_member("../escape.txt", b"escaped\n")])


@setup
def archive_absolute(tmp: Path) -> None:
    _archive_with(tmp, [_file_member(str(tmp / "abs_escape.txt"), b"escaped\n")])


@setup
def archive_symlink_out(tmp: Path) -> None:
    link = tarfile.TarInfo("cifar-10-batches-py/evil_link")
    link.type, link.linkname = tarfile.SYMTYPE, str(tmp / "run" / "config.json")
    write = _file_member("cifar-10-batches-py/evil_link", b"overwritten through a link\n")
    _archive_with(tmp, [(link, None), write])


@setup
def archive_hardlink_out(tmp: Path) -> None:
    link = tarfile.TarInfo("cifar-10-batches-py/evil_hard")
    link.type, link.linkname = tarfile.LNKTYPE, str(tmp / "global.pt")
    _archive_with(tmp, [(link, None)])


@setup
def archive_device(tmp: Path) -> None:
    dev = tarfile.TarInfo("cifar-10-batches-py/null")
    dev.type, dev.devmajor, dev.devminor = tarfile.CHRTYPE, 1, 3
    _archive_with(tmp, [(dev, None)])


@setup
def archive_garbage(tmp: Path) -> None:
    (tmp / "dl").mkdir()
    (tmp / "dl" / ARCHIVE).write_bytes(os.urandom(1000))


@setup
def archive_truncated(tmp: Path) -> None:
    _archive_with(tmp, [])
    raw = (tmp / "dl" / ARCHIVE).read_bytes()
    (tmp / "dl" / ARCHIVE).write_bytes(raw[: len(raw) // 2])


@setup
def archive_unrelated(tmp: Path) -> None:
    _tar(tmp / "dl" / ARCHIVE, [_file_member("readme.txt", b"no cifar here\n")])


@setup
def archive_is_dir(tmp: Path) -> None:
    (tmp / "dl" / ARCHIVE).mkdir(parents=True)


@setup
def archive_in_fault(tmp: Path) -> None:
    """A valid tiny archive in the fault folder: extracting it is what fails."""
    _archive_with(tmp, [], folder=FAULT_DIR)


# --- outputs that cannot be written -------------------------------------------------------------

TAKEN = ("json", "npz", "png", "html", "pt", "md")


@setup
def output_dirs(tmp: Path) -> None:
    """Existing folders ``{tmp}/taken.<suffix>`` (each holding a file) where outputs are asked for."""
    for suffix in TAKEN:
        (tmp / f"taken.{suffix}").mkdir()
        (tmp / f"taken.{suffix}" / "keep.txt").write_text("keep me\n")


@setup
def taken_csv(tmp: Path) -> None:
    """``--out t.md`` of the tables also writes ``t.csv``: make that one a folder."""
    (tmp / "t.csv").mkdir()
    (tmp / "t.csv" / "keep.txt").write_text("keep me\n")


# ---------------------------------------------------------------------------------------------
# The cases
# ---------------------------------------------------------------------------------------------

SYN = "synthetic:n=120,classes=3,shape=1x4x4"
H_OUT, S_OUT, P_OUT, F_OUT, V_OUT, RUN_OUT = ("{tmp}/h_out.json", "{tmp}/s_out.npz", "{tmp}/p_out.npz",
                                              "{tmp}/f_out.json", "{tmp}/v_out.html", "{tmp}/newrun")
FAST = ("--num-samples", "20", "--device", "cpu")
TRAIN = ("train", "--dataset", SYN, "--model", "mlp", "--model-kwargs", '{"hidden": [4]}', "--num-clients", "4",
         "--samples-per-client", "20", "--clients-per-round", "3", "--rounds", "2", "--batch-size", "10",
         "--eval-every", "0", "--save-every", "0", "--device", "cpu", "--no-progress")

def elementwise_loss(outputs, targets):
    """A user loss that forgets to reduce (for ``--loss tests.fuzz_cases:elementwise_loss``)."""
    return outputs.sum(1) * 0 + 1.0


def failing_loss(outputs, targets):
    """A user loss that raises."""
    raise ValueError("this loss fails\non two lines")


def squared_loss(outputs, targets):
    """A valid user loss (used where another option is the bad input)."""
    return ((outputs - nn.functional.one_hot(targets, outputs.shape[1]).to(outputs.dtype)) ** 2).mean()


CASES: list[Case] = []


def add(id: str, argv: list[str] | tuple[str, ...], outputs: tuple[str, ...] = (), **kw) -> None:
    CASES.append(Case(id, tuple(argv), tuple(outputs), **kw))


def hessian(id: str, *extra: str, ckpt: str = "{ckpt}", outputs: tuple[str, ...] = (), **kw) -> None:
    add(f"hessian/{id}", ["hessian", ckpt, "--top-k", "2", *FAST, "--out", H_OUT, *extra], (H_OUT, *outputs), **kw)


def surface(id: str, *extra: str, ckpt: str = "{ckpt}", outputs: tuple[str, ...] = (), **kw) -> None:
    add(f"surface/{id}", ["surface", ckpt, "--resolution", "3", *FAST, "--out", S_OUT, *extra], (S_OUT, *outputs), **kw)


def plane(id: str, *extra: str, models: tuple[str, ...] = ("{ckpt}", "{client0}", "{client1}"),
          outputs: tuple[str, ...] = (), **kw) -> None:
    add(f"plane/{id}", ["plane", *models, "--resolution", "3", *FAST, "--out", P_OUT, *extra], (P_OUT, *outputs), **kw)


def flat(id: str, *extra: str, ckpt: str = "{ckpt}", clients: tuple[str, ...] = ("{client0}", "{client1}"),
         outputs: tuple[str, ...] = (), **kw) -> None:
    add(f"flatness/{id}", ["flatness", ckpt, "--clients", *clients, "--ascent-steps", "2", *FAST, "--out", F_OUT, *extra],
        (F_OUT, *outputs), **kw)


def train(id: str, *extra: str, out: str = RUN_OUT, outputs: tuple[str, ...] = (), **kw) -> None:
    add(f"train/{id}", [*TRAIN, "--out", out, *extra], (out, *outputs), **kw)


def view(id: str, *results: str, extra: tuple[str, ...] = (), outputs: tuple[str, ...] = (), **kw) -> None:
    add(f"view/{id}", ["view", *results, "--html", V_OUT, *extra], (V_OUT, *outputs), **kw)


# --- argparse-level mistakes (one or two per command: they share one fix) ------------------------

add("cli/no-command", [])
add("cli/unknown-command", ["hessain", "{ckpt}"])
hessian("no-checkpoint", ckpt="--top-k")
hessian("unknown-flag", "--topk", "3")
hessian("method-bogus", "--method", "arnoldi")
surface("unknown-flag", "--resolutoin", "5")
surface("dim-4", "--dim", "4")
surface("interval-one-value", "--to", "{client0}", "--interval", "1")
plane("two-models", models=("{ckpt}", "{client0}"))
flat("no-clients", clients=())
train("num-rounds", "--num-rounds", "5", expect="--rounds", note="the one line must suggest --rounds")
train("engine-bogus", "--engine", "turbo")
add("view/no-results", ["view", "--html", V_OUT], (V_OUT,))
add("download/unknown-dataset", ["download", "cifar99", "--data-dir", "{tmp}/dl"], ("{tmp}/dl",))
add("models/extra-argument", ["models", "cnn"])
add("demo/rounds-abc", ["demo", "--rounds", "abc", "--out", "{tmp}/demo"], ("{tmp}/demo",))

# --- numeric options: NaN, inf, negative, zero, absurd, not a number ----------------------------

for value in ("inf", "nan", "-1", "0", "abc"):
    hessian(f"tol={value}", "--tol", value)
for value in ("0", "-3"):
    hessian(f"max-iter={value}", "--max-iter", value)
for value in ("0", "100000000"):
    hessian(f"top-k={value}", "--top-k", value)
hessian("trace-samples=0", "--trace", "--trace-samples", "0")
hessian("density-steps=0", "--density", "--density-steps", "0")
hessian("num-samples=0", "--num-samples", "0")
hessian("batch-size=0", "--batch-size", "0")
for value in ("meta", "cuda:99"):
    hessian(f"device={value}", "--device", value)
for value, label in (("[1]", "list"), ("{bad", "broken"), ('{"hidden": "abc"}', "hidden-abc"),
                     ('{"hidden": [-1]}', "hidden-negative"), ('{"hidden": [0]}', "hidden-zero")):
    hessian(f"model-kwargs={label}", "--model-kwargs", value)
hessian("model=nosuch", "--model", "nosuch")
hessian("model=os:system", "--model", "os:system")
hessian("plot=xyz", "--plot", "{tmp}/d.xyz", outputs=("{tmp}/d.xyz",),
        note="the JSON must not be written when the plot cannot be")
# The objective's options (--loss, --params, --curvature, --ignore-index): issue 10.
hessian("loss=nosuch", "--loss", "huber", expect="unknown loss 'huber'")
hessian("loss=module-missing", "--loss", "no_such_module_xyz:f", expect="cannot import module")
hessian("loss=attr-missing", "--loss", "tests.fuzz_cases:no_such_loss", expect="has no callable")
hessian("loss=not-scalar", "--loss", "tests.fuzz_cases:elementwise_loss", expect="not a scalar mean")
hessian("loss=raises", "--loss", "tests.fuzz_cases:failing_loss", expect="raised ValueError")
hessian("loss=mse-on-labels", "--loss", "mse", expect="mse needs targets shaped like the outputs")
hessian("loss=nll-float", "--loss", "nll", "--data", "{tmp}/bad.npz", setup="data_float_labels",
        expect="nll needs integer class labels")
hessian("params=nomatch", "--params", "^nothing", expect="matches no parameter")
hessian("params=bad-regex", "--params", "(", expect="is not a regular expression")
hessian("curvature=bogus", "--curvature", "hessian2")
hessian("ignore-index=abc", "--ignore-index", "abc")
hessian("per-layer-top-k-too-big", "--per-layer", "--top-k", "100000", expect="exceeds the number of parameters")
surface("loss=nosuch", "--loss", "huber", expect="unknown loss 'huber'")
surface("loss=bn-recalibrate", "--loss", "tests.fuzz_cases:squared_loss", "--bn", "recalibrate",
        expect="--bn recalibrate works with the default cross-entropy")
flat("loss=not-scalar", "--loss", "tests.fuzz_cases:elementwise_loss", expect="not a scalar mean")
flat("params=nomatch", "--params", "^nothing", expect="matches no parameter")
flat("curvature=bogus", "--curvature", "hessian2")

for value in ("nan", "0", "-inf", "1e308"):
    surface(f"range={value}", "--range", value)
for value in ("1", "1000000000000"):
    surface(f"resolution={value}", "--resolution", value)
surface("interval-reversed", "--to", "{client0}", "--interval", "1", "0")
surface("interval-without-to", "--interval", "1", "0", note="--interval only applies to --to")
surface("points-per-batch=0", "--points-per-batch", "0")
surface("bn-samples=0", "--bn", "recalibrate", "--bn-samples", "0")
for value in ("inf", "nan", "-1"):
    surface(f"eigen-tol={value}", "--directions", "eigen", "--eigen-tol", value)
surface("sources=bogus", "--sources", "bogus")
surface("sources=test-without-split", "--data", "{data}", "--sources", "train,test",
        note="an explicit test source that the data lacks")
surface("png=xyz", "--png", "{tmp}/x.xyz", outputs=("{tmp}/x.xyz",),
        note="the result must not be written when the image cannot be")
surface("html=png-suffix", "--html", "{tmp}/x.png", outputs=("{tmp}/x.png",), note="HTML into a .png file?")
surface("pca-without-trajectory", "--directions", "pca")
surface("directions-file-checkpoint", "--directions-file", "{ckpt}")
surface("directions-file-code", "--directions-file", "{tmp}/bad.pt", setup="ckpt_pickle_code")
surface("directions-file-dim-3", "--dim", "3", "--directions-file", "{dirs}")
surface("to-other-arch", "--to", "{tmp}/bad.pt", setup="ckpt_other_arch")
surface("out-holds-another-run", "--resolution", "5", "--out", "{surface}")

for value in ("-1", "nan"):
    plane(f"margin={value}", "--margin", value)
plane("resolution=1", "--resolution", "1")
plane("same-model-twice", models=("{ckpt}", "{ckpt}", "{client0}"))
plane("collinear", models=("{ckpt}", "{client0}", "{tmp}/bad.pt"), setup="ckpt_collinear")
plane("project-other-arch", "--project", "{tmp}/bad.pt", setup="ckpt_other_arch")
plane("png=xyz", "--png", "{tmp}/x.xyz", outputs=("{tmp}/x.xyz",))

for value in ("inf", "nan", "0"):
    flat(f"rho={value}", "--rho", value)
flat("ascent-steps=-1", "--ascent-steps", "-1")
for value in ("nan", "inf", "-1"):
    flat(f"tol={value}", "--tol", value)
flat("client-data-count", "--client-data", "{data}", note="one data set for two clients")
flat("client-data-missing", "--client-data", "{tmp}/missing.npz", "{data}")
flat("client-data-code", "--client-data", "{tmp}/bad_data.pt", "{data}", setup="data_pt_code")
flat("global-as-client", clients=("{ckpt}",))
flat("png=xyz", "--png", "{tmp}/f.xyz", outputs=("{tmp}/f.xyz",),
     note="the JSON must not be written when the image cannot be")

for flag, value in (("--lr", "nan"), ("--lr", "-1"), ("--rounds", "0"), ("--clients-per-round", "0"),
                    ("--alpha", "-1"), ("--alpha", "nan"), ("--rho", "inf"), ("--gamma", "1"), ("--swa-start", "2"),
                    ("--clients-per-round", "50"), ("--samples-per-client", "100000"), ("--lr", "fast"),
                    ("--dataset", "nosuch"), ("--model", "nosuch"), ("--split-file", "{tmp}/missing.csv")):
    train(f"{flag[2:]}={value}", flag, value)
train("model-kwargs=hidden-abc", "--model-kwargs", '{"hidden": "abc"}')
train("model-kwargs=list", "--model-kwargs", "[1, 2]")
train("model-kwargs=hidden-negative", "--model-kwargs", '{"hidden": [-4]}')
train("dataset=file-str-labels", "--dataset", "{tmp}/bad.npz", setup="data_str_labels")
train("split-file=passwd", "--split-file", "/etc/passwd", secret="/etc/passwd")
train("split-file=secret", "--split-file", "{tmp}/elsewhere/secret.csv", setup="ckpt_split_file_secret",
      secret="{tmp}/elsewhere/secret.csv")
train("split-file=checkpoint", "--split-file", "{ckpt}")
train("out-holds-a-run", out="{run}")
train("resume-different-config", "--resume", "--lr", "0.3", out="{run}")

view("missing", "{tmp}/missing.npz")
view("hessian-json", "{hessian_json}")
view("labels-count", "{surface}", extra=("--labels", "a", "b"))
view("two-kinds", "{surface}", "{plane}")
view("png=xyz", "{surface}", extra=("--png", "{tmp}/v.xyz"), outputs=("{tmp}/v.xyz",),
     note="the HTML must not be written when the image cannot be")
for name in ("result_broken_json", "result_meta_list", "result_no_kind", "result_no_axis", "result_no_done",
             "result_wrong_shape", "result_object_meta", "result_markers_bad"):
    view(name.removeprefix("result_").replace("_", "-"), "{tmp}/bad_s.npz", setup=name)
for name in ("result_broken_json", "result_meta_list"):
    surface(f"out-is-{name.removeprefix('result_').replace('_', '-')}", "--out", "{tmp}/bad_s.npz", setup=name,
            note="continuing a broken result file")
    add(f"figures/fig01-{name.removeprefix('result_').replace('_', '-')}",
        ["figures", "fig01", "a={tmp}/bad_s.npz", "--out", "{tmp}/fig.png"], ("{tmp}/fig.png", "{tmp}/fig.html"),
        setup=name)

add("figures/unknown-name", ["figures", "fig99", "{hessian_json}"])
add("figures/table1-no-inputs", ["figures", "table1"])
add("figures/table1-unknown-flag", ["figures", "table1", "{hessian_json}", "--bogus"])
add("figures/table1-out-suffix", ["figures", "table1", "{hessian_json}", "--out", "{tmp}/t.txt"], ("{tmp}/t.txt",))
add("figures/table1-checkpoint", ["figures", "table1", "a={ckpt}", "--out", "{tmp}/t.md"], ("{tmp}/t.md", "{tmp}/t.csv"))
for name in ("hjson_garbage", "hjson_two_eigenvalues", "hjson_strings"):
    add(f"figures/table1-{name.removeprefix('hjson_').replace('_', '-')}",
        ["figures", "table1", "a={tmp}/bad.json", "--out", "{tmp}/t.md"], ("{tmp}/t.md", "{tmp}/t.csv"), setup=name)
add("figures/fig01-plane", ["figures", "fig01", "a={plane}", "--out", "{tmp}/fig.png"], ("{tmp}/fig.png", "{tmp}/fig.html"))
add("figures/table2-broken-run", ["figures", "table2", "a={run}", "--out", "{tmp}/t.md"], ("{tmp}/t.md", "{tmp}/t.csv"),
    setup="run_metrics_cut")

# --- bad checkpoints ----------------------------------------------------------------------------

BAD_CKPTS = ("ckpt_garbage", "ckpt_truncated", "ckpt_dir", "ckpt_fifo", "ckpt_pickle_code",
             "ckpt_legacy_pickle_code", "ckpt_plain_state_dict", "ckpt_zip_not_torch", "ckpt_format_version_str", "ckpt_no_state_dict", "ckpt_no_model", "ckpt_model_string",
             "ckpt_model_os_system", "ckpt_model_subprocess_run", "ckpt_model_builtins_eval",
             "ckpt_model_builtins_open", "ckpt_model_os_mkdir", "ckpt_kwargs_hidden_abc", "ckpt_kwargs_list",
             "ckpt_kwargs_negative", "ckpt_kwargs_huge", "ckpt_state_non_tensor", "ckpt_nan_weight",
             "ckpt_data_list")
#: Setups whose file would run code if it were trusted.
MALICIOUS = ("ckpt_pickle_code", "ckpt_legacy_pickle_code", "ckpt_model_os_system", "ckpt_model_subprocess_run",
             "ckpt_model_builtins_eval", "ckpt_model_builtins_open", "ckpt_model_os_mkdir", "data_pt_code",
             "result_object_meta", "run_config_os_system", "run_state_code", "cifar_code")


def _short(setup_name: str) -> str:
    return setup_name.split("_", 1)[1].replace("_", "-")


hessian("ckpt-missing", ckpt="{tmp}/missing.pt")
for name in BAD_CKPTS:
    hessian(f"ckpt-{_short(name)}", ckpt="{tmp}/bad.pt", setup=name)
hessian("ckpt-data-etc-hostname", ckpt="{tmp}/bad.pt", setup="ckpt_data_etc_hostname", secret="/etc/hostname")
hessian("ckpt-data-etc-passwd", ckpt="{tmp}/bad.pt", setup="ckpt_data_etc_passwd_pt", secret="/etc/passwd")
hessian("ckpt-split-file-passwd", "--data", "client", ckpt="{tmp}/bad.pt", setup="ckpt_split_file_passwd",
        secret="/etc/passwd")
hessian("ckpt-split-file-secret", "--data", "client", ckpt="{tmp}/bad.pt", setup="ckpt_split_file_secret",
        secret="{tmp}/elsewhere/secret.csv")
hessian("ckpt-partition-bad", "--data", "client", ckpt="{tmp}/bad.pt", setup="ckpt_partition_bad")
hessian("ckpt-client-id-99", "--data", "client", ckpt="{tmp}/bad.pt", setup="ckpt_client_id_99")
hessian("data=client-of-global", "--data", "client")
hessian("data=client:99", "--data", "client:99")
for name in ("ckpt_garbage", "ckpt_model_os_system", "ckpt_no_state_dict", "ckpt_nan_weight", "ckpt_data_list"):
    surface(f"ckpt-{_short(name)}", ckpt="{tmp}/bad.pt", setup=name)
surface("ckpt-split-file-passwd", "--sources", "clients", ckpt="{tmp}/bad.pt", setup="ckpt_split_file_passwd",
        secret="/etc/passwd")
surface("to-os-system", "--to", "{tmp}/bad.pt", setup="ckpt_model_os_system")
for name in ("ckpt_model_os_system", "ckpt_no_state_dict"):
    plane(f"c-{_short(name)}", models=("{ckpt}", "{client0}", "{tmp}/bad.pt"), setup=name)
for name in ("ckpt_pickle_code", "ckpt_model_os_system", "ckpt_model_subprocess_run"):
    flat(f"client-{_short(name)}", clients=("{client0}", "{tmp}/bad.pt"), setup=name)
flat("client-nan-weight", clients=("{client1}", "{tmp}/bad.pt"), setup="client_nan_weight")
flat("client-split-file-passwd", clients=("{tmp}/bad.pt",), setup="ckpt_split_file_passwd", secret="/etc/passwd")
flat("client-split-file-secret", clients=("{tmp}/bad.pt",), setup="ckpt_split_file_secret",
     secret="{tmp}/elsewhere/secret.csv")

# --- bad data files -----------------------------------------------------------------------------

BAD_DATA = ("data_str_labels", "data_len_mismatch", "data_empty", "data_float_labels", "data_labels_too_big",
            "data_nan_x", "data_wrong_shape", "data_scalar_x", "data_garbage", "data_object_array",
            "data_num_classes_str", "data_complex_x")
for name in BAD_DATA:
    hessian(f"data-{_short(name)}", "--data", "{tmp}/bad.npz", setup=name)
hessian("data-pt-code", "--data", "{tmp}/bad_data.pt", setup="data_pt_code")
hessian("data=imagenet", "--data", "imagenet")
hessian("data=synthetic:shape=0x4", "--data", "synthetic:shape=0x4x4")
hessian("data=cifar10-missing", "--data", "cifar10", "--data-dir", "{tmp}/nowhere")
surface("data-nan-x", "--data", "{tmp}/bad.npz", setup="data_nan_x")

# --- broken CIFAR folders -----------------------------------------------------------------------

CIFAR_TRAIN = ("--dataset", "cifar10", "--data-dir", "{tmp}/cifar", "--model", "mlp", "--num-clients", "2",
               "--samples-per-client", "2", "--clients-per-round", "1", "--batch-size", "2")
for name in ("cifar_garbage", "cifar_code", "cifar_wrong_size", "cifar_label_mismatch",
             "cifar_labels_out_of_range", "cifar_dirs"):
    train(f"cifar-{_short(name)}", *CIFAR_TRAIN, setup=name)
hessian("cifar-wrong-size", "--data", "cifar10", "--data-dir", "{tmp}/cifar", setup="cifar_wrong_size")

# --- run folders and --resume -------------------------------------------------------------------

# A cut last line of metrics.jsonl is not bad input to --resume: the lines that parse are kept and the
# run goes on (tests/test_train_safety.py::test_cut_metrics_line_on_resume).
for name in ("run_no_state", "run_config_os_system", "run_config_garbage", "run_config_list",
             "run_config_no_config", "run_config_unknown_key", "run_config_split_passwd", "run_state_garbage",
             "run_state_code", "run_state_no_server", "run_state_round_ahead"):
    add(f"train/resume-{_short(name)}", ["train", "--out", "{run}", "--resume", "--device", "cpu", "--no-progress"],
        setup=name, secret="/etc/passwd" if "passwd" in name else None)

# --- `landscape download` with a local archive (the network is blocked in these tests) ----------

for name in ("archive_traversal", "archive_absolute", "archive_symlink_out", "archive_hardlink_out",
             "archive_device", "archive_garbage", "archive_truncated", "archive_unrelated", "archive_is_dir"):
    add(f"download/{_short(name)}", ["download", "cifar10", "--data-dir", "{tmp}/dl"],
        ("{tmp}/escape.txt", "{tmp}/abs_escape.txt", "{tmp}/dl/cifar-10-batches-py"), setup=name)
add("download/offline", ["download", "cifar10", "--data-dir", "{tmp}/dl"],
    ("{tmp}/dl/cifar-10-python.tar.gz", "{tmp}/dl/cifar-10-python.tar.part"),
    note="no archive and no network: one line saying how to fetch it by hand")

# --- the output is an input (also spelled differently) ------------------------------------------

H2, S3 = ("--top-k", "2", *FAST), ("--resolution", "3", *FAST)
P3 = ("plane", "{ckpt}", "{client0}", "{client1}", "--resolution", "3", *FAST)
F2 = ("flatness", "{ckpt}", "--clients", "{client0}", "--ascent-steps", "2", *FAST)
SAME = [
    ("hessian/out=ckpt", ["hessian", "{ckpt}", *H2, "--out", "{ckpt}"], None),
    ("hessian/save-eigenvectors=ckpt", ["hessian", "{ckpt}", *H2, "--save-eigenvectors", "{ckpt}"], None),
    ("hessian/plot=ckpt", ["hessian", "{ckpt}", *H2, "--plot", "{ckpt}"], None),
    ("hessian/out=./ckpt", ["hessian", "{ckpt}", *H2, "--out", "./global.pt"], None),
    ("hessian/out=ckpt-via-dotdot", ["hessian", "{ckpt}", *H2, "--out", "{tmp}/run/../global.pt"], None),
    ("hessian/out=symlink-to-ckpt", ["hessian", "{ckpt}", *H2, "--out", "{tmp}/link.pt"], "ckpt_symlink"),
    ("hessian/symlink-in-out=ckpt", ["hessian", "{tmp}/link.pt", *H2, "--out", "{ckpt}"], "ckpt_symlink"),
    ("hessian/out=hardlink-of-ckpt", ["hessian", "{tmp}/hard.pt", *H2, "--out", "{ckpt}"], "ckpt_hardlink"),
    ("hessian/out=data", ["hessian", "{ckpt}", *H2, "--data", "{data}", "--out", "{data}"], None),
    ("hessian/out=save-eigenvectors", ["hessian", "{ckpt}", *H2, "--out", "{tmp}/o.json",
                                       "--save-eigenvectors", "{tmp}/o.json"], None),
    ("surface/out=ckpt", ["surface", "{ckpt}", *S3, "--out", "{ckpt}"], None),
    ("surface/html=ckpt", ["surface", "{ckpt}", *S3, "--html", "{ckpt}"], None),
    ("surface/png=ckpt", ["surface", "{ckpt}", *S3, "--png", "{ckpt}"], None),
    ("surface/save-directions=ckpt", ["surface", "{ckpt}", *S3, "--save-directions", "{ckpt}"], None),
    ("surface/save-directions=./ckpt", ["surface", "{ckpt}", *S3, "--save-directions", "./global.pt"], None),
    ("surface/save-directions=directions-file", ["surface", "{ckpt}", *S3, "--directions-file", "{dirs}",
                                                 "--save-directions", "{dirs}"], None),
    ("surface/save-directions=symlink-of-directions-file", ["surface", "{ckpt}", *S3, "--directions-file",
                                                            "{tmp}/dirs_link.pt", "--save-directions", "{dirs}"],
     "dirs_symlink"),
    ("surface/out=html", ["surface", "{ckpt}", *S3, "--out", "{tmp}/o.npz", "--html", "{tmp}/o.npz"], None),
    ("surface/html=to", ["surface", "{ckpt}", *S3, "--to", "{client0}", "--html", "{client0}"], None),
    ("plane/out=b", [*P3, "--out", "{client0}"], None),
    ("plane/html=c", [*P3, "--html", "{client1}"], None),
    ("plane/html=project", [*P3, "--project", "{client2}", "--html", "{client2}"], None),
    ("flatness/out=client", [*F2, "--out", "{client0}"], None),
    ("flatness/png=global", [*F2, "--png", "{ckpt}"], None),
    ("view/html=result", ["view", "{surface}", "--html", "{surface}"], None),
    ("view/html=./result", ["view", "{surface}", "--html", "./s.npz"], None),
    ("figures/table1-out=input", ["figures", "table1", "a={tmp}/t.md", "--out", "{tmp}/t.md"], "hessian_as_md"),
]


@setup
def hessian_as_md(tmp: Path) -> None:
    """A Hessian result saved under a .md name, then named as both input and --out of table1."""
    (tmp / "t.md").write_text((tmp / "h.json").read_text())


for id, argv, setup_name in SAME:
    add(id, argv, setup=setup_name, note="an output that is an input must be refused, inputs unchanged")

# --- outputs that cannot be written: full disk, read-only, no permission, a folder, under a file -

WRITERS = [
    # (id, argv with the output as {X}, suffix)
    ("hessian--out", ["hessian", "{ckpt}", *H2, "--out", "{X}"], "json"),
    ("hessian--save-eigenvectors", ["hessian", "{ckpt}", *H2, "--save-eigenvectors", "{X}"], "pt"),
    ("hessian--plot", ["hessian", "{ckpt}", *H2, "--density-steps", "10", "--plot", "{X}"], "png"),
    ("surface--out", ["surface", "{ckpt}", *S3, "--out", "{X}"], "npz"),
    ("surface--html", ["surface", "{ckpt}", *S3, "--html", "{X}"], "html"),
    ("surface--png", ["surface", "{ckpt}", *S3, "--png", "{X}"], "png"),
    ("surface--save-directions", ["surface", "{ckpt}", *S3, "--save-directions", "{X}"], "pt"),
    ("plane--out", [*P3, "--out", "{X}"], "npz"),
    ("plane--html", [*P3, "--html", "{X}"], "html"),
    ("plane--png", [*P3, "--png", "{X}"], "png"),
    ("flatness--out", [*F2, "--out", "{X}"], "json"),
    ("flatness--png", [*F2, "--png", "{X}"], "png"),
    ("view--html", ["view", "{surface}", "--html", "{X}"], "html"),
    ("view--png", ["view", "{surface}", "--png", "{X}"], "png"),
    ("train--out", [*TRAIN, "--out", "{X}"], "dir"),
    ("figures-table1--out", ["figures", "table1", "a={hessian_json}", "--out", "{X}"], "md"),
    ("download--data-dir", ["download", "cifar10", "--data-dir", "{X}"], "dir"),
]
EACCES_WRITERS = ("hessian--out", "surface--png", "train--out", "download--data-dir")
NOTDIR_WRITERS = ("hessian--out", "hessian--plot", "surface--save-directions", "plane--out", "flatness--png",
                  "view--html", "train--out", "figures-table1--out", "download--data-dir")


def _fill(argv: list[str], x: str) -> tuple[str, ...]:
    return tuple(a.replace("{X}", x) for a in argv)


def _outputs(x: str, suffix: str, writer: str) -> tuple[str, ...]:
    if writer == "download--data-dir":
        return (f"{x}/cifar-10-batches-py",)
    return (x, x[: -len(".md")] + ".csv") if suffix == "md" else (x,)


for writer, argv, suffix in WRITERS:
    name = "sub" if suffix == "dir" else f"out.{suffix}"
    x = f"{{tmp}}/{FAULT_DIR}/{name}" if writer != "download--data-dir" else f"{{tmp}}/{FAULT_DIR}"
    setup_name = "archive_in_fault" if writer == "download--data-dir" else None
    for fault in FAULTS:
        if fault != "eacces" or writer in EACCES_WRITERS:
            add(f"fault/{fault}/{writer}", _fill(argv, x), _outputs(x, suffix, writer), setup=setup_name, fault=fault)
    if suffix == "dir":  # an existing folder is a fine run / data folder: a file is not
        add(f"fault/is-a-file/{writer}", _fill(argv, "{ckpt}"))
    else:
        add(f"fault/is-a-folder/{writer}", _fill(argv, f"{{tmp}}/taken.{suffix}"), setup="output_dirs")
    if writer in NOTDIR_WRITERS:
        add(f"fault/under-a-file/{writer}", _fill(argv, "{ckpt}/" + name), _outputs("{ckpt}/" + name, suffix, writer))
add("fault/is-a-folder/figures-table1-csv", ["figures", "table1", "a={hessian_json}", "--out", "{tmp}/t.md"],
    ("{tmp}/t.md",), setup="taken_csv", note="the .md must not be left when the .csv cannot be written")


# --- --state-key: picking the state dict in a checkpoint of other code (issue 12, point 5) -------
# Files in fedsam's layout ({"model_state_dict": global, "swa_model": SWA, ...}, see
# landscape.checkpoint.select_state_dict) and others, with the fixture's MLP as the weights.

MLP_FLAGS = ("--model", "mlp", "--model-kwargs", '{"in_features": 16, "hidden": [4], "num_classes": 3}')


def _fedsam_layout(tmp: Path, swa: object) -> dict:
    state = _ckpt_dict(tmp)["state_dict"]
    momentum = {0: {"momentum_buffer": torch.zeros(1)}}  # an optimizer's state: integer keys, not a state dict
    return {"model_state_dict": state, "round": 2, "swa_model": swa, "swa_n": 1,
            "opt_state_dict": {"state": momentum, "param_groups": [{"lr": 0.1, "params": [0]}]}}


@setup
def state_fedsam_swa(tmp: Path) -> None:
    _save_ckpt(tmp, _fedsam_layout(tmp, {k: v + 1 for k, v in _ckpt_dict(tmp)["state_dict"].items()}))


@setup
def state_fedsam_swa_code(tmp: Path) -> None:
    _save_ckpt(tmp, _fedsam_layout(tmp, Evil(_marker(tmp))))


@setup
def state_plain(tmp: Path) -> None:
    _save_ckpt(tmp, _ckpt_dict(tmp)["state_dict"])


@setup
def state_many(tmp: Path) -> None:
    _save_ckpt(tmp, {f"model_{i}": _ckpt_dict(tmp)["state_dict"] for i in range(50)})


@setup
def state_deep(tmp: Path) -> None:
    obj: object = {"w": _ckpt_dict(tmp)["state_dict"]}
    for _ in range(200):
        obj = {"a": obj}
    _save_ckpt(tmp, obj)


@setup
def state_long_keys(tmp: Path) -> None:
    state = _ckpt_dict(tmp)["state_dict"]
    _save_ckpt(tmp, {"x" * 5000: state, "line\nbreak\x1b[31m": state})


def state_key(id: str, *extra: str, **kw) -> None:
    hessian(f"state-key/{id}", *MLP_FLAGS, *extra, ckpt="{tmp}/bad.pt", **kw)


state_key("ambiguous", setup="state_fedsam_swa", expect="2 state dicts: 'model_state_dict', 'swa_model'")
state_key("missing", "--state-key", "swa", setup="state_fedsam_swa", expect="no such entry")
state_key("int", "--state-key", "round", setup="state_fedsam_swa", expect="holds int")
state_key("through-int", "--state-key", "round.x", setup="state_fedsam_swa", expect="'round' is int")
state_key("optimizer", "--state-key", "opt_state_dict", setup="state_fedsam_swa", expect="no state dict")
state_key("optimizer-state", "--state-key", "opt_state_dict.state", setup="state_fedsam_swa", expect="no state dict")
state_key("prefix-missing", "--state-key", "swa_model.nope", setup="state_fedsam_swa", expect="no such entry")
state_key("empty", "--state-key", "", setup="state_fedsam_swa", expect="state key must be")
state_key("dots", "--state-key", "swa_model..fc", setup="state_fedsam_swa", expect="state key must be")
state_key("newline", "--state-key", "swa\nmodel", setup="state_fedsam_swa", expect="no such entry")
state_key("huge", "--state-key", "k" * 100_000, setup="state_fedsam_swa", expect="no such entry")
state_key("wrong-model", "--state-key", "swa_model", "--model-kwargs", '{"in_features": 16, "hidden": [5]}',
          setup="state_fedsam_swa", expect="do not match")
state_key("code-beside", "--state-key", "model_state_dict", setup="state_fedsam_swa_code", expect="refused to load")
state_key("bare", "--state-key", "swa_model", setup="state_plain", expect="bare state dict")
state_key("many", setup="state_many", expect="(50 in all)")
state_key("deep", setup="state_deep", expect="neither a landscape checkpoint nor a state_dict")
state_key("deep-key", "--state-key", ".".join(["a"] * 250), setup="state_deep", expect="no such entry")
state_key("long-keys", setup="state_long_keys", expect="2 state dicts")
hessian("state-key/landscape", "--state-key", "swa_model", expect="a landscape checkpoint holds one model")
surface("state-key/ambiguous", *MLP_FLAGS, ckpt="{tmp}/bad.pt", setup="state_fedsam_swa", expect="2 state dicts")
surface("state-key/to-landscape", *MLP_FLAGS, "--state-key", "swa_model", "--data", "{data}", "--sources", "train",
        "--to", "{ckpt}", ckpt="{tmp}/bad.pt", setup="state_fedsam_swa", expect="a landscape checkpoint holds one model")
plane("state-key/missing", *MLP_FLAGS, "--state-key", "ema", models=("{tmp}/bad.pt",) * 3, setup="state_fedsam_swa",
      expect="no such entry")
flat("state-key/landscape", "--state-key", "net", expect="a landscape checkpoint holds one model")

# --- split files in every format: fedsam's JSON, {client: [indices]} JSON, CSV (issue 12) -------

SPLIT_FILES = {
    # id: (content of {tmp}/split.json, expected message), for a run on the synthetic data (120 samples,
    # no image names)
    "fedsam-on-data-without-names": (b'{"users": [0], "num_samples": [1], "user_data": {"0": {"x": ["a.png"], '
                                     b'"y": [0]}}}', "no image names"),
    "fedsam-lacks-user-data": (b'{"users": [0], "num_samples": [1]}', "lacks 'user_data'"),
    "object-of-numbers": (b'{"0": 1, "1": 2}', "neither fedsam's"),
    "array-of-arrays": (b"[[0, 1], [2]]", "holds an array"),
    "empty-object": (b"{}", "holds an empty object"),
    "broken": (b'{"0": [1,', "not valid JSON"),
    "key-twice": (b'{"0": [1], "0": [2]}', "twice in one object"),
    "index-twice": (b'{"0": [1, 2], "1": [2]}', "more than one user"),
    "index-out-of-range": (b'{"0": [120]}', "outside the 120 training images"),
    "index-negative": (b'{"0": [-1]}', "outside the 120 training images"),
    "index-bool": (b'{"0": [true]}', "must be integers"),
    "index-float": (b'{"0": [1.5]}', "must be integers"),
    "index-string": (b'{"0": ["1"]}', "must be integers"),
    "index-5000-digits": (b'{"0": [' + b"9" * 5000 + b"]}", "too long"),
    "nested": (b"[" * 100_000, "nested too deeply"),
    "client-without-images": (b'{"0": [], "1": [2]}', "holds no images"),
    "utf-16": ('{"0": [1]}'.encode("utf-16"), "not UTF-8"),
    "secret-keys": (b'{\n"TOPSECRET-e21b-0042-client": "TOPSECRET-value-of-it"\n}\n', "neither fedsam's"),
}


def _split_setup(name: str, content: bytes) -> str:
    def make(tmp: Path) -> None:
        (tmp / "split.json").write_bytes(content)

    make.__name__ = f"split_json_{name.replace('-', '_')}"
    return setup(make).__name__


for name, (content, expect) in SPLIT_FILES.items():
    train(f"split-json/{name}", "--split-file", "{tmp}/split.json", setup=_split_setup(name, content), expect=expect,
          secret="{tmp}/split.json" if name == "secret-keys" else None)

#: A CIFAR-100 folder of 6 training images with filenames, and a fedsam split of them.
CIFAR100_NAMES = [("cichlid_s_001814.png", 1), ("seal_s_001997.png", 72), ("baby_s_000333.png", 35),
                  ("baby_s_000333.png", 2), ("bus_s_000569.png", 13), ("lizard_s_001099.png", 44)]
CIFAR100_TRAIN = ("--dataset", "cifar100", "--data-dir", "{tmp}/cifar", "--model", "mlp", "--clients-per-round", "1",
                  "--batch-size", "2", "--split-file", "{tmp}/split.json")


def _fedsam_cifar(tmp: Path, users: dict[str, list[int]], filenames: object, changes: dict) -> None:
    folder = tmp / "cifar" / "cifar-100-python"
    folder.mkdir(parents=True)
    for fname in ("train", "test"):
        batch = {b"data": np.zeros((6, 3072), np.uint8), b"fine_labels": [c for _, c in CIFAR100_NAMES]}
        if filenames is True:
            batch[b"filenames"] = [n.encode() for n, _ in CIFAR100_NAMES]
        elif filenames is not None:
            batch[b"filenames"] = filenames
        (folder / fname).write_bytes(_pickled(batch))
    split = {"users": [int(u) for u in users], "num_samples": [len(v) for v in users.values()],
             "user_data": {u: {"x": [CIFAR100_NAMES[i][0] for i in v], "y": [CIFAR100_NAMES[i][1] for i in v]}
                           for u, v in users.items()}}
    (tmp / "split.json").write_text(json.dumps({**split, **changes}, indent=1))


FEDSAM_CIFAR = {
    # id: (users -> rows of CIFAR100_NAMES, filenames of the batches, changes to the split), expected message
    "missing-name": (({"0": [0, 1], "1": [2]}, True, {"user_data": {"0": {"x": ["cichlid_s_001814.png",
                     "TOPSECRET-not-a-cifar-image.png"], "y": [1, 72]}, "1": {"x": ["baby_s_000333.png"], "y": [35]}}}),
                     "is not in the data set"),
    "label-mismatch": (({"0": [0], "1": [2]}, True, {"user_data": {"0": {"x": ["cichlid_s_001814.png"], "y": [7]},
                        "1": {"x": ["baby_s_000333.png"], "y": [35]}}}), "in the data set, not 7"),
    "num-samples": (({"0": [0, 1], "1": [2]}, True, {"num_samples": [2, 5]}), "x, y and num_samples disagree"),
    "users-mismatch": (({"0": [0, 1], "1": [2]}, True, {"users": [0]}), "must be one integer per user"),
    "user-not-listed": (({"0": [0, 1], "1": [2]}, True, {"users": [0], "num_samples": [2]}), "is not in 'users'"),
    "image-twice": (({"0": [0, 4], "1": [4]}, True, {}), "to more than one user"),
    "no-filenames": (({"0": [0, 1], "1": [2]}, None, {}), "no image names"),
    "filenames-count": (({"0": [0, 1], "1": [2]}, [b"a.png"], {}), "has 6 images but 1 filenames"),
    "filenames-not-names": (({"0": [0, 1], "1": [2]}, [1, 2, 3, 4, 5, 6], {}), "'filenames' must be a list of names"),
}


def _fedsam_cifar_setup(name: str, users: dict[str, list[int]], filenames: object, changes: dict) -> str:
    def make(tmp: Path) -> None:
        _fedsam_cifar(tmp, users, filenames, changes)

    make.__name__ = f"fedsam_cifar_{name.replace('-', '_')}"
    return setup(make).__name__


for name, ((users, filenames, changes), expect) in FEDSAM_CIFAR.items():
    train(f"split-fedsam-cifar100/{name}", *CIFAR100_TRAIN, setup=_fedsam_cifar_setup(name, users, filenames, changes),
          expect=expect, secret="{tmp}/split.json" if name == "missing-name" else None)


@setup
def ckpt_split_fedsam_without_names(tmp: Path) -> None:
    """A checkpoint of the synthetic run whose partition was (said to be) built from a fedsam split."""
    from landscape.files import sha256

    (tmp / "split.json").write_bytes(SPLIT_FILES["fedsam-on-data-without-names"][0])
    data = dict(_ckpt_dict(tmp)["data"])
    data["partition"] = {"num_clients": 1, "samples_per_client": None, "alpha": None, "seed": 0,
                         "split_file": str(tmp / "split.json"), "split_sha256": sha256(tmp / "split.json"),
                         "split_format": "fedsam-json"}
    _with_data(tmp, data, src="client0.pt")


hessian("split-fedsam-without-names", "--data", "client", "--split-file", "{tmp}/split.json", ckpt="{tmp}/bad.pt",
        setup="ckpt_split_fedsam_without_names", expect="no image names")
surface("split-fedsam-without-names", "--sources", "clients", "--split-file", "{tmp}/split.json", ckpt="{tmp}/bad.pt",
        setup="ckpt_split_fedsam_without_names", expect="no image names")


# --- reference switches of the training (issue 12, point 3) -------------------------------------
for value in ("nan", "-1", "inf", "abc"):
    train(f"max-grad-norm={value}", "--max-grad-norm", value)
train("lr-schedule=bogus", "--lr-schedule", "linear", expect="choose one of constant, cosine")
train("client-weights=bogus", "--client-weights", "equal", expect="choose one of samples, uniform")
train("cohort-sampling=bogus", "--cohort-sampling", "leaf", expect="choose one of seeded, fedsam")
train("swa-c1-keeps-lr=value", "--swa-c1-keeps-lr", "yes")


# --- issue 12: the Dirichlet scheme (train --partition, a checkpoint's partition "scheme") -------

@setup
def ckpt_partition_scheme_bogus(tmp: Path) -> None:
    data = dict(_ckpt_dict(tmp)["data"])
    data["partition"] = {**data["partition"], "scheme": "dirichlet-per-class"}
    _with_data(tmp, data, src="client0.pt")


for value in ("bogus", "", "H19", "legacy "):
    train(f"partition={value.strip() or 'empty'}{'-space' if value.endswith(' ') else ''}", "--partition", value)
train("resume-different-partition", "--resume", "--partition", "legacy", out="{run}",
      note="a run's partition scheme cannot change on resume")
hessian("ckpt-partition-scheme-bogus", "--data", "client", ckpt="{tmp}/bad.pt", setup="ckpt_partition_scheme_bogus")

# --- curvature tracked during training (issue 13, point 1) --------------------------------------
for value in ("-1", "abc", "1.5"):
    train(f"track-every={value}", "--track-every", value)
train("track-samples=0", "--track-samples", "0")

# --- pictures for a paper (issue 13, point 5): the grid around a trajectory, surface --margin ------------------
TRAJECTORY = ("--directions", "pca", "--trajectory", "{ckpt}", "{client0}", "{client1}")
NO_MARGIN = "--margin sets the grid around a --trajectory"
for value in ("-1", "nan", "inf", "101", "abc"):
    surface(f"margin={value}", *TRAJECTORY, "--margin", value)
surface("margin-with-range", *TRAJECTORY, "--range", "1", "--margin", "0.1", expect=NO_MARGIN)
surface("margin-without-trajectory", "--margin", "0.1", expect=NO_MARGIN)
surface("margin-with-to", "--to", "{client0}", "--margin", "0.1", expect=NO_MARGIN)
surface("margin-with-directions-file", "--directions-file", "{dirs}", "--margin", "0.1", expect=NO_MARGIN)
surface("png=jpg-with-trajectory", *TRAJECTORY, "--png", "{tmp}/x.jpg", outputs=("{tmp}/x.jpg",),
        note="the image formats are .png, .pdf, .svg")
view("png=eps", "{surface}", extra=("--png", "{tmp}/v.eps"), outputs=("{tmp}/v.eps",))

# --- training under torchrun (issue 14, points 2 and 4): the collective timeout -----------------
for value in ("0", "-5", "nan", "inf", "abc", "1e9"):
    train(f"collective-timeout={value}", "--collective-timeout", value)


# --- issue 13, point 4: figures made from runs (figures all, each script's --quick, new scripts) ---

@setup
def runs_of_another_config(tmp: Path) -> None:
    """The fuzz run (synthetic data) where `figures all --quick` expects its digits run fedavg-a0."""
    import shutil

    shutil.copytree(tmp / "run", tmp / "runs" / "fedavg-a0")


@setup
def run_curvature_without_numbers(tmp: Path) -> None:
    path = tmp / "run" / "metrics.jsonl"
    path.write_text(path.read_text() + json.dumps({"round": 3, "curvature": {"global_lambda_max": "big",
                                                                              "client_lambda_max": {}}}) + "\n")


FIG = ("{tmp}/f.png", "{tmp}/f.pdf")
ALL_OUT = ("{tmp}/o",)
add("figures/list-unknown-flag", ["figures", "--list", "--bogus"])
add("figures/all-no-mode", ["figures", "all", "--out", "{tmp}/o"], ALL_OUT, expect="--quick --paper is required")
add("figures/all-two-modes", ["figures", "all", "--quick", "--paper", "--out", "{tmp}/o"], ALL_OUT)
add("figures/all-only-unknown", ["figures", "all", "--quick", "--out", "{tmp}/o", "--only", "fig99"], ALL_OUT,
    expect="no figure or table named fig99")
add("figures/all-only-empty", ["figures", "all", "--quick", "--out", "{tmp}/o", "--only", ","], ALL_OUT,
    expect="names no figure or table")
add("figures/all-out-is-a-file", ["figures", "all", "--quick", "--out", "{ckpt}", "--only", "table2"],
    expect="is a file")
add("figures/all-runs-is-a-file", ["figures", "all", "--quick", "--out", "{tmp}/o", "--runs", "{ckpt}", "--only",
                                   "table2"], ALL_OUT, expect="is a file")
add("figures/all-device-bogus", ["figures", "all", "--quick", "--out", "{tmp}/o", "--device", "tpu", "--only",
                                 "table2"], ALL_OUT, expect="device")
add("figures/all-paper-without-cifar", ["figures", "all", "--paper", "--out", "{tmp}/o", "--data-dir", "{tmp}/nodata",
                                        "--only", "table2", "--dry-run"], ALL_OUT, expect="cifar")
add("figures/all-run-of-another-config", ["figures", "all", "--quick", "--out", "{tmp}/o", "--runs", "{tmp}/runs",
                                          "--only", "fig02"], ALL_OUT, setup="runs_of_another_config",
    expect="holds a run of another config", note="never trained over, never reused")
add("figures/fig03-quick-with-inputs", ["figures", "fig03", "--quick", "a={run}", "--work", "{tmp}/w"], ("{tmp}/w",),
    expect="makes the inputs")
add("figures/fig03-quick-and-paper", ["figures", "fig03", "--quick", "--paper", "--work", "{tmp}/w"], ("{tmp}/w",))
add("figures/fig03-quick-out", ["figures", "fig03", "--quick", "--out", "{tmp}/f.png"], ("{tmp}/f.png",),
    expect="drop --out")
add("figures/fig10-work-without-mode", ["figures", "fig10", "a={run}", "--work", "{tmp}/w"], ("{tmp}/w",),
    expect="--work only applies")
add("figures/fig05-paper-without-cifar", ["figures", "fig05", "--paper", "--work", "{tmp}/w", "--data-dir",
                                          "{tmp}/nodata"], ("{tmp}/w",), expect="cifar")
add("figures/fig03-not-a-run", ["figures", "fig03", "a={ckpt}", "--out", *FIG], FIG, expect="not a run folder")
add("figures/fig07-out-suffix", ["figures", "fig07", "a={run}", "--out", "{tmp}/f.jpg"], ("{tmp}/f.jpg",),
    expect="use a file ending in")
add("figures/fig07-device-bogus", ["figures", "fig07", "a={run}", "--device", "tpu", "--out", *FIG], FIG,
    expect="device")
add("figures/fig10-no-test-accuracy", ["figures", "fig10", "a={run}", "--out", *FIG], FIG, setup="run_metrics_cut",
    expect="holds no test accuracy yet")
add("figures/fig10-label-twice", ["figures", "fig10", "a={run}", "a={run}", "--out", *FIG], FIG,
    expect="names 2 inputs")
add("figures/fig10-no-inputs", ["figures", "fig10", "--out", *FIG], FIG, expect="no inputs")
add("figures/l26-untracked", ["figures", "l26", "a={run}", "--out", *FIG], FIG, expect="holds no tracked curvature")
add("figures/l26-curvature-without-numbers", ["figures", "l26", "a={run}", "--out", *FIG], FIG,
    setup="run_curvature_without_numbers", expect="lacks a number global_lambda_max")
add("figures/fig04-untracked-run", ["figures", "fig04", "a={run}", "--out", *FIG], FIG,
    expect="holds no tracked curvature")

train("flower-nodes-zero", "--flower-nodes", "0", expect="--flower-nodes")
surface("precision-tf32-on-a-cpu", "--precision", "tf32", expect="TF32 needs a CUDA device")
surface("precision-bf16-of-float64", "--precision", "bf16", "--dtype", "float64", expect="pass --dtype float32")
surface("precision-bf16-own-loss", "--precision", "bf16", "--loss", "tests.fuzz_cases:squared_loss",
        expect="default cross-entropy")
surface("precision-nosuch", "--precision", "fp8")
for value in ("inf", "nan", "-1", "0", "1", "abc"):
    hessian(f"vector-tol={value}", "--vector-tol", value)
for value in ("0", "-2", "abc"):
    hessian(f"block-size={value}", "--block-size", value)


def _check() -> None:
    ids = [c.id for c in CASES]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    assert not dup, f"duplicate case ids: {dup}"
    missing = sorted({c.setup for c in CASES if c.setup and c.setup not in SETUPS})
    assert not missing, f"unknown setups: {missing}"


_check()
