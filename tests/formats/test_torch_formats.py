"""The PyTorch-file modules on their own: ``sniff_format``, ``torch_zip``, ``pickle_scan`` and
``torch_wrappers``, checked against what ``torch.save``, ``zipfile``, ``zlib``, ``pickle`` and
``_compat_pickle`` say. Crafted pickles are built opcode by opcode and never unpickled."""

from __future__ import annotations

import io
import pickle
import pickletools
import struct
import zipfile
import zlib
from collections import OrderedDict, defaultdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import save, save_file

from sncli.errors import CheckpointError
from sncli.formats import sniff_format
from sncli.formats.pickle_scan import (
    PLACEHOLDER_ATTR,
    dangerous_names,
    inert_placeholder,
    scan_pickles,
)
from sncli.formats.torch_file import scan_pickle_globals
from sncli.formats.torch_wrappers import (
    STRIPPABLE_PREFIXES,
    WRAPPER_KEYS,
    choose_state_dict,
    common_prefix,
    module_state,
    unwrap_modules,
)
from sncli.formats.torch_zip import check_zip, storage_crc32

# --- sniff_format ---------------------------------------------------------------------------


def test_sniff_torch_zip(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    torch.save({"w": torch.ones(2)}, path)
    assert zipfile.is_zipfile(path)
    assert sniff_format(path) == "torch-zip"


def test_sniff_torch_legacy(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(path)
    assert sniff_format(path) == "torch-legacy"


def test_sniff_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "m.bin"  # the content decides, not the suffix
    save_file({"w": torch.ones(2)}, str(path))
    assert sniff_format(path) == "safetensors"


def test_sniff_safetensors_whose_length_looks_like_a_pickle(tmp_path: Path) -> None:
    # A header of 0x180 bytes starts with b"\x80\x01", the opening of a protocol-1 pickle.
    for size in range(0, 400):
        blob = save({"w": torch.ones(1)}, metadata={"pad": "x" * size})
        if blob[:2] == b"\x80\x01":
            break
    else:  # pragma: no cover - the official writer pads to 8, so some size lands on 0x180
        pytest.fail("no header of 0x180 bytes found")
    path = tmp_path / "m.pt"
    path.write_bytes(blob)
    assert sniff_format(path) == "safetensors"


def test_sniff_garbage_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"GIF89a, certainly not a checkpoint")
    with pytest.raises(CheckpointError, match="not a checkpoint") as info:
        sniff_format(path)
    # the message says what sncli does read
    for name in ("safetensors", "PyTorch", "TorchScript", "GGUF", "NumPy", "Keras", "ONNX"):
        assert name in info.value.message
    assert "TFLite" in info.value.message and "Hugging Face model ids" in info.value.message


def test_zip_claiming_a_newer_zip_version_is_refused_in_one_line(tmp_path: Path) -> None:
    """zipfile raises NotImplementedError for a member whose central record claims a version
    above 6.3 (found by the hostile fuzz test): a damaged-archive CheckpointError, for a torch
    file (sniffing and reading) and a TorchScript archive alike."""
    from sncli.checkpoint import open_checkpoint

    plain, script = tmp_path / "plain.pt", tmp_path / "script.pt"
    torch.save({"w": torch.ones(2, 2)}, plain)
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), script)
    for path in (plain, script):
        data = bytearray(path.read_bytes())
        start = data.find(b"PK\x01\x02")
        assert start >= 0
        data[start + 6 : start + 8] = struct.pack("<H", 64)  # "needs zip version 6.4"
        path.write_bytes(bytes(data))
        refused = pytest.raises(CheckpointError, match=r"zip file version 6\.4")
        with refused as caught, open_checkpoint(path):
            pass
        assert str(caught.value).startswith(f"{path}: ")


def test_sniff_empty_and_directory_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        sniff_format(empty)
    with pytest.raises(CheckpointError, match="directory"):
        sniff_format(tmp_path)


# --- torch_zip ------------------------------------------------------------------------------


def zip_record(path: Path, suffix: str) -> tuple[bytes, zipfile.ZipInfo]:
    with zipfile.ZipFile(path) as archive:
        (info,) = [i for i in archive.infolist() if i.filename.endswith(suffix)]
        return archive.read(info), info


@pytest.mark.parametrize(
    "tensor",
    [
        torch.arange(12, dtype=torch.float32).reshape(3, 4),
        torch.randn(5, 7, dtype=torch.float64),
        torch.randn(9).to(torch.bfloat16),
        torch.tensor(3, dtype=torch.int64),
        torch.zeros(0),
    ],
    ids=["f32", "f64", "bf16", "scalar", "empty"],
)
def test_storage_crc32_equals_zip_record_crc(tmp_path: Path, tensor: torch.Tensor) -> None:
    path = tmp_path / "t.pt"
    torch.save({"t": tensor}, path)
    record, info = zip_record(path, "/data/0")
    assert zlib.crc32(record) == info.CRC
    assert storage_crc32(tensor.untyped_storage()) == zlib.crc32(record)
    loaded = torch.load(path, weights_only=True)["t"]
    assert storage_crc32(loaded.untyped_storage()) == zlib.crc32(record)


def test_storage_crc32_covers_the_whole_storage_of_a_view(tmp_path: Path) -> None:
    base = torch.arange(20, dtype=torch.float32)
    view = base[5:9]  # torch.save writes the whole storage, not the view
    path = tmp_path / "v.pt"
    torch.save({"v": view}, path)
    record, _ = zip_record(path, "/data/0")
    assert len(record) == 80
    assert storage_crc32(view.untyped_storage()) == zlib.crc32(record)
    assert storage_crc32(view.untyped_storage()) != zlib.crc32(view.numpy().tobytes())


def test_check_zip_reports_record_crcs_and_pickle(tmp_path: Path) -> None:
    tensors = {"a": torch.randn(3, 2), "b": torch.arange(5, dtype=torch.int64)}
    path = tmp_path / "m.pt"
    torch.save(tensors, path)
    check = check_zip(path)
    pickled, _ = zip_record(path, "/data.pkl")
    assert check.pickle == pickled
    assert check.mmap_ok
    expected: dict[int, set[int]] = {}
    for tensor in tensors.values():
        data = tensor.numpy().tobytes()
        expected.setdefault(len(data), set()).add(zlib.crc32(data))
    assert check.record_crcs == expected


# --- pickle_scan ----------------------------------------------------------------------------

#: A hand-assembled protocol-2 pickle equal to ``[OrderedDict(), os.system("id")]``. It is only
#: ever read with pickletools; unpickling it would run ``id``.
CRAFTED = (
    b"\x80\x02"  # PROTO 2
    b"]"  # EMPTY_LIST
    b"("  # MARK
    b"ccollections\nOrderedDict\n"  # GLOBAL
    b")"  # EMPTY_TUPLE
    b"R"  # REDUCE
    b"cos\nsystem\n"  # GLOBAL
    b"X\x02\x00\x00\x00id"  # BINUNICODE "id"
    b"\x85"  # TUPLE1
    b"R"  # REDUCE
    b"e"  # APPENDS
    b"."  # STOP
)


def test_crafted_pickle_is_well_formed() -> None:
    ops = [op.name for op, _, _ in pickletools.genops(CRAFTED)]
    assert ops.count("GLOBAL") == 2
    assert ops[-1] == "STOP"


def test_scan_finds_crafted_globals() -> None:
    scan = scan_pickles(io.BytesIO(CRAFTED), 1)
    assert scan.globals == ["collections.OrderedDict", "os.system"]
    assert scan.complete
    assert scan.unsafe() == ["os.system"]  # OrderedDict is on torch's weights-only allowlist


def test_scan_finds_globals_of_real_pickles() -> None:
    for protocol in (0, 1, 2):
        data = pickle.dumps({"a": OrderedDict(x=1), "b": {1, 2}}, protocol=protocol)
        # Python writes 'builtins' as '__builtin__' below protocol 3; read back as Python 3 names.
        assert b"__builtin__" in data
        scan = scan_pickles(io.BytesIO(data), 1)
        assert scan.globals == ["collections.OrderedDict", "builtins.set"], protocol
        assert scan.complete


@pytest.mark.parametrize(
    ("module", "name", "flagged"),
    [
        (b"__builtin__", b"eval", "builtins.eval"),
        (b"commands", b"getoutput", "commands.getoutput (= subprocess.getoutput)"),
        (b"posix", b"system", "posix.system"),
    ],
)
def test_python2_names_in_a_crafted_pickle_are_flagged(
    module: bytes, name: bytes, flagged: str
) -> None:
    crafted = b"\x80\x02c" + module + b"\n" + name + b"\nX\x02\x00\x00\x00id\x85R."
    assert [op.name for op, _, _ in pickletools.genops(crafted)][-1] == "STOP"
    assert dangerous_names(scan_pickles(io.BytesIO(crafted), 1).globals) == [flagged]


def test_scan_finds_stack_global_of_protocol_4() -> None:
    data = pickle.dumps(OrderedDict(x=1), protocol=4)
    assert "STACK_GLOBAL" in {op.name for op, _, _ in pickletools.genops(data)}
    assert scan_pickles(io.BytesIO(data), 1).globals == ["collections.OrderedDict"]


def test_scan_resolves_memoized_stack_global_operands() -> None:
    # pickle.dumps itself memoizes 'collections' and fetches it back for defaultdict.
    data = pickle.dumps([OrderedDict(), defaultdict(int)], protocol=4)
    assert "BINGET" in {op.name for op, _, _ in pickletools.genops(data)}
    globals_ = scan_pickles(io.BytesIO(data), 1).globals
    assert "collections.defaultdict" in globals_


def test_scan_is_not_fooled_by_a_memoized_module_name() -> None:
    crafted = (
        b"\x80\x04"  # PROTO 4
        b"\x8c\x02os\x94"  # SHORT_BINUNICODE 'os', MEMOIZE (as 0)
        b"0"  # POP
        b"\x8c\x0bcollections\x8c\x0bOrderedDict\x93"  # STACK_GLOBAL collections.OrderedDict
        b"0"  # POP
        b"h\x00"  # BINGET 0 -> 'os'
        b"\x8c\x06system\x93"  # STACK_GLOBAL os.system
        b"\x8c\x02id\x85R"  # ('id',) REDUCE
        b"."
    )
    assert [op.name for op, _, _ in pickletools.genops(crafted)][-1] == "STOP"
    globals_ = scan_pickles(io.BytesIO(crafted), 1).globals
    assert "os.system" in globals_
    assert dangerous_names(globals_)


def test_scan_reports_an_incomplete_pickle() -> None:
    scan = scan_pickles(io.BytesIO(CRAFTED[:-1]), 1)  # no STOP
    assert not scan.complete


def test_scan_pickle_globals_of_torch_files(tmp_path: Path) -> None:
    obj = {"w": torch.ones(2, 3), "meta": OrderedDict(step=1)}
    for new_zip in (True, False):
        path = tmp_path / f"m{new_zip}.pt"
        torch.save(obj, path, _use_new_zipfile_serialization=new_zip)
        found = scan_pickle_globals(path)
        assert {"collections.OrderedDict", "torch._utils._rebuild_tensor_v2"} <= set(found)
        assert "torch.FloatStorage" in found
        assert not dangerous_names(found)


def write_torch_zip(path: Path, pickled: bytes) -> None:
    """A torch.save-style archive around ``pickled`` (the layout torch.save writes)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", pickled)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")


def test_scan_pickle_globals_of_crafted_zip(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    write_torch_zip(path, CRAFTED)
    assert sniff_format(path) == "torch-zip"
    assert scan_pickle_globals(path) == ["collections.OrderedDict", "os.system"]


def test_scan_pickle_globals_of_crafted_legacy_file(tmp_path: Path) -> None:
    # Legacy layout: magic number, protocol, sys info, the object, storage keys (5 pickles).
    head = b"".join(pickle.dumps(v, protocol=2) for v in (0x1950A86A20F9469CFC6C, 1001, {}))
    path = tmp_path / "evil.pt"
    path.write_bytes(head + CRAFTED + pickle.dumps([], protocol=2))
    assert sniff_format(path) == "torch-legacy"
    assert scan_pickle_globals(path) == ["collections.OrderedDict", "os.system"]


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("os.system", "os.system"),
        ("posix.system", "posix.system"),
        ("nt.system", "nt.system"),
        ("os.path.join", "os.path.join"),
        ("subprocess.Popen", "subprocess.Popen"),
        ("builtins.eval", "builtins.eval"),
        ("builtins.getattr", "builtins.getattr"),
        ("__builtin__.eval", "__builtin__.eval (= builtins.eval)"),
        ("commands.Popen", "commands.Popen (= subprocess.Popen)"),
        ("commands.getoutput", "commands.getoutput (= subprocess.getoutput)"),
    ],
)
def test_dangerous_names_flags(name: str, shown: str) -> None:
    assert dangerous_names([name]) == [shown]


@pytest.mark.parametrize(
    "name",
    [
        "torch._utils._rebuild_tensor_v2",
        "torch.FloatStorage",
        "collections.OrderedDict",
        "builtins.set",
        "__builtin__.set",
        "copyreg._reconstructor",
        "ossaudiodev.open",  # starts with 'os' but is not os
        "numpy.core.multiarray._reconstruct",
    ],
)
def test_dangerous_names_spares(name: str) -> None:
    assert dangerous_names([name]) == []


def test_dangerous_names_keeps_order_and_filters() -> None:
    names = ["collections.OrderedDict", "os.system", "torch.FloatStorage", "builtins.exec"]
    assert dangerous_names(names) == ["os.system", "builtins.exec"]


def test_inert_placeholder_returns_marked_ordered_dict() -> None:
    placeholder = inert_placeholder("evil.Payload")
    assert isinstance(placeholder, type)
    assert "evil.Payload" in placeholder.__name__
    for made in (placeholder(), placeholder(1, "rm -rf /", key=object())):
        assert type(made) is OrderedDict
        assert len(made) == 0
        assert made.__dict__[PLACEHOLDER_ATTR] == "evil.Payload"
        made["x"] = 1  # the unpickler fills it with items (SETITEMS) and attributes (BUILD)
        made.__dict__["y"] = 2
    assert placeholder().__dict__[PLACEHOLDER_ATTR] == "evil.Payload"  # fresh each time


def test_inert_placeholder_stands_in_for_torch_load(tmp_path: Path) -> None:
    # A pickle naming an unknown class; under safe_globals the placeholder is built instead.
    pickled = (
        b"\x80\x02}(X\x01\x00\x00\x00wcmy_project.models\nNet\n)\x81}X\x01\x00\x00\x00a"
        b"K\x01sbu."
    )  # {"w": Net.__new__(Net) with state {"a": 1}}, as torch.save writes a pickled module
    path = tmp_path / "obj.pt"
    write_torch_zip(path, pickled)
    name = "my_project.models.Net"
    with torch.serialization.safe_globals([(inert_placeholder(name), name)]):
        loaded = torch.load(path, weights_only=True)
    assert loaded["w"].__dict__[PLACEHOLDER_ATTR] == name
    assert loaded["w"].__dict__["a"] == 1


# --- torch_wrappers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["module.a.weight", "module.b"], "module."),
        (["_orig_mod.a.weight", "_orig_mod.b"], "_orig_mod."),
        (["module._orig_mod.a", "module._orig_mod.b"], "module._orig_mod."),
        (["_orig_mod.module.a", "_orig_mod.module.b"], "_orig_mod.module."),
        (["module.module.a"], "module.module."),
        (["module.a", "b"], ""),
        (["a.weight", "b.bias"], ""),
        (["modules.a"], ""),
        ([], ""),
    ],
)
def test_common_prefix(names: list[str], expected: str) -> None:
    assert common_prefix(names) == expected
    assert all(n.startswith(expected) for n in names)


def test_common_prefix_matches_real_wrappers() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    wrapped = torch.nn.DataParallel(net)  # keys gain 'module.'
    keys = list(wrapped.state_dict())
    assert common_prefix(keys) == "module."
    assert [k.removeprefix("module.") for k in keys] == list(net.state_dict())
    assert set(STRIPPABLE_PREFIXES) == {"module.", "_orig_mod."}


def tensors(n: int = 1) -> dict[str, torch.Tensor]:
    return {f"t{i}": torch.zeros(1) for i in range(n)}


def test_choose_state_dict_follows_wrapper_key_order(tmp_path: Path) -> None:
    path = tmp_path / "x.ckpt"
    for start in range(len(WRAPPER_KEYS)):
        present = WRAPPER_KEYS[start:]
        obj = {key: tensors() for key in reversed(present)}  # insertion order must not matter
        obj["epoch"] = 3
        obj["optimizer"] = {"state": {}}
        chosen, notes = choose_state_dict(obj, None, path)
        assert chosen == WRAPPER_KEYS[start]
        (note,) = notes
        assert f"'{WRAPPER_KEYS[start]}'" in note
        others = present[1:]
        if others:
            listed = note.split("also present: ", 1)[1].split("; pick with --key", 1)[0]
            assert listed.split(", ") == list(others)  # named in WRAPPER_KEYS order
        else:
            assert "also present" not in note


def test_choose_state_dict_skips_wrapper_keys_without_tensors(tmp_path: Path) -> None:
    obj = {"state_dict": {"lr": 0.1}, "model": "resnet", "ema": tensors()}
    assert choose_state_dict(obj, None, tmp_path) == (
        "ema",
        ["using the state dict under key 'ema'"],
    )


def test_choose_state_dict_bare_and_explicit(tmp_path: Path) -> None:
    assert choose_state_dict(tensors(2), None, tmp_path) == (None, [])
    obj = {"state_dict": tensors(), "ema": tensors()}
    assert choose_state_dict(obj, "ema", tmp_path)[0] == "ema"
    nested = {"a": {"b": tensors()}}
    assert choose_state_dict(nested, "a/b", tmp_path)[0] == "a/b"
    assert choose_state_dict(nested, None, tmp_path)[0] == "a/b"  # one nested candidate
    with pytest.raises(CheckpointError, match="no key"):
        choose_state_dict(obj, "model", tmp_path)


def test_choose_state_dict_refusals(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="several dicts"):
        choose_state_dict({"g": tensors(), "d": tensors()}, None, tmp_path)
    with pytest.raises(CheckpointError, match="no tensors"):
        choose_state_dict({"epoch": 1}, None, tmp_path)
    with pytest.raises(CheckpointError, match="not a state dict"):
        choose_state_dict([torch.zeros(1)], None, tmp_path)


def test_module_state_of_a_real_module_equals_its_state_dict() -> None:
    # A real nn.Module's __dict__ is what a placeholder receives from the pickle's BUILD.
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    net.register_buffer("scratch", torch.zeros(3), persistent=False)
    net.register_buffer("kept", torch.ones(1))
    net[0].register_parameter("unused", None)
    expected = net.state_dict()
    state = module_state(net)
    assert state is not None
    assert list(state) == list(expected)  # same order too: parameters, buffers, children
    for key, value in expected.items():
        assert torch.equal(state[key], value)


def test_unwrap_modules_one_level_down() -> None:
    net = torch.nn.Linear(2, 3)
    assert set(unwrap_modules(net)) == {"weight", "bias"}
    wrapped = unwrap_modules({"model": net, "epoch": 4})
    assert set(wrapped["model"]) == {"weight", "bias"}
    assert wrapped["epoch"] == 4
    plain = {"w": torch.zeros(1)}
    assert unwrap_modules(plain) is plain


def test_crafted_zip_has_no_torch_structure_problems(tmp_path: Path) -> None:
    # The write_torch_zip helper must give what check_zip expects of torch.save archives.
    path = tmp_path / "evil.pt"
    write_torch_zip(path, CRAFTED)
    assert check_zip(path).pickle == CRAFTED
    assert struct.unpack("<I", path.read_bytes()[:4])[0] == 0x04034B50


def test_legacy_storage_size_that_lies_names_the_problem(tmp_path: Path) -> None:
    """Issue #28: a legacy file whose storage size field says 2**32 elements gave torch's
    unfilled "storage has wrong byte size: expected ? got ?…"; now the cause in words."""
    import torch

    from sncli.checkpoint import open_checkpoint

    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(4)}, path, _use_new_zipfile_serialization=False)
    data = bytearray(path.read_bytes())
    where = data.rfind(struct.pack("<q", 4))  # the storage's element count before its bytes
    data[where : where + 8] = struct.pack("<q", 2**32)
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(path).close()
    message = str(info.value)
    assert "a storage's byte count in the file disagrees with its declared size" in message
    assert "?" not in message and "\n" not in message
