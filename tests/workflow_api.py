"""Convert a UI-format workflow (as the ComfyUI frontend saves it) to the API prompt format.

The UI format stores a node's widget values positionally (``widgets_values``) and its connections in
a ``links`` table; the API format (``POST /prompt``) names every input. The mapping needs the node
definitions from the server's ``/object_info``, read exactly as the frontend reads them:

- widgets are the inputs of widget types (INT, FLOAT, STRING, BOOLEAN, COMBO, or a legacy option
  list), in ``input_order`` (required, then optional), minus ``forceInput`` ones;
- an INT input named ``seed``/``noise_seed`` or with ``control_after_generate`` is followed by the
  frontend's extra "control_after_generate" widget (its value is saved but not sent), as is a COMBO
  with ``control_after_generate``;
- a linked input (``inputs[i].link``) becomes ``[origin_id, origin_slot]``; a widget converted to an
  input and linked takes the link, unless the origin is a frontend-only PrimitiveNode, whose value
  the target's own ``widgets_values`` already holds.

Frontend-only nodes (Note, MarkdownNote, PrimitiveNode, Reroute) are dropped; links through a Reroute
are followed to their real origin. Muted nodes (mode 2) are dropped; bypassed nodes (mode 4) pass
their first input of each output's type through, as the frontend does. :func:`validate_widgets`
checks widget values against the definitions (combo options, min/max).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
FRONTEND_ONLY = frozenset({"Note", "MarkdownNote", "PrimitiveNode", "Reroute"})
SEED_NAMES = frozenset({"seed", "noise_seed"})
CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize"})
MODE_MUTED, MODE_BYPASSED = 2, 4


class WorkflowError(ValueError):
    """The workflow cannot be converted; the message names the node and input."""


@dataclass(frozen=True)
class Link:
    """One row of the UI ``links`` table."""

    id: int
    origin_id: int
    origin_slot: int
    target_id: int
    target_slot: int
    type: str


@dataclass(frozen=True)
class WidgetSpec:
    """A widget input of a node definition."""

    name: str
    type: str
    options: Mapping[str, Any]
    choices: tuple[Any, ...] | None
    extra_values: int  # frontend-only widgets that follow it (control_after_generate)


def _links(workflow: Mapping[str, Any]) -> dict[int, Link]:
    """The links table, from either the list-of-lists or the list-of-dicts form."""
    table: dict[int, Link] = {}
    for row in workflow.get("links", []):
        if isinstance(row, Mapping):
            link = Link(row["id"], row["origin_id"], row["origin_slot"], row["target_id"],
                        row["target_slot"], row.get("type", "*"))
        else:
            link = Link(*row[:6])
        table[link.id] = link
    return table


def _input_spec_type(spec: Any) -> tuple[str, Mapping[str, Any], tuple[Any, ...] | None]:
    """(type, options, combo choices) of one ``/object_info`` input entry."""
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], Mapping) else {}
    if isinstance(kind, list):  # legacy combo: the option list itself
        return "COMBO", options, tuple(kind)
    if kind == "COMBO":
        return "COMBO", options, tuple(options.get("options", ()))
    return str(kind), options, None


def widget_specs(definition: Mapping[str, Any]) -> list[WidgetSpec]:
    """The widgets the frontend creates for a node definition, in their order."""
    inputs = definition.get("input", {})
    order = definition.get("input_order") or {k: list(v) for k, v in inputs.items()}
    specs: list[WidgetSpec] = []
    for section in ("required", "optional"):
        for name in order.get(section, []):
            spec = inputs.get(section, {}).get(name)
            if spec is None:
                continue
            kind, options, choices = _input_spec_type(spec)
            if kind not in WIDGET_TYPES or options.get("forceInput"):
                continue
            control = options.get("control_after_generate")
            if kind == "INT" and control is None:
                control = name in SEED_NAMES
            specs.append(WidgetSpec(name, kind, options, choices, 1 if control else 0))
    return specs


def _widget_values(node: Mapping[str, Any], specs: list[WidgetSpec]) -> dict[str, Any]:
    """Map a node's ``widgets_values`` onto its widget names (positional or by name)."""
    values = node.get("widgets_values")
    if values is None:
        return {}
    if isinstance(values, Mapping):
        return {s.name: values[s.name] for s in specs if s.name in values}
    out: dict[str, Any] = {}
    position = 0
    for spec in specs:
        if position >= len(values):
            raise WorkflowError(
                f"node {node['id']} ({node['type']}): widgets_values has {len(values)} entries, "
                f"too few for widget {spec.name!r} (widgets: {[s.name for s in specs]})")
        out[spec.name] = values[position]
        position += 1
        if spec.extra_values:
            control = values[position] if position < len(values) else None
            if control not in CONTROL_VALUES:
                raise WorkflowError(
                    f"node {node['id']} ({node['type']}): widget {spec.name!r} must be followed by its "
                    f"control_after_generate value (one of {sorted(CONTROL_VALUES)}), got {control!r}")
            position += spec.extra_values
    if position != len(values):
        raise WorkflowError(
            f"node {node['id']} ({node['type']}): widgets_values has {len(values)} entries but the "
            f"definition has {position} widget values ({[s.name for s in specs]})")
    return out


class _Graph:
    """Nodes and links of a UI workflow with origin resolution through frontend-only nodes."""

    def __init__(self, workflow: Mapping[str, Any]) -> None:
        if "nodes" not in workflow or "links" not in workflow:
            raise WorkflowError("not a UI-format workflow: it needs 'nodes' and 'links'")
        if workflow.get("definitions", {}).get("subgraphs"):
            raise WorkflowError("subgraphs are not supported by this converter")
        self.nodes = {node["id"]: node for node in workflow["nodes"]}
        self.links = _links(workflow)

    def resolve(self, link_id: int) -> tuple[Mapping[str, Any], int] | None:
        """The real (origin node, slot) feeding ``link_id``; None when nothing real feeds it."""
        seen: set[int] = set()
        link = self.links.get(link_id)
        while link is not None:
            if link.id in seen:
                raise WorkflowError(f"link {link.id} is part of a cycle of reroutes/bypasses")
            seen.add(link.id)
            origin = self.nodes.get(link.origin_id)
            if origin is None:
                raise WorkflowError(f"link {link.id} starts at missing node {link.origin_id}")
            mode = origin.get("mode", 0)
            if origin["type"] == "Reroute" or mode == MODE_BYPASSED:
                link = self._pass_through(origin, link)
                continue
            if origin["type"] in FRONTEND_ONLY or mode == MODE_MUTED:
                return None
            return origin, link.origin_slot
        return None

    def _pass_through(self, node: Mapping[str, Any], link: Link) -> Link | None:
        """The link entering a Reroute or a bypassed node that stands in for its output ``link``."""
        inputs = node.get("inputs", [])
        if node["type"] != "Reroute":
            out_type = node.get("outputs", [{}])[link.origin_slot].get("type", link.type)
            inputs = [i for i in inputs if i.get("type") == out_type] or []
        for entry in inputs:
            if entry.get("link") is not None:
                return self.links.get(entry["link"])
        return None


def to_api(workflow: Mapping[str, Any], object_info: Mapping[str, Any]) -> dict[str, Any]:
    """The API prompt (``{node_id: {"class_type", "inputs", "_meta"}}``) of a UI workflow."""
    graph = _Graph(workflow)
    prompt: dict[str, Any] = {}
    for node_id, node in graph.nodes.items():
        kind = node["type"]
        if kind in FRONTEND_ONLY or node.get("mode", 0) in (MODE_MUTED, MODE_BYPASSED):
            continue
        definition = object_info.get(kind)
        if definition is None:
            raise WorkflowError(f"node {node_id}: type {kind!r} is not known to the server")
        specs = widget_specs(definition)
        inputs: dict[str, Any] = dict(_widget_values(node, specs))
        for entry in node.get("inputs", []):
            if entry.get("link") is None:
                continue
            origin = graph.resolve(entry["link"])
            if origin is None:
                continue  # e.g. a PrimitiveNode: the widget value above already holds it
            origin_node, slot = origin
            inputs[entry["name"]] = [str(origin_node["id"]), slot]
        _check_required(node, definition, inputs)
        prompt[str(node_id)] = {"class_type": kind, "inputs": inputs,
                                "_meta": {"title": node.get("title") or definition.get("display_name", kind)}}
    return prompt


def _check_required(node: Mapping[str, Any], definition: Mapping[str, Any],
                    inputs: Mapping[str, Any]) -> None:
    """Every required input has a value or a link (the server would refuse the prompt otherwise)."""
    missing = [name for name in definition.get("input", {}).get("required", {}) if name not in inputs]
    if missing:
        raise WorkflowError(f"node {node['id']} ({node['type']}): required inputs not connected: {missing}")


def validate_widgets(workflow: Mapping[str, Any], object_info: Mapping[str, Any]) -> list[str]:
    """Problems with widget values (unknown combo option, out of range, wrong kind); [] if none."""
    problems: list[str] = []
    for node in workflow["nodes"]:
        definition = object_info.get(node["type"])
        if definition is None or node["type"] in FRONTEND_ONLY:
            continue
        specs = widget_specs(definition)
        try:
            values = _widget_values(node, specs)
        except WorkflowError as exc:
            problems.append(str(exc))
            continue
        where = f"node {node['id']} ({node['type']})"
        for spec in specs:
            if spec.name not in values:
                continue
            problem = _check_value(spec, values[spec.name])
            if problem:
                problems.append(f"{where}: widget {spec.name!r} {problem}")
    return problems


def _check_value(spec: WidgetSpec, value: Any) -> str | None:
    """Why ``value`` is invalid for ``spec`` (None when it is valid)."""
    if spec.type == "COMBO":
        if spec.options.get("multiselect") and isinstance(value, list):
            bad = [v for v in value if v not in spec.choices]
            return f"has options {bad} not among {list(spec.choices)}" if bad else None
        return None if value in spec.choices else f"= {value!r} is not one of {list(spec.choices)}"
    if spec.type == "BOOLEAN":
        return None if isinstance(value, bool) else f"= {value!r} is not a boolean"
    if spec.type == "STRING":
        return None if isinstance(value, str) else f"= {value!r} is not a string"
    if spec.type in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"= {value!r} is not a number"
        if spec.type == "INT" and value != int(value):
            return f"= {value!r} is not an integer"
        low, high = spec.options.get("min"), spec.options.get("max")
        if low is not None and value < low:
            return f"= {value} is below the minimum {low}"
        if high is not None and value > high:
            return f"= {value} is above the maximum {high}"
    return None


def check_ui_structure(workflow: Mapping[str, Any]) -> list[str]:
    """Problems that would make the frontend load the workflow wrongly; [] if none.

    Checks the fields the frontend (litegraph serialisation, version 0.4) relies on and that the links
    table and the nodes' input/output link lists agree.
    """
    problems: list[str] = []
    for key in ("last_node_id", "last_link_id", "nodes", "links", "version"):
        if key not in workflow:
            problems.append(f"missing top-level key {key!r}")
    if problems:
        return problems
    nodes = {node["id"]: node for node in workflow["nodes"]}
    if len(nodes) != len(workflow["nodes"]):
        problems.append("duplicate node ids")
    if nodes and max(nodes) > workflow["last_node_id"]:
        problems.append(f"last_node_id {workflow['last_node_id']} < largest node id {max(nodes)}")
    links = _links(workflow)
    if links and max(links) > workflow["last_link_id"]:
        problems.append(f"last_link_id {workflow['last_link_id']} < largest link id {max(links)}")
    for node in workflow["nodes"]:
        where = f"node {node.get('id')} ({node.get('type')})"
        for key in ("id", "type", "pos", "size", "mode", "inputs", "outputs", "properties", "order"):
            if key not in node:
                problems.append(f"{where}: missing {key!r}")
        for slot, entry in enumerate(node.get("inputs", [])):
            link = links.get(entry.get("link")) if entry.get("link") is not None else None
            if entry.get("link") is not None and (link is None or (link.target_id, link.target_slot)
                                                  != (node["id"], slot)):
                problems.append(f"{where}: input {entry.get('name')!r} names link {entry.get('link')} "
                                "which does not end at this slot")
        for slot, entry in enumerate(node.get("outputs", [])):
            for link_id in entry.get("links") or []:
                link = links.get(link_id)
                if link is None or (link.origin_id, link.origin_slot) != (node["id"], slot):
                    problems.append(f"{where}: output {entry.get('name')!r} lists link {link_id} "
                                    "which does not start at this slot")
    for link in links.values():
        origin, target = nodes.get(link.origin_id), nodes.get(link.target_id)
        if origin is None or target is None:
            problems.append(f"link {link.id} joins missing node(s) {link.origin_id} → {link.target_id}")
            continue
        outputs, inputs = origin.get("outputs", []), target.get("inputs", [])
        if link.origin_slot >= len(outputs) or link.id not in (outputs[link.origin_slot].get("links") or []):
            problems.append(f"link {link.id}: not listed by output {link.origin_slot} of node {origin['id']}")
        if link.target_slot >= len(inputs) or inputs[link.target_slot].get("link") != link.id:
            problems.append(f"link {link.id}: not held by input {link.target_slot} of node {target['id']}")
    return problems
