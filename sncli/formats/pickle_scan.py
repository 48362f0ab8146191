"""Static scan of pickles: which globals a PyTorch file names, found by reading opcodes (nothing
is imported or run), which of those are dangerous, and inert placeholders for --skip-objects."""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class PickleScan:
    """Globals a pickle references, found by reading its opcodes (nothing is imported or run)."""

    globals: list[str]
    complete: bool

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


_MARK = object()  # a MARK on the simulated stack
_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})


def scan_pickles(data: Any, count: int) -> PickleScan:
    """Walk up to ``count`` consecutive pickles in ``data`` and collect their GLOBALs.

    The pickle stack and memo are simulated with strings as the only known values, so a
    ``STACK_GLOBAL`` whose module or name was fetched back from the memo (``BINGET``, as
    protocol 4 does for a module used twice) is named right; one whose operands are not
    strings known here makes the scan incomplete.
    """
    import pickletools

    found: dict[str, None] = {}
    complete = True
    try:
        for _ in range(count):
            globals_at: list[int] = []
            stack: list[Any] = []
            memo: dict[Any, Any] = {}
            for opcode, arg, position in pickletools.genops(data):
                name = opcode.name
                if name == "MEMOIZE":
                    memo[len(memo)] = stack[-1] if stack else None
                    continue
                if name in _PUTS:
                    memo[arg] = stack[-1] if stack else None
                    continue
                if name in _GETS:
                    stack.append(memo.get(arg))
                    continue
                if name == "DUP":
                    stack.append(stack[-1] if stack else None)
                    continue
                if name == "GLOBAL":
                    globals_at.append(position)
                elif name == "STACK_GLOBAL":
                    module, attr = (stack[-2], stack[-1]) if len(stack) >= 2 else (None, None)
                    if isinstance(module, str) and isinstance(attr, str):
                        found[f"{module}.{attr}"] = None
                    else:
                        complete = False
                _simulate(stack, opcode, arg)
            end = data.tell()
            for position in globals_at:
                found[_read_global(data, position)] = None
            data.seek(end)
    except Exception:
        return PickleScan(list(found), False)
    return PickleScan(list(found), complete)


def _simulate(stack: list[Any], opcode: Any, arg: Any) -> None:
    """Pop what ``opcode`` consumes and push what it produces (strings kept, the rest None)."""
    from pickletools import markobject, pystring, pyunicode, stackslice

    before, after = opcode.stack_before, opcode.stack_after
    if stackslice in before:  # everything down to the topmost MARK, then what lies below it
        while stack and stack.pop() is not _MARK:
            pass
        below = before.index(markobject)
        del stack[len(stack) - min(below, len(stack)) :]
    else:
        del stack[len(stack) - min(len(before), len(stack)) :]
    for produced in after:
        if produced is markobject:
            stack.append(_MARK)
        elif produced in (pystring, pyunicode) and isinstance(arg, str):
            stack.append(arg)
        else:
            stack.append(None)
