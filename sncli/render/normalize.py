"""The table and JSON for ``sncli normalize``."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sncli.errors import printable_path
from sncli.messages import clean_text
from sncli.normalize import Action, NormalizeMode, NormalizePlan, NormalizeResult
from sncli.numerics.floating import DENSE_ROUNDING
from sncli.render.common import finite_or_none, fmt_sigma, plural


def normalize_to_dict(plan: NormalizePlan, result: NormalizeResult | None) -> dict[str, Any]:
    """JSON for ``normalize``: the plan, and the measured outcome when something was written."""
    outcomes = {o.name: o for o in result.layers} if result else {}
    layers = []
    for layer in plan.layers:
        item: dict[str, Any] = {
            "name": layer.name,
            "output_name": layer.output_name,
            "kind": layer.kind,
            "shape": list(layer.shape),
            "dtype": layer.dtype,
            "action": layer.action.value,
            "sigma_before": finite_or_none(layer.sigma_before),
            "scale": layer.scale,
            "sigma_after_expected": finite_or_none(layer.expected_after),
        }
        if layer.reason:
            item["reason"] = layer.reason
        outcome = outcomes.get(layer.name)
        if outcome is not None:
            item["sigma_after"] = outcome.sigma_after
            item["shaves"] = outcome.shaves
        layers.append(item)
    return {
        "checkpoint": plan.checkpoint,
        "target": plan.options.target,
        "mode": plan.options.mode.value,
        "method": plan.options.method.value,
        "bake": plan.options.bake,
        "dry_run": result is None,
        "outputs": [str(p) for p in result.outputs] if result else [],
        "verified": bool(result and result.verified),
        "layers": layers,
        "skipped": [{"name": s.name, "reason": s.reason} for s in plan.skipped],
    }


def print_normalize_table(
    plan: NormalizePlan, result: NormalizeResult | None, console: Console
) -> None:
    outcomes = {o.name: o for o in result.layers} if result else {}
    title = "Normalization plan (dry run)" if result is None else "Normalized"
    table = Table(title=f"{title}: {escape(printable_path(plan.checkpoint))}", title_justify="left")
    table.add_column("layer", overflow="fold")
    table.add_column("dtype")
    table.add_column("σ before", justify="right")
    table.add_column("action")
    table.add_column("scale", justify="right")
    table.add_column("σ after" + (" (expected)" if result is None else ""), justify="right")
    for layer in plan.layers:
        name = layer.short_name
        if layer.output_name != layer.name:
            name += f" → {plan_short(layer.output_name, layer.name, layer.short_name)}"
        outcome = outcomes.get(layer.name)
        after = outcome.sigma_after if outcome else layer.expected_after
        action = layer.action.value + (f" ({layer.reason})" if layer.reason else "")
        if outcome and outcome.shaves:
            action += f", shaved ×{outcome.shaves}"
        table.add_row(
            escape(clean_text(name)),
            layer.dtype,
            fmt_sigma(layer.sigma_before),
            escape(action),
            f"{layer.scale:.6g}",
            fmt_sigma(after, 9),
        )
    console.print(table)
    changed = sum(1 for p in plan.layers if p.action is Action.SCALE)
    kept = sum(1 for p in plan.layers if p.action is Action.KEEP)
    skipped = sum(1 for p in plan.layers if p.action is Action.SKIP)
    target = plan.options.target
    summary = f"{plural(changed, 'layer')} scaled to σ "
    summary += f"{'=' if plan.options.mode is NormalizeMode.SCALE else '≤'} {fmt_sigma(target)} · "
    summary += f"{kept} kept · {skipped} skipped · "
    copied, rewritten, dropped = plan.tensor_counts()
    summary += f"{plural(copied, 'other tensor')} copied unchanged"
    if rewritten:
        summary += f" · {rewritten} spectral-norm vectors (u, v) recomputed"
    if dropped:
        summary += f" · {dropped} spectral-norm buffers dropped (--bake)"
    console.print(escape(summary))
    if any(p.spectral_norm is not None for p in plan.layers) and not plan.options.bake:
        console.print(
            "Spectral-norm layers: σ after is the raw weight's. The model uses W/σ̂, and σ̂ is "
            "reset to σ(W) with the new u, v, so the weight it uses has σ = 1 whatever --target; "
            "use --bake to write that weight as a plain one scaled to the target.",
            style="dim",
        )
    if result is not None:
        worst = result.worst_sigma
        console.print(
            f"Wrote {', '.join(escape(printable_path(p)) for p in result.outputs)}; "
            "re-opened and verified: "
            f"largest σ after = {fmt_sigma(worst, 12)} (float64 LAPACK on the stored values; "
            f"σ ≤ target within {DENSE_ROUNDING:g} relative)."
        )
    else:
        console.print("Dry run: nothing was written.", style="dim")


def plan_short(output_name: str, name: str, short_name: str) -> str:
    prefix = name[: len(name) - len(short_name)]
    return output_name[len(prefix) :] if output_name.startswith(prefix) else output_name
