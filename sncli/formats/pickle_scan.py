"""Static scan of pickles: which globals a PyTorch file names, found by reading opcodes (nothing
is imported or run), which of those are dangerous, and inert placeholders for --skip-objects."""

from __future__ import annotations

from dataclasses import dataclass
from pickletools import markobject, stackslice
from typing import Any

#: Attribute set on placeholder objects: the global they stand for.
PLACEHOLDER_ATTR = "__sncli_placeholder__"


#: Globals that can run code or touch the system; a checkpoint naming one is likely malicious.
_DANGEROUS_MODULES = frozenset(
    {
        "os",
        "posix",
        "nt",
        "sys",
        "subprocess",
        "shutil",
        "socket",
        "runpy",
        "importlib",
        "pty",
        "ctypes",
        "code",
        "codeop",
        "pickle",
        "_pickle",
        "marshal",
        "webbrowser",
        "multiprocessing",
    }
)


_DANGEROUS_BUILTINS = frozenset(
    {
        "exec",
        "eval",
        "compile",
        "open",
        "__import__",
        "getattr",
        "setattr",
        "delattr",
        "globals",
        "locals",
        "vars",
        "input",
        "breakpoint",
        "apply",
        "execfile",
    }
)


def inert_placeholder(qualified_name: str) -> type:
    """A stand-in for a global the weights-only unpickler refuses; building it runs nothing.

    Calling or instantiating it gives an empty ``OrderedDict`` (the one non-builtin type the
    unpickler lets a pickle fill with items and attributes), marked with the global's name.
    """

    class Placeholder:
        def __new__(cls, *args: Any, **kwargs: Any) -> Any:  # noqa: ARG004 (any call builds it)
            from collections import OrderedDict

            inert: OrderedDict[Any, Any] = OrderedDict()
            inert.__dict__[PLACEHOLDER_ATTR] = qualified_name
            return inert

    Placeholder.__qualname__ = Placeholder.__name__ = f"Placeholder[{qualified_name}]"
    return Placeholder


#: Deepest object nesting a checkpoint's pickle may build. Real ones nest a few levels (a
#: Lightning checkpoint ~10); torch's unpickler and Python's hash/repr recurse in C on nested
#: objects, so a key nested 200,000 tuples deep crashes the process (SIGSEGV) without this.
MAX_PICKLE_DEPTH = 200


#: Callables that allocate memory sized by their integer arguments (bytes not in the file):
#: ``bytearray(2**34)``, ``torch.FloatTensor(65536, 65536)`` (uninitialized memory, different
#: on each run), ``torch.FloatStorage(n)``. State dicts build tensors from stored bytes only.
def allocating_constructor(name: str) -> bool:
    module, _, attr = name.rpartition(".")
    if name in ("builtins.bytearray", "__builtin__.bytearray", "builtins.bytes"):
        return True
    top = module.split(".", 1)[0]
    return top == "torch" and (attr.endswith(("Tensor", "Storage")) and not attr.startswith("_"))


@dataclass(frozen=True)
class PickleScan:
    """Globals a pickle references, found by reading its opcodes (nothing is imported or run)."""

    globals: list[str]
    complete: bool
    #: Set when the pickle nests objects deeper than ``MAX_PICKLE_DEPTH`` (or in a cycle).
    too_deep: bool = False
    #: Allocating constructor calls sized by numbers, not bytes: "builtins.bytearray(4294967296)".
    allocations: tuple[str, ...] = ()
    #: The persistent ids (``('storage', 'torch.FloatStorage', key, location, numel)``) it loads,
    #: as far as they are made of known values.
    storages: tuple[tuple[Any, ...], ...] = ()
    #: Where the last pickle scanned ended (bytes after it are not part of any pickle).
    end: int = 0

    def unsafe(self) -> list[str]:
        """Globals outside PyTorch's weights-only allowlist."""
        from torch import _weights_only_unpickler as wou

        allowed = set(wou._get_allowed_globals()) | set(wou._get_user_allowed_globals())
        return [g for g in self.globals if g not in allowed]


def blocked_names(names: list[str]) -> list[str]:
    """Names whose module PyTorch refuses outright, even when allowlisted (os, sys, …)."""
    from torch import _weights_only_unpickler as wou

    blocked = set(getattr(wou, "_blocklisted_modules", ("sys", "os", "posix", "nt")))
    return [n for n in names if n.rsplit(".", 1)[0] in blocked]


def _python3_name(name: str) -> str:
    """A global as Python 3 resolves it: protocol-2 pickles may carry Python 2 names
    (``subprocess.Popen`` is written as ``commands.Popen``, ``builtins`` as ``__builtin__``)."""
    import _compat_pickle

    module, _, attr = name.rpartition(".")
    if (module, attr) in _compat_pickle.NAME_MAPPING:
        module, attr = _compat_pickle.NAME_MAPPING[(module, attr)]
    else:
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return f"{module}.{attr}"


def dangerous_names(names: list[str]) -> list[str]:
    """Names that could run code or touch the system if a careless loader called them.

    Given as written in the file, with the Python 3 name added where it differs.
    """
    found = []
    for name in names:
        resolved = _python3_name(name)
        module, _, attr = resolved.rpartition(".")
        top = module.split(".", 1)[0]
        if top in _DANGEROUS_MODULES or (top == "builtins" and attr in _DANGEROUS_BUILTINS):
            found.append(name if resolved == name else f"{name} (= {resolved})")
    return found


def _read_global(data: Any, position: int) -> str:
    """The ``module.name`` of the GLOBAL opcode at ``position``, decoded exactly as torch does."""
    from torch import _weights_only_unpickler as wou

    data.seek(position + 1)
    reader = getattr(wou, "_read_global_instruction", None)
    if reader is not None:
        module, name = reader(data.readline)
    else:  # pragma: no cover - older torch
        module = data.readline()[:-1].decode("utf-8")
        name = data.readline()[:-1].decode("utf-8")
    return f"{module}.{name}"


class _Global(str):
    """A global named in the pickle (as a value on the simulated stack)."""


class _Item:
    """An object on the simulated stack: its value where known (None when not), the depth of
    nesting below it, and the containers holding it (so a later change deepens them too)."""

    __slots__ = ("depth", "parents", "value")

    def __init__(self, value: Any = None, depth: int = 0) -> None:
        self.value = value
        self.depth = depth
        self.parents: list[_Item] = []


class _TooDeep(Exception):
    pass


_MARK = object()  # a MARK on the simulated stack
_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})
#: Opcodes that change the object below their operands in place (it stays on the stack).
_MODIFIERS = frozenset({"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"})
_CALLS = frozenset({"REDUCE", "NEWOBJ", "NEWOBJ_EX", "OBJ", "INST"})
_KEEP_BYTES = 64  # longer bytes values are remembered as "bytes from the file" only


def _deepen(item: _Item, depth: int, limit: int) -> None:
    """Raise ``item``'s depth to ``depth`` and carry the change up to every container of it."""
    work = [(item, depth)]
    while work:
        node, value = work.pop()
        if value <= node.depth:
            continue
        if value > limit:
            raise _TooDeep
        node.depth = value
        work.extend((parent, value + 1) for parent in node.parents)


def scan_pickles(data: Any, count: int, *, depth_limit: int = MAX_PICKLE_DEPTH) -> PickleScan:
    """Walk up to ``count`` consecutive pickles in ``data``: collect their GLOBALs, the nesting
    depth they build, allocating constructor calls and storage persistent ids.

    The pickle stack and memo are simulated with strings, bytes, ints and tuples of those as the
    known values, so a ``STACK_GLOBAL`` whose module or name was fetched back from the memo
    (``BINGET``, as protocol 4 does for a module used twice) is named right; one whose operands
    are not strings known here makes the scan incomplete. Nesting is tracked through the memo
    and through containers filled after they were nested (``_deepen``), so the depth cannot be
    hidden by building top-down.
    """
    import pickletools

    sim = _Simulation(depth_limit)
    too_deep = False
    end = 0
    try:
        for _ in range(count):
            sim.stack, sim.memo, sim.globals_at = [], {}, []
            for opcode, arg, position in pickletools.genops(data):
                sim.step(opcode, arg, position)
            end = data.tell()
            for position in sim.globals_at:
                sim.found[_read_global(data, position)] = None
            data.seek(end)
    except _TooDeep:
        sim.complete, too_deep = False, True
    except Exception:
        sim.complete = False
    return PickleScan(
        list(sim.found),
        sim.complete,
        too_deep,
        tuple(sim.allocations),
        tuple(sim.storages),
        end,
    )


class _Simulation:
    """The pickle machine's stack and memo, with values and depths (see ``scan_pickles``)."""

    def __init__(self, depth_limit: int) -> None:
        self.depth_limit = depth_limit
        self.found: dict[str, None] = {}
        self.complete = True
        self.allocations: list[str] = []
        self.storages: list[tuple[Any, ...]] = []
        self.stack: list[Any] = []
        self.memo: dict[Any, Any] = {}
        self.globals_at: list[int] = []

    def step(self, opcode: Any, arg: Any, position: int) -> None:
        name, stack = opcode.name, self.stack
        kind = _KINDS.get(name)
        if kind is None:
            kind = _KINDS[name] = _kind(opcode)
        if kind == _LEAF:  # pushes one value and consumes nothing: most opcodes
            if type(arg) is str or type(arg) is int:
                stack.append(_Item(arg))
            elif isinstance(arg, (bytes, bytearray)):
                stack.append(_Item(bytes(arg) if len(arg) <= _KEEP_BYTES else b""))
            else:
                stack.append(_Item(_CONSTANTS.get(name)))
        elif kind == _NOTHING:
            pass
        elif name == "MARK":
            stack.append(_MARK)
        elif name == "MEMOIZE" or name in _PUTS:
            self.memo[len(self.memo) if name == "MEMOIZE" else arg] = (
                stack[-1] if stack else _Item()
            )
        elif name in _GETS:
            stack.append(self.memo.get(arg) or _Item())
        elif name == "DUP":
            stack.append(stack[-1] if stack else _Item())
        elif name == "GLOBAL":
            self.globals_at.append(position)
            module, _, attr = str(arg).partition(" ")
            stack.append(_Item(_Global(f"{module}.{attr}")))
        elif name == "STACK_GLOBAL":
            module = stack[-2].value if len(stack) >= 2 else None
            attr = stack[-1].value if stack else None
            result = None
            if isinstance(module, str) and isinstance(attr, str):
                self.found[f"{module}.{attr}"] = None
                result = _Global(f"{module}.{attr}")
            else:
                self.complete = False
            del stack[-2:]
            stack.append(_Item(result))
        else:
            self._generic(opcode, name)

    def _generic(self, opcode: Any, name: str) -> None:
        consumed = _pop(self.stack, opcode)
        if name in _MODIFIERS and consumed:
            container, children = consumed[0], consumed[1:]
            for child in children:
                child.parents.append(container)
            if children:
                _deepen(container, max(c.depth for c in children) + 1, self.depth_limit)
            self.stack.append(container)
            return
        value = _value(name, consumed)
        if name in _CALLS and len(consumed) >= 2:
            call = _allocation(consumed)
            if call is not None:
                self.allocations.append(call)
            if consumed[0].value == "_codecs.encode":
                value = b""  # how protocol 2 writes bytes: bytes from the file
        if name == "BINPERSID" and consumed and isinstance(consumed[0].value, tuple):
            self.storages.append(consumed[0].value)
        depth = max((c.depth for c in consumed), default=-1) + 1
        if depth > self.depth_limit:
            raise _TooDeep
        for produced in opcode.stack_after:
            if produced is markobject:
                self.stack.append(_MARK)
                continue
            item = _Item(value, depth)
            for child in consumed:
                child.parents.append(item)
            self.stack.append(item)


_LEAF, _NOTHING, _OTHER = 1, 2, 3
_CONSTANTS: dict[str, Any] = {"NEWTRUE": True, "NEWFALSE": False, "EMPTY_TUPLE": ()}
_KINDS: dict[str, int] = {}
_SPECIAL = frozenset({"MARK", "MEMOIZE", "DUP", "GLOBAL", "STACK_GLOBAL"} | _PUTS | _GETS)


def _kind(opcode: Any) -> int:
    if opcode.name in _SPECIAL:
        return _OTHER
    if not opcode.stack_before and not opcode.stack_after:
        return _NOTHING  # PROTO, FRAME, STOP
    if not opcode.stack_before and len(opcode.stack_after) == 1:
        return _OTHER if opcode.stack_after[0] is markobject else _LEAF
    return _OTHER


def _pop(stack: list[Any], opcode: Any) -> list[_Item]:
    """Pop what ``opcode`` consumes (bottom first); MARKs are dropped."""
    before = opcode.stack_before
    taken: list[Any] = []
    if stackslice in before:  # everything down to the topmost MARK, then what lies below it
        while stack:
            top = stack.pop()
            if top is _MARK:
                break
            taken.append(top)
        taken.reverse()
        below = before.index(markobject)
        lower = stack[len(stack) - min(below, len(stack)) :]
        del stack[len(stack) - min(below, len(stack)) :]
        taken = lower + taken
    else:
        n = min(len(before), len(stack))
        taken = stack[len(stack) - n :]
        del stack[len(stack) - n :]
    return [t if isinstance(t, _Item) else _Item() for t in taken if t is not _MARK]


def _value(name: str, consumed: list[_Item]) -> Any:
    """The value an opcode that consumed operands pushes: a tuple of known values, else None."""
    if name.startswith("TUPLE"):
        values = tuple(c.value for c in consumed)
        return values if all(v is not None for v in values) else None
    return None


def _allocation(consumed: list[_Item]) -> str | None:
    """ "bytearray(4294967296)" when a call allocates memory its arguments size, not its bytes."""
    function, arguments = consumed[0].value, consumed[1].value
    if not isinstance(function, _Global) or not allocating_constructor(function):
        return None
    if arguments == () or (
        isinstance(arguments, tuple) and all(isinstance(a, (bytes, str)) for a in arguments)
    ):
        return None  # empty, or built from bytes that are in the file
    shown = (
        ", ".join(repr(a) if not isinstance(a, bytes) else "b'…'" for a in arguments)
        if isinstance(arguments, tuple)
        else "…"
    )
    return f"{function}({shown})"[:120]
