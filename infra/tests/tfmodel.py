"""A small static model of a Terraform module, parsed with python-hcl2.

No terraform binary is needed (none can be installed where these tests run).
The model resolves just enough to check the wiring: variable defaults, locals,
simple arithmetic (``6 * var.x``), ``for_each`` over a local map, and
references such as ``aws_sqs_queue.dispatch.arn``. Anything it cannot resolve
raises, so a check never passes by not understanding an expression.
"""

from __future__ import annotations

import ast
import copy
import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hcl2
from hcl2.utils import SerializationOptions

# Strings without their HCL quotes, blocks as plain dicts/lists.
_OPTIONS = SerializationOptions(strip_string_quotes=True, explicit_blocks=False, with_comments=False)

_WHOLE_INTERPOLATION = re.compile(r"^\$\{(.*)\}$", re.S)
_RESOURCE_REF = re.compile(r"(?<![\w.])(aws_[a-z0-9_]+)\.([a-z0-9_]+)(?:\[[^\]]*\])?(?:\.([a-z0-9_]+))?")
_DATA_REF = re.compile(r"\bdata\.(aws_[a-z0-9_]+)\.([a-z0-9_]+)")


def parse_file(path: Path) -> dict:
    """Parse one .tf file (raises on a syntax error)."""
    return copy.deepcopy(_parse_text(path.read_text(encoding="utf-8")))


@functools.lru_cache(maxsize=256)
def _parse_text(text: str) -> dict:
    # Cached by content: the mutation tests reload many near-identical copies.
    return hcl2.loads(text, serialization_options=_OPTIONS)


@dataclass
class Module:
    """The top-level blocks of every .tf file in one directory."""

    path: Path
    resources: dict[str, dict[str, dict]] = field(default_factory=dict)
    data: dict[str, dict[str, dict]] = field(default_factory=dict)
    variables: dict[str, dict] = field(default_factory=dict)
    locals: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, dict] = field(default_factory=dict)
    module_calls: dict[str, dict] = field(default_factory=dict)
    terraform: list[dict] = field(default_factory=list)

    # --- lookups -------------------------------------------------------------

    def resources_of(self, rtype: str) -> dict[str, dict]:
        return self.resources.get(rtype, {})

    def resource(self, rtype: str, name: str) -> dict:
        try:
            return self.resources[rtype][name]
        except KeyError:
            raise AssertionError(f"resource {rtype}.{name} not found") from None

    def data_source(self, dtype: str, name: str) -> dict:
        try:
            return self.data[dtype][name]
        except KeyError:
            raise AssertionError(f"data source {dtype}.{name} not found") from None

    def variable_default(self, name: str) -> Any:
        if name not in self.variables:
            raise AssertionError(f"variable {name} not declared")
        if "default" not in self.variables[name]:
            raise AssertionError(f"variable {name} has no default to resolve")
        return self.variables[name]["default"]

    def local(self, name: str) -> Any:
        if name not in self.locals:
            raise AssertionError(f"local {name} not defined")
        return self.locals[name]

    # --- expressions ---------------------------------------------------------

    def resolve(self, expr: Any) -> Any:
        """Resolve an expression that is a literal, a variable or a local
        (recursively), or arithmetic over those. Resource references raise."""
        if isinstance(expr, bool) or expr is None:
            return expr
        if isinstance(expr, (int, float)):
            return expr
        if isinstance(expr, (list, dict)):
            return expr
        inner = unwrap(expr)
        if inner is None:
            return expr  # a plain string
        inner = inner.strip()
        m = re.fullmatch(r"var\.(\w+)", inner)
        if m:
            return self.resolve(self.variable_default(m.group(1)))
        m = re.fullmatch(r"local\.(\w+)", inner)
        if m:
            return self.resolve(self.local(m.group(1)))
        return self._arithmetic(inner)

    def resolve_number(self, expr: Any) -> float:
        value = self.resolve(expr)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise AssertionError(f"{expr!r} does not resolve to a number (got {value!r})")
        return value

    def _arithmetic(self, text: str) -> float:
        def number_of(match: re.Match) -> str:
            kind, name = match.group(1), match.group(2)
            value = self.resolve_number("${%s.%s}" % (kind, name))
            return repr(value)

        substituted = re.sub(r"\b(var|local)\.(\w+)", number_of, text)
        return _safe_eval(substituted, original=text)

    def for_each_items(self, body: dict) -> list[tuple[str | None, Any]]:
        """(each.key, each.value expression) of a block; [(None, None)] without for_each."""
        if "for_each" not in body:
            return [(None, None)]
        fe = body["for_each"]
        inner = unwrap(fe) if isinstance(fe, str) else None
        if inner is not None:
            m = re.fullmatch(r"\s*local\.(\w+)\s*", inner)
            if not m:
                raise AssertionError(f"for_each {fe!r}: only a local map is understood here")
            value = self.local(m.group(1))
        else:
            value = fe
        if not isinstance(value, dict):
            raise AssertionError(f"for_each {fe!r} is not a map")
        return list(value.items())

    def instances(self, body: dict) -> list[tuple[str | None, dict]]:
        """The block once per for_each key, with each.key / each.value substituted."""
        return [(key, substitute_each(body, key, value)) for key, value in self.for_each_items(body)]


def load_module(path: Path) -> Module:
    """Load every .tf file of one directory into a Module."""
    mod = Module(path=path)
    files = sorted(path.glob("*.tf"))
    if not files:
        raise AssertionError(f"no .tf files in {path}")
    for tf in files:
        doc = parse_file(tf)
        for block in doc.get("resource", []):
            for rtype, named in block.items():
                for name, body in named.items():
                    _put(mod.resources.setdefault(rtype, {}), name, body, f"{tf.name}: resource {rtype}")
        for block in doc.get("data", []):
            for dtype, named in block.items():
                for name, body in named.items():
                    _put(mod.data.setdefault(dtype, {}), name, body, f"{tf.name}: data {dtype}")
        for block in doc.get("variable", []):
            for name, body in block.items():
                _put(mod.variables, name, body, f"{tf.name}: variable")
        for block in doc.get("locals", []):
            for name, value in block.items():
                _put(mod.locals, name, value, f"{tf.name}: local")
        for block in doc.get("output", []):
            for name, body in block.items():
                _put(mod.outputs, name, body, f"{tf.name}: output")
        for block in doc.get("module", []):
            for name, body in block.items():
                _put(mod.module_calls, name, body, f"{tf.name}: module")
        mod.terraform.extend(doc.get("terraform", []))
    return mod


def _put(table: dict, name: str, value: Any, where: str) -> None:
    if name in table:
        raise AssertionError(f"{where} {name} defined twice")
    table[name] = value


# --- expression helpers ----------------------------------------------------------


def unwrap(expr: Any) -> str | None:
    """The inside of a string that is exactly one ``${...}`` interpolation."""
    if not isinstance(expr, str):
        return None
    m = _WHOLE_INTERPOLATION.match(expr)
    if not m:
        return None
    inner = m.group(1)
    # "${a}-${b}" is a template, not one interpolation.
    if "${" in inner:
        return None
    return inner


def resource_refs(expr: Any) -> set[tuple[str, str, str | None]]:
    """Every (type, name, attribute) of an ``aws_*`` resource referenced anywhere in expr."""
    found: set[tuple[str, str, str | None]] = set()
    for text in strings_in(expr):
        for m in _RESOURCE_REF.finditer(_DATA_REF.sub("", text)):
            found.add((m.group(1), m.group(2), m.group(3)))
    return found


def data_refs(expr: Any) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for text in strings_in(expr):
        for m in _DATA_REF.finditer(text):
            found.add((m.group(1), m.group(2)))
    return found


def strings_in(expr: Any):
    if isinstance(expr, str):
        yield expr
    elif isinstance(expr, dict):
        for k, v in expr.items():
            yield from strings_in(k)
            yield from strings_in(v)
    elif isinstance(expr, list):
        for v in expr:
            yield from strings_in(v)


def substitute_each(expr: Any, key: str | None, value: Any) -> Any:
    """Replace each.key / each.value in every string of expr."""
    if key is None:
        return expr
    if isinstance(expr, dict):
        return {k: substitute_each(v, key, value) for k, v in expr.items() if k != "for_each"}
    if isinstance(expr, list):
        return [substitute_each(v, key, value) for v in expr]
    if not isinstance(expr, str):
        return expr
    if expr == "${each.value}":
        return value
    value_inner = unwrap(value) if isinstance(value, str) else None
    if value_inner is None:
        value_inner = json.dumps(value)
    out = expr.replace("${each.key}", key)
    out = re.sub(r"\beach\.key\b", json.dumps(key), out)
    out = re.sub(r"\beach\.value\b", value_inner, out)
    return out


def _safe_eval(text: str, original: str) -> float:
    """Evaluate + - * / over numbers, nothing else."""
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise AssertionError(f"cannot resolve expression {original!r}") from None

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Add):
                return left + right
            if isinstance(node.op, ast.Sub):
                return left - right
            if isinstance(node.op, ast.Mult):
                return left * right
            return left / right
        raise AssertionError(f"cannot resolve expression {original!r}")

    return ev(tree)


def statements(doc: dict) -> list[dict]:
    """Statements of an aws_iam_policy_document, dynamic ones included (their content)."""
    out = list(doc.get("statement", []))
    for dyn in doc.get("dynamic", []):
        for name, body in dyn.items():
            if name == "statement":
                out.extend(body.get("content", []))
    return out
