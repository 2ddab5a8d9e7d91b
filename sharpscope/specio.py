"""Reading YAML specs (study, zoo, training, figures) with one-line errors naming the file and line.

The loader is PyYAML's safe loader (no tags that build Python objects) made stricter in three ways, each
because a spec that *silently* means something else is worse than one that is refused:

* a key repeated in one mapping is an error (YAML 1.2 forbids it; PyYAML keeps the last value silently);
* anchors and aliases are allowed (the zoo specs use ``x-`` anchors), but the document's size with every
  alias expanded is capped at :data:`MAX_NODES` nodes, so a "billion laughs" alias bomb of a few hundred
  bytes is refused before anything walks it (hashing, JSON encoding), and a recursive alias is refused;
* the file must be UTF-8 text.

It also holds the checks that every spec reader shares: names that become file or folder names
(:func:`safe_name`), torch device strings (:func:`check_device`) and parameter-scope regexes
(:func:`check_scope`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from .errors import SharpscopeError, SpecError

MAX_NODES = 200_000  # far above any real spec (the demo study has < 200 nodes), far below an alias bomb
MAX_NAME = 120
_SAFE_NAME = re.compile(r"^[^/\\\x00-\x1f\x7f]+$")


class _StrictLoader(yaml.SafeLoader):
    """Safe loader that refuses duplicate keys (checked on the composed node, with its line)."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
            key = loader.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                continue  # the base constructor reports unhashable keys
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first on line {seen[key] + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def _expanded_size(root: yaml.Node) -> int:
    """Nodes of the document with every alias expanded (memoised per node: linear in the file's size)."""
    memo: dict[int, int] = {}
    active: set[int] = set()

    def size(n: yaml.Node) -> int:
        k = id(n)
        if k in memo:
            return memo[k]
        if k in active:
            mark = n.start_mark
            raise SpecError(f"line {mark.line + 1}: a recursive alias (an anchor used inside itself)")
        active.add(k)
        total = 1
        if isinstance(n, yaml.SequenceNode):
            total += sum(size(c) for c in n.value)
        elif isinstance(n, yaml.MappingNode):
            total += sum(size(a) + size(b) for a, b in n.value)
        active.discard(k)
        memo[k] = min(total, MAX_NODES + 1)
        return memo[k]

    return size(root)


def load_yaml_text(text: str, source: str = "<spec>") -> Any:
    """Parse YAML ``text`` strictly (see the module doc); problems raise SpecError naming ``source``."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            n = _expanded_size(node)
        except SpecError as exc:
            raise SpecError(f"{source}: {exc}; write the values out") from None
        except RecursionError:
            raise SpecError(f"{source}: nested too deeply; flatten the spec") from None
        if n > MAX_NODES:
            raise SpecError(
                f"{source}: expands to more than {MAX_NODES} values through aliases (an alias bomb?); "
                "write the values out or use fewer aliases"
            )
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark is not None else ""
        raise SpecError(
            f"{source}:{where} not valid YAML ({getattr(exc, 'problem', None) or exc}); fix the syntax"
        ) from None
    except RecursionError:
        raise SpecError(f"{source}: nested too deeply; flatten the spec") from None
    finally:
        loader.dispose()


def read_yaml(path: str | Path, what: str = "spec") -> Any:
    """Parse the YAML file ``path``; a missing file, non-UTF-8 bytes or a syntax error raise SpecError."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"{what} not found: {p}; pass the path of a YAML file")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{p}: not UTF-8 text (byte {exc.start}); save the {what} as UTF-8") from None
    except OSError as exc:
        raise SpecError(f"{p}: cannot read the {what}: {exc.strerror}") from None
    return load_yaml_text(text, str(p))


# ---- shared value checks ------------------------------------------------------------------------------


def safe_name(value: Any, where: str) -> str:
    """``value`` as a name that is safe to use as one file or folder name; else :class:`SpecError`.

    Names from specs become paths (``OUT/<run name>/``, ``subsets/<subset>.json``): a name with a path
    separator, ``..``, a leading dot or a control character could write outside the output folder or hide
    a file, so it is refused rather than rewritten (a rewritten name would no longer match its results).
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise SpecError(f"{where}: {value!r} is not a name; use a short string")
    s = str(value)
    if not s.strip() or len(s) > MAX_NAME:
        raise SpecError(f"{where}: {s!r} must be a non-empty name of at most {MAX_NAME} characters")
    if not _SAFE_NAME.match(s) or s.startswith(".") or s != s.strip():
        raise SpecError(
            f"{where}: {s!r} cannot be used as a file name (no '/', '\\', leading '.', surrounding spaces or "
            "control characters); rename it"
        )
    return s


def check_device(device: Any, where: str = "--device") -> str:
    """A torch device string that exists on this machine (``cpu``, ``cuda``, ``cuda:1``, ``mps``); ``auto``
    is resolved (:func:`sharpscope.devices.resolve_device`: CUDA when present, else CPU) and the resolved
    string returned, so callers record the device actually used."""
    import torch

    from .devices import resolve_device

    if not isinstance(device, str):
        raise SharpscopeError(f"{where}: {device!r} is not a device; use cpu, cuda or auto")
    device = resolve_device(device)
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise SharpscopeError(f"{where}: {device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SharpscopeError(f"{where}: {device!r} asked for, but CUDA is not available here; use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            n = torch.cuda.device_count()
            raise SharpscopeError(f"{where}: {device!r} does not exist ({n} CUDA device(s)); use cuda:0")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise SharpscopeError(f"{where}: {device!r} asked for, but MPS is not available here; use cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise SharpscopeError(f"{where}: device type {dev.type!r} is not supported; use cpu or cuda")
    return device


def check_scope(scope: Any, where: str = "--scope") -> str:
    """A parameter scope (``all``, ``trainable``, ``lora-merged``, ``regex:PATTERN``) with a valid regex."""
    if not isinstance(scope, str):
        raise SharpscopeError(f"{where}: {scope!r} is not a scope; use all, trainable or regex:PATTERN")
    if scope.startswith("regex:"):
        try:
            re.compile(scope[len("regex:") :])
        except re.error as exc:
            raise SharpscopeError(f"{where}: {scope!r} is not a valid regular expression ({exc})") from None
    return scope


def type_problem(value: Any, hint: Any) -> str | None:
    """Why ``value`` (from YAML) does not fit the type hint ``hint``; ``None`` when it fits.

    YAML gives ``"false"`` (quoted) as a string and ``1e-4`` (no dot) as a string too: a spec value is
    taken as what its type says, never by Python truthiness (``bool("false")`` is True).
    """
    import types
    import typing

    if hint is Any or hint is None:
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        whys = [type_problem(value, a) for a in args if a is not type(None)]
        return None if any(w is None for w in whys) else whys[0]
    if origin is typing.Literal:
        return None if value in args else f"must be one of {', '.join(map(repr, args))}"
    if hint is bool:
        return None if isinstance(value, bool) else "must be true or false (unquoted)"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "must be an integer"
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "must be a number"
        return None if value == value and abs(value) != float("inf") else "must be a finite number"
    if hint is str:
        return None if isinstance(value, str) else "must be a string"
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return "must be a list"
        inner = args[0] if args and (origin is list or (len(args) == 2 and args[1] is Ellipsis)) else None
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                return f"must be a list of {len(args)} values"
            whys = [type_problem(v, a) for v, a in zip(value, args, strict=True)]
        else:
            whys = [type_problem(v, inner) for v in value] if inner is not None else []
        bad = [w for w in whys if w]
        return f"items {bad[0]}" if bad else None
    if origin is dict or hint is dict:
        return None if isinstance(value, dict) else "must be a mapping"
    return None  # a type the spec cannot spell: left to the consumer's own validation
